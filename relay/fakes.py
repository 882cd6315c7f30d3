"""The local fakes in this process, and the settings that point the relay at them.

Used by `relay serve --fakes` (the relay on a port, for `relay call`, with no account) and by
`relay demo`. Started here, on 127.0.0.1 and free ports: the fake Realtime server (it speaks in
tones, with scripted transcripts), the fake OpenAI HTTP API the cascade uses (transcriptions, chat,
speech), the fake Tavily and the fake Twilio REST API. `LocalFakes.settings()` are the overrides
that send every provider and service request to them; every other setting stays the user's.

Outbound calls (`POST /calls`) go to the fake Twilio REST API too, which does not answer them:
`relay call --outbound` is the callee. It watches its call through the same fake API, which
`with_fake_twilio_rest` also serves on the relay's own port, under Twilio's `/2010-04-01/` paths.

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
from relay.testing.twilio_rest import API_VERSION, FakeTwilioRest
from relay.testing.twilio_rest_calls import FakeOutbound

__all__ = [
    "FAKE_ACCOUNT_SID",
    "FAKE_API_KEY",
    "FAKE_PHONE_NUMBER",
    "LocalFakes",
    "announce_calls",
    "local_fakes",
    "serve_with_fakes",
    "with_fake_twilio_rest",
]

log = logging.getLogger("relay.fakes")

FAKE_API_KEY = "sk-local-fakes"
FAKE_TAVILY_KEY = "tvly-local-fakes"
FAKE_ACCOUNT_SID = "AC" + "f" * 32
FAKE_PHONE_NUMBER = "+15555550100"  # the From of outbound calls when TWILIO_PHONE_NUMBER is unset
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
    `twilio_auth_token`, the relay's own credentials; it places outbound calls without answering
    them (the callee is `relay call --outbound`).
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
        account_sid=twilio_account_sid or FAKE_ACCOUNT_SID,
        auth_token=twilio_auth_token,
        outbound=FakeOutbound(auth_token=twilio_auth_token, answer=False),
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
        if scope["type"] == "websocket" and scope.get("path", "").rstrip("/").endswith("/media-stream"):
            log.warning("%s; this call goes to %s", NOTICE, where)
        await app(scope, receive, send)

    return asgi


def with_fake_twilio_rest(app: Any, fakes: LocalFakes) -> Callable[..., Any]:
    """The app, with the fake Twilio REST API also served on its port under `/2010-04-01/`, where
    `relay call --outbound` (knowing only the relay's URL) watches its call; the relay itself has
    no route there."""
    prefix = f"/{API_VERSION}/"
    rest = fakes.twilio_rest.app

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith(prefix):
            await rest(scope, receive, send)
        else:
            await app(scope, receive, send)

    return asgi


def outbound_overrides(users: Any, host: str, port: int) -> tuple[dict[str, Any], list[str]]:
    """What outbound calls need that the user did not set, and the WARNING lines that say so:
    TWILIO_PHONE_NUMBER (a fake number) and PUBLIC_URL (this relay's own address, where the fake
    Twilio sends nothing but `relay call --outbound` sends the callee's requests)."""
    overrides: dict[str, Any] = {}
    lines = [
        "outbound calls (POST /calls) → the fake Twilio REST API, which does not answer them: "
        "`relay call --outbound NUMBER` is the callee (RELAY_ADMIN_TOKEN and TWILIO_AUTH_TOKEN "
        "set for both commands)"
    ]
    if not users.twilio_phone_number:
        overrides["twilio_phone_number"] = FAKE_PHONE_NUMBER
        lines.append(f"TWILIO_PHONE_NUMBER is not set: outbound calls come from {FAKE_PHONE_NUMBER}")
    if not users.public_url:
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        overrides["public_url"] = f"http://{local}:{port}"
        lines.append(
            f"PUBLIC_URL is not set: it is http://{local}:{port}, this relay (outbound calls' "
            "callbacks and the signatures of every webhook use it)"
        )
    if users.relay_admin_token is None:
        lines.append("RELAY_ADMIN_TOKEN is not set: POST /calls is off (no outbound calls)")
    return overrides, lines


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
            bind_host, bind_port = host or users.host, port or users.port
            outbound, outbound_lines = outbound_overrides(users, bind_host, bind_port)
            settings = load_settings(**fakes.settings(), **outbound)
            app = create_app(settings)
            log.warning("%s:", NOTICE)
            for line in [*fakes.lines(), *outbound_lines]:
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
                with_fake_twilio_rest(announce_calls(app, fakes, settings.relay_mode), fakes),
                manager=app.state.manager,
                host=bind_host,
                port=bind_port,
                log_level=settings.log_level.lower(),
                grace=settings.drain_timeout,
            )

    asyncio.run(main())
    return 0
