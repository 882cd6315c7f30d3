"""The fake OpenAI HTTP service, driven by the real openai SDK clients (OpenAI and Azure).

Nothing sleeps to wait: waits are on the fake's events, with timeouts."""

from __future__ import annotations

import asyncio
import io
import logging
import time
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import numpy as np
import openai
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI

from relay.testing.openai_http import FakeOpenAIHTTP
from relay.testing.openai_replies import (
    TTS_BYTES_PER_MS,
    TTS_MAX_MS,
    TTS_MS_PER_CHAR,
    RequestNotSeen,
    Text,
    ToolCalls,
    ToolCallSpec,
    tts_audio,
)

API_VERSION = "2025-03-01-preview"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "web_search",
            "description": "Search the web.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "end_call", "description": "Hang up.", "parameters": {"type": "object"}},
    },
]
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a phone agent."},
    {"role": "user", "content": "What's the weather in Paris?"},
]


def make_wav(ms: int, rate: int = 8000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    pcm = (0.2 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def openai_client(base_url: str, api_key: str = "sk-test") -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=base_url + "/v1", max_retries=0)


def azure_client(base_url: str, **auth: Any) -> AsyncAzureOpenAI:
    if not auth:
        auth = {"api_key": "azure-key"}
    return AsyncAzureOpenAI(azure_endpoint=base_url, api_version=API_VERSION, max_retries=0, **auth)


async def collect_chat(stream: Any) -> tuple[str, dict[int, dict[str, Any]], list[str | None], list[Any]]:
    """Joins a chat stream: text, tool calls by index, finish reasons, and the raw chunks."""
    text, finishes, chunks = "", [], []
    calls: dict[int, dict[str, Any]] = {}
    async for chunk in stream:
        chunks.append(chunk)
        if not chunk.choices:  # Azure's prompt-filter chunk, or the usage chunk
            continue
        choice = chunk.choices[0]
        finishes.append(choice.finish_reason)
        text += choice.delta.content or ""
        for frag in choice.delta.tool_calls or []:
            call = calls.setdefault(frag.index, {"id": None, "name": "", "arguments": ""})
            if frag.id:
                call["id"] = frag.id
            if frag.function and frag.function.name:
                call["name"] += frag.function.name
            if frag.function and frag.function.arguments:
                call["arguments"] += frag.function.arguments
    return text, calls, finishes, chunks


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIHTTP]:
    yield FakeOpenAIHTTP(bearer_tokens=["entra-token"])


# --------------------------------------------------------------------------- transcriptions


async def test_transcription_returns_scripted_text_and_keeps_the_wav() -> None:
    fake = FakeOpenAIHTTP(transcripts=["what's the weather", "thanks"])
    wav = make_wav(1500)
    async with fake.serve() as url, openai_client(url) as client:
        first = await client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("utt.wav", wav, "audio/wav"), language="en"
        )
        second = await client.audio.transcriptions.create(
            model="whisper-1", file=("utt.wav", wav, "audio/wav")
        )
        third = await client.audio.transcriptions.create(
            model="whisper-1", file=("utt.wav", wav, "audio/wav")
        )
    assert (first.text, second.text, third.text) == ("what's the weather", "thanks", "hello")
    req = fake.transcription_requests[0]
    assert req.path == "/v1/audio/transcriptions" and req.provider == "openai" and req.status == 200
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.form["model"] == "gpt-4o-mini-transcribe" and req.form["language"] == "en"
    assert req.file_name == "utt.wav" and req.file_content_type == "audio/wav" and req.file_bytes == wav
    assert req.wav_duration_ms == 1500 and req.wav_rate == 8000
    assert req.wav_channels == 1 and req.wav_sampwidth == 2
    assert first.usage is not None and first.usage.type == "tokens"
    assert second.usage is not None and second.usage.type == "duration"


async def test_transcription_text_format_streaming_and_bad_files() -> None:
    fake = FakeOpenAIHTTP(transcripts=["plain text", "streamed words here"])
    wav = make_wav(400)
    async with fake.serve() as url, openai_client(url) as client:
        text = await client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("utt.wav", wav, "audio/wav"), response_format="text"
        )
        assert text.strip() == "plain text"
        stream = await client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("utt.wav", wav, "audio/wav"), stream=True
        )
        events = [event async for event in stream]
        assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == "streamed words here"
        assert events[-1].type == "transcript.text.done" and events[-1].text == "streamed words here"
        with pytest.raises(openai.BadRequestError, match="corrupted"):  # raw μ-law named .wav
            await client.audio.transcriptions.create(
                model="whisper-1", file=("utt.wav", b"\xff" * 800, "audio/wav")
            )
        with pytest.raises(openai.BadRequestError, match="Invalid file format"):
            await client.audio.transcriptions.create(model="whisper-1", file=("utt.raw", wav, "audio/basic"))
    assert [r.status for r in fake.transcription_requests] == [200, 200, 400, 400]


