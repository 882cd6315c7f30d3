"""The fake Realtime server, driven by the real openai SDK (GA, Azure GA, Azure preview) and by
plain websockets. Nothing sleeps to wait: every wait is on an event, with a timeout."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import numpy as np
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import RealtimeSessionCreateRequestParam
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from relay.testing.realtime import (
    Call,
    Calls,
    Drop,
    Error,
    EventNotSeen,
    Fail,
    FakeConnection,
    FakeRealtimeServer,
    Reply,
    Say,
    Unknown,
    expected_audio,
    parse_server_event,
)
from relay.testing.realtime_audio import _ALAW, _ULAW, PCM16, PCMA, PCMU

MODEL = "gpt-realtime"
TIMEOUT = 5.0

GA_SESSION: RealtimeSessionCreateRequestParam = {
    "type": "realtime",
    "instructions": "You are a helpful phone agent.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "noise_reduction": {"type": "near_field"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 100,
                "silence_duration_ms": 300,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
    },
    "tools": [
        {
            "type": "function",
            "name": "web_search",
            "description": "Search the web.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        }
    ],
    "tool_choice": "auto",
}

PREVIEW_SESSION: dict[str, Any] = {
    "input_audio_format": "g711_ulaw",
    "output_audio_format": "g711_ulaw",
    "voice": "alloy",
    "modalities": ["audio", "text"],
    "input_audio_transcription": {"model": "whisper-1"},
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 100},
}


def tone(ms: int, freq: float = 300.0, amplitude: float = 8000.0) -> bytes:
    """Loud μ-law 'speech'."""
    t = np.arange(ms * 8) / 8000
    return PCMU.encode(amplitude * np.sin(2 * np.pi * freq * t))


def silence(ms: int) -> bytes:
    return b"\xff" * (8 * ms)


def frames(audio: bytes) -> list[str]:
    """Base64 20 ms frames, like Twilio's media payloads."""
    return [base64.b64encode(audio[i : i + 160]).decode() for i in range(0, len(audio), 160)]


def assert_faithful(conn: FakeConnection, unknown: frozenset[str] = frozenset()) -> None:
    """Every event the fake sent parses with the SDK's server event types of its dialect."""
    for _, event in conn.sent:
        if event["type"] in unknown:
            continue
        parse_server_event(conn.dialect, event)


@asynccontextmanager
async def ga_client(server: FakeRealtimeServer, **connect_kw: Any) -> AsyncIterator[AsyncRealtimeConnection]:
    async with (
        AsyncOpenAI(api_key="sk-test", websocket_base_url=server.url + "/v1") as client,
        client.realtime.connect(model=MODEL, **connect_kw) as rt,
    ):
        assert (await rt.recv()).type == "session.created"
        yield rt


async def sdk_until(rt: AsyncRealtimeConnection, event_type: str) -> list[Any]:
    """SDK events up to and including the first of `event_type`."""
    out = []
    while True:
        event = await rt.recv()
        out.append(event)
        if event.type == event_type:
            return out


async def raw_until(ws: ClientConnection | AsyncRealtimeConnection, event_type: str) -> list[dict[str, Any]]:
    """Raw JSON events up to and including the first of `event_type`."""
    out = []
    while True:
        data = await ws.recv_bytes() if isinstance(ws, AsyncRealtimeConnection) else await ws.recv()
        out.append(json.loads(data))
        if out[-1]["type"] == event_type:
            return out


async def ws_send(ws: ClientConnection, event: dict[str, Any] | str) -> None:
    await ws.send(event if isinstance(event, str) else json.dumps(event))


# -- handshake ---------------------------------------------------------------------------------------

