"""OpenTelemetry traces of calls, exported over OTLP/HTTP when an endpoint is configured.

One trace per call. Its root span (`call`) starts at the call's webhook (`Tracing.call`, which
keeps it by call SID for the stream) or at its stream (`Tracing.for_stream`, which takes it) and
ends with the call (`CallTrace.end(outcome=...)`). Child spans, by name (`SpanName`): `webhook`
(now), and for the call code: `provider.connect`, `turn`, `tool`, `cascade.stt`, `cascade.llm`,
`cascade.tts`, `fallback`, `barge_in`, `hang_up`.

Spans are made off the per-frame path: the call code keeps `time.monotonic()` timestamps and
records a span from two of them (`Span.record`), or opens one around an awaited step
(`Span.span`); a frame never touches the tracer. With tracing off, `Tracing.call` returns a
`CallTrace` whose every method returns at once, and no provider exists (relay/tracing/setup.py).

Attributes (keywords of `set`, `span`, `start`, `record`, `end`):
- `twilio.call_sid`, `twilio.stream_sid`: the call's SIDs (keywords `call_sid`, `stream_sid`).
- `relay.direction`: `inbound` or `outbound`.
- `relay.agent`: the call's agent (`default` without AGENTS_FILE).
- `relay.provider`: `openai` or `azure_openai`; `relay.provider_host`: the realtime endpoint's
  host (an Azure resource's host names its region's resource).
- `relay.mode`: `realtime` or `cascade`.
- `relay.outcome`: how the call (or step) ended: the call record's outcome, a refusal at the
  webhook (`busy`, `draining`, `unconfigured`, `replayed_webhook`), or `no_stream` (the call's
  stream never came to this process).
- `http.route`: on a `webhook` span, the route served.
Any other keyword `x` becomes `relay.x`; a name with a dot is used as it is.

Log lines logged inside a `span(...)` block, or a `CallTrace.bind_logs()` block, carry the trace
id and span id (relay/logs.py), so a JSON log line leads to its trace.
"""

from relay.tracing.pending import NO_STREAM
from relay.tracing.setup import Tracing, setup_tracing, traces_endpoint
from relay.tracing.spans import NO_SPAN, AttributeValue, CallTrace, Span, SpanName

__all__ = [
    "NO_SPAN",
    "NO_STREAM",
    "AttributeValue",
    "CallTrace",
    "Span",
    "SpanName",
    "Tracing",
    "setup_tracing",
    "traces_endpoint",
]