async def test_transcription_keeps_a_mulaw_wav_header() -> None:
    # WAVE_FORMAT_MULAW (7), which the `wave` module cannot open: parsed by hand.
    data = b"\xff" * 1600  # 200 ms of 8 kHz μ-law
    fmt = (7).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    fmt += (8000).to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    body = (
        b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(data).to_bytes(4, "little")
    )
    wav = b"RIFF" + (len(body) + len(data)).to_bytes(4, "little") + body + data
    fake = FakeOpenAIHTTP()
    async with fake.serve() as url, openai_client(url) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("utt.wav", wav, "audio/wav")
        )
    assert result.text == "hello"
    req = fake.transcription_requests[0]
    assert req.wav is not None and req.wav.format_tag == 7
    assert (req.wav_duration_ms, req.wav_rate, req.wav_sampwidth) == (200, 8000, 1)


# --------------------------------------------------------------------------- chat


async def test_chat_stream_yields_text_deltas() -> None:
    reply = "Sure. It is sunny in Paris today. Anything else I can help with?"
    fake = FakeOpenAIHTTP(replies=[Text(reply, chunk_chars=5)])
    async with fake.serve() as url, openai_client(url) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, calls, finishes, chunks = await collect_chat(stream)
        again = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        default, *_ = await collect_chat(again)
    assert text == reply and not calls and finishes[-1] == "stop"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) == len(reply) // 5 + 1 and all(len(d) <= 5 for d in deltas)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0  # include_usage
    assert default == "Okay."
    req = fake.chat_requests[0]
    assert req.body is not None and req.body["tools"] == TOOLS and req.messages == MESSAGES and req.stream


async def test_chat_stream_tool_calls_join_by_index() -> None:
    fake = FakeOpenAIHTTP(
        replies=[
            ToolCalls(
                [
                    ToolCallSpec("web_search", {"query": "weather in Paris today"}, id="call_weather"),
                    ToolCallSpec("end_call", "{}"),
                ],
                chunk_chars=6,
            ),
            Text("It is sunny."),
        ]
    )
    async with fake.serve() as url, openai_client(url) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, stream=True
        )
        text, calls, finishes, chunks = await collect_chat(stream)
        assert text == "" and finishes[-1] == "tool_calls"
        assert calls[0] == {
            "id": "call_weather",
            "name": "web_search",
            "arguments": '{"query":"weather in Paris today"}',
        }
        assert calls[1]["name"] == "end_call" and calls[1]["arguments"] == "{}"
        assert calls[1]["id"].startswith("call_")
        # Fragment shapes: only a call's first fragment has id/type/name; later ones only arguments.
        frags = [f for c in chunks for f in c.choices[0].delta.tool_calls or []]
        heads = [f for f in frags if f.id]
        assert [(f.index, f.type, f.function.name, f.function.arguments) for f in heads] == [
            (0, "function", "web_search", ""),
            (1, "function", "end_call", ""),
        ]
        rest = [f for f in frags if not f.id]
        assert len(rest) > 2 and all(f.type is None and f.function.name is None for f in rest)

        # The follow-up with the tool results is accepted; a dangling tool_call_id is not.
        assistant: Any = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in calls.values()
            ],
        }
        results: list[Any] = [
            {"role": "tool", "tool_call_id": c["id"], "content": "sunny"} for c in calls.values()
        ]
        follow = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[*MESSAGES, assistant, *results], tools=TOOLS, stream=True
        )
        assert (await collect_chat(follow))[0] == "It is sunny."
        with pytest.raises(openai.BadRequestError, match="did not have response messages"):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[*MESSAGES, assistant, results[0]], stream=True
            )
        with pytest.raises(openai.BadRequestError, match="tools\\[0\\].function"):  # realtime-style flat tool
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                tools=[{"type": "function", "name": "web_search", "parameters": {}}],  # type: ignore[list-item]
            )


async def test_chat_without_stream_returns_a_chat_completion() -> None:
    fake = FakeOpenAIHTTP(
        replies=[Text("Hello there."), ToolCalls([ToolCallSpec("web_search", {"query": "q"}, id="call_1")])]
    )
    async with fake.serve() as url, openai_client(url) as client:
        plain = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        tools = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    assert plain.choices[0].message.content == "Hello there." and plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None and plain.usage.total_tokens > 0
    call = tools.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert tools.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "web_search", '{"query":"q"}')  # type: ignore[union-attr]


# --------------------------------------------------------------------------- speech


