"""`setup_tracing(settings) -> Tracing`: the tracer provider of the process, or none at all.

With an endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), a tracer
provider of the relay's own (the global one is left alone) with a BatchSpanProcessor, which
exports from its own thread, and the OTLP/HTTP exporter. Without one (or OTEL_SDK_DISABLED=true),
no provider, no exporter, no thread: every call gets a `CallTrace` whose methods return at once.

Every setting the relay names is read by relay/config.py (so `.env` works for it too) and passed
to the SDK explicitly, which then does not look it up itself; the resource is built from those
settings alone, without the SDK's environment detector. The SDK's variables the relay does not
name (certificates, OTEL_EXPORTER_OTLP_TIMEOUT, span limits...) it still reads from the process
environment (not from `.env`), and it merges OTEL_EXPORTER_OTLP_HEADERS from there with ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import unquote

from opentelemetry import trace as otel
from opentelemetry.context import Context

from relay.config import Settings
from relay.tracing.pending import PendingTraces
from relay.tracing.spans import AttributeValue, CallTrace, otel_attributes

__all__ = ["MAX_PENDING_CALLS", "Tracing", "setup_tracing", "traces_endpoint"]

log = logging.getLogger("relay.tracing")

SHUTDOWN_WAIT_S = 5.0  # the last export at shutdown, at most
MAX_PENDING_CALLS = 20_000  # call traces kept for their stream at most (the oldest ended first)


def traces_endpoint(settings: Settings) -> str:
    """Where spans go: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else OTEL_EXPORTER_OTLP_ENDPOINT
    + `/v1/traces` (OpenTelemetry's rule); empty (tracing off) without either, or when disabled."""
    if settings.otel_sdk_disabled:
        return ""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint + "/v1/traces"
    return ""


def key_values(text: str) -> dict[str, str]:
    """OpenTelemetry's `k=v,k2=v2` (values URL-encoded), as relay/config.py checked it."""
    pairs = (entry.partition("=") for entry in text.split(",") if entry.strip())
    return {k.strip(): unquote(v.strip()) for k, _, v in pairs}


class Tracing:
    """The process's tracing: `call()` at a call's webhook, `for_stream()` at its stream,
    `aclose()` (or `shutdown()`) at the end. `provider` is None when tracing is off."""

    def __init__(self, settings: Settings, provider: Any = None) -> None:
        self.provider = provider
        self.endpoint = traces_endpoint(settings) if provider is not None else ""
        self.record_tool_arguments = settings.otel_record_tool_arguments
        self.keep_for = settings.stream_token_ttl + 1  # a stream can only start while its token is valid
        self._tracer: otel.Tracer | None = None if provider is None else provider.get_tracer("relay")
        self._pending = PendingTraces(MAX_PENDING_CALLS)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def call(self, call_sid: str, **attrs: AttributeValue) -> CallTrace:
        """At a call's webhook: the trace kept for this call (a repeated webhook), else a new one,
        kept for its stream; `attrs` set on its root span."""
        if self._tracer is None:
            return CallTrace(call_sid)
        now = time.monotonic()
        trace = self._pending.get(call_sid, now)
        if trace is None:
            trace = self._start(call_sid)
            self._pending.put(trace, now + self.keep_for, now)
        trace.set(**attrs)
        return trace

    def kept(self, call_sid: str) -> CallTrace:
        """The trace a webhook started for `call_sid`, still kept for its stream (for a span of
        the call before its stream starts, e.g. its early provider connection); else one that
        records nothing."""
        if self._tracer is None:
            return CallTrace(call_sid)
        return self._pending.get(call_sid, time.monotonic()) or CallTrace(call_sid)

    def for_stream(self, call_sid: str, **attrs: AttributeValue) -> CallTrace:
        """At a call's stream: the trace its webhook started here (no longer kept), else a new
        one (the webhook was served by another instance). The caller ends it."""
        if self._tracer is None:
            return CallTrace(call_sid)
        trace = self._pending.take(call_sid, time.monotonic()) or self._start(call_sid)
        trace.set(**attrs)
        return trace

    def _start(self, call_sid: str) -> CallTrace:
        assert self._tracer is not None
        # an empty context: a call's trace is a root, whatever span is current
        root = self._tracer.start_span(
            "call", context=Context(), attributes=otel_attributes({"call_sid": call_sid})
        )
        return CallTrace(
            call_sid,
            root,
            self._tracer,
            record_tool_arguments=self.record_tool_arguments,
            forget=self._pending.discard,
        )

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Exports the ended spans now (blocking: call it from a thread, never the event loop)."""
        return self.provider is None or bool(self.provider.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        """Ends the traces still kept for a stream, exports what is left and stops the exporter's
        thread (blocking, as long as the last export takes: never on the event loop)."""
        self._pending.end_all()
        if self.provider is not None:
            self.provider.shutdown()

    async def aclose(self, wait: float = SHUTDOWN_WAIT_S) -> None:
        """`shutdown()` for the app's lifespan: the kept traces are ended on the event loop (the
        one that keeps them), the last export waited for `wait` seconds at most, in a daemon
        thread: a collector that does not answer (the exporter retries for its whole timeout)
        never holds up the process's exit."""
        self._pending.end_all()
        if self.provider is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shut_down() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=shut_down, name="relay-tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done, wait)
        except TimeoutError:
            log.warning(
                "the last spans were not exported within %g s: is the OTLP endpoint %s up?",
                wait,
                self.endpoint,
            )


def setup_tracing(settings: Settings) -> Tracing:
    """The process's tracing as the settings ask (see the module's docstring)."""
    endpoint = traces_endpoint(settings)
    if not endpoint:
        return Tracing(settings)
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    headers = settings.otel_exporter_otlp_headers
    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        headers=key_values(headers.get_secret_value()) if headers is not None else None,
        compression={"gzip": Compression.Gzip, "deflate": Compression.Deflate}.get(
            settings.otel_exporter_otlp_compression, Compression.NoCompression
        ),
    )
    provider = TracerProvider(
        sampler=_sampler(settings),
        resource=Resource(_resource_attributes(settings)),
        shutdown_on_exit=False,  # the app's lifespan shuts it down, off the event loop
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.otel_bsp_max_queue_size,
            schedule_delay_millis=settings.otel_bsp_schedule_delay,
            max_export_batch_size=settings.otel_bsp_max_export_batch_size,
        )
    )
    return Tracing(settings, provider)


def _resource_attributes(settings: Settings) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES, then the service (OTEL_SERVICE_NAME wins, as the spec says)."""
    from opentelemetry.sdk.version import __version__ as sdk_version

    try:
        relay_version = version("twilio-realtime-relay")
    except PackageNotFoundError:  # running from a source tree that was never installed
        relay_version = "unknown"
    return {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
        "service.version": relay_version,
        "service.instance.id": str(uuid.uuid4()),
        **key_values(settings.otel_resource_attributes),
        "service.name": settings.otel_service_name,
    }


def _sampler(settings: Settings) -> Any:
    from opentelemetry.sdk.trace import sampling

    ratio = settings.otel_traces_sampler_arg
    samplers = {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    return samplers[settings.otel_traces_sampler]()
