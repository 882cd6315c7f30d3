"""Twilio Media Streams parsing: typed, lenient about unknown events, strict about malformed input."""

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ProtocolError
from relay.twilio_messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    Unknown,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)

FRAME = base64.b64encode(bytes(range(160))).decode()


def test_start_numbers_as_strings_and_custom_parameters() -> None:
    msg = {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": ["inbound"],
            "customParameters": {"token": "t", "from": "+1555"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": "8000", "channels": 1},
        },
        "streamSid": "MZ1",
    }
    start = parse_message(orjson.dumps(msg))
    assert start == Start("MZ1", "CA1", "AC1", ("inbound",), {"token": "t", "from": "+1555"})


def test_media_keeps_payload_text_and_converts_numbers() -> None:
    msg = {
        "event": "media",
        "sequenceNumber": "4",
        "streamSid": "MZ1",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": FRAME},
    }
    m = parse_message(orjson.dumps(msg))
    assert m == Media(payload=FRAME, timestamp=5, chunk=2, track="inbound", size=160)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"event":"connected","protocol":"Call","version":"1.0.0"}', Connected("Call", "1.0.0")),
        ('{"event":"mark","streamSid":"MZ","mark":{"name":"0:1"}}', Mark("0:1")),
        ('{"event":"dtmf","streamSid":"MZ","dtmf":{"track":"inbound_track","digit":"7"}}', Dtmf("7")),
        ('{"event":"stop","streamSid":"MZ","stop":{"accountSid":"AC","callSid":"CA9"}}', Stop("CA9")),
    ],
)
def test_other_events(raw: str, expected: object) -> None:
    assert parse_message(raw) == expected


def test_unknown_event_is_a_value_not_an_error() -> None:
    u = parse_message('{"event":"brand-new","x":1}')
    assert isinstance(u, Unknown) and u.event == "brand-new"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("{not json", "malformed JSON"),
        ("[1,2]", "not a JSON object"),
        ('{"foo":1}', "no 'event'"),
        ('{"event":"media","media":{"payload":"%%%notbase64"}}', "base64"),
        ('{"event":"media","media":{"timestamp":"x","payload":"AAAA"}}', "not a number"),
        ('{"event":"media"}', "lacks its 'media'"),
        ('{"event":"start","start":{"streamSid":"MZ"}}', "streamSid or callSid"),
        ('{"event":"mark","mark":{}}', "no name"),
        ('{"event":"media","media":{"payload":"' + "A" * 70000 + '"}}', "exceeds"),
    ],
)
def test_malformed_input_raises_protocol_error(raw: str, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        parse_message(raw)


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_fuzz_never_raises_anything_but_protocol_error(raw: str) -> None:
    try:
        parse_message(raw)
    except ProtocolError:
        pass


@given(
    st.dictionaries(
        st.sampled_from(["event", "media", "start", "mark", "stop", "dtmf", "streamSid"]),
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=20)
        | st.dictionaries(st.text(max_size=10), st.text(max_size=10) | st.integers(-(2**63), 2**63 - 1)),
    )
)
def test_fuzz_structured_json(doc: dict) -> None:
    try:
        parse_message(orjson.dumps(doc))
    except ProtocolError:
        pass


def test_outbound_serialization() -> None:
    assert orjson.loads(media_message("MZ1", FRAME)) == {
        "event": "media",
        "streamSid": "MZ1",
        "media": {"payload": FRAME},
    }
    assert orjson.loads(mark_message("MZ1", 'a"b')) == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": 'a"b'},
    }
    assert orjson.loads(clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}
