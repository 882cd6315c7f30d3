"""Call affinity (STREAM_PUBLIC_URL): two relay instances sharing one real redis-server, each with
its own public stream URL behind a load balancer that routes `/i/relay-N/...` to instance N. The
TwiML names the answering instance's URL, so its stream comes back there and takes the early
connection and its greeting; a stream that still reaches the other instance is served there,
and the wasted early connection is counted; the upgrade's signature is checked against the URL.
Real sockets: fake Twilio → relay → fake Realtime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.requests import HTTPConnection

from relay.app import create_app
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import bind_free_port, serve_app
from relay.testing.twilio import FakeTwilioCall
from relay.transport.http import FORWARDED_TRUSTED
from tests.conftest import AUTH_TOKEN, make_settings
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from webhooks.signature import forwarded_prefix

PUBLIC_URL = "https://voice.example.com"  # the load balancer: webhooks go to any instance
URLS = {  # each instance's own route through it
    "A": "wss://voice.example.com/i/relay-1/media-stream",
    "B": "wss://voice.example.com/i/relay-2/media-stream",
}
GREETING = Say("Hello, how can I help?", audio_ms=400)


def sample(app: Any, name: str, **labels: str) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def fleet(
    rt: FakeRealtimeServer, redis: RedisServer, **overrides: Any
) -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    """Instances A and B served on their own ports: their apps and base URLs."""
    apps = {
        name: create_app(
            make_settings(
                relay_mode="realtime",
                openai_base_url=rt.openai_base_url,
                redis_url=redis.url,
                public_url=PUBLIC_URL,
                stream_public_url=url,
                **overrides,
            )
        )
        for name, url in URLS.items()
    }
    async with serve_app(apps["A"]) as url_a, serve_app(apps["B"]) as url_b:
        yield apps, {"A": url_a, "B": url_b}


def caller(base_url: str) -> FakeTwilioCall:
    return FakeTwilioCall(base_url=base_url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)


@pytest.mark.parametrize("proxy_path", ["/media-stream", None], ids=["prefix-stripped", "prefix-kept"])
async def test_the_stream_comes_back_to_the_instance_of_its_webhook_and_takes_its_greeting(
    redis_server: RedisServer,  # noqa: F811
    proxy_path: str | None,
) -> None:
    async with (
        FakeRealtimeServer(responses=[GREETING]) as rt,
        fleet(rt, redis_server) as (apps, urls),
        caller(urls["A"]) as call,
    ):
        a, b = apps["A"], apps["B"]
        assert a.state.settings.realtime_early_greeting  # the default, with REDIS_URL and affinity
        twiml = await call.fetch_twiml()  # the load balancer gave the webhook to A
        assert twiml.stream_url == URLS["A"]
        assert twiml.parameters["earlyAt"] == a.state.manager.instance_id
        early = await rt.wait_connection()
        await early.wait_for("response.done")  # the greeting was made before the stream started
        # Twilio opens A's URL; the load balancer hands A the path without its prefix, or with it
        assert await call.connect(twiml, path=proxy_path)
        (greeting,) = early.audio_sent.values()
        await call.wait_for_media(min_bytes=len(greeting))
        assert call.received_audio == bytes(greeting)  # the early greeting, whole, once
        await call.stop()
        await early.closed.wait()
        assert len(rt.connections) == 1 and len(early.events("response.create")) == 1
        assert len(early.events("session.update")) == 1  # configured once, before the stream
        assert sample(a, "relay_preconnects_total", outcome="used") == 1
        assert sample(a, "relay_preconnects_missed_total") == sample(b, "relay_preconnects_missed_total") == 0


@pytest.mark.parametrize("proxy_path", ["/media-stream", None], ids=["prefix-stripped", "prefix-kept"])
async def test_a_local_fleet_url_works_as_the_stream_url(proxy_path: str | None) -> None:
    """The form a fleet on one host uses (`ws://127.0.0.1:PORT/i/relay-N/media-stream`, PORT the
    proxy's; here the relay's own, the proxy left out): named in the TwiML, signed by the caller
    for that URL, served whether the prefix reaches the relay or not."""
    sock = bind_free_port()
    base = f"127.0.0.1:{sock.getsockname()[1]}"
    own = f"ws://{base}/i/relay-1/media-stream"
    async with FakeRealtimeServer(responses=[GREETING]) as rt:
        settings = make_settings(
            relay_mode="realtime",
            openai_base_url=rt.openai_base_url,
            public_url=f"http://{base}",
            stream_public_url=own,
        )
        app = create_app(settings)
        url = f"http://{base}"
        async with serve_app(app, sock=sock), FakeTwilioCall(base_url=url, auth_token=AUTH_TOKEN) as call:
            twiml = await call.fetch_twiml()
            assert twiml.stream_url == own
            assert await call.connect(twiml, path=proxy_path)
            early = await rt.wait_connection()
            await early.wait_for("response.done")
            (greeting,) = early.audio_sent.values()
            await call.wait_for_media(min_bytes=len(greeting))
            assert call.received_audio == bytes(greeting) and not call.protocol_errors
            assert call.stream_url == own and len(rt.connections) == 1
            assert sample(app, "relay_preconnects_total", outcome="used") == 1


async def test_a_stream_that_reaches_another_instance_is_served_there_and_the_waste_counted(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        FakeRealtimeServer(responses=[GREETING]) as rt,
        fleet(rt, redis_server, stream_token_ttl=1.0) as (apps, urls),
    ):
        a, b = apps["A"], apps["B"]
        call = caller(urls["A"])
        twiml = await call.fetch_twiml()
        assert twiml.stream_url == URLS["A"]
        early = await rt.wait_connection()
        # A failover sends A's stream to B: the proxy strips A's prefix and names it, as it does for A
        call.base_url = urls["B"]
        async with call:
            headers = {"X-Forwarded-Prefix": "/i/relay-1"}
            assert await call.connect(twiml, path="/media-stream", headers=headers)
            used = await rt.wait_connection(n=2)  # B connects by itself and greets
            await used.wait_for("response.done")
            (greeting,) = used.audio_sent.values()
            await call.wait_for_media(min_bytes=len(greeting))
            assert call.received_audio == bytes(greeting)
            assert sample(b, "relay_preconnects_missed_total") == 1
            assert sample(a, "relay_preconnects_missed_total") == 0
            async with asyncio.timeout(5):
                await early.closed.wait()  # A's early connection expired with the token, unused
            assert len(early.events("response.create")) == 1  # the greeting made in vain
            assert sample(a, "relay_preconnects_total", outcome="expired") == 1
            await call.stop()
            await b.state.manager.wait_idle(5)
        record = await b.state.store.get(call.call_sid)
        assert record is not None and record["status"] == "ended"
    wasted = [r for r in caplog.records if "early provider connection on instance" in r.getMessage()]
    assert len(wasted) == 1 and wasted[0].call_sid == call.call_sid
    assert a.state.manager.instance_id in wasted[0].getMessage()


async def upgrade_refused(
    base_url: str, *, path: str, sign: Callable[[FakeTwilioCall, Any], str], headers: dict[str, str]
) -> FakeTwilioCall:
    """A stream whose upgrade is signed by `sign(call, twiml)`, left once the relay closed it."""
    call = caller(base_url)
    twiml = await call.fetch_twiml()
    async with call:
        await call.connect(twiml, path=path, signature=sign(call, twiml), headers=headers)
        await call.wait_closed()
    return call


@pytest.mark.parametrize(
    ("signed_for", "instance", "headers"),
    [
        # A's TwiML named A's URL; this one is signed for B's
        (URLS["B"], "A", {}),
        # signed for the prefixed URL, but the prefix comes from a peer A does not trust
        (URLS["A"], "untrusting", {"X-Forwarded-Prefix": "/i/relay-1"}),
    ],
    ids=["another-instance-url", "untrusted-prefix"],
)
async def test_the_upgrade_signature_is_checked_against_stream_public_url(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    signed_for: str,
    instance: str,
    headers: dict[str, str],
) -> None:
    async with FakeRealtimeServer(responses=[GREETING]) as rt, fleet(rt, redis_server) as (apps, urls):
        app, base_url = apps["A"], urls["A"]
        if instance == "untrusting":  # B's URL, not A's, and no proxy trusted
            app = create_app(apps["B"].state.settings.model_copy(update={"forwarded_allow_ips": "10.9.9.9"}))
        async with serve_app(app) as own_url:
            base_url = own_url if instance == "untrusting" else base_url
            call = await upgrade_refused(
                base_url,
                path="/media-stream",
                sign=lambda call, twiml: call.sign(signed_for, {}),
                headers=headers,
            )
        assert (call.close_code, call.close_reason) == (1008, "invalid signature")
        assert call.received_audio == b"" and not app.state.manager.active
        assert sample(app, "relay_calls_rejected_total", reason="signature") == 1
    (refusal,) = [r for r in caplog.records if "rejected Media Stream" in r.getMessage()]
    own = app.state.settings.stream_public_url
    assert own in refusal.getMessage() and "STREAM_PUBLIC_URL" in refusal.getMessage()


@pytest.mark.parametrize(
    ("deployment", "on", "why"),
    [
        ({}, True, "one instance (no REDIS_URL)"),
        ({"redis": True, "stream_public_url": URLS["A"]}, True, "call affinity (STREAM_PUBLIC_URL)"),
        ({"redis": True}, False, "REDIS_URL without STREAM_PUBLIC_URL"),
        ({"redis": True, "realtime_early_greeting": True}, True, "REALTIME_EARLY_GREETING=true is set"),
        ({"stream_public_url": URLS["A"], "realtime_early_greeting": False}, False, "=false is set"),
    ],
    ids=["one-instance", "redis-affinity", "redis-alone", "explicit-true", "explicit-false"],
)
async def test_the_early_greeting_default_follows_the_deployment(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    deployment: dict[str, Any],
    on: bool,
    why: str,
) -> None:
    overrides = dict(deployment)
    if overrides.pop("redis", False):
        overrides["redis_url"] = redis_server.url
    app = create_app(make_settings(**overrides))
    assert app.state.settings.realtime_early_greeting is on
    caplog.set_level(logging.INFO, logger="relay.app")
    async with serve_app(app):
        pass
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("early greeting ")]
    assert line.startswith(f"early greeting {'on' if on else 'off'}: ") and why in line, line
    affinity = [r.getMessage() for r in caplog.records if r.getMessage().startswith("call affinity")]
    if "stream_public_url" in overrides:  # the instance's id (its streams' `earlyAt`) and URL
        (line,) = affinity
        assert app.state.manager.instance_id in line and URLS["A"] in line, line
    else:
        assert not affinity


def test_an_empty_early_greeting_leaves_the_choice_to_the_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_EARLY_GREETING", "")  # as .env.example has it
    assert not make_settings(redis_url="redis://127.0.0.1:1/0").realtime_early_greeting
    monkeypatch.setenv("REALTIME_EARLY_GREETING", "true")
    assert make_settings(redis_url="redis://127.0.0.1:1/0").realtime_early_greeting


@pytest.mark.parametrize(
    ("value", "trusted", "prefix"),
    [
        ("/i/relay-1", True, "/i/relay-1"),
        ("/i/relay-1/, /other", True, "/i/relay-1"),  # the first proxy's, without its trailing slash
        ("/i/relay-1", False, ""),  # from a peer not in FORWARDED_ALLOW_IPS
        ("i/relay-1", True, ""),  # not a path
        ("/i/relay-1?x=1", True, ""),
        ("/" + "a" * 300, True, ""),  # longer than any route
    ],
)
def test_a_forwarded_prefix_is_taken_from_a_trusted_proxy_as_a_plain_path(
    value: str, trusted: bool, prefix: str
) -> None:
    scope = {
        "type": "websocket",
        "path": "/media-stream",
        "headers": [(b"x-forwarded-prefix", value.encode())],
        FORWARDED_TRUSTED: trusted,
    }
    assert forwarded_prefix(HTTPConnection(scope)) == prefix
