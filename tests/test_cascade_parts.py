"""The cascade's building blocks: turn detection, sentence chunking, WAV, PCM → Twilio frames, and
the STT / chat / TTS calls against a minimal OpenAI-shaped HTTP server over a real socket."""

from __future__ import annotations

import io
import math
import random
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cascade.llm import (
    ChatToolCall,
    TextDelta,
    ToolCallsDone,
    assistant_tool_calls_message,
    stream_chat,
    tool_result_message,
)
from cascade.sentences import SentenceChunker
from cascade.stt import transcribe, wav_bytes
from cascade.tts import MAX_INPUT_CHARS, PcmToTwilio, synthesize
from cascade.vad import TAIL_MS, SpeechStarted, TurnDetector, TurnEvent, Utterance
from relay.codecs import StreamResampler, pcm16_to_ulaw, ulaw_to_pcm16
from relay.testing.audio import correlation, float_to_ulaw, silence_ulaw, speech_ulaw, ulaw_to_float
from relay.testing.server import serve_app

# --------------------------------------------------------------------------- turn detection

SENTENCE_A = "Hello, I would like to check the status of my order."
SENTENCE_B = "Thank you very much."


def _speech_bounds(ulaw: bytes) -> tuple[float, float]:
    """First and last sample above -50 dBFS of a clean clip, in ms."""
    loud = np.flatnonzero(np.abs(ulaw_to_float(ulaw)) > 10 ** (-50 / 20))
    return loud[0] / 8, (loud[-1] + 1) / 8


@dataclass
class Timeline:
    audio: bytes = b""
    truth: list[tuple[float, float]] = field(default_factory=list)

    def silence(self, ms: float) -> Timeline:
        self.audio += silence_ulaw(ms)
        return self

    def speech(self, clip: bytes) -> Timeline:
        start, end = _speech_bounds(clip)
        offset = len(self.audio) / 8
        self.truth.append((offset + start, offset + end))
        self.audio += clip
        return self

    def raw(self, data: bytes) -> Timeline:
        self.audio += data
        return self


def _feed(
    det: TurnDetector, audio: bytes, sizes: Callable[[], int] = lambda: 160
) -> list[tuple[TurnEvent, int]]:
    """Feeds ``audio`` in chunks, ``now_ms`` = time of each chunk's last sample; (event, now) pairs."""
    out: list[tuple[TurnEvent, int]] = []
    pos = 0
    while pos < len(audio):
        chunk = audio[pos : pos + sizes()]
        pos += len(chunk)
        now = pos // 8  # whole ms; chunks of 160 bytes land exactly on 20 ms
        out.extend((ev, now) for ev in det.feed(chunk, now))
    return out


def _two_sentences() -> Timeline:
    return (
        Timeline()
        .silence(600)
        .speech(speech_ulaw(SENTENCE_A))
        .silence(1000)
        .speech(speech_ulaw(SENTENCE_B))
        .silence(1000)
    )


def test_turn_detector_finds_two_utterances_with_accurate_boundaries() -> None:
    tl = _two_sentences()
    det = TurnDetector()
    events = _feed(det, tl.audio)

    kinds = [type(ev) for ev, _ in events]
    assert kinds == [SpeechStarted, Utterance, SpeechStarted, Utterance]
    utterances = [(ev, at) for ev, at in events if isinstance(ev, Utterance)]
    starts = [ev for ev, _ in events if isinstance(ev, SpeechStarted)]
    for (utt, emitted_at), started, (t0, t1) in zip(utterances, starts, tl.truth, strict=True):
        assert started.at_ms == utt.start_ms
        assert abs(utt.start_ms - t0) <= 150, (utt, t0)
        assert abs(utt.end_ms - t1) <= 150, (utt, t1)
        # The turn ends silence_ms after speech does (plus at most a frame or two).
        assert det.silence_ms <= emitted_at - t1 <= det.silence_ms + 100
        assert utt.rate == 8000  # the caller's own samples: no resampling
        assert len(utt.pcm16) % 320 == 0
        # Audio: pre-roll + the spoken segment + ~100 ms of trailing silence.
        expected = (t1 - t0) + det.prefix_ms + TAIL_MS
        assert abs(utt.duration_ms - expected) <= 100, (utt.duration_ms, expected)
    assert not det.speaking


