"""`WS /media-stream` edge: signature on the upgrade, stream token, bad input. No provider is
contacted for a rejected stream (the relay is pointed at a port where nothing listens)."""

from __future__ import annotations

import base64
import uuid

import orjson
import pytest
import websockets
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection

from relay.app import create_app
from relay.testing.server import bind_free_port, serve_app
from relay.transport.twilio import MediaStreamEntry, TwilioSocket
from tests.conftest import AUTH_TOKEN, make_settings
from webhooks.token import mint_stream_token

WSS_URL = "wss://relay.example.com/media-stream"
CALL = "CA" + "1" * 32


def start_msg(call_sid: str, token: str | None) -> str:
    params = {"token": token} if token is not None else {}
    return orjson.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": "MZ" + "1" * 32,
            "start": {
                "accountSid": "AC" + "1" * 32,
                "streamSid": "MZ" + "1" * 32,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    ).decode()


@pytest.fixture
async def relay_dead_provider():
    """A relay whose provider URL points at a closed port: contacting it would fail loudly."""
    dead = bind_free_port()
    port = dead.getsockname()[1]
    dead.close()
    app = create_app(make_settings(openai_base_url=f"http://127.0.0.1:{port}/v1", provider_connect_timeout=1))
    async with serve_app(app) as url:
        yield url.replace("http://", "ws://") + "/media-stream", app


async def open_stream(url: str, sign: bool = True, path_url: str = WSS_URL) -> ClientConnection:
    headers = (
        {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(path_url, {})} if sign else {}
    )
    return await websockets.connect(url, additional_headers=headers)


async def test_unsigned_upgrade_closed_1008(relay_dead_provider, caplog) -> None:
    url, app = relay_dead_provider
    ws = await open_stream(url, sign=False)
    await ws.wait_closed()
    assert ws.close_code == 1008
    assert "invalid X-Twilio-Signature" in caplog.text
    assert "Connecting to" not in caplog.text


async def test_trailing_slash_signature_variant_accepted(relay_dead_provider) -> None:
    url, _ = relay_dead_provider
    ws = await open_stream(url, path_url=WSS_URL + "/")
    await ws.send(start_msg(CALL, "bad"))
    await ws.wait_closed()
    assert ws.close_code == 1008 and ws.close_reason == "invalid stream token"


@pytest.mark.parametrize("token", [None, "garbage", "other-call"])
async def test_tokenless_or_bad_token_closed_1008_before_provider(relay_dead_provider, caplog, token) -> None:
    url, _ = relay_dead_provider
    if token == "other-call":
        token = mint_stream_token("CA" + "e" * 32, make_settings())
    ws = await open_stream(url)
    await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    await ws.send(start_msg(CALL, token))
    await ws.wait_closed()
    assert ws.close_code == 1008
    assert "rejected Media Stream" in caplog.text and "Connecting to" not in caplog.text
    assert "bad Twilio message" not in caplog.text  # the handshake's own ASGI message is not a frame


async def test_bad_input_before_start_is_logged_and_dropped(relay_dead_provider, caplog) -> None:
    url, _ = relay_dead_provider
    ws = await open_stream(url)
    frame = base64.b64encode(b"\xff" * 160).decode()
    await ws.send("{not json")
    await ws.send(b"\x00\x01binary")
    await ws.send('{"event":"media","media":{"payload":"@@@"}}')
    await ws.send('{"event":"media","media":{"payload":"' + "A" * 70000 + '"}}')
    await ws.send('{"event":"media","media":{"timestamp":"0","payload":"' + frame + '"}}')  # before start
    await ws.send('{"event":"brand-new"}')
    await ws.send(start_msg(CALL, None))
    await ws.wait_closed()
    text = caplog.text
    for needle in (
        "malformed JSON",
        "binary frame",
        "not valid base64",
        "exceeds",
        "before 'start'",
        "unknown Twilio event 'brand-new'",
    ):
        assert needle in text, needle
    assert ws.close_code == 1008  # the start had no token


async def test_garbage_flood_closes_stream(relay_dead_provider, caplog) -> None:
    url, _ = relay_dead_provider
    ws = await open_stream(url)
    for _ in range(60):
        await ws.send("garbage " + uuid.uuid4().hex)
    await ws.wait_closed()
    assert "more than 50 bad messages" in caplog.text


async def test_media_stream_entry_serves_with_the_servers_own_send(relay_dead_provider) -> None:
    """Over a real uvicorn socket: `MediaStreamEntry` hands its handler the server's own `send`,
    where a route of the same app gets Starlette's per-message wrapper; the relay's app serves
    /media-stream through it, so the audio path writes through the server's `send` directly."""
    seen: dict[str, object] = {}

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        seen["entry"] = send
        socket = TwilioSocket(receive, send)
        await socket.accept()
        await socket.close()

    class Route:  # a plain ASGI app as a route: it gets the `send` the router passes down
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen["route"] = send
            websocket = WebSocket(scope, receive, send)
            await websocket.accept()
            await websocket.close()

    inner = Starlette(
        routes=[WebSocketRoute("/route", Route())],
        middleware=[Middleware(MediaStreamEntry, paths=["/entry"], handler=handler)],
    )
    server: list[object] = []

    async def server_side(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            server.append(send)
        await inner(scope, receive, send)

    async with serve_app(server_side) as url:
        for path in ("/entry", "/route"):
            async with websockets.connect(url.replace("http://", "ws://") + path) as client:
                with pytest.raises(websockets.ConnectionClosedOK):
                    await client.recv()
    assert seen["entry"] is server[0]
    assert seen["route"] is not server[1]
    _, relay_app = relay_dead_provider
    entries = [m for m in relay_app.user_middleware if m.cls is MediaStreamEntry]
    assert len(entries) == 1 and set(entries[0].kwargs["paths"]) == {"/media-stream", "/media-stream/"}