BEARER = {"Authorization": "Bearer sk-test"}
AZ_KEY = {"api-key": "azure-key"}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/realtime?model=gpt-realtime", {"Authorization": "Bearer wrong"}, 401),
        ("/v1/realtime?model=gpt-realtime", {}, 401),
        ("/v1/realtime?model=no-such-model", BEARER, 404),
        ("/v1/elsewhere", BEARER, 404),
        ("/openai/v1/realtime?model=gpt-realtime&api-version=2025-04-01-preview", AZ_KEY, 401),
        ("/openai/v1/realtime?model=gpt-realtime", {"api-key": "wrong"}, 401),
        ("/openai/v1/realtime?model=gpt-realtime", {"Authorization": "Bearer not-a-token"}, 401),
        ("/openai/v1/realtime?model=no-such-deployment", AZ_KEY, 404),
        ("/openai/realtime?api-version=1999-01-01&deployment=gpt-realtime", AZ_KEY, 404),
        ("/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime", {}, 401),
        ("/openai/realtime?api-version=2025-04-01-preview&deployment=nope", AZ_KEY, 404),
    ],
)
async def test_handshake_rejections_are_plain_http_with_a_json_body(
    path: str, headers: dict[str, str], status: int
) -> None:
    async with FakeRealtimeServer() as server:
        with pytest.raises(InvalidStatus) as info:
            await connect(server.url + path, additional_headers=headers)
        response = info.value.response
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/json"
        assert "message" in json.loads(response.body)["error"]
        assert server.rejected == [(path, status)]
        assert server.connections == []


async def test_openai_ga_say_streams_deterministic_audio_and_completes() -> None:
    text = "Hello there, thanks for calling."
    async with FakeRealtimeServer(responses=[Say(text, audio_ms=1000)]) as server, ga_client(server) as rt:
        await rt.session.update(session=GA_SESSION)
        updated = await rt.recv()
        assert updated.type == "session.updated"
        await rt.response.create()
        events = await sdk_until(rt, "response.done")
        conn = await server.wait_connection()

    types = [e.type for e in events]
    assert types[:5] == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert types[-7:] == [
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    deltas = [e for e in events if e.type == "response.output_audio.delta"]
    audio = b"".join(base64.b64decode(e.delta) for e in deltas)
    item_id = deltas[0].item_id
    assert len(deltas) == 10
    assert audio == expected_audio(0, 1000) == conn.audio_sent[item_id]
    assert "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta") == text
    done = events[-1].response
    assert done.status == "completed"
    assert done.output[0].type == "message" and done.output[0].content[0].transcript == text
    assert conn.provider == "openai" and conn.dialect == "ga" and conn.protocol_auth == "bearer"
    assert conn.headers["Authorization"] == "Bearer sk-test" and not conn.beta_header
    assert conn.session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert conn.invalid_events == [] and conn.errors == [] and conn.active_response_conflicts == 0
    assert_faithful(conn)


async def test_azure_ga_accepts_api_key_header_and_entra_bearer() -> None:
    async with FakeRealtimeServer(bearer_tokens={"entra-token"}) as server:
        base = server.url + "/openai/v1"
        async with (
            AsyncOpenAI(api_key="unused", websocket_base_url=base) as client,
            client.realtime.connect(model=MODEL, extra_headers={"api-key": "azure-key"}) as rt,
        ):
            assert (await rt.recv()).type == "session.created"

        async def token() -> str:
            return "entra-token"

        async with (
            AsyncOpenAI(api_key=token, websocket_base_url=base) as client,
            client.realtime.connect(model=MODEL) as rt,
        ):
            assert (await rt.recv()).type == "session.created"
        first, second = await server.wait_connection(1), await server.wait_connection(2)
    assert (first.provider, first.dialect, first.protocol_auth) == ("azure", "ga", "api-key")
    assert (second.protocol_auth, second.headers["Authorization"]) == ("bearer", "Bearer entra-token")


async def test_openai_base_url_helper_is_enough_for_the_sdk() -> None:
    async with FakeRealtimeServer() as server:
        async with (
            AsyncOpenAI(api_key="sk-test", base_url=server.openai_base_url) as client,
            client.realtime.connect(model=MODEL) as rt,
        ):
            assert (await rt.recv()).type == "session.created"
        assert (await server.wait_connection()).path == "/v1/realtime"


async def test_azure_preview_accepts_an_entra_token_provider() -> None:
    async with FakeRealtimeServer(bearer_tokens={"entra-token"}) as server:
        client = AsyncAzureOpenAI(
            azure_endpoint=server.azure_endpoint,
            api_version="2024-10-01-preview",
            azure_ad_token_provider=lambda: "entra-token",
            websocket_base_url=server.url + "/openai",
        )
        async with client, client.realtime.connect(model=MODEL) as rt:
            assert json.loads(await rt.recv_bytes())["type"] == "session.created"
        conn = await server.wait_connection()
    assert (conn.dialect, conn.protocol_auth, conn.api_version) == ("preview", "bearer", "2024-10-01-preview")