def test_turn_detector_utterance_audio_is_the_speech() -> None:
    clip = speech_ulaw(SENTENCE_B)
    tl = Timeline().silence(500).speech(clip).silence(800)
    [utt] = [ev for ev, _ in _feed(TurnDetector(), tl.audio) if isinstance(ev, Utterance)]
    # The utterance is the caller's audio sample for sample (μ-law → PCM16 is exact both ways):
    # the clip sits in it whole, 500 ms of silence minus the 300 ms pre-roll after its start.
    audio = pcm16_to_ulaw(utt.pcm16)
    start = audio.find(clip[:1600])
    assert start >= 0, "the clip's first 200 ms are not in the utterance"
    said = audio[start : start + len(clip)]
    # Everything the clip says is inside the utterance (correlation drops with missing energy).
    assert correlation(said, clip) > 0.99


def test_turn_detector_tolerates_any_chunk_size() -> None:
    tl = _two_sentences()
    reference = [ev for ev, _ in _feed(TurnDetector(), tl.audio)]
    rng = random.Random(7)
    # Whole milliseconds (multiples of 8 bytes): identical events.
    chunked = [ev for ev, _ in _feed(TurnDetector(), tl.audio, lambda: 8 * rng.randint(1, 60))]
    assert chunked == reference
    # Any size: the same audio; times differ only by the integer now_ms rounding (< 1 ms).
    odd = [ev for ev, _ in _feed(TurnDetector(), tl.audio, lambda: rng.randint(1, 500))]
    assert [type(ev) for ev in odd] == [type(ev) for ev in reference]
    for got, want in zip(odd, reference, strict=True):
        if isinstance(got, Utterance):
            assert isinstance(want, Utterance)
            assert got.pcm16 == want.pcm16
            assert abs(got.start_ms - want.start_ms) <= 1 and abs(got.end_ms - want.end_ms) <= 1
        else:
            assert isinstance(want, SpeechStarted)
            assert abs(got.at_ms - want.at_ms) <= 1


def test_turn_detector_ignores_a_click() -> None:
    rng = np.random.default_rng(3)
    n = 60 * 8
    click = float_to_ulaw(0.6 * rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 3)))
    tone_click = float_to_ulaw(0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / 8000))
    tl = Timeline().silence(400).raw(click).silence(700).raw(tone_click).silence(700)
    assert _feed(TurnDetector(), tl.audio) == []
    # ... and a click right before speech does not disturb the turn.
    tl = Timeline().silence(400).raw(click).silence(700).speech(speech_ulaw(SENTENCE_B)).silence(700)
    events = [ev for ev, _ in _feed(TurnDetector(), tl.audio)]
    started, utterance = events
    assert isinstance(started, SpeechStarted) and isinstance(utterance, Utterance)
    assert abs(started.at_ms - tl.truth[0][0]) <= 150


def test_turn_detector_cuts_long_utterances_without_losing_audio() -> None:
    clip = speech_ulaw(SENTENCE_A)  # ~3 s with short pauses only
    tl = Timeline().silence(500).speech(clip).silence(800)
    det = TurnDetector(max_utterance_ms=1000)
    events = [ev for ev, _ in _feed(det, tl.audio)]
    utterances = [ev for ev in events if isinstance(ev, Utterance)]
    assert len(utterances) >= 2
    assert sum(isinstance(ev, SpeechStarted) for ev in events) == len(utterances)
    for a, b in zip(utterances, utterances[1:], strict=False):
        assert b.start_ms >= a.end_ms  # in order, no overlap
    t0, t1 = tl.truth[0]
    total = sum(u.duration_ms for u in utterances)
    # Contiguous: together they hold the speech once, plus one pre-roll and one tail.
    assert abs(total - ((t1 - t0) + det.prefix_ms + TAIL_MS)) <= 150, total


