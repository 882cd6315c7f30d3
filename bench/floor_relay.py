"""The floor for bench/realtime_load.py: a bare Twilio ⇄ Realtime pass-through, same server stack.

`python bench/floor_relay.py --port P --provider ws://127.0.0.1:F/v1/realtime?model=gpt-realtime`
(key from OPENAI_API_KEY). No signatures, no token, no marks, no state: after `start` it connects,
sends the two events without which the provider would stay silent and speak PCM16 (a μ-law
`session.update` and a `response.create`), then forwards `media` → `input_audio_buffer.append`
and `response.output_audio.delta` → `media`, nothing else.
"""

import argparse
import asyncio
import os

import orjson
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.app import UVICORN_OPTIONS, health

PCMU = {"format": {"type": "audio/pcmu"}}
SESSION = {
    "type": "session.update",
    "session": {"type": "realtime", "audio": {"input": PCMU, "output": PCMU}},
}


async def media_stream(ws: WebSocket) -> None:
    await ws.accept()
    while (msg := orjson.loads(await ws.receive_text()))["event"] != "start":
        pass
    sid, key = msg["start"]["streamSid"], os.environ.get("OPENAI_API_KEY", "")
    auth = {"Authorization": f"Bearer {key}"}
    async with websockets.connect(ws.app.state.provider, additional_headers=auth, compression=None) as up:
        await up.send(orjson.dumps(SESSION).decode())
        await up.send('{"type":"response.create"}')

        async def downlink() -> None:
            async for data in up:
                event = orjson.loads(data)
                if event["type"] == "response.output_audio.delta":
                    out = '{"event":"media","streamSid":"' + sid + '","media":{"payload":"'
                    await ws.send_text(out + event["delta"] + '"}}')

        task = asyncio.create_task(downlink())
        try:
            while (msg := orjson.loads(await ws.receive_text()))["event"] != "stop":
                if msg["event"] == "media":
                    audio = msg["media"]["payload"]
                    await up.send('{"type":"input_audio_buffer.append","audio":"' + audio + '"}')
        except WebSocketDisconnect:
            pass
        finally:
            task.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--provider", required=True, help="the realtime WebSocket URL")
    args = parser.parse_args()
    app = Starlette(routes=[Route("/health", health), WebSocketRoute("/media-stream", media_stream)])
    app.state.provider = args.provider
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", **UVICORN_OPTIONS)