async def test_beta_header_on_a_ga_path_is_accepted_and_recorded() -> None:
    async with FakeRealtimeServer() as server:
        headers = BEARER | {"OpenAI-Beta": "realtime=v1"}
        async with connect(server.url + "/v1/realtime?model=gpt-realtime", additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        conn = await server.wait_connection()
    assert conn.beta_header and conn.dialect == "ga"


async def test_azure_preview_speaks_the_beta_protocol() -> None:
    async with FakeRealtimeServer(responses=[Say("Bonjour.", audio_ms=300)]) as server:
        client = AsyncAzureOpenAI(
            azure_endpoint=server.azure_endpoint,
            api_version="2025-04-01-preview",
            api_key="azure-key",
            websocket_base_url=server.url + "/openai",
        )
        async with client, client.realtime.connect(model=MODEL) as rt:
            created = json.loads(await rt.recv_bytes())
            assert created["session"]["input_audio_format"] == "pcm16"
            # The SDK types its sends with GA shapes even on this preview URL: send raw dicts.
            await rt.send(cast(Any, {"type": "session.update", "session": {"type": "realtime", "audio": {}}}))
            error = (await raw_until(rt, "error"))[-1]["error"]
            assert error["code"] == "unknown_parameter" and error["param"] == "session.type"
            await rt.send(cast(Any, {"type": "session.update", "session": PREVIEW_SESSION}))
            await raw_until(rt, "session.updated")
            await rt.send({"type": "response.create"})
            events = await raw_until(rt, "response.done")
        conn = await server.wait_connection()

    types = {e["type"] for e in events}
    assert {"response.audio.delta", "response.audio_transcript.delta", "response.audio.done"} <= types
    assert "conversation.item.created" in types
    assert not {"response.output_audio.delta", "conversation.item.added", "conversation.item.done"} & types
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
    assert audio == expected_audio(0, 300)
    assert events[-1]["response"]["output"][0]["content"][0]["type"] == "audio"
    assert (conn.dialect, conn.api_version, conn.protocol_auth) == (
        "preview",
        "2025-04-01-preview",
        "api-key",
    )
    assert conn.query["deployment"] == MODEL
    assert len(conn.invalid_events) == 1
    assert_faithful(conn)


# -- validation --------------------------------------------------------------------------------------


async def test_client_events_are_validated_against_the_sdk_types() -> None:
    def update(**session: Any) -> dict[str, Any]:
        return {"type": "session.update", "session": session}

    ga = {"type": "realtime"}
    bad: list[tuple[Any, str, str | None]] = [
        (update(input_audio_format="g711_ulaw"), "missing_required_parameter", "session.type"),
        (
            update(**ga, input_audio_format="g711_ulaw"),
            "unknown_parameter",
            "session.input_audio_format",
        ),
        (
            update(**ga, audio={"input": {"format": {"type": "ulaw"}}}),
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            update(**ga, tools=[{"type": "function", "function": {"name": "x"}}]),
            "unknown_parameter",
            "session.tools[0].function",
        ),
        (
            update(**ga, output_modalities=["audio", "text"]),
            "invalid_value",
            "session.output_modalities",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "x", "content_index": 0},
            "missing_required_parameter",
            "audio_end_ms",
        ),
        ({"type": "response.audio.delta", "delta": ""}, "invalid_value", "type"),
        ("{not json", "invalid_json", None),
    ]
    async with FakeRealtimeServer() as server:
        url = server.url + "/v1/realtime?model=gpt-realtime"
        async with connect(url, additional_headers=BEARER) as ws:
            await raw_until(ws, "session.created")
            for i, (event, code, param) in enumerate(bad):
                if isinstance(event, dict):
                    event = event | {"event_id": f"evt_{i}"}
                await ws_send(ws, event)
                error = (await raw_until(ws, "error"))[-1]["error"]
                assert (error["type"], error["code"], error["param"]) == (
                    "invalid_request_error",
                    code,
                    param,
                )
                assert error["event_id"] == (f"evt_{i}" if isinstance(event, dict) else None)
            await ws_send(ws, {"type": "session.update", "session": GA_SESSION})
            assert (await raw_until(ws, "session.updated"))[-1]["session"]["audio"]["output"][
                "voice"
            ] == "marin"
        conn = await server.wait_connection()
    assert [e.code for e in conn.invalid_events] == [code for _, code, _ in bad]
    assert conn.session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 300