def test_turn_detector_reset_drops_the_turn_in_progress() -> None:
    clip = speech_ulaw(SENTENCE_A)
    det = TurnDetector()
    events = _feed(det, silence_ulaw(300) + clip[: len(clip) // 2])
    assert [type(ev) for ev, _ in events] == [SpeechStarted]
    assert det.speaking
    det.reset()
    assert not det.speaking
    assert _feed(det, silence_ulaw(1500)) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggressiveness": 4},
        {"silence_ms": 0},
        {"min_speech_ms": -1},
        {"prefix_ms": -5},
        {"max_utterance_ms": 0},
    ],
)
def test_turn_detector_rejects_bad_settings(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        TurnDetector(**kwargs)


# --------------------------------------------------------------------------- sentences


def _chunk(deltas: list[str], **kwargs: int) -> tuple[list[str], str | None]:
    c = SentenceChunker(**kwargs)
    out: list[str] = []
    for d in deltas:
        out += c.push(d)
    return out, c.flush()


def test_first_sentence_is_emitted_as_soon_as_it_completes() -> None:
    c = SentenceChunker()
    assert c.push("Sure") == []
    assert c.push("!") == []  # undecided: '!"' or '!)' could follow
    assert c.push(" I") == ["Sure!"]  # the next word has begun: the answer is still streaming
    assert c.push(" can help with that") == []
    assert c.flush() == "I can help with that"
    assert c.flush() is None


def test_token_stream_splits_into_sentences() -> None:
    text = "Your order shipped on Monday. It should arrive by Friday! Anything else I can do for you?"
    tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert _chunk(tokens) == (
        ["Your order shipped on Monday.", "It should arrive by Friday!"],
        "Anything else I can do for you?",
    )


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (["The total is 3.", "5 dollars. Thanks."], (["The total is 3.5 dollars."], "Thanks.")),
        (["Pi is about 3.14159 and e is 2.718. Nice."], (["Pi is about 3.14159 and e is 2.718."], "Nice.")),
        (["Dr. Smith will see you at noon. Bye."], (["Dr. Smith will see you at noon."], "Bye.")),
        (["Bring an ID, e.g. a passport. Thanks."], (["Bring an ID, e.g. a passport."], "Thanks.")),
        (
            ["Mrs. Jones and Mr. Brown met J. Doe in the U.S. Today."],  # "U.S." counts as an abbreviation
            ([], "Mrs. Jones and Mr. Brown met J. Doe in the U.S. Today."),
        ),
        (['He said "Stop." Then he left.'], (['He said "Stop."'], "Then he left.")),
        (['"Yes!" she said. Ok'], (['"Yes!" she said.'], "Ok")),
        (["Visit example.com for details. Ok"], (["Visit example.com for details."], "Ok")),
        (["Wait... what?! Fine."], (["Wait... what?!"], "Fine.")),
        (["Well… Maybe."], (["Well…"], "Maybe.")),
        (
            ["Here are the options:\n1. Pay now\n2. Pay later\n\nWhich one?"],
            (["Here are the options:", "1. Pay now\n2. Pay later"], "Which one?"),
        ),
    ],
)
def test_sentence_rules(deltas: list[str], expected: tuple[list[str], str | None]) -> None:
    assert _chunk(deltas) == expected
    # The same text one character at a time gives the same sentences.
    assert _chunk(list("".join(deltas))) == expected


def test_soft_boundaries_need_min_chars() -> None:
    # ';' ':' and newlines end a chunk only once it is long enough.
    assert _chunk(["Note: this; that\nmore text here"]) == ([], "Note: this; that\nmore text here")
    assert _chunk(["There are two ways to pay: by card; or in cash at the desk\nok"]) == (
        ["There are two ways to pay:", "by card; or in cash at the desk"],
        "ok",
    )
    assert _chunk(["a: b"], min_chars=0) == (["a:"], "b")