def test_tts_audio_is_deterministic_and_proportional() -> None:
    one, two = tts_audio("Hello there."), tts_audio("Hello there.")
    assert one == two and len(one) == len("Hello there.") * TTS_MS_PER_CHAR * TTS_BYTES_PER_MS
    assert tts_audio("Hello there!") != one and tts_audio("") == b""
    assert len(tts_audio("x" * 5000)) == TTS_MAX_MS * TTS_BYTES_PER_MS
    samples = np.frombuffer(one, dtype="<i2")
    assert 0 < np.abs(samples).max() < 32767  # a real signal, not clipped
    space = len("Hello") * TTS_MS_PER_CHAR * TTS_BYTES_PER_MS // 2
    assert not samples[space : space + TTS_MS_PER_CHAR * TTS_BYTES_PER_MS // 2].any()  # whitespace: silence


async def test_speech_streams_tts_audio_in_chunks() -> None:
    fake = FakeOpenAIHTTP()
    async with fake.serve() as url, openai_client(url) as client:
        async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input="Hello there.", response_format="pcm"
        ) as response:
            assert response.headers["content-type"] == "audio/pcm"
            chunks = [chunk async for chunk in response.iter_bytes()]
        with pytest.raises(openai.BadRequestError, match="voice"):
            await client.audio.speech.create(model="gpt-4o-mini-tts", voice="nobody", input="Hi.")
    assert b"".join(chunks) == tts_audio("Hello there.")
    req = fake.speech_requests[0]
    assert req.input == "Hello there." and req.body is not None and req.body["voice"] == "alloy"
    assert req.chunks_sent == -(-len(tts_audio("Hello there.")) // 4800)


async def test_speech_pace_streams_in_real_time() -> None:
    fake = FakeOpenAIHTTP(tts_pace=1.0, tts_chunk_bytes=1200)  # 25 ms chunks, real time
    text = "Hi."  # 180 ms of audio: 8 chunks, the last sent 175 ms after the first
    async with fake.serve() as url, openai_client(url) as client:
        start = time.monotonic()
        async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=text, response_format="pcm"
        ) as response:
            audio = await response.read()
        elapsed = time.monotonic() - start
    assert audio == tts_audio(text)
    assert 0.17 <= elapsed < 1.5


# --------------------------------------------------------------------------- Azure


async def test_azure_api_key_routes_to_deployments() -> None:
    fake = FakeOpenAIHTTP(transcripts=["bonjour"], replies=[Text("Salut. Comment puis-je aider ?")])
    async with fake.serve() as url, azure_client(url) as client:
        heard = await client.audio.transcriptions.create(
            model="stt", file=("utt.wav", make_wav(300), "audio/wav")
        )
        stream = await client.chat.completions.create(
            model="chat", messages=MESSAGES, tools=TOOLS, stream=True
        )
        text, _, finishes, chunks = await collect_chat(stream)
        async with client.audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input="Salut.", response_format="pcm"
        ) as response:
            audio = b"".join([chunk async for chunk in response.iter_bytes()])
    assert heard.text == "bonjour" and text == "Salut. Comment puis-je aider ?" and finishes[-1] == "stop"
    assert chunks[0].choices == []  # Azure's prompt_filter_results chunk comes first
    assert audio == tts_audio("Salut.")
    paths = [(r.path, r.query.get("api-version"), r.deployment) for r in fake.requests]
    assert paths == [
        ("/openai/deployments/stt/audio/transcriptions", API_VERSION, "stt"),
        ("/openai/deployments/chat/chat/completions", API_VERSION, "chat"),
        ("/openai/deployments/tts/audio/speech", API_VERSION, "tts"),
    ]
    assert all(
        r.headers["api-key"] == "azure-key" and "authorization" not in r.headers for r in fake.requests
    )
    assert fake.transcription_requests[0].wav_duration_ms == 300


async def test_azure_bearer_token_provider(fake: FakeOpenAIHTTP) -> None:
    async with fake.serve() as url:
        async with azure_client(url, azure_ad_token_provider=lambda: "entra-token") as client:
            reply = await client.chat.completions.create(model="chat", messages=MESSAGES)
            assert reply.choices[0].message.content == "Okay."
        async with azure_client(url, azure_ad_token_provider=lambda: "stale-token") as client:
            with pytest.raises(openai.AuthenticationError, match="Access token"):
                await client.chat.completions.create(model="chat", messages=MESSAGES)
    assert [r.headers["authorization"] for r in fake.chat_requests] == [
        "Bearer entra-token",
        "Bearer stale-token",
    ]
    assert [r.status for r in fake.chat_requests] == [200, 401]


# --------------------------------------------------------------------------- errors and knobs