# -- VAD and barge-in --------------------------------------------------------------------------------


async def test_server_vad_detects_a_turn_transcribes_it_and_answers() -> None:
    server = FakeRealtimeServer(transcripts=["a table for two"], responses=[Say("Sure.", audio_ms=200)])
    async with server, ga_client(server) as rt:
        await rt.session.update(session=GA_SESSION)
        await sdk_until(rt, "session.updated")
        caller = silence(200) + tone(400) + silence(400)
        for frame in frames(caller):
            await rt.input_audio_buffer.append(audio=frame)
        events = await sdk_until(rt, "response.done")
        conn = await server.wait_connection()

    by_type = {e.type: e for e in events}
    started, stopped = (
        by_type["input_audio_buffer.speech_started"],
        by_type["input_audio_buffer.speech_stopped"],
    )
    assert started.audio_start_ms == 200 - 100  # speech onset minus prefix_padding_ms
    assert stopped.audio_end_ms == 200 + 400 + 300  # end of the silence window
    assert started.item_id == stopped.item_id == by_type["input_audio_buffer.committed"].item_id
    transcript = by_type["conversation.item.input_audio_transcription.completed"]
    assert (transcript.item_id, transcript.transcript) == (started.item_id, "a table for two")
    assert by_type["response.done"].response.status == "completed"
    assert conn.responses[0].trigger == "vad" and conn.transcripts == [(started.item_id, "a table for two")]
    assert bytes(conn.audio_in) == caller
    assert_faithful(conn)


async def test_no_vad_events_when_turn_detection_is_off() -> None:
    session: RealtimeSessionCreateRequestParam = {
        "type": "realtime",
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None}},
    }
    async with FakeRealtimeServer() as server, ga_client(server) as rt:
        await rt.session.update(session=session)
        await sdk_until(rt, "session.updated")
        await rt.input_audio_buffer.commit()
        error = (await sdk_until(rt, "error"))[-1].error
        assert error.code == "input_audio_buffer_commit_empty"
        for frame in frames(tone(400) + silence(600)):
            await rt.input_audio_buffer.append(audio=frame)
        await rt.input_audio_buffer.commit()
        events = await sdk_until(rt, "input_audio_buffer.committed")
        conn = await server.wait_connection()
    assert not [e for e in events if e.type.startswith("input_audio_buffer.speech")]
    assert conn.events("input_audio_buffer.speech_started") == [] and conn.responses == []


async def test_barge_in_cancels_the_active_response() -> None:
    server = FakeRealtimeServer(
        pace=1.0,
        responses=[Say("A very long answer " * 5, audio_ms=3000)],
        default_reply=Say("OK.", audio_ms=100),
    )
    async with server, ga_client(server) as rt:
        await rt.session.update(session=GA_SESSION)
        await sdk_until(rt, "session.updated")
        await rt.response.create()
        await sdk_until(rt, "response.output_audio.delta")
        for frame in frames(tone(100)):
            await rt.input_audio_buffer.append(audio=frame)
        events = await sdk_until(rt, "response.done")
        types = [e.type for e in events]
        assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
        done = events[-1].response
        assert (done.status, done.status_details.reason) == ("cancelled", "turn_detected")
        assert done.output[0].status == "incomplete"
        for frame in frames(silence(300)):  # end of the caller's turn → the next reply
            await rt.input_audio_buffer.append(audio=frame)
        after = await sdk_until(rt, "response.done")
        conn = await server.wait_connection()
    assert after[-1].response.status == "completed"
    assert [r.status for r in conn.responses] == ["cancelled", "completed"]
    first_item = conn.responses[0].output_item_ids[0]
    assert 0 < len(conn.audio_sent[first_item]) < 3000 * 8
    assert conn.audio_sent[first_item] == expected_audio(0, 3000)[: len(conn.audio_sent[first_item])]
    assert_faithful(conn)


# -- conversation ------------------------------------------------------------------------------------