def test_max_chars_forces_a_cut_at_a_comma_or_space() -> None:
    long = "one two three, four five six seven eight nine ten eleven twelve"
    sentences, rest = _chunk([long], min_chars=5, max_chars=30)
    assert sentences[0] == "one two three,"
    assert all(len(s) <= 30 for s in sentences)
    assert " ".join([*sentences, rest or ""]) == long
    sentences, rest = _chunk(["x" * 70], min_chars=5, max_chars=30)
    assert sentences == ["x" * 30, "x" * 30] and rest == "x" * 10


def test_flush_and_reset() -> None:
    c = SentenceChunker()
    assert c.push("   ") == []
    assert c.flush() is None
    c.push("Half a sent")
    c.reset()
    assert c.flush() is None
    with pytest.raises(ValueError):
        SentenceChunker(min_chars=50, max_chars=40)


# --------------------------------------------------------------------------- WAV and PCM → Twilio


def test_wav_bytes_round_trip() -> None:
    pcm = np.arange(-800, 800, dtype="<i2").tobytes()
    blob = wav_bytes(pcm, 16000)
    with wave.open(io.BytesIO(blob), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.getnframes() == 1600
        assert w.readframes(w.getnframes()) == pcm
    assert blob[:4] == b"RIFF" and blob[8:12] == b"WAVE"
    with pytest.raises(ValueError):
        wav_bytes(b"\x00", 8000)


def test_pcm_to_twilio_frames_are_exact_for_any_chunking() -> None:
    rng = np.random.default_rng(11)
    samples = 24000 * 2 + 1234  # ~2 s at 24 kHz, not a multiple of anything
    pcm = (rng.standard_normal(samples) * 3000).clip(-32768, 32767).astype("<i2").tobytes()
    conv = PcmToTwilio()
    frames: list[bytes] = []
    fed = 0
    py_rng = random.Random(5)
    while fed < len(pcm):
        size = py_rng.choice([1, 3, 7, 160, 479, 480, 481, 4800, 4801])
        chunk = pcm[fed : fed + size]
        fed += len(chunk)
        frames += conv.push(chunk)
        assert len(frames) == (fed // 2) // 3 // 160  # everything available is out, nothing more
    tail = conv.flush()
    assert all(len(f) == 160 for f in frames + tail)
    # Bit-identical to converting in one go.
    rs = StreamResampler(24000, 8000)
    ref8k = rs.process(pcm) + rs.flush()
    ref = pcm16_to_ulaw(ref8k)
    assert len(frames) + len(tail) == math.ceil(len(ref) / 160)
    out = b"".join(frames + tail)
    assert out[: len(ref)] == ref
    assert set(out[len(ref) :]) <= {0xFF}
    assert conv.flush() == []  # nothing left, ready for the next sentence


def test_pcm_to_twilio_keeps_a_1khz_tone() -> None:
    t = np.arange(24000) / 24000
    pcm = np.round(0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    conv = PcmToTwilio()
    frames = [f for i in range(0, len(pcm), 999) for f in conv.push(pcm[i : i + 999])] + conv.flush()
    x = np.frombuffer(ulaw_to_pcm16(b"".join(frames)), dtype="<i2").astype(np.float64)[400:7600]
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, 1 / 8000)
    peak = freqs[int(np.argmax(spectrum))]
    assert abs(peak - 1000) < 5
    rms = math.sqrt(float(np.mean(x * x)))
    assert abs(20 * math.log10(rms / (0.5 * 32767 / math.sqrt(2)))) < 0.5  # level kept within 0.5 dB
    n = np.arange(x.size)
    basis = np.stack([np.sin(2 * np.pi * 1000 * n / 8000), np.cos(2 * np.pi * 1000 * n / 8000)], axis=1)
    residual = x - basis @ np.linalg.lstsq(basis, x, rcond=None)[0]
    snr = 10 * math.log10(float(np.mean(x * x)) / float(np.mean(residual * residual)))
    assert snr > 30  # μ-law quantisation is ~38 dB; no aliasing or distortion on top


# --------------------------------------------------------------------------- a minimal OpenAI HTTP server


@dataclass
class MiniOpenAI:
    """Speaks just enough of the OpenAI HTTP API for the cascade calls, recording each request."""

    chat_chunks: list[dict[str, Any]] = field(default_factory=list)
    speech_pcm: bytes = b""
    transcript: str = ""
    status: int | None = None  # answer this error status instead
    requests: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
            ]
        )

    def _error(self) -> Response:
        assert self.status is not None
        body = {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}}
        return JSONResponse(body, status_code=self.status)

    async def _chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(("chat", body))
        if self.status is not None:
            return self._error()

        async def events() -> AsyncIterator[bytes]:
            for chunk in self.chat_chunks:
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _transcriptions(self, request: Request) -> Response:
        form = await request.form()
        upload = form["file"]
        assert not isinstance(upload, str)
        blob = await upload.read()
        with wave.open(io.BytesIO(blob), "rb") as w:
            info = {"frames": w.getnframes(), "rate": w.getframerate(), "channels": w.getnchannels()}
        self.requests.append(
            (
                "transcriptions",
                {"model": form["model"], "filename": upload.filename, "ctype": upload.content_type, **info},
            )
        )
        await form.close()
        if self.status is not None:
            return self._error()
        return JSONResponse({"text": self.transcript})

    async def _speech(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(("speech", body))
        if self.status is not None:
            return self._error()

        async def audio() -> AsyncIterator[bytes]:
            for i in range(0, len(self.speech_pcm), 1001):  # odd-sized network chunks
                yield self.speech_pcm[i : i + 1001]

        return StreamingResponse(audio(), media_type="application/octet-stream")


def _chunk_event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _tool_fragment(
    index: int, *, id: str | None = None, name: str | None = None, args: str = ""
) -> dict[str, Any]:
    frag: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if id is not None:
        frag.update(id=id, type="function")
        frag["function"]["name"] = name
    return {"tool_calls": [frag]}


@pytest.fixture
async def mini() -> AsyncIterator[tuple[MiniOpenAI, openai.AsyncOpenAI]]:
    server = MiniOpenAI()
    async with serve_app(server.app) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        try:
            yield server, client
        finally:
            await client.close()


async def test_stream_chat_yields_text_deltas(mini: tuple[MiniOpenAI, openai.AsyncOpenAI]) -> None:
    server, client = mini
    server.chat_chunks = [
        _chunk_event({"role": "assistant", "content": ""}),
        _chunk_event({"content": "Hello"}),
        _chunk_event({"content": " there."}),
        _chunk_event({}, finish="stop"),
        {
            **_chunk_event({}),
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        },
    ]
    messages = [{"role": "user", "content": "hi"}]
    events = [ev async for ev in stream_chat(client, "gpt-test", messages, None)]
    assert events == [TextDelta("Hello"), TextDelta(" there.")]
    _, body = server.requests[-1]
    assert body["model"] == "gpt-test" and body["stream"] is True and body["messages"] == messages
    assert "tools" not in body
    [ev async for ev in stream_chat(client, "gpt-test", messages, [])]
    assert "tools" not in server.requests[-1][1]


async def test_stream_chat_joins_tool_call_fragments(mini: tuple[MiniOpenAI, openai.AsyncOpenAI]) -> None:
    server, client = mini
    server.chat_chunks = [
        _chunk_event({"role": "assistant", "content": "Let me check."}),
        _chunk_event(_tool_fragment(0, id="call_a", name="web_search", args="")),
        _chunk_event(_tool_fragment(0, args='{"que')),
        _chunk_event(_tool_fragment(1, id="call_b", name="end_call", args="{")),
        _chunk_event(_tool_fragment(0, args='ry": "weather in Paris"}')),
        _chunk_event(_tool_fragment(1, args="}")),
        _chunk_event({}, finish="tool_calls"),
    ]
    tools = [{"type": "function", "function": {"name": "web_search", "description": "d", "parameters": {}}}]
    events = [ev async for ev in stream_chat(client, "gpt-test", [{"role": "user", "content": "q"}], tools)]
    assert events == [
        TextDelta("Let me check."),
        ToolCallsDone(
            [
                ChatToolCall("call_a", "web_search", '{"query": "weather in Paris"}'),
                ChatToolCall("call_b", "end_call", "{}"),
            ]
        ),
    ]
    assert server.requests[-1][1]["tools"] == tools
    done = events[-1]
    assert isinstance(done, ToolCallsDone)
    assert assistant_tool_calls_message(done.calls) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "web_search", "arguments": '{"query": "weather in Paris"}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "end_call", "arguments": "{}"}},
        ],
    }
    assert tool_result_message("call_a", '{"answer": "sunny"}') == {
        "role": "tool",
        "tool_call_id": "call_a",
        "content": '{"answer": "sunny"}',
    }


