"""`relay call` says what really happened when the relay does not take the call: a refusal quotes
the relay's `<Say>` and points at `relay doctor`; a Media Stream accepted (101) and then closed
says so, with the close code, the reason and what to check. Real relays under uvicorn."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from relay.app import create_app
from relay.config import load_settings
from relay.simulate import CallOptions, run_call
from relay.testing.realtime import FakeRealtimeServer
from relay.testing.server import serve_app
from tests.conftest import AUTH_TOKEN, make_settings
from webhooks.routes import APOLOGY

PUBLIC = "https://relay.example.com"


def options(url: str, **kw: Any) -> CallOptions:
    return CallOptions(url=url, public_url=PUBLIC, auth_token=AUTH_TOKEN, timeout=15, **kw)


async def test_an_unconfigured_relay_is_explained_with_its_say_and_relay_doctor() -> None:
    settings = load_settings(_env_file=None, twilio_auth_token=AUTH_TOKEN, public_url=PUBLIC)
    assert not settings.provider_configured
    async with serve_app(create_app(settings)) as url:
        result = await run_call(options(url))
    assert result.exit_code == 1 and len(result.errors) == 1
    error = result.errors[0]
    assert f"<Say> {APOLOGY!r}" in error and "<Hangup/>" in error
    assert "no provider credentials (OPENAI_API_KEY" in error and "Run `relay doctor`" in error


def load_balancer(webhook_app: Starlette, stream_app: Starlette) -> Starlette:
    """Sends the webhook to one relay and the Media Stream to another, as a load balancer without
    affinity does: two real relay apps, each with its own lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with (
            webhook_app.router.lifespan_context(webhook_app),
            stream_app.router.lifespan_context(stream_app),
        ):
            yield

    return Starlette(
        routes=[
            Route("/incoming-call", webhook_app, methods=["POST"]),
            WebSocketRoute("/media-stream", stream_app),
        ],
        lifespan=lifespan,
    )


@pytest.mark.parametrize(
    ("stream_relay", "reason", "check"),
    [
        ({"twilio_auth_token": "another-token"}, "invalid signature", "check that the token is the relay's"),
        ({"stream_token_secret": "another-secret"}, "invalid stream token", "STREAM_TOKEN_SECRET differs"),
    ],
)
async def test_a_stream_closed_after_the_upgrade_says_so_with_the_code_and_what_to_check(
    stream_relay: dict[str, Any], reason: str, check: str
) -> None:
    async with FakeRealtimeServer() as rt:
        provider = {"openai_base_url": rt.openai_base_url, "greeting_enabled": False}
        webhook_app = create_app(make_settings(**provider))
        stream_app = create_app(make_settings(**provider, **stream_relay))
        async with serve_app(load_balancer(webhook_app, stream_app)) as url:
            result = await run_call(options(url, utterances=[], greeting_timeout=2, answer_timeout=2))
    assert result.exit_code == 1
    explained = [e for e in result.errors if "closed it with" in e]
    assert len(explained) == 1, result.errors
    error = explained[0]
    assert f"accepted the Media Stream (HTTP 101) and then closed it with code 1008 {reason!r}" in error
    assert check in error
    assert not any("rejected" in e or "no audio at all" in e for e in result.errors), result.errors
    if reason == "invalid signature":
        assert "wss://relay.example.com/media-stream" in error  # the URL the caller signed