async def test_truncate_is_checked_against_the_audio_actually_sent() -> None:
    async with FakeRealtimeServer(responses=[Say("Hi.", audio_ms=1000)]) as server, ga_client(server) as rt:
        await rt.response.create()
        item_id = (await sdk_until(rt, "response.done"))[-1].response.output[0].id
        results = []
        for end in (1500, 400, 600):
            await rt.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=end)
            results.append(
                (await sdk_until(rt, "conversation.item.truncated" if end == 400 else "error"))[-1]
            )
        await rt.conversation.item.truncate(item_id="item_nope", content_index=0, audio_end_ms=0)
        await sdk_until(rt, "error")
        await rt.conversation.item.delete(item_id=item_id)
        deleted = (await sdk_until(rt, "conversation.item.deleted"))[-1]
        conn = await server.wait_connection()
    assert results[0].error.message == "Audio content of 1000ms is already shorter than 1500ms"
    assert results[1].audio_end_ms == 400
    assert results[2].error.message == "Audio content of 400ms is already shorter than 600ms"
    assert [(t.audio_end_ms, t.accepted) for t in conn.truncates] == [
        (1500, False),
        (400, True),
        (600, False),
        (0, False),
    ]
    assert deleted.item_id == item_id and conn.deleted == [item_id]
    # The recorded history is what went on the wire, untouched by the truncation.
    assert conn.events("response.done")[0]["response"]["output"][0]["content"][0]["transcript"] == "Hi."


async def test_function_call_flow() -> None:
    replies: list[Reply] = [
        Call("web_search", {"query": "weather in Paris"}, call_id="call_abc"),
        Say("It is sunny in Paris.", audio_ms=300),
        Calls([Call("lookup", {"id": 7}), Call("hangup", "{}")], preamble=Say("One moment.", audio_ms=200)),
    ]
    async with FakeRealtimeServer(responses=replies) as server, ga_client(server) as rt:
        await rt.response.create()
        events = await sdk_until(rt, "response.done")
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert json.loads(args) == {"query": "weather in Paris"}
        done = [e for e in events if e.type == "response.function_call_arguments.done"][0]
        assert (done.call_id, done.name, done.arguments) == ("call_abc", "web_search", args)
        call = events[-1].response.output[0]
        assert (call.type, call.call_id, call.name, call.arguments) == (
            "function_call",
            "call_abc",
            "web_search",
            args,
        )

        await rt.conversation.item.create(
            item={"type": "function_call_output", "call_id": "nope", "output": "{}"}
        )
        assert (await sdk_until(rt, "error"))[-1].error.param == "item.call_id"
        output = json.dumps({"forecast": "sunny"})
        await rt.conversation.item.create(
            item={"type": "function_call_output", "call_id": "call_abc", "output": output}
        )
        await sdk_until(rt, "conversation.item.done")
        await rt.response.create()
        spoken = (await sdk_until(rt, "response.done"))[-1].response
        assert spoken.output[0].content[0].transcript == "It is sunny in Paris."

        await rt.response.create()
        several = (await sdk_until(rt, "response.done"))[-1].response
        conn = await server.wait_connection()
    assert [o.type for o in several.output] == ["message", "function_call", "function_call"]
    assert [o.name for o in several.output[1:]] == ["lookup", "hangup"]
    assert conn.function_outputs == {"call_abc": output}
    assert_faithful(conn)


async def test_response_create_during_a_response_is_a_counted_conflict_and_cancel_works() -> None:
    server = FakeRealtimeServer(pace=1.0, responses=[Say("Long.", audio_ms=2000)])
    async with server, ga_client(server) as rt:
        await rt.response.create()
        await sdk_until(rt, "response.created")
        await rt.response.create()
        error = (await sdk_until(rt, "error"))[-1].error
        assert error.code == "conversation_already_has_active_response"
        await rt.response.cancel()
        done = (await sdk_until(rt, "response.done"))[-1].response
        assert (done.status, done.status_details.reason) == ("cancelled", "client_cancelled")
        await rt.response.cancel()
        assert (await sdk_until(rt, "error"))[-1].error.code == "response_cancel_not_active"
        conn = await server.wait_connection()
    assert conn.active_response_conflicts == 1


# -- failures ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("close_code", [None, 1011])
async def test_drop_closes_the_socket_mid_response(close_code: int | None) -> None:
    server = FakeRealtimeServer(responses=[Drop(after_ms=200)], close_code=close_code)
    async with server, ga_client(server) as rt:
        await rt.response.create()
        deltas = 0
        with pytest.raises(ConnectionClosedError) as info:
            while True:
                event = json.loads(await rt.recv_bytes())
                deltas += event["type"] == "response.output_audio.delta"
        conn = await server.wait_connection()
        await conn.closed.wait()
    received_close = info.value.rcvd
    assert (received_close.code if received_close else None) == close_code  # None: no close frame (1006)
    assert deltas == 2  # 200 ms in 100 ms chunks, then the drop
    assert conn.dropped and conn.responses[0].status == "dropped"
    assert conn.events("response.done") == []


