"""Property-based tests of the Twilio Media Streams parser: whatever arrives, `parse_message`
returns an event or raises ProtocolError (nothing else), and valid messages round-trip."""

from __future__ import annotations

import base64
import string

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ProtocolError
from relay.twilio_messages import (
    MAX_MESSAGE_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    Unknown,
    mark_message,
    media_message,
    parse_message,
)

EVENTS = ["media", "start", "mark", "stop", "dtmf", "connected", "clear", "", "brand-new"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# Objects shaped like Twilio's, with any value in any field: the parser's checks are what is tested.
field_names = st.sampled_from(
    [
        "payload",
        "timestamp",
        "chunk",
        "track",
        "name",
        "streamSid",
        "callSid",
        "accountSid",
        "tracks",
        "customParameters",
        "mediaFormat",
        "encoding",
        "sampleRate",
        "channels",
        "digit",
        "x",
    ]
)
inner_objects = st.dictionaries(
    field_names, json_values | st.dictionaries(field_names, json_values), max_size=8
)
messages = st.fixed_dictionaries(
    {"event": st.sampled_from(EVENTS) | json_values},
    optional={
        "media": inner_objects | json_values,
        "start": inner_objects | json_values,
        "mark": inner_objects | json_values,
        "stop": inner_objects | json_values,
        "dtmf": inner_objects | json_values,
        "streamSid": json_values,
        "sequenceNumber": json_values,
    },
)


# Objects that pass the first checks (right event, the required strings present) with anything in
# the other fields: where a parser is most tempted to trust a type.
START_FIELDS = ("accountSid", "tracks", "customParameters", "mediaFormat")
any_field = json_values | st.dictionaries(field_names, json_values, max_size=3)
plausible = st.one_of(
    st.fixed_dictionaries(
        {
            "event": st.just("start"),
            "start": st.fixed_dictionaries(
                {"streamSid": st.text(max_size=5), "callSid": st.text(max_size=5)},
                optional=dict.fromkeys(START_FIELDS, any_field),
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "event": st.just("media"),
            "media": st.fixed_dictionaries(
                {"payload": st.just("AAAA") | st.text(max_size=8)},
                optional=dict.fromkeys(("timestamp", "chunk", "track"), any_field),
            ),
        }
    ),
    st.fixed_dictionaries(
        {"event": st.sampled_from(["stop", "dtmf", "mark", "connected"])},
        optional={
            "stop": any_field,
            "dtmf": any_field,
            "mark": any_field,
            "protocol": any_field,
            "version": any_field,
        },
    ),
)


@settings(max_examples=500)
@given(plausible)
def test_plausible_messages_with_any_field_types_parse_or_are_a_protocol_error(message: dict) -> None:
    parses_or_protocol_error(orjson.dumps(message))


def parses_or_protocol_error(data: str | bytes) -> None:
    try:
        event = parse_message(data)
    except ProtocolError:
        return
    assert isinstance(event, Connected | Start | Media | Mark | Dtmf | Stop | Unknown)


@given(st.text(max_size=300))
def test_any_text_parses_or_is_a_protocol_error(text: str) -> None:
    parses_or_protocol_error(text)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_a_protocol_error(data: bytes) -> None:
    parses_or_protocol_error(data)


@settings(max_examples=500)
@given(messages)
def test_any_twilio_shaped_object_parses_or_is_a_protocol_error(message: dict) -> None:
    parses_or_protocol_error(orjson.dumps(message))
    parses_or_protocol_error(orjson.dumps(message).decode())


@given(st.integers(min_value=0, max_value=100))
def test_oversize_messages_are_refused_before_parsing(extra: int) -> None:
    text = '{"event":"media","media":{"payload":"' + "A" * (MAX_MESSAGE_BYTES + extra) + '"}}'
    try:
        parse_message(text)
    except ProtocolError as exc:
        assert "exceeds" in str(exc)
    else:
        raise AssertionError("an oversize message was parsed")


hex32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
sid = lambda prefix: hex32.map(lambda h: prefix + h)  # noqa: E731
payloads = st.binary(min_size=0, max_size=400).map(lambda b: base64.b64encode(b).decode())
names = st.text(alphabet=string.ascii_letters + string.digits + "-_:.", min_size=1, max_size=40)


@given(sid("MZ"), payloads)
def test_media_we_send_parses_back_to_the_same_payload(stream_sid: str, payload: str) -> None:
    event = parse_message(media_message(stream_sid, payload))
    assert isinstance(event, Media) and event.payload == payload
    assert event.size == len(base64.b64decode(payload))


@given(sid("MZ"), st.text(max_size=60))
def test_marks_we_send_parse_back_to_the_same_name(stream_sid: str, name: str) -> None:
    event = parse_message(mark_message(stream_sid, name))
    assert event == Mark(name=name)


@given(
    call_sid=sid("CA"),
    stream_sid=sid("MZ"),
    account_sid=sid("AC"),
    params=st.dictionaries(names, st.text(max_size=40), max_size=5),
    tracks=st.lists(st.sampled_from(["inbound", "outbound"]), min_size=1, max_size=2, unique=True),
    timestamp=st.integers(min_value=0, max_value=10**9),
    chunk=st.integers(min_value=0, max_value=10**9),
    frame=st.binary(min_size=160, max_size=160),
    digit=st.sampled_from(list("0123456789*#")),
)
def test_twilios_messages_round_trip(
    call_sid, stream_sid, account_sid, params, tracks, timestamp, chunk, frame, digit
) -> None:
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": tracks,
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    assert parse_message(orjson.dumps(start)) == Start(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid=account_sid,
        tracks=tuple(tracks),
        custom_parameters=params,
    )
    payload = base64.b64encode(frame).decode()
    media = {
        "event": "media",
        "streamSid": stream_sid,
        "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(timestamp), "payload": payload},
    }
    assert parse_message(orjson.dumps(media)) == Media(payload, timestamp, chunk, "inbound", 160)
    dtmf = {"event": "dtmf", "streamSid": stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}}
    assert parse_message(orjson.dumps(dtmf)) == Dtmf(digit=digit)
    stop = {
        "event": "stop",
        "streamSid": stream_sid,
        "stop": {"accountSid": account_sid, "callSid": call_sid},
    }
    assert parse_message(orjson.dumps(stop)) == Stop(call_sid=call_sid)
