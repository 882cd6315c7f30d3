"""OpenTelemetry traces (relay/tracing/) exported over OTLP/HTTP to a fake collector on 127.0.0.1:
a webhook starts the call's trace, its log line carries the trace's ids, and with no endpoint
nothing is set up at all."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from twilio.request_validator import RequestValidator

from relay.app import create_app
from relay.logs import JsonFormatter
from relay.testing.otlp import OtlpReceiver
from relay.testing.server import bind_free_port, serve_app
from relay.tracing import NO_STREAM, Tracing, setup_tracing
from relay.tracing.pending import PendingTraces
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, make_settings
from tests.test_cli import FORM as CLI_FORM
from tests.test_cli import relay_serve

CALL_SID = "CA" + "3" * 32
FORM = {"CallSid": CALL_SID, "AccountSid": ACCOUNT_SID, "From": "+15550001111", "To": "+15550002222"}
PUBLIC_URL = "https://relay.example.com"


def traced(collector: OtlpReceiver, **overrides: Any) -> dict[str, Any]:
    """Settings that export to `collector` every 50 ms, with no provider connection at the webhook."""
    return {
        "otel_exporter_otlp_endpoint": collector.url,
        "otel_bsp_schedule_delay": 50,
        "realtime_preconnect": False,
        **overrides,
    }


async def post_webhook(base: str, path: str, form: dict[str, str]) -> httpx.Response:
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + path, form)
    async with httpx.AsyncClient(base_url=base) as client:
        return await client.post(path, data=form, headers={"X-Twilio-Signature": signature})


def json_line(caplog: pytest.LogCaptureFixture, text: str) -> dict[str, Any]:
    """The JSON line (LOG_FORMAT=json's formatter) of the one record whose message holds `text`."""
    (record,) = [r for r in caplog.records if text in r.getMessage()]
    line: dict[str, Any] = orjson.loads(JsonFormatter().format(record))
    return line


@pytest.mark.parametrize(
    ("path", "extra", "direction"),
    [("/incoming-call", {}, "inbound"), ("/outbound-answer", {"Direction": "outbound-api"}, "outbound-api")],
)
async def test_a_webhook_starts_the_calls_trace_and_its_log_line_names_it(
    collector: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
    path: str,
    extra: dict[str, str],
    direction: str,
) -> None:
    app = create_app(make_settings(**traced(collector)))
    async with serve_app(app) as url:
        response = await post_webhook(url, path, {**FORM, **extra})
        assert response.status_code == 200 and "<Connect>" in response.text
        (webhook,) = await collector.wait_spans(1)  # the root stays open for the call's stream
    # the app stopped before the stream came: the call's trace is ended and exported all the same
    spans = await collector.wait_spans(2)
    (root,) = collector.named("call")
    assert webhook.name == "webhook" and len(spans) == 2
    assert root.parent_span_id == "" and webhook.parent_span_id == root.span_id
    assert webhook.trace_id == root.trace_id and len(root.trace_id) == 32
    assert root.attributes == {
        "twilio.call_sid": CALL_SID,
        "relay.direction": direction,
        "relay.agent": "default",
        "relay.provider": "openai",
        "relay.provider_host": "api.openai.com",
        "relay.outcome": NO_STREAM,
    }
    assert webhook.attributes == {"http.route": path, "relay.outcome": "connected"}
    assert webhook.kind == 2 and not webhook.failed  # SERVER
    assert root.start_ns <= webhook.start_ns <= webhook.end_ns <= root.end_ns
    assert root.resource["service.name"] == "twilio-realtime-relay"
    line = json_line(caplog, "connecting stream to")
    assert line["call_sid"] == CALL_SID
    assert (line["trace_id"], line["span_id"]) == (root.trace_id, webhook.span_id)


@pytest.mark.parametrize("refusal", ["unconfigured", "busy"])
async def test_a_refused_call_ends_its_trace_at_the_webhook(
    collector: OtlpReceiver, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    if refusal == "unconfigured":
        app = create_app(make_settings(**traced(collector), openai_api_key=None))
    else:
        app = create_app(make_settings(**traced(collector), max_concurrent_calls=1))
    async with serve_app(app) as url:
        if refusal == "busy":
            assert await app.state.manager.limiter.acquire("CA" + "9" * 32, 60)  # one call in progress
        response = await post_webhook(url, "/incoming-call", FORM)
        assert "<Hangup" in response.text
        await collector.wait_spans(2)  # both ended at once, the app still serving
        (root,), (webhook,) = collector.named("call"), collector.named("webhook")
    assert root.attributes["relay.outcome"] == webhook.attributes["relay.outcome"] == refusal
    assert "relay.agent" not in root.attributes  # no agent was given the call
    line = json_line(caplog, "refusing call")
    assert (line["trace_id"], line["span_id"]) == (root.trace_id, webhook.span_id)


async def test_without_an_endpoint_nothing_is_set_up_or_exported(
    collector: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    before = {t.name for t in threading.enumerate()}
    app = create_app(make_settings(realtime_preconnect=False))
    tracing: Tracing = app.state.tracing
    assert tracing.provider is None and not tracing.enabled
    async with serve_app(app) as url:
        response = await post_webhook(url, "/incoming-call", FORM)
        assert response.status_code == 200 and "<Connect>" in response.text
        trace = tracing.call(CALL_SID)
        assert not trace.recording and trace.ids is None
        started = {t.name for t in threading.enumerate()} - before
        assert not [name for name in started if name.startswith("OtelBatch")]  # no exporter thread
    line = json_line(caplog, "connecting stream to")
    assert line["call_sid"] == CALL_SID and "trace_id" not in line and "span_id" not in line
    assert collector.requests == [] and collector.spans == []


async def test_the_exporter_sends_what_the_settings_say(collector: OtlpReceiver) -> None:
    """The full traces URL, gzip, headers and resource attributes, all from the settings."""
    settings = make_settings(
        otel_exporter_otlp_traces_endpoint=collector.url + "/v1/traces",
        otel_exporter_otlp_endpoint="http://127.0.0.1:9",  # the traces endpoint wins
        otel_exporter_otlp_compression="gzip",
        otel_exporter_otlp_headers="authorization=Bearer%20t0ken,x-tenant=acme",
        otel_resource_attributes="deployment.environment=test,service.name=ignored",
        otel_service_name="relay-eu",
    )
    tracing = setup_tracing(settings)
    trace = tracing.call(CALL_SID, direction="inbound")
    trace.end(outcome="completed")
    await asyncio.to_thread(tracing.shutdown)
    (root,) = await collector.wait_spans(1)
    assert root.attributes["relay.outcome"] == "completed"
    headers = collector.requests[0]
    assert headers["content-encoding"] == "gzip" and headers["content-type"] == "application/x-protobuf"
    assert headers["authorization"] == "Bearer t0ken" and headers["x-tenant"] == "acme"
    assert root.resource["service.name"] == "relay-eu"  # OTEL_SERVICE_NAME wins
    assert root.resource["deployment.environment"] == "test"
    assert root.scope == "relay"


async def test_child_spans_events_failures_and_recorded_times(collector: OtlpReceiver) -> None:
    tracing = setup_tracing(make_settings(**traced(collector)))
    trace = tracing.for_stream(CALL_SID, stream_sid="MZ" + "4" * 32, mode="realtime")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError), trace.span("provider.connect", attempt=1) as connect:
        connect.event("reconnect", reason="closed")
        raise ConnectionError("refused")
    trace.record("turn", start=t0 - 0.5, end=t0 - 0.2, latency_ms=300, interrupted=False)
    tool = trace.start("tool", name="lookup")
    tool.end(outcome="ok")
    tool.end(outcome="twice")  # ended once only
    trace.end(outcome="completed")
    trace.set(after="the end")  # nothing: the span has ended
    await asyncio.to_thread(tracing.shutdown)
    spans = {s.name: s for s in await collector.wait_spans(4)}
    root, connect_span, turn = spans["call"], spans["provider.connect"], spans["turn"]
    assert {s.parent_span_id for s in spans.values() if s is not root} == {root.span_id}
    assert root.attributes["twilio.stream_sid"] == "MZ" + "4" * 32 and "relay.after" not in root.attributes
    assert connect_span.failed and connect_span.status_message == "ConnectionError: refused"
    assert connect_span.kind == 3  # CLIENT
    assert [name for name, _ in connect_span.events] == ["reconnect", "exception"]
    assert connect_span.events[0][1] == {"relay.reason": "closed"}
    assert turn.attributes == {"relay.latency_ms": 300, "relay.interrupted": False}
    assert abs((turn.end_ns - turn.start_ns) / 1e9 - 0.3) < 0.005
    assert spans["tool"].attributes == {"relay.name": "lookup", "relay.outcome": "ok"}


async def test_a_trace_waits_for_its_stream_and_ends_if_none_comes(collector: OtlpReceiver) -> None:
    tracing = setup_tracing(make_settings(**traced(collector)))
    kept = tracing.call(CALL_SID, direction="inbound")
    assert tracing.call(CALL_SID) is kept  # a repeated webhook continues the same trace
    assert tracing.for_stream(CALL_SID) is kept  # the stream takes it...
    other = tracing.for_stream(CALL_SID)
    assert other is not kept  # ...once: another stream for the call starts a trace of its own
    kept.end(outcome="completed")
    other.end(outcome="refused")
    # the table alone, on a clock of the test's: a trace no stream took ends at its deadline
    table = PendingTraces(max_calls=2)
    now = time.monotonic()
    for n in range(3):  # the third pushes the oldest out: it ends now
        table.put(tracing.for_stream(f"CA{n:032x}"), until=now + 10 + n, now=now)
    table.expire(now + 11.5)  # the second's deadline passed: it ends at that deadline
    assert len(table) == 1
    table.end_all()
    await asyncio.to_thread(tracing.shutdown)
    spans = await collector.wait_spans(5)
    ends = {
        s.attributes["twilio.call_sid"]: s for s in spans if s.attributes.get("relay.outcome") == NO_STREAM
    }
    assert set(ends) == {f"CA{n:032x}" for n in range(3)}
    second = ends[f"CA{1:032x}"]
    assert abs((second.end_ns - second.start_ns) / 1e9 - 11) < 0.1


async def test_the_fake_collector_answers_like_a_collector(collector: OtlpReceiver) -> None:
    async with httpx.AsyncClient(base_url=collector.url) as client:
        garbage = await client.post(
            "/v1/traces", content=b"\xff\x01garbage", headers={"Content-Type": "application/x-protobuf"}
        )
        json_body = await client.post("/v1/traces", json={})
        elsewhere = await client.post(
            "/v1/metrics", content=b"", headers={"Content-Type": "application/x-protobuf"}
        )
        empty = await client.post(
            "/v1/traces", content=b"", headers={"Content-Type": "application/x-protobuf"}
        )
    assert garbage.status_code == 400 and garbage.headers["content-type"] == "application/x-protobuf"
    assert json_body.status_code == 415 and elsewhere.status_code == 404
    assert empty.status_code == 200 and collector.spans == []  # an empty request is a valid one


def test_tool_arguments_are_recorded_only_when_asked() -> None:
    assert not Tracing(make_settings()).call(CALL_SID).record_tool_arguments
    on = make_settings(otel_record_tool_arguments=True, otel_exporter_otlp_endpoint="http://127.0.0.1:9")
    tracing = setup_tracing(on)
    assert tracing.call(CALL_SID).record_tool_arguments
    tracing.provider.shutdown()  # nothing was ended: nothing to send


async def test_a_call_not_sampled_is_not_exported_nor_named_in_the_logs(collector: OtlpReceiver) -> None:
    tracing = setup_tracing(make_settings(**traced(collector), otel_traces_sampler="always_off"))
    trace = tracing.call(CALL_SID, direction="inbound")
    with trace.span("webhook") as span:
        assert not span.recording and span.ids is None and trace.ids is None
    trace.end(outcome="completed")
    assert await asyncio.to_thread(tracing.force_flush)
    await asyncio.to_thread(tracing.shutdown)
    assert collector.requests == []


async def test_the_readme_command_exports_the_webhooks_trace(collector: OtlpReceiver, tmp_path: Path) -> None:
    """README "Tracing": `OTEL_EXPORTER_OTLP_ENDPOINT=... OTEL_SERVICE_NAME=relay-eu relay serve`,
    a real process: a signed webhook's spans reach the collector, its JSON log line names them."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "relay-eu"}
    async with relay_serve(
        tmp_path, **env, OPENAI_API_KEY="sk-test", LOG_FORMAT="json", REALTIME_PRECONNECT="false"
    ) as relay:
        async with httpx.AsyncClient(base_url=relay.url) as client:
            signature = RequestValidator("cli-token").compute_signature(
                PUBLIC_URL + "/incoming-call", CLI_FORM
            )
            answer = await client.post(
                "/incoming-call", data=CLI_FORM, headers={"X-Twilio-Signature": signature}
            )
        assert "<Connect>" in answer.text
        await relay.read_until("connecting stream to")
        relay.proc.terminate()  # SIGTERM: the open trace is ended and exported on the way out
        await relay.read_until("Application shutdown complete")
    spans = {s.name: s for s in await collector.wait_spans(2)}
    assert spans["webhook"].parent_span_id == spans["call"].span_id
    assert spans["call"].resource["service.name"] == "relay-eu"
    (line,) = [orjson.loads(x) for x in relay.seen if "connecting stream to" in x]
    assert (line["trace_id"], line["span_id"]) == (spans["call"].trace_id, spans["webhook"].span_id)


async def test_a_collector_that_hangs_never_holds_up_the_shutdown(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter retries for its whole timeout (10 s by default); the app waits a bounded time."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.6")  # the SDK's own: the retries end soon after
    sock = bind_free_port()
    sock.listen()  # connections are taken by the kernel, and never answered: a collector that hangs
    try:
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"
        tracing = setup_tracing(make_settings(otel_exporter_otlp_endpoint=down))
        tracing.call(CALL_SID, direction="inbound")  # kept for a stream that never comes
        started = time.monotonic()
        await tracing.aclose(wait=0.2)
        assert time.monotonic() - started < 0.5
        (exporting,) = [t for t in threading.enumerate() if t.name == "relay-tracing-shutdown"]
        await asyncio.to_thread(exporting.join, 5)  # gone before the next test: no stray log lines
        assert not exporting.is_alive()
    finally:
        sock.close()
    assert f"is the OTLP endpoint {down}/v1/traces up?" in caplog.text


async def test_a_whole_call_is_one_trace_that_ends_with_its_outcome(
    collector: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream continues the webhook's trace: the root gets the stream SID and mode, and ends
    with the call's outcome, not `no_stream`; the call's log lines carry the root's ids."""
    from tests.rig import rig, speak

    async with rig("openai-ga", settings=traced(collector, realtime_preconnect=True)) as r:
        async with r.caller() as call:
            conn = await r.dial(call)
            await speak(call)
            await conn.wait_for("response.done")
            await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
        await collector.wait_spans(2)
    (root,) = collector.named("call")
    (webhook,) = collector.named("webhook")
    assert webhook.parent_span_id == root.span_id
    assert root.attributes["twilio.call_sid"] == call.call_sid
    assert root.attributes["twilio.stream_sid"] == call.stream_sid
    assert root.attributes["relay.mode"] == "realtime" and root.attributes["relay.outcome"] == "twilio_stop"
    ended = json_line(caplog, "call ended")
    assert ended["call_sid"] == call.call_sid and ended["trace_id"] == root.trace_id