async def test_script_is_shared_across_reconnects_and_drop_after_responses() -> None:
    server = FakeRealtimeServer(drop_after_responses=1, responses=[Say("one", 200), Say("two", 200)])
    async with server:
        for n in (1, 2):
            async with ga_client(server) as rt:
                await rt.response.create()
                events = await sdk_until(rt, "response.done")
                audio = b"".join(
                    base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
                )
                assert audio == expected_audio(n - 1, 200, fmt="pcm16")  # the session's default format
                with pytest.raises(ConnectionClosed):
                    await rt.recv()
        assert [c.dropped for c in server.connections] == [True, True]


async def test_reject_first_then_accept_after_a_connect_delay() -> None:
    server = FakeRealtimeServer(reject_status=503, reject_first=1, connect_delay=0.05)
    async with server:
        url = server.url + "/v1/realtime?model=gpt-realtime"
        with pytest.raises(InvalidStatus) as info:
            await connect(url, additional_headers=BEARER)
        assert info.value.response.status_code == 503
        async with connect(url, additional_headers=BEARER) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        assert server.rejected == [("/v1/realtime?model=gpt-realtime", 503)]


async def test_session_expired_sends_an_error_then_closes() -> None:
    async with FakeRealtimeServer(session_expired_after=0.05) as server, ga_client(server) as rt:
        assert (await sdk_until(rt, "error"))[-1].error.code == "session_expired"
        with pytest.raises(ConnectionClosed):
            await rt.recv()
        conn = await server.wait_connection()
        await conn.closed.wait()


async def test_unknown_events_error_and_failed_replies() -> None:
    server = FakeRealtimeServer(
        unknown_events=True,
        responses=[Unknown("response.future_thing"), Error("rate_limit_exceeded", "Slow down."), Fail()],
    )
    async with (
        server,
        connect(server.url + "/v1/realtime?model=gpt-realtime", additional_headers=BEARER) as ws,
    ):
        first = await raw_until(ws, "session.created") + [json.loads(await ws.recv())]
        assert first[-1]["type"] == "session.future_feature"
        await ws_send(ws, {"type": "response.create"})
        events = await raw_until(ws, "response.done")
        assert "response.future_thing" in {e["type"] for e in events}
        assert events[-1]["response"]["status"] == "completed"
        await ws_send(ws, {"type": "response.create"})
        assert (await raw_until(ws, "error"))[-1]["error"]["code"] == "rate_limit_exceeded"
        await ws_send(ws, {"type": "response.create"})
        failed = (await raw_until(ws, "response.done"))[-1]["response"]
        assert (failed["status"], failed["status_details"]["error"]["code"]) == ("failed", "server_error")
        conn = await server.wait_connection()
    unknown = {"session.future_feature", "response.future_thing", "response.future_feature.delta"}
    assert_faithful(conn, frozenset(unknown))
    assert [r.index for r in conn.responses] == [0, 2]  # the Error reply consumed index 1


# -- helpers -----------------------------------------------------------------------------------------


async def test_wait_helpers_time_out_with_context() -> None:
    async with FakeRealtimeServer() as server:
        with pytest.raises(EventNotSeen):
            await server.wait_connection(timeout=0.01)
        async with ga_client(server):
            conn = await server.wait_connection()
            assert (await conn.wait_for("session.created"))["type"] == "session.created"
            with pytest.raises(EventNotSeen, match="response.done"):
                await conn.wait_for("response.done", timeout=0.01)
        with pytest.raises(EventNotSeen, match="closed"):
            await conn.wait_for("response.done", timeout=TIMEOUT)


def test_g711_tables_match_audioop_and_the_tone_is_sliceable() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    every = bytes(range(256))
    assert np.array_equal(np.frombuffer(audioop.ulaw2lin(every, 2), "<i2"), _ULAW.table)
    assert np.array_equal(np.frombuffer(audioop.alaw2lin(every, 2), "<i2"), _ALAW.table)
    whole = expected_audio(3, 500)
    assert expected_audio(3, 100, start_ms=200) == whole[1600:2400]
    assert expected_audio(4, 500) != whole