async def test_auth_and_not_found_errors(fake: FakeOpenAIHTTP) -> None:
    async with fake.serve() as url:
        async with openai_client(url, api_key="sk-wrong-key") as client:
            with pytest.raises(openai.AuthenticationError) as auth:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert auth.value.code == "invalid_api_key" and "sk-wrong-key" not in auth.value.message
        async with openai_client(url) as client:
            with pytest.raises(openai.NotFoundError) as missing:
                await client.chat.completions.create(model="gpt-5-nope", messages=MESSAGES)
            assert missing.value.code == "model_not_found"
        async with azure_client(url, api_key="wrong") as client:
            with pytest.raises(openai.AuthenticationError, match="invalid subscription key"):
                await client.chat.completions.create(model="chat", messages=MESSAGES)
        async with azure_client(url) as client:
            with pytest.raises(openai.NotFoundError) as deployment:
                await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert deployment.value.code == "DeploymentNotFound"
        async with AsyncAzureOpenAI(
            azure_endpoint=url, api_version="2020-01-01", api_key="azure-key", max_retries=0
        ) as client:
            with pytest.raises(openai.NotFoundError, match="Resource not found"):
                await client.chat.completions.create(model="chat", messages=MESSAGES)
        async with httpx.AsyncClient() as http:  # a wrong base URL gets OpenAI's JSON 404
            wrong = await http.post(url + "/chat/completions", json={})
        assert wrong.status_code == 404 and "Invalid URL" in wrong.json()["error"]["message"]
    assert [r.status for r in fake.chat_requests] == [401, 404, 401, 404, 404]
    assert fake.replies == []  # nothing consumed


async def test_fail_status_knob() -> None:
    fake = FakeOpenAIHTTP(fail_status={"chat": 429, "speech": [500]}, replies=[Text("after the 429")])
    async with fake.serve() as url, openai_client(url) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        assert limited.value.code == "rate_limit_exceeded"
        with pytest.raises(openai.InternalServerError):
            await client.audio.speech.create(
                model="gpt-4o-mini-tts", voice="alloy", input="Hi.", response_format="pcm"
            )
        speech = await client.audio.speech.create(  # the list knob was consumed
            model="gpt-4o-mini-tts", voice="alloy", input="Hi.", response_format="pcm"
        )
        assert speech.content == tts_audio("Hi.")
        del fake.fail_status["chat"]
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices[0].message.content == "after the 429"
    async with fake.serve() as url, azure_client(url) as client:
        fake.fail_status["chat"] = 429
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="chat", messages=MESSAGES)


async def test_dropped_streams_raise_on_the_client(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeOpenAIHTTP(
        replies=[Text("This reply is long enough to need many chunks.", chunk_chars=4)],
        drop_stream_after={"chat": 3, "speech": 2},
    )
    async with fake.serve() as url, openai_client(url) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        received: list[str] = []
        with pytest.raises(openai.APIConnectionError) as cut:  # the connection closes mid-body: no [DONE]
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert isinstance(cut.value.__cause__, httpx2.RemoteProtocolError)
        assert (
            "".join(received) == "This reply is long enough to need many chunks."[:8]
        )  # role chunk + 2 deltas

        audio = b""
        with pytest.raises(httpx2.RemoteProtocolError):  # raw bytes: httpx2's error, unwrapped
            async with client.audio.speech.with_streaming_response.create(
                model="gpt-4o-mini-tts", voice="alloy", input="Hello there.", response_format="pcm"
            ) as response:
                async for piece in response.iter_bytes():
                    audio += piece
        assert audio == tts_audio("Hello there.")[: 2 * 4800]
    assert [r.dropped for r in fake.requests] == [True, True]
    assert [r.chunks_sent for r in fake.requests] == [3, 2]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # uvicorn's noise is filtered


async def test_latency_and_event_driven_waits() -> None:
    fake = FakeOpenAIHTTP(latency={"chat": 0.2})
    async with fake.serve() as url, openai_client(url) as client:
        start = time.monotonic()
        call = asyncio.create_task(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
        recorded = await fake.wait_for("chat")
        assert recorded.status is None and not call.done()  # recorded on arrival, answered later
        assert recorded.time >= start
        await call
        assert time.monotonic() - start >= 0.2 and recorded.status == 200
        with pytest.raises(RequestNotSeen, match="speech request #1"):
            await fake.wait_for("speech", timeout=0.05)
        second = asyncio.create_task(fake.wait_for("chat", n=2))
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert (await second) is fake.chat_requests[1]


def test_knobs_reject_unknown_endpoint_kinds() -> None:
    with pytest.raises(ValueError, match="fail_status: unknown endpoint kinds \\['transcription'\\]"):
        FakeOpenAIHTTP(fail_status={"transcription": 500})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="tts_chunk_bytes"):
        FakeOpenAIHTTP(tts_chunk_bytes=4801)
