"""relay.metrics (own registry, call/tool observations) and relay.admin (`/metrics`, `/calls/{sid}`)
served by a real uvicorn server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from relay.admin import admin_routes
from relay.config import load_settings
from relay.metrics import VOICE_BUCKETS, Metrics
from relay.sessions.call import CallStats
from relay.sessions.store import MemoryStore
from relay.testing.server import serve_app
from relay.tools.registry import ToolResult

ADMIN_TOKEN = "admin-test-token"
CALL_SID = "CA" + "a" * 32

ALL_METRICS = [
    "relay_active_calls",
    "relay_calls_total",
    "relay_frames_in_total",
    "relay_frames_out_total",
    "relay_barge_ins_total",
    "relay_truncates_total",
    "relay_tool_calls_total",
    "relay_tool_duration_seconds",
    "relay_provider_connect_seconds",
    "relay_fallbacks_total",
    "relay_store_errors_total",
    "relay_first_audio_seconds",
    "relay_response_latency_seconds",
    "relay_calls_rejected_total",
    "relay_event_loop_lag_seconds",
]


@dataclass
class StatsWithTurns:
    """A CallStats-shaped object that also carries per-turn response latencies."""

    connect_ms: float | None = 120.0
    first_audio_ms: float | None = 640.0
    frames_in: int = 3
    frames_out: int = 2
    barge_ins: int = 0
    truncates: int = 0
    response_latencies_ms: list[float] = field(default_factory=lambda: [300.0, 900.0])


def tool_audit(name: str = "web_search", outcome: Any = "ok", duration_ms: float = 420.0) -> dict[str, Any]:
    result = ToolResult(
        call_id="call_1",
        name=name,
        output="{}",
        ok=outcome == "ok",
        outcome=outcome,
        duration_ms=duration_ms,
        output_bytes=2,
        arguments={"query": "weather"},
    )
    return result.audit()


def sample(metrics: Metrics, sample_name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(sample_name, labels)


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text → {sample name: {sorted labels: value}}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


AppFactory = Callable[..., AbstractAsyncContextManager[tuple[str, Metrics, MemoryStore]]]


@pytest.fixture
def admin_app() -> AppFactory:
    """Serves a tiny app with only the admin routes; yields (base URL, metrics, store)."""

    @asynccontextmanager
    async def serve(token: str | None = ADMIN_TOKEN) -> AsyncIterator[tuple[str, Metrics, MemoryStore]]:
        settings = load_settings(_env_file=None, relay_admin_token=token)
        store = MemoryStore()
        await store.upsert(
            CALL_SID, provider="openai", mode="realtime", status="ended", outcome="twilio_stop"
        )
        await store.add_turn(CALL_SID, "user", "What's the weather?")
        await store.add_event(CALL_SID, "tools", tool_audit())
        metrics = Metrics()
        app = Starlette(routes=admin_routes(settings))
        app.state.settings = settings
        app.state.store = store
        app.state.metrics = metrics
        async with serve_app(app) as url:
            yield url, metrics, store

    return serve


# --- Metrics ------------------------------------------------------------------------------------


def test_observe_call_end_counts_the_call_and_its_figures() -> None:
    m = Metrics()
    stats = CallStats(connect_ms=250.0, first_audio_ms=800.0, frames_in=500, frames_out=120, barge_ins=2)
    stats.truncates = 1
    m.observe_call_end(stats, "realtime", "twilio_stop", provider="azure")
    m.observe_call_end(CallStats(), "realtime", "provider_error")  # never reached the provider

    assert sample(m, "relay_calls_total", agent="default", mode="realtime", outcome="twilio_stop") == 1
    assert sample(m, "relay_calls_total", agent="default", mode="realtime", outcome="provider_error") == 1
    assert sample(m, "relay_frames_in_total") == 500
    assert sample(m, "relay_frames_out_total") == 120
    assert sample(m, "relay_barge_ins_total") == 2
    assert sample(m, "relay_truncates_total") == 1
    assert sample(m, "relay_provider_connect_seconds_count", provider="azure") == 1
    assert sample(m, "relay_provider_connect_seconds_sum", provider="azure") == pytest.approx(0.25)
    assert sample(m, "relay_provider_connect_seconds_count", provider="unknown") is None
    assert sample(m, "relay_first_audio_seconds_count") == 1
    assert sample(m, "relay_first_audio_seconds_sum") == pytest.approx(0.8)
    assert sample(m, "relay_first_audio_seconds_bucket", le="0.75") == 0
    assert sample(m, "relay_first_audio_seconds_bucket", le="1.0") == 1
    # CallStats carries no turn latencies (yet): none observed, nothing fails
    assert sample(m, "relay_response_latency_seconds_count") == 0


def test_observe_call_end_without_a_session_counts_only_the_call() -> None:
    m = Metrics()
    m.observe_call_end(None, "realtime", "error", provider="openai")
    assert sample(m, "relay_calls_total", agent="default", mode="realtime", outcome="error") == 1
    assert sample(m, "relay_frames_in_total") == 0
    assert sample(m, "relay_provider_connect_seconds_count", provider="openai") is None
    assert sample(m, "relay_first_audio_seconds_count") == 0


def test_observe_call_end_takes_response_latencies_when_the_stats_carry_them() -> None:
    m = Metrics()
    m.observe_call_end(StatsWithTurns(), "realtime", "twilio_stop")
    assert sample(m, "relay_response_latency_seconds_count") == 2
    assert sample(m, "relay_response_latency_seconds_sum") == pytest.approx(1.2)
    assert sample(m, "relay_response_latency_seconds_bucket", le="0.3") == 1
    assert sample(m, "relay_provider_connect_seconds_count", provider="unknown") == 1


def test_observe_tool_counts_by_name_and_outcome() -> None:
    m = Metrics()
    m.observe_tool(tool_audit("web_search", "ok", 420.0))
    m.observe_tool(tool_audit("web_search", "timeout", 10_000.0))
    m.observe_tool({"name": "end_call", "outcome": "error"})  # no duration: counted, not timed
    assert sample(m, "relay_tool_calls_total", name="web_search", outcome="ok") == 1
    assert sample(m, "relay_tool_calls_total", name="web_search", outcome="timeout") == 1
    assert sample(m, "relay_tool_calls_total", name="end_call", outcome="error") == 1
    assert sample(m, "relay_tool_duration_seconds_count", name="web_search") == 2
    assert sample(m, "relay_tool_duration_seconds_sum", name="web_search") == pytest.approx(10.42)
    assert sample(m, "relay_tool_duration_seconds_bucket", name="web_search", le="5.0") == 1
    assert sample(m, "relay_tool_duration_seconds_bucket", name="web_search", le="10.0") == 2
    assert sample(m, "relay_tool_duration_seconds_count", name="end_call") is None


def test_made_up_tool_names_share_one_series() -> None:
    m = Metrics()
    for i in range(3):
        m.observe_tool(tool_audit(f"hallucinated_{i}", "unknown_tool", 0.1))
    assert sample(m, "relay_tool_calls_total", name="unknown", outcome="unknown_tool") == 3
    assert sample(m, "relay_tool_duration_seconds_count", name="unknown") == 3
    assert b"hallucinated" not in m.render()[0]


def test_rejection_reasons_exist_at_zero_and_count() -> None:
    m = Metrics()
    for reason in ("busy", "draining", "unconfigured", "signature"):
        assert sample(m, "relay_calls_rejected_total", reason=reason) == 0
    m.observe_rejection("busy")
    m.calls_rejected_total.labels(reason="signature").inc()
    assert sample(m, "relay_calls_rejected_total", reason="busy") == 1
    assert sample(m, "relay_calls_rejected_total", reason="signature") == 1


def test_voice_buckets_span_5ms_to_5s() -> None:
    assert VOICE_BUCKETS[0] == 0.005 and VOICE_BUCKETS[-1] == 5.0
    assert list(VOICE_BUCKETS) == sorted(set(VOICE_BUCKETS))


def test_two_instances_do_not_collide() -> None:
    a, b = Metrics(), Metrics()  # the default registry would raise "Duplicated timeseries" here
    assert a.registry is not b.registry
    a.active_calls.inc()
    a.calls_total.labels(agent="default", mode="realtime", outcome="twilio_stop").inc()
    assert sample(a, "relay_active_calls") == 1
    assert sample(b, "relay_active_calls") == 0
    assert sample(b, "relay_calls_total", agent="default", mode="realtime", outcome="twilio_stop") is None
    assert REGISTRY.get_sample_value("relay_active_calls") is None  # the process-wide registry is untouched


def test_render_is_prometheus_text() -> None:
    m = Metrics()
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=")  # whatever prometheus_client calls latest
    assert isinstance(body, bytes) and b"# TYPE relay_active_calls gauge" in body


# --- /metrics -----------------------------------------------------------------------------------


async def test_metrics_endpoint_shows_every_metric(admin_app: AppFactory) -> None:
    async with admin_app() as (url, metrics, _), httpx.AsyncClient(base_url=url) as client:
        metrics.active_calls.inc()
        metrics.observe_call_end(StatsWithTurns(), "realtime", "twilio_stop", provider="openai")
        metrics.observe_tool(tool_audit())
        metrics.fallbacks_total.labels(cause="provider_error").inc()
        metrics.store_errors_total.inc()
        metrics.observe_rejection("draining")
        r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in ALL_METRICS:
        assert f"# TYPE {name} " in r.text, name
    samples = parse(r.text)
    assert samples["relay_active_calls"][()] == 1
    assert (
        samples["relay_calls_total"][(("agent", "default"), ("mode", "realtime"), ("outcome", "twilio_stop"))]
        == 1
    )
    assert samples["relay_frames_in_total"][()] == 3
    assert samples["relay_tool_calls_total"][(("name", "web_search"), ("outcome", "ok"))] == 1
    assert samples["relay_tool_duration_seconds_count"][(("name", "web_search"),)] == 1
    assert samples["relay_provider_connect_seconds_count"][(("provider", "openai"),)] == 1
    assert samples["relay_fallbacks_total"][(("cause", "provider_error"),)] == 1
    assert samples["relay_store_errors_total"][()] == 1
    assert samples["relay_first_audio_seconds_count"][()] == 1
    assert samples["relay_response_latency_seconds_count"][()] == 2
    assert samples["relay_calls_rejected_total"][(("reason", "draining"),)] == 1
    assert samples["relay_calls_rejected_total"][(("reason", "busy"),)] == 0


# --- /calls/{call_sid} --------------------------------------------------------------------------


async def test_call_record_needs_the_right_bearer(admin_app: AppFactory) -> None:
    async with admin_app() as (url, _, _), httpx.AsyncClient(base_url=url) as client:
        none = await client.get(f"/calls/{CALL_SID}")
        wrong = await client.get(f"/calls/{CALL_SID}", headers={"Authorization": "Bearer not-the-token"})
        prefix = await client.get(f"/calls/{CALL_SID}", headers={"Authorization": "Bearer admin"})
        basic = await client.get(f"/calls/{CALL_SID}", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        bare = await client.get(f"/calls/{CALL_SID}", headers={"Authorization": ADMIN_TOKEN})
        right = await client.get(f"/calls/{CALL_SID}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    for r in (none, wrong, prefix, basic, bare):
        assert r.status_code == 401, r.request.headers.get("authorization")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert CALL_SID not in r.text and "weather" not in r.text
    assert right.status_code == 200
    assert right.headers["content-type"] == "application/json"
    assert right.headers["cache-control"] == "no-store"
    record = right.json()
    assert record["call_sid"] == CALL_SID and record["outcome"] == "twilio_stop"
    assert record["transcript"][0]["text"] == "What's the weather?"
    tool = record["tools"][0]
    assert tool["name"] == "web_search" and tool["arguments"] == {"query": "weather"}


async def test_unknown_call_is_404_json_but_only_behind_the_bearer(admin_app: AppFactory) -> None:
    unknown = "/calls/CA" + "f" * 32
    async with admin_app() as (url, _, _), httpx.AsyncClient(base_url=url) as client:
        r = await client.get(unknown, headers={"Authorization": f"bearer {ADMIN_TOKEN}"})  # any case
        anonymous = await client.get(unknown)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert "error" in r.json()
    assert anonymous.status_code == 401  # an unauthenticated client cannot probe which SIDs exist


async def test_without_an_admin_token_calls_route_is_absent_and_metrics_served(admin_app: AppFactory) -> None:
    async with admin_app(token=None) as (url, _, _), httpx.AsyncClient(base_url=url) as client:
        r = await client.get(f"/calls/{CALL_SID}", headers={"Authorization": "Bearer anything"})
        empty = await client.get(f"/calls/{CALL_SID}", headers={"Authorization": "Bearer"})
        metrics = await client.get("/metrics")
    assert r.status_code == 404 and empty.status_code == 404
    assert "weather" not in r.text
    assert metrics.status_code == 200 and "relay_active_calls" in metrics.text


def test_admin_routes_follow_the_token() -> None:
    with_token = admin_routes(load_settings(_env_file=None, relay_admin_token=ADMIN_TOKEN))
    without = admin_routes(load_settings(_env_file=None, relay_admin_token=None))
    empty = admin_routes(load_settings(_env_file=None, relay_admin_token=""))  # empty means unset
    assert [r.path for r in with_token] == ["/metrics", "/calls/{call_sid}"]
    assert [r.path for r in without] == ["/metrics"]
    assert [r.path for r in empty] == ["/metrics"]
