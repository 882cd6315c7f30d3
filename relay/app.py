"""The Starlette app: routes, lifespan (shared clients, store). No call logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# The cascade (and the openai SDK under it) is imported with the relay, not at a call's first
# fallback: that import takes a few hundred milliseconds, a stall in every live call's audio.
from cascade.session import CascadeSession
from relay.admin import admin_routes
from relay.agents import AgentsHolder
from relay.config import Settings, load_settings
from relay.errors import StoreError
from relay.loop_lag import watch_event_loop
from relay.media_stream import serve_media_stream, stream_paths
from relay.metrics import Metrics
from relay.outbound import outbound_routes
from relay.post_call import DeliveryPolicy
from relay.sessions.limits import make_limiter
from relay.sessions.manager import CallManager
from relay.sessions.outbox import StoreHealth
from relay.sessions.providers import AsyncTokenCredential, make_adapter
from relay.sessions.store import CallStore, make_store
from relay.tracing import setup_tracing
from relay.transport.http import ForwardedHeaders, uvicorn_options
from relay.transport.twilio import MediaStreamEntry
from webhooks.outbound import routes as outbound_webhook_routes
from webhooks.recording import routes as recording_webhook_routes
from webhooks.replay import make_stream_gate
from webhooks.routes import routes as webhook_routes
from webhooks.whisper import routes as whisper_routes

log = logging.getLogger("relay.app")

READY_PING_TIMEOUT_S = 0.5

# One place for how uvicorn serves the app (the CLI and the test server both use it, through
# `server_options`, which adds the HTTP edge's limits from the app's settings).
UVICORN_OPTIONS: dict[str, Any] = {
    "ws": "websockets-sansio",
    "ws_max_size": 1024 * 1024,  # our own 64 KB check logs oversize frames; this bounds memory
    "ws_per_message_deflate": False,  # base64 audio does not compress: deflate only costs CPU
    "lifespan": "on",
    "timeout_graceful_shutdown": 5,  # after the relay's own drain (relay/server.py)
}


def server_options(app: Any) -> dict[str, Any]:
    """uvicorn's options for `app`: UVICORN_OPTIONS, plus, for a relay app (one with settings),
    the header deadline and cap, the connection limit and the proxy trust (relay/transport/http.py)."""
    settings = getattr(getattr(app, "state", None), "settings", None)
    if not isinstance(settings, Settings):
        return dict(UVICORN_OPTIONS)
    return {**UVICORN_OPTIONS, **uvicorn_options(settings)}


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """200 when this instance can serve calls: not draining and a provider configured. The store is
    reported (`ok` or `degraded`), not required: with Redis away calls are still admitted and served."""
    state = request.app.state
    manager = state.manager
    problems: list[str] = []
    if manager.draining:
        problems.append("draining")
    default = manager.agents.default  # the agent of every number no other agent claims
    if not default.provider_configured:
        provider = default.settings.describe_provider()
        problems.append(f"{provider} credentials are not configured")
    store = "ok" if await _store_answers(state.store, manager.store_health) else "degraded"
    body: dict[str, Any] = {"store": store, "pending_writes": manager.outbox.pending}
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems, **body}, status_code=503)
    return JSONResponse({"status": "ready", "active_calls": len(manager.active), **body})


async def _store_answers(store: CallStore, health: StoreHealth) -> bool:
    """A ping bounded by READY_PING_TIMEOUT_S, so a hung Redis cannot hang the readiness probe."""
    try:
        async with asyncio.timeout(READY_PING_TIMEOUT_S):
            answered = await store.ping()
    except (StoreError, TimeoutError) as exc:
        health.failed(exc, "answering a readiness ping")
        return False
    if answered:
        health.succeeded()
    return answered


def _build_tools(settings: Settings) -> tuple[Any, Any]:
    """The tool registry and Twilio call control, when those modules are available and configured."""
    from relay.tools import build_registry
    from relay.tools.twilio_rest import TwilioCalls

    registry = build_registry(settings)
    calls = None
    if settings.twilio_account_sid and settings.twilio_auth_token is not None:
        calls = TwilioCalls(settings)
    return registry, calls


def create_app(
    settings: Settings | None = None,
    *,
    store: CallStore | None = None,
    azure_credential: AsyncTokenCredential | None = None,
    post_call_policy: DeliveryPolicy | None = None,
    agents: AgentsHolder | None = None,
) -> Starlette:
    """Builds the relay app. Dependencies may be injected (tests inject a fake Entra credential, and
    a post-call delivery policy with short retry delays); `agents`, the AGENTS_FILE already
    loaded (else it is loaded here: ConfigError for an invalid file)."""
    settings = settings or load_settings()
    agents = agents if agents is not None else AgentsHolder(settings)
    store = store or make_store(settings)
    registry, twilio_calls = _build_tools(settings)
    metrics = Metrics()
    tracing = setup_tracing(settings)  # no provider at all without OTEL_EXPORTER_OTLP_ENDPOINT
    stream_gate = make_stream_gate(settings, on_fallback=metrics.replay_check_fallbacks_total.inc)
    manager = CallManager(
        settings,
        store=store,
        adapter_factory=lambda for_agent: make_adapter(for_agent, azure_credential=azure_credential),
        cascade_factory=CascadeSession,
        registry=registry,
        twilio_calls=twilio_calls,
        metrics=metrics,
        limiter=make_limiter(settings),
        post_call_policy=post_call_policy,
        tracing=tracing,
    )
    if agents.book.path is not None:  # without AGENTS_FILE, the environment's agent as it is
        manager.agents.replace(agents.book)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for agent in manager.agents:
            if agent.provider_configured:
                adapter = agent.adapter
                whose = f"agent {agent.name}'s calls" if agents.book.path is not None else "voice calls"
                log.info("Using %s for %s", adapter.display_name, whose)
                log.info("realtime endpoint: %s", adapter.realtime_url)
        manager.prepare_cascade()  # not on the event loop at a call's first fallback
        if settings.stream_public_url:
            log.info(
                "call affinity: this instance (%s) names STREAM_PUBLIC_URL %s in its TwiML",
                manager.instance_id,
                settings.stream_public_url,
            )
        early = "on" if settings.realtime_early_greeting else "off"
        log.info("early greeting %s: %s", early, settings.early_greeting_why)
        if not manager.agents.default.provider_configured:
            log.warning(
                "no provider credentials: set OPENAI_API_KEY, or USE_AZURE_OPENAI=true with "
                "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT; calls get a spoken apology until then"
            )
        if settings.twilio_auth_token is None:
            log.warning(
                "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT validated. "
                "Fine for local development only; set it before exposing the relay."
            )
        # Objects built at startup live for the whole process: keep them out of the cyclic GC, whose
        # full collections would otherwise pause every call at once.
        gc.collect()
        gc.freeze()
        lag_watch = asyncio.create_task(watch_event_loop(metrics.event_loop_lag_seconds.observe))
        manager.start()
        try:
            yield
        finally:
            lag_watch.cancel()
            await asyncio.gather(lag_watch, return_exceptions=True)
            await manager.aclose()
            if twilio_calls is not None:
                await twilio_calls.aclose()
            await store.close()
            await stream_gate.close()
            await tracing.aclose()  # the calls have ended their traces; the rest end and are exported

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            *admin_routes(settings),
            *outbound_routes(settings),
            *webhook_routes,
            *outbound_webhook_routes,
            *recording_webhook_routes,
            *whisper_routes,
        ],
        middleware=[
            Middleware(ForwardedHeaders, allow_ips=settings.forwarded_allow_ips),
            # WS /media-stream, served with the server's own receive/send (relay/transport/twilio.py)
            Middleware(MediaStreamEntry, paths=stream_paths(settings), handler=serve_media_stream),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.stream_gate = stream_gate
    app.state.agents = agents
    app.state.tracing = tracing
    return app


async def reload_agents(app: Starlette) -> bool:
    """SIGHUP (relay/server.py): AGENTS_FILE read again, off the event loop. A valid file: new
    calls get its agents, calls in progress keep theirs; an invalid one is refused with one ERROR
    line and the agents stay. True when the new agents are in place."""
    holder: AgentsHolder = app.state.agents
    if not await asyncio.to_thread(holder.reload):
        return False
    app.state.manager.agents.replace(holder.book)
    return True


def __getattr__(name: str) -> Any:
    """`relay.app:app`, built on first access so importing this module never reads the environment."""
    if name == "app":
        instance = create_app()
        globals()["app"] = instance
        return instance
    raise AttributeError(name)
