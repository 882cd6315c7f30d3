"""Tests of the fake Twilio call (relay/testing/twilio.py, twilio_twiml.py, twilio_playback.py) and the
test audio helpers.

The fake is exercised against a tiny inline WebSocket server that plays the relay's role, and its
webhook against an inline Starlette app, so these tests depend on nothing else in the project.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from relay.testing import audio
from relay.testing.audio import (
    correlation,
    float_to_ulaw,
    read_wav_ulaw,
    silence_ulaw,
    speech_ulaw,
    tone_ulaw,
    write_wav_ulaw,
)
from relay.testing.server import serve_app
from relay.testing.twilio import CallEndedError, FakeTwilioCall
from relay.testing.twilio_twiml import Twiml

TOKEN = "test-auth-token-12345"
PUBLIC = "https://voice.example.com"
WSS_URL = "wss://voice.example.com/media-stream"


# --------------------------------------------------------------------------- inline "relay"


@dataclass
class InlineRelay:
    """Plays the relay's role: records upgrade requests and messages, lets the test send."""

    reject: bool = False
    close_after_start: tuple[int, str] | None = None
    base_url: str = ""
    requests: list[WsRequest] = field(default_factory=list)
    messages: list[tuple[float, Any]] = field(default_factory=list)
    conn: ServerConnection | None = None
    close_rcvd: Close | None = None
    inbox: asyncio.Queue[tuple[float, Any]] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def process_request(self, connection: ServerConnection, request: WsRequest) -> WsResponse | None:
        self.requests.append(request)
        if self.reject:
            return connection.respond(HTTPStatus.FORBIDDEN, "invalid signature\n")
        return None

    async def handler(self, conn: ServerConnection) -> None:
        self.conn = conn
        try:
            async for raw in conn:
                item = (time.monotonic(), json.loads(raw) if isinstance(raw, str) else raw)
                self.messages.append(item)
                self.inbox.put_nowait(item)
                if self.close_after_start and isinstance(item[1], dict) and item[1].get("event") == "start":
                    await conn.close(*self.close_after_start)
        except ConnectionClosed:
            pass
        finally:
            self.close_rcvd = conn.protocol.close_rcvd
            self.closed.set()

    async def next(self, event: str, within: float = 3.0) -> tuple[float, dict[str, Any]]:
        """The next message with this event (earlier ones of other events are skipped)."""
        async with asyncio.timeout(within):
            while True:
                at, msg = await self.inbox.get()
                if isinstance(msg, dict) and msg.get("event") == event:
                    return at, msg

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        assert self.conn is not None
        await self.conn.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def send_media(self, stream_sid: str, ulaw: bytes) -> None:
        await self.send(
            {"event": "media", "streamSid": stream_sid, "media": {"payload": base64.b64encode(ulaw).decode()}}
        )

    async def send_mark(self, stream_sid: str, name: str) -> None:
        await self.send({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


async def _serve(relay: InlineRelay) -> AsyncIterator[InlineRelay]:
    async with serve(relay.handler, "127.0.0.1", 0, process_request=relay.process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        relay.base_url = f"http://127.0.0.1:{port}"
        yield relay


@pytest.fixture
async def relay() -> AsyncIterator[InlineRelay]:
    async for r in _serve(InlineRelay()):
        yield r


@pytest.fixture
async def rejecting_relay() -> AsyncIterator[InlineRelay]:
    async for r in _serve(InlineRelay(reject=True)):
        yield r


@pytest.fixture
async def closing_relay() -> AsyncIterator[InlineRelay]:
    async for r in _serve(InlineRelay(close_after_start=(1008, "invalid signature"))):
        yield r


def _fake(relay: InlineRelay) -> FakeTwilioCall:
    return FakeTwilioCall(base_url=relay.base_url, auth_token=TOKEN, public_url=PUBLIC)


def _fake_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("fake-twilio") and not t.done()]


# --------------------------------------------------------------------------- connect / start


async def test_upgrade_is_signed_and_connected_start_have_twilio_shapes(relay: InlineRelay) -> None:
    twiml = Twiml.parse(
        200,
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="/media-stream">'
        '<Parameter name="tenant" value="acme" /></Stream></Connect></Response>',
        PUBLIC + "/incoming-call",
    )
    assert twiml.resolved_stream_url == WSS_URL
    async with _fake(relay) as call:
        assert await call.connect(twiml)
        _, connected = await relay.next("connected")
        _, start = await relay.next("start")

        request = relay.requests[0]
        assert request.path == "/media-stream"
        signature = request.headers["X-Twilio-Signature"]
        assert RequestValidator(TOKEN).validate(WSS_URL, {}, signature)
        assert not RequestValidator("another-token").validate(WSS_URL, {}, signature)

        assert (
            relay.messages[0][1]
            == connected
            == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        )
        assert re.fullmatch(r"MZ[0-9a-f]{32}", call.stream_sid)
        assert re.fullmatch(r"CA[0-9a-f]{32}", call.call_sid)
        assert re.fullmatch(r"AC[0-9a-f]{32}", call.account_sid)
        assert start == {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": call.account_sid,
                "streamSid": call.stream_sid,
                "callSid": call.call_sid,
                "tracks": ["inbound"],
                "customParameters": {"tenant": "acme"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": call.stream_sid,
        }

        await call.send_dtmf("5")
        _, dtmf = await relay.next("dtmf")
        assert dtmf == {
            "event": "dtmf",
            "streamSid": call.stream_sid,
            "sequenceNumber": "2",
            "dtmf": {"track": "inbound_track", "digit": "5"},
        }
        await call.stop()
        _, stop = await relay.next("stop")
        assert stop == {
            "event": "stop",
            "sequenceNumber": "3",
            "stop": {"accountSid": call.account_sid, "callSid": call.call_sid},
            "streamSid": call.stream_sid,
        }
        await call.wait_closed(2.0)
        assert call.close_code == 1000
        assert call.closed_by_relay is False
        assert call.protocol_errors == []


async def test_unsigned_and_query_string_urls(relay: InlineRelay) -> None:
    async with FakeTwilioCall(base_url=relay.base_url) as call:  # no auth token: no signature
        assert await call.connect(stream_url=WSS_URL + "?tenant=acme")
        await relay.next("start")
        assert "X-Twilio-Signature" not in relay.requests[0].headers
        assert call.stream_url == WSS_URL  # Twilio drops query strings...
        assert any("query string" in e for e in call.protocol_errors)  # ...and the fake says so


async def test_rejected_upgrade_is_recorded_not_raised(rejecting_relay: InlineRelay) -> None:
    async with FakeTwilioCall(base_url=rejecting_relay.base_url, auth_token=TOKEN) as call:
        assert await call.connect(signature="forged") is False
        assert rejecting_relay.requests[0].headers["X-Twilio-Signature"] == "forged"
        assert call.upgrade_status == 403
        assert "invalid signature" in call.upgrade_body
        await call.wait_closed(1.0)
        assert await call.send_audio(silence_ulaw(40)) == 0
        with pytest.raises(TimeoutError, match="upgrade rejected with HTTP 403"):
            await call.wait_for_media(timeout=1.0)  # CallEndedError, at once


async def test_close_by_relay_is_recorded(closing_relay: InlineRelay) -> None:
    async with _fake(closing_relay) as call:
        assert await call.connect()
        await call.wait_closed(2.0)
        assert (call.close_code, call.close_reason, call.closed_by_relay) == (1008, "invalid signature", True)
        assert await call.send_audio(tone_ulaw(440, 100), realtime=False) == 0  # quietly ignored
        with pytest.raises(CallEndedError, match="stream closed"):
            await call.wait_for_clear(timeout=1.0)


@pytest.mark.parametrize("abrupt", [False, True])
async def test_hangup_closes_without_stop(relay: InlineRelay, abrupt: bool) -> None:
    async with _fake(relay) as call:
        await call.connect()
        await relay.next("start")
        await call.hangup(abrupt=abrupt)
        await asyncio.wait_for(relay.closed.wait(), 2.0)
        assert not any(isinstance(m, dict) and m.get("event") == "stop" for _, m in relay.messages)
        if abrupt:
            assert relay.close_rcvd is None and call.close_code == 1006
        else:
            assert relay.close_rcvd is not None and relay.close_rcvd.code == 1000
            assert call.close_code == 1000


# --------------------------------------------------------------------------- inbound media


async def test_media_is_framed_and_paced_in_real_time(relay: InlineRelay) -> None:
    async with _fake(relay) as call:
        await call.connect()
        await relay.next("start")
        sound = tone_ulaw(440, 210)  # 1680 bytes: 10.5 frames -> 11, the last padded with silence
        began = time.monotonic()
        assert await call.send_audio(sound) == 11
        elapsed = time.monotonic() - began
        media = [await relay.next("media") for _ in range(11)]

        bodies = [m for _, m in media]
        assert [b["media"]["chunk"] for b in bodies] == [str(i) for i in range(1, 12)]
        assert [b["sequenceNumber"] for b in bodies] == [str(i) for i in range(2, 13)]
        assert all(b["media"]["track"] == "inbound" and b["streamSid"] == call.stream_sid for b in bodies)
        payloads = [base64.b64decode(b["media"]["payload"]) for b in bodies]
        assert all(len(p) == 160 for p in payloads)
        assert b"".join(payloads) == sound + silence_ulaw(10)
        stamps = [int(b["media"]["timestamp"]) for b in bodies]
        assert 0 <= stamps[0] < 50
        assert all(20 <= b - a <= 40 for a, b in zip(stamps, stamps[1:], strict=False))
        # 10 intervals of 20 ms: loosely, no burst and no large drift.
        spread = media[-1][0] - media[0][0]
        assert 0.15 < spread < 0.6 and 0.15 < elapsed < 0.6

        # Not real time: a burst, timestamps still advance by 20 ms per frame.
        began = time.monotonic()
        await call.send_silence(1000, realtime=False)
        assert time.monotonic() - began < 0.15
        burst = [int((await relay.next("media"))[1]["media"]["timestamp"]) for _ in range(50)]
        assert burst[0] >= stamps[-1] + 20
        assert all(b - a == 20 for a, b in zip(burst, burst[1:], strict=False))


# --------------------------------------------------------------------------- playback, marks, clear


async def test_mark_is_echoed_after_the_audio_before_it_has_played(relay: InlineRelay) -> None:
    async with _fake(relay) as call:
        await call.connect()
        await relay.next("start")
        sound = tone_ulaw(600, 400)  # 3200 bytes
        sent_at = time.monotonic()
        await relay.send_media(call.stream_sid, sound)
        await relay.send_mark(call.stream_sid, "m1")
        echoed_at, echo = await relay.next("mark")
        assert echo == {
            "event": "mark",
            "sequenceNumber": echo["sequenceNumber"],
            "streamSid": call.stream_sid,
            "mark": {"name": "m1"},
        }
        assert echo["sequenceNumber"] == "2"  # after start
        assert 0.38 < echoed_at - sent_at < 1.0

        await call.wait_playback_idle(1.0)
        assert call.played_audio == call.received_audio == sound
        assert call.played_ms == pytest.approx(400)
        assert call.first_media_at is not None and 0 <= call.first_media_at < 0.5
        [chunk] = call.outbound_chunks
        assert chunk.played_bytes == chunk.size == 3200 and not chunk.cleared
        assert chunk.started_at is not None and chunk.stopped_at is not None
        assert chunk.started_at == pytest.approx(chunk.arrived_at)
        assert chunk.stopped_at - chunk.started_at == pytest.approx(0.4)
        [mark] = call.mark_echoes
        assert mark.name == "m1" and not mark.cleared
        assert mark.echoed_at - mark.received_at == pytest.approx(0.4, abs=0.1)

        # Nothing queued: echoed at once (UNVERIFIED Twilio behaviour, assumed here).
        t = time.monotonic()
        await relay.send_mark(call.stream_sid, "idle")
        at, _ = await relay.next("mark")
        assert at - t < 0.2

        # A gap in delivery is a gap in playback: the next chunk starts when it arrives.
        await relay.send_media(call.stream_sid, tone_ulaw(600, 60))
        await relay.send_mark(call.stream_sid, "m2")
        await call.wait_for_mark_echo("m2", 1.0)
        second = call.outbound_chunks[1]
        assert second.started_at == pytest.approx(second.arrived_at)
        assert second.started_at is not None and second.started_at > chunk.stopped_at
        assert call.played_ms == pytest.approx(460)
        assert call.marks_received == ["m1", "idle", "m2"]


async def test_clear_drops_queued_audio_and_echoes_pending_marks_at_once(relay: InlineRelay) -> None:
    async with _fake(relay) as call:
        await call.connect()
        await relay.next("start")
        sound = speech_ulaw("The quick brown fox jumps over the lazy dog, twice over.")[:16000]
        assert len(sound) == 16000
        for i in range(0, 2400, 160):
            await relay.send_media(call.stream_sid, sound[i : i + 160])
        await relay.send_mark(call.stream_sid, "mid")
        for i in range(2400, 16000, 160):
            await relay.send_media(call.stream_sid, sound[i : i + 160])
        await relay.send_mark(call.stream_sid, "end")
        await relay.next("mark")  # "mid": 300 ms have played

        cleared_at = time.monotonic()
        await relay.send({"event": "clear", "streamSid": call.stream_sid})
        at, echo = await relay.next("mark")
        assert echo["mark"]["name"] == "end"
        assert at - cleared_at < 0.15  # at once, not after the 1.7 s of audio that was queued

        clear = await call.wait_for_clear(1.0)
        assert 2400 <= clear.played_bytes < 2400 + 1200
        assert clear.dropped_bytes == 16000 - clear.played_bytes
        assert [(m.name, m.cleared) for m in call.mark_echoes] == [("mid", False), ("end", True)]
        await call.wait_playback_idle(0.1)
        assert call.received_audio == sound
        assert call.played_audio == sound[: clear.played_bytes]
        chunks = call.outbound_chunks
        assert sum(c.played_bytes for c in chunks) == clear.played_bytes
        assert sum(c.dropped_bytes for c in chunks) == clear.dropped_bytes
        untouched = [c for c in chunks if c.played_bytes == 0]
        assert untouched and all(
            c.cleared and c.started_at is None and c.stopped_at is None for c in untouched
        )

        # Audio after the clear plays from when it arrives.
        await relay.send_media(call.stream_sid, sound[:160])
        await relay.send_mark(call.stream_sid, "after")
        echo_after = await call.wait_for_mark_echo("after", 1.0)
        assert not echo_after.cleared
        assert echo_after.echoed_at - echo_after.received_at == pytest.approx(0.02, abs=0.05)
        assert call.played_audio == sound[: clear.played_bytes] + sound[:160]


async def test_relay_protocol_violations_are_recorded(relay: InlineRelay) -> None:
    async with _fake(relay) as call:
        await call.connect()
        await relay.next("start")
        await relay.send(b"\x00\x01binary")
        await relay.send("not json")
        await relay.send({"event": "hello", "streamSid": call.stream_sid})
        await relay.send({"event": "media", "streamSid": "MZwrong", "media": {"payload": "AAAA"}})
        await relay.send({"event": "media", "streamSid": call.stream_sid, "media": {"payload": "!!"}})
        await relay.send({"event": "mark", "streamSid": call.stream_sid, "mark": {}})
        await relay.send_mark(call.stream_sid, "sync")
        await call.wait_for_mark_echo("sync", 1.0)
        errors = call.protocol_errors
        assert len(errors) == 6, errors
        assert "binary" in errors[0] and "JSON" in errors[1] and "hello" in errors[2]
        assert "streamSid" in errors[3] and "base64" in errors[4] and "mark" in errors[5]
        assert [r.event for r in call.messages][:3] == ["<binary>", "<invalid>", "hello"]
        assert call.received_audio == b""


async def test_exit_cancels_timers_and_tasks(relay: InlineRelay) -> None:
    async with _fake(relay) as call:
        await call.connect()
        await relay.next("start")
        await relay.send_media(call.stream_sid, silence_ulaw(2000))
        await relay.send_mark(call.stream_sid, "never")
        await call.wait_for_media(16000, timeout=1.0)
        assert _fake_tasks()
    assert _fake_tasks() == []
    assert call.mark_echoes == []  # the call ended before the mark's audio played
    await asyncio.wait_for(relay.closed.wait(), 2.0)
    assert [m.get("event") for _, m in relay.messages if isinstance(m, dict)][-1] == "stop"
    played = call.played_ms
    assert played < 2000 and call.played_ms == played  # the clock stopped with the call


async def test_wait_timeout_says_what_was_awaited(relay: InlineRelay) -> None:
    async with _fake(relay) as call:
        await call.connect()
        await relay.next("start")
        with pytest.raises(TimeoutError, match=r"waiting for 1 bytes of outbound media; seen: 0 media bytes"):
            await call.wait_for_media(timeout=0.05)


# --------------------------------------------------------------------------- webhook


async def test_fetch_twiml_signs_the_webhook_like_twilio() -> None:
    seen: list[tuple[dict[str, str], str]] = []

    async def incoming(request: Request) -> Response:
        # Parsed by hand: starlette's request.form() needs python-multipart, not a dependency.
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        signature = request.headers.get("X-Twilio-Signature", "")
        seen.append((form, signature))
        if not RequestValidator(TOKEN).validate(PUBLIC + "/incoming-call", form, signature):
            return Response("forbidden", status_code=403)
        response = VoiceResponse()
        connect = Connect()
        stream = connect.stream(url=WSS_URL)
        stream.parameter(name="tenant", value="acme")
        response.append(connect)
        return Response(str(response), media_type="application/xml")

    async def closed(request: Request) -> Response:
        response = VoiceResponse()
        response.say("We are closed.")
        response.hangup()
        return Response(str(response), media_type="application/xml")

    app = Starlette(
        routes=[
            Route("/incoming-call", incoming, methods=["POST"]),
            Route("/closed", closed, methods=["POST"]),
        ]
    )
    async with serve_app(app) as base_url:
        call = FakeTwilioCall(base_url=base_url, auth_token=TOKEN, public_url=PUBLIC, from_="+15551230000")
        twiml = await call.fetch_twiml()
        assert twiml.status_code == 200
        assert twiml.stream_url == WSS_URL and twiml.resolved_stream_url == WSS_URL
        assert twiml.parameters == {"tenant": "acme"}
        assert twiml.verbs == ["Connect"] and not twiml.hangup and twiml.say is None
        form, _ = seen[-1]
        assert form == {
            "CallSid": call.call_sid,
            "AccountSid": call.account_sid,
            "From": "+15551230000",
            "To": call.to,
            "CallStatus": "ringing",
            "Direction": "inbound",
        }

        wrong = FakeTwilioCall(base_url=base_url, auth_token="wrong-token", public_url=PUBLIC)
        rejected = await wrong.fetch_twiml()
        assert rejected.status_code == 403 and rejected.stream_url is None and rejected.parse_error

        unsigned = await FakeTwilioCall(base_url=base_url).fetch_twiml()
        assert unsigned.status_code == 403 and seen[-1][1] == ""

        goodbye = await call.fetch_twiml("/closed")
        assert goodbye.say == "We are closed." and goodbye.hangup and goodbye.stream_url is None


# --------------------------------------------------------------------------- audio helpers


def test_speech_is_audible_plausible_and_cached() -> None:
    text = "Hello, this is a test call. Can you hear me clearly?"
    speech = speech_ulaw(text)
    seconds = len(speech) / 8000
    assert 1.5 < seconds < 6.0
    rms = float(np.sqrt(np.mean(audio.ulaw_to_float(speech) ** 2)))
    assert rms > 0.02
    assert speech_ulaw(text) is speech  # cached
    assert correlation(speech, speech) == pytest.approx(1.0)
    assert correlation(speech, silence_ulaw(250) + speech) == pytest.approx(1.0, abs=1e-3)
    noise = float_to_ulaw(np.random.default_rng(7).normal(0.0, 0.2, len(speech)))
    assert correlation(speech, noise) < 0.2
    other = speech_ulaw("Completely different words about the weather tomorrow.")
    assert correlation(speech, other) < 0.5
    assert correlation(speech, b"") == 0.0 and correlation(silence_ulaw(100), speech) == 0.0


def test_missing_espeak_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        speech_ulaw("this text is not cached yet 4f1c")


def test_wav_writer_puts_one_track_per_channel_and_pads_the_shorter(tmp_path: Path) -> None:
    left, right = tone_ulaw(440, 300, amplitude=0.5), tone_ulaw(1000, 100, amplitude=0.5)
    path = tmp_path / "two.wav"
    write_wav_ulaw(path, left, right)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 8000, 2400)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(frames[:, 0] / 32768.0, audio.ulaw_to_float(left))
    assert np.array_equal(frames[:800, 1] / 32768.0, audio.ulaw_to_float(right))
    assert not frames[800:, 1].any()  # the shorter track padded with silence


def test_tone_silence_and_wav_round_trip(tmp_path: Path) -> None:
    assert silence_ulaw(20) == b"\xff" * 160
    tone = tone_ulaw(1000, 500, amplitude=0.5)
    assert len(tone) == 4000
    assert float(np.max(np.abs(audio.ulaw_to_float(tone)))) == pytest.approx(0.5, abs=0.02)

    path = tmp_path / "tone.wav"
    write_wav_ulaw(path, tone)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 8000, 4000)
    assert correlation(read_wav_ulaw(path), tone) > 0.999

    # 16 kHz stereo PCM16: mixed down and resampled, the tone survives.
    t = np.arange(16000) / 16000
    left = 0.5 * np.sin(2 * np.pi * 1000 * t)
    stereo = np.stack([left, left], axis=1)
    stereo_path = tmp_path / "stereo16k.wav"
    with wave.open(str(stereo_path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((stereo * 32767).astype("<i2").tobytes())
    resampled = read_wav_ulaw(stereo_path)
    assert abs(len(resampled) - 8000) <= 1
    assert correlation(resampled[400:-400], tone_ulaw(1000, 900)) > 0.99  # same length: same energy

    # A 22050 Hz tone above 4 kHz must be filtered out, not aliased into the band.
    t = np.arange(22050) / 22050
    high = audio.resample(0.5 * np.sin(2 * np.pi * 6000 * t), 22050, 8000)
    assert float(np.sqrt(np.mean(high[200:-200] ** 2))) < 0.01

    # μ-law WAV (format tag 7) at 8 kHz is returned as is.
    mulaw_path = tmp_path / "mulaw.wav"
    fmt = (7).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    fmt += (8000).to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    body = (
        b"WAVE"
        + b"fmt "
        + len(fmt).to_bytes(4, "little")
        + fmt
        + b"data"
        + len(tone).to_bytes(4, "little")
        + tone
    )
    mulaw_path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    assert read_wav_ulaw(mulaw_path) == tone
