"""The local fakes in this process, and the settings that point the relay at them.

Used by `relay serve --fakes` (the relay on a port, for `relay call`, with no account) and by
`relay demo`. Started here, on 127.0.0.1 and free ports: the fake Realtime server (it speaks in
tones, with scripted transcripts), the fake OpenAI HTTP API the cascade uses (transcriptions, chat,
speech), the fake Tavily and the fake Twilio REST API. `LocalFakes.settings()` are the overrides
that send every provider and service request to them; every other setting stays the user's.

This module imports `relay.testing`: only the CLI paths that need it import this module, so
`relay serve` without `--fakes` never loads the fakes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.testing.openai_http import FakeOpenAIHTTP
from relay.testing.openai_replies import Text
from relay.testing.realtime import FakeRealtimeServer, Reply, Say
from relay.testing.tavily import FakeTavily
from relay.testing.twilio_rest import FakeTwilioRest

__all__ = ["FAKE_API_KEY", "LocalFakes", "announce_calls", "local_fakes", "serve_with_fakes"]

log = logging.getLogger("relay.fakes")

FAKE_API_KEY = "sk-local-fakes"
FAKE_TAVILY_KEY = "tvly-local-fakes"
FAKE_ACCOUNT_SID = "AC" + "f" * 32
FAKE_REPLY = "You are talking to the relay's local fakes. No real model is listening."
FAKE_MODELS = {
    "openai_realtime_model": "gpt-realtime",
    "openai_stt_model": "gpt-4o-mini-transcribe",
    "openai_chat_model": "gpt-4o-mini",
    "openai_tts_model": "gpt-4o-mini-tts",
    "openai_voice": "marin",
}
NOTICE = "the relay is running on LOCAL FAKES (relay serve --fakes): no real service is contacted"


@dataclass(frozen=True)
class LocalFakes:
    """The running fakes and their base URLs."""

    realtime: FakeRealtimeServer
    openai_http: FakeOpenAIHTTP
    tavily: FakeTavily
    twilio_rest: FakeTwilioRest
    openai_http_url: str
    tavily_url: str
    twilio_rest_url: str

    def settings(self) -> dict[str, Any]:
        """Overrides for `load_settings`: every provider and service request goes to a fake.

        OpenAI (never Azure: the fakes speak OpenAI's protocol) with the fakes' key and models, the
        realtime WebSocket at the fake Realtime server, the cascade's HTTP at the fake OpenAI API,
        web search at the fake Tavily, call control at the fake Twilio REST API, and the call
        records in memory (REDIS_URL is ignored)."""
        return {
            "use_azure_openai": False,
            "allow_cross_provider_fallback": False,
            "openai_api_key": FAKE_API_KEY,
            "openai_base_url": self.openai_http_url + "/v1",
            "realtime_websocket_base_url": self.realtime.url + "/v1",
            **FAKE_MODELS,
            "tavily_api_key": self.tavily.api_key,
            "tavily_base_url": self.tavily_url,
            "twilio_api_base_url": self.twilio_rest_url,
            "twilio_account_sid": self.twilio_rest.account_sid,
            "redis_url": None,
        }

    def lines(self) -> list[str]:
        """Where each fake listens, for the startup log."""
        return [
            f"realtime model → fake at {self.realtime.url}/v1 (it speaks in tones)",
            f"cascade STT/chat/TTS (OpenAI HTTP) → fake at {self.openai_http_url}/v1",
            f"web search (Tavily) → fake at {self.tavily_url}",
            f"call control (Twilio REST) → fake at {self.twilio_rest_url}",
            "call records → memory (REDIS_URL ignored)",
        ]


@contextlib.asynccontextmanager
async def local_fakes(
    *,
    realtime_script: Iterable[Reply] = (),
    transcripts: Iterable[str] = (),
    tavily_answers: Mapping[str, str | None] | None = None,
    twilio_auth_token: str = "",
    twilio_account_sid: str = "",
) -> AsyncIterator[LocalFakes]:
    """Starts every fake on 127.0.0.1; stops them on exit.

    `realtime_script`: the fake model's replies, in order, then a default one (a short sentence
    saying it is a fake); `transcripts`: what it "heard" per turn ("hello" when exhausted). The
    fake Twilio REST API accepts `twilio_account_sid` (default: a fake SID) with
    `twilio_auth_token`, the relay's own credentials.
    """
    realtime = FakeRealtimeServer(
        api_key=FAKE_API_KEY,
        responses=realtime_script,
        transcripts=transcripts,
        default_reply=Say(FAKE_REPLY, audio_ms=2500),
    )
    openai_http = FakeOpenAIHTTP(api_key=FAKE_API_KEY, default_reply=Text(FAKE_REPLY))
    tavily = FakeTavily(api_key=FAKE_TAVILY_KEY, answers=dict(tavily_answers or {}))
    twilio_rest = FakeTwilioRest(
        account_sid=twilio_account_sid or FAKE_ACCOUNT_SID, auth_token=twilio_auth_token
    )
    async with (
        realtime,
        openai_http.serve() as openai_http_url,
        tavily.serve() as tavily_url,
        twilio_rest.serve() as twilio_rest_url,
    ):
        yield LocalFakes(
            realtime, openai_http, tavily, twilio_rest, openai_http_url, tavily_url, twilio_rest_url
        )


def announce_calls(app: Any, fakes: LocalFakes, mode: str) -> Callable[..., Any]:
    """The app, logging a WARNING at each Media Stream (each call) that it runs on the fakes."""
    realtime = f"the fake realtime model at {fakes.realtime.url}"
    cascade = f"the fake OpenAI HTTP API at {fakes.openai_http_url} (cascade)"
    where = {"cascade": cascade, "realtime": realtime}.get(mode, f"{realtime}, or {cascade} on fallback")

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope.get("path", "").rstrip("/") == "/media-stream":
            log.warning("%s; this call goes to %s", NOTICE, where)
        await app(scope, receive, send)

    return asgi


def serve_with_fakes(*, host: str | None, port: int | None) -> int:
    """`relay serve --fakes`: the fakes and the relay (settings pointed at them) on one event loop,
    until a signal; drains like `relay serve`."""
    import asyncio

    from relay.app import create_app
    from relay.config import load_settings
    from relay.logs import configure_logging
    from relay.server import serve_async

    users = load_settings()  # the user's settings, validated, before anything starts
    configure_logging(users.log_format, users.log_level)
    token = users.twilio_auth_token.get_secret_value() if users.twilio_auth_token else ""

    async def main() -> None:
        async with local_fakes(twilio_auth_token=token, twilio_account_sid=users.twilio_account_sid) as fakes:
            settings = load_settings(**fakes.settings())
            app = create_app(settings)
            bind_host, bind_port = host or settings.host, port or settings.port
            log.warning("%s:", NOTICE)
            for line in fakes.lines():
                log.warning("  %s", line)
            if not token:
                log.warning(
                    "  TWILIO_AUTH_TOKEN is not set: signatures are not checked and call control "
                    "(end_call, transfer, the drain's goodbyes) is off; set it to use the fake Twilio REST"
                )
            log.info(
                "relay listening on http://%s:%d; try: relay call --url http://127.0.0.1:%d --say 'Hello'",
                bind_host,
                bind_port,
                bind_port,
            )
            await serve_async(
                announce_calls(app, fakes, settings.relay_mode),
                manager=app.state.manager,
                host=bind_host,
                port=bind_port,
                log_level=settings.log_level.lower(),
                grace=settings.drain_timeout,
            )

    asyncio.run(main())
    return 0