async def test_stream_chat_stops_early_and_propagates_errors(
    mini: tuple[MiniOpenAI, openai.AsyncOpenAI],
) -> None:
    server, client = mini
    server.chat_chunks = [_chunk_event({"content": f"word{i} "}) for i in range(50)]
    gen = stream_chat(client, "gpt-test", [{"role": "user", "content": "q"}], None)
    first = await anext(gen)
    assert first == TextDelta("word0 ")
    await gen.aclose()  # barge-in: the HTTP stream is closed, nothing leaks
    server.status = 429
    with pytest.raises(openai.RateLimitError):
        [ev async for ev in stream_chat(client, "gpt-test", [{"role": "user", "content": "q"}], None)]


async def test_transcribe_sends_a_wav_and_strips_the_text(
    mini: tuple[MiniOpenAI, openai.AsyncOpenAI],
) -> None:
    server, client = mini
    server.transcript = "  What time do you open?\n"
    pcm = np.zeros(16000, dtype="<i2").tobytes()
    assert await transcribe(client, "gpt-4o-mini-transcribe", pcm, 16000) == "What time do you open?"
    kind, info = server.requests[-1]
    assert kind == "transcriptions"
    assert info == {
        "model": "gpt-4o-mini-transcribe",
        "filename": "utterance.wav",
        "ctype": "audio/wav",
        "frames": 16000,
        "rate": 16000,
        "channels": 1,
    }
    server.status = 401
    with pytest.raises(openai.AuthenticationError):
        await transcribe(client, "gpt-4o-mini-transcribe", pcm, 16000)


async def test_synthesize_streams_pcm_chunks(mini: tuple[MiniOpenAI, openai.AsyncOpenAI]) -> None:
    server, client = mini
    server.speech_pcm = bytes(range(256)) * 100  # 25.6 kB
    chunks = [c async for c in synthesize(client, "gpt-4o-mini-tts", "alloy", "x" * 5000)]
    assert b"".join(chunks) == server.speech_pcm
    assert all(0 < len(c) <= 4800 for c in chunks) and len(chunks) >= 6
    kind, body = server.requests[-1]
    assert kind == "speech"
    assert body["model"] == "gpt-4o-mini-tts" and body["voice"] == "alloy"
    assert body["response_format"] == "pcm"
    assert body["input"] == "x" * MAX_INPUT_CHARS
    count = len(server.requests)
    assert [c async for c in synthesize(client, "gpt-4o-mini-tts", "alloy", "  ")] == []
    assert len(server.requests) == count  # blank text: no request
    server.status = 400
    with pytest.raises(openai.BadRequestError):
        [c async for c in synthesize(client, "gpt-4o-mini-tts", "alloy", "Hello.")]