def test_the_vads_energy_is_the_rms_of_the_decoded_samples_in_every_format() -> None:
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, 160, dtype=np.uint8).tobytes()
    for fmt, g711 in ((PCMU, _ULAW), (PCMA, _ALAW)):
        samples = g711.table[np.frombuffer(frame, np.uint8)].astype(np.float64)  # the fake's own tables
        assert fmt.rms(frame) == int(math.sqrt(float(np.mean(samples * samples))))
    pcm = rng.integers(-32768, 32768, 480, dtype=np.int16).astype("<i2").tobytes()
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    assert PCM16.rms(pcm + b"\x01") == int(math.sqrt(float(np.mean(samples * samples))))  # odd byte dropped
    assert PCMU.rms(b"\xff" * 160) == 0  # μ-law silence
    assert PCM16.rms(b"") == 0


@pytest.mark.parametrize(
    ("path", "headers", "dialect"),
    [
        ("/v1/realtime?model=gpt-realtime", BEARER, "ga"),
        ("/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime", AZ_KEY, "preview"),
    ],
)
async def test_the_relays_heartbeat_is_a_valid_no_op_answered_with_session_updated(
    path: str, headers: dict[str, str], dialect: str
) -> None:
    from relay.sessions.liveness import heartbeat_event

    async with FakeRealtimeServer() as server, connect(server.url + path, additional_headers=headers) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        await ws.send(heartbeat_event(dialect))  # type: ignore[arg-type]
        updated = json.loads(await ws.recv())
        assert updated["type"] == "session.updated"
        parse_server_event(dialect, updated)  # type: ignore[arg-type]  # the SDK's own type accepts it
        assert updated["session"] == created["session"]  # nothing changed
        conn = await server.wait_connection()
        assert conn.invalid_events == []


async def test_a_silent_service_accepts_answers_pings_and_sends_nothing() -> None:
    async with FakeRealtimeServer(silent=True) as server:
        url = server.url + "/v1/realtime?model=gpt-realtime"
        async with connect(url, additional_headers=BEARER) as ws:
            await asyncio.wait_for(await ws.ping(), TIMEOUT)  # the WebSocket layer is alive
            await ws.send(json.dumps({"type": "response.create"}))
            await asyncio.wait_for(await ws.ping(), TIMEOUT)  # ordered after any answer to it
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
        conn = await server.wait_connection()
        assert conn.sent == [] and conn.frozen_at is not None and conn.responses == []


async def test_freeze_after_responses_goes_silent_but_keeps_reading_and_answering_pings() -> None:
    server = FakeRealtimeServer(freeze_after_responses=1, responses=[Say("one", 200), Say("two", 200)])
    async with server:
        url = server.url + "/v1/realtime?model=gpt-realtime"
        async with connect(url, additional_headers=BEARER) as ws:
            await ws.send(json.dumps({"type": "response.create"}))
            while json.loads(await ws.recv())["type"] != "response.done":
                pass
            conn = await server.wait_connection()
            sent = len(conn.sent)
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            await ws.send(json.dumps({"type": "response.create"}))
            await conn.wait_for("response.create", n=2, direction="received")  # still reading
            await asyncio.wait_for(await ws.ping(), TIMEOUT)
            assert len(conn.sent) == sent and conn.frozen_at is not None
        assert len(conn.responses) == 1  # the frozen service started nothing: "two" is left for others


async def test_flood_after_responses_sends_only_malformed_frames() -> None:
    server = FakeRealtimeServer(flood_after_responses=1, flood_rate=500, flood_limit=10)
    async with server:
        url = server.url + "/v1/realtime?model=gpt-realtime"
        async with connect(url, additional_headers=BEARER) as ws:
            await ws.send(json.dumps({"type": "response.create"}))
            while json.loads(await ws.recv())["type"] != "response.done":
                pass
            frames = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(10)]
        conn = await server.wait_connection()
    assert conn.garbage_sent == 10
    for frame in frames:
        try:
            event = json.loads(frame)
        except ValueError:
            continue  # not JSON
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            with pytest.raises(Exception):  # noqa: B017,PT011 - any refusal by the SDK's types
                parse_server_event("ga", event)
