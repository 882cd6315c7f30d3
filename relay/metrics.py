"""Prometheus metrics for the relay: one `Metrics` object per app, each with its own registry.

Owning the registry (instead of using prometheus_client's process-wide default) lets several apps
live in one process — tests build many — without "Duplicated timeseries" errors, and `/metrics`
shows exactly this app's series.

The manager updates the named attributes directly (`metrics.active_calls.inc()`) or through the
convenience methods that take what a call already produces: its `CallStats` at the end
(`observe_call_end`) and each tool call's audit entry (`observe_tool`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Voice latencies: a 20 ms frame is the unit the caller can perceive; beyond ~1 s a pause feels
# broken, beyond 5 s the caller assumes the line is dead.
VOICE_BUCKETS: Final[tuple[float, ...]] = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
)
# Tools run under a timeout of 10 s by default (relay.tools.registry.DEFAULT_TIMEOUT): the voice
# buckets plus room to tell a slow tool from one that hit its timeout.
TOOL_BUCKETS: Final[tuple[float, ...]] = (*VOICE_BUCKETS, 7.5, 10.0, 15.0, 30.0)

# Event-loop lag (relay.loop_lag): a millisecond or two is normal; 20 ms is a whole frame late for
# every call at once.
LAG_BUCKETS: Final[tuple[float, ...]] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REJECT_REASONS: Final[tuple[str, ...]] = (
    "busy",
    "draining",
    "unconfigured",
    "signature",
    "duplicate_stream",  # a second Media Stream for a call that has one (webhooks.replay)
    "replayed_token",  # a stream token presented a second time
    "call_had_stream",  # a fresh token (from a replayed webhook) for a call that already streamed
    "replayed_webhook",  # a signed /incoming-call for a call whose stream already started
)
"""The `reason` label values of `relay_calls_rejected_total`, created at zero up front."""

POST_CALL_OUTCOMES: Final[tuple[str, ...]] = ("delivered", "rejected", "failed", "dropped")
"""The `outcome` label values of `relay_post_call_deliveries_total`: delivered (2xx), rejected (the
receiver answered a final 4xx), failed (every try failed, or no record), dropped (too many pending,
or the relay stopped with no Redis to keep it)."""
OUTBOUND_OUTCOMES: Final[tuple[str, ...]] = (
    "created",  # Twilio accepted the call (201)
    "bad_request",  # 400: the body, the number or a placeholder
    "unauthorized",  # 401: no or a wrong admin token
    "busy",  # 503: MAX_CONCURRENT_CALLS reached
    "draining",  # 503: the instance is shutting down
    "unconfigured",  # 503: no provider, or no Twilio number, credentials or PUBLIC_URL
    "twilio_error",  # 502: Twilio refused the call or did not answer
)
"""The `outcome` label values of `relay_outbound_calls_total`, created at zero up front."""

AMD_RESULTS: Final[tuple[str, ...]] = (
    "human",
    "machine_start",
    "machine_end_beep",
    "machine_end_silence",
    "machine_end_other",
    "fax",
    "unknown",
)
"""Twilio's `AnsweredBy` values: the `answered_by` label of `relay_amd_results_total` (any other
value is counted as `other`)."""


class CallStatsLike(Protocol):
    """What `observe_call_end` reads: relay.sessions.realtime.CallStats, or anything shaped like it.

    An object may also carry `response_latencies_ms` (a sequence of floats, one per turn: the
    caller's end of speech → the first agent audio of the answer); it is observed when present.
    """

    connect_ms: float | None
    first_audio_ms: float | None
    frames_in: int
    frames_out: int
    barge_ins: int
    truncates: int


class Metrics:
    """The relay's metrics, registered in a registry of their own (`self.registry`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.active_calls = Gauge("relay_active_calls", "Calls being bridged right now.", registry=reg)
        self.calls_total = Counter(
            "relay_calls_total",
            "Calls that ended, by agent (the last one it had), mode and outcome.",
            ["agent", "mode", "outcome"],
            registry=reg,
        )
        self.calls_rejected_total = Counter(
            "relay_calls_rejected_total",
            "Calls refused before bridging: busy, draining, unconfigured, signature, and replays "
            "(duplicate_stream, replayed_token, call_had_stream, replayed_webhook).",
            ["reason"],
            registry=reg,
        )
        for reason in REJECT_REASONS:
            self.calls_rejected_total.labels(reason=reason)
        self.outbound_calls_total = Counter(
            "relay_outbound_calls_total",
            "POST /calls requests, by outcome: created, bad_request, unauthorized, busy, draining, "
            "unconfigured, twilio_error.",
            ["outcome"],
            registry=reg,
        )
        for outcome in OUTBOUND_OUTCOMES:
            self.outbound_calls_total.labels(outcome=outcome)
        self.amd_results_total = Counter(
            "relay_amd_results_total",
            "Answering-machine detection results of outbound calls, by Twilio's AnsweredBy.",
            ["answered_by"],
            registry=reg,
        )
        self.frames_in_total = Counter(
            "relay_frames_in_total", "Media frames received from Twilio (caller audio).", registry=reg
        )
        self.frames_out_total = Counter(
            "relay_frames_out_total", "Audio chunks received from the provider (agent audio).", registry=reg
        )
        self.barge_ins_total = Counter(
            "relay_barge_ins_total", "Times the caller spoke over the agent.", registry=reg
        )
        self.truncates_total = Counter(
            "relay_truncates_total", "Agent items truncated at what the caller heard.", registry=reg
        )
        self.dtmf_entries_total = Counter(
            "relay_dtmf_entries_total",
            "Key-press entries from callers given to the model (ended by # or DTMF_TIMEOUT_MS).",
            registry=reg,
        )
        self.tool_calls_total = Counter(
            "relay_tool_calls_total",
            "Tool calls, by tool name and outcome.",
            ["name", "outcome"],
            registry=reg,
        )
        self.tool_duration_seconds = Histogram(
            "relay_tool_duration_seconds",
            "How long tool calls ran, by tool name.",
            ["name"],
            buckets=TOOL_BUCKETS,
            registry=reg,
        )
        self.provider_connect_seconds = Histogram(
            "relay_provider_connect_seconds",
            "Stream start to the provider's realtime socket being open, by provider.",
            ["provider"],
            buckets=VOICE_BUCKETS,
            registry=reg,
        )
        self.preconnects_total = Counter(
            "relay_preconnects_total",
            "Realtime connections opened during /incoming-call, by outcome: used by the call's stream, "
            "expired (no stream came to this instance), failed, or not started (full; repeated: "
            "the call already had one, its webhook was replayed).",
            ["outcome"],
            registry=reg,
        )
        self.preconnects_missed_total = Counter(
            "relay_preconnects_missed_total",
            "Streams served by this instance whose webhook opened the early connection on another "
            "instance (a stream without call affinity, or after a restart): that connection, and its "
            "greeting, were made in vain (counted expired there).",
            registry=reg,
        )
        self.handoffs_total = Counter(
            "relay_handoffs_total",
            "Calls handed from one agent to another (the handoff tool), by agent.",
            ["from_agent", "to_agent"],
            registry=reg,
        )
        self.fallbacks_total = Counter(
            "relay_fallbacks_total",
            "Calls moved to another provider or mode, by cause.",
            ["cause"],
            registry=reg,
        )
        self.replay_check_fallbacks_total = Counter(
            "relay_replay_check_fallbacks_total",
            "Stream-token and replayed-webhook checks this instance decided alone because Redis did "
            "not answer in time (the check then holds on this instance only).",
            registry=reg,
        )
        self.provider_bad_events_total = Counter(
            "relay_provider_bad_events_total",
            "Realtime provider events dropped because they did not parse or had wrong types.",
            registry=reg,
        )
        self.store_errors_total = Counter(
            "relay_store_errors_total",
            "Call store operations that failed (record writes, which are retried; limiter calls; "
            "readiness pings). Calls go on.",
            registry=reg,
        )
        self.store_dropped_total = Counter(
            "relay_store_dropped_total",
            "Call record writes given up: the outbox was full during a store outage, the store refused "
            "the write, or the relay stopped before the store came back.",
            registry=reg,
        )
        self.store_pending_writes = Gauge(
            "relay_store_pending_writes",
            "Call record writes queued in the outbox, not yet stored.",
            registry=reg,
        )
        self.store_up = Gauge(
            "relay_store_up",
            "1 when the call store answered the last operation, 0 when it failed.",
            registry=reg,
        )
        self.calls_admitted_fail_open_total = Counter(
            "relay_calls_admitted_fail_open_total",
            "Calls admitted on this instance's own MAX_CONCURRENT_CALLS because the shared limiter "
            "(Redis) did not answer in time.",
            registry=reg,
        )
        self.calls_lost_total = Counter(
            "relay_calls_lost_total",
            "Calls whose concurrency slots expired (their instance crashed, or lost Redis for longer "
            "than CALL_SLOT_TTL), marked ended with outcome lost by this instance (as far as it saw "
            "Redis's answer).",
            registry=reg,
        )
        self.event_loop_lag_seconds = Histogram(
            "relay_event_loop_lag_seconds",
            "How late the event loop ran a 100 ms timer: every call's audio is delayed as much "
            "(20 ms is a whole frame).",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.post_call_deliveries_total = Counter(
            "relay_post_call_deliveries_total",
            "Post-call webhook deliveries by outcome: delivered, rejected (a final 4xx), failed "
            "(every try failed), dropped (too many pending, or stopped without Redis).",
            ["outcome"],
            registry=reg,
        )
        for outcome in POST_CALL_OUTCOMES:
            self.post_call_deliveries_total.labels(outcome=outcome)
        self.post_call_pending = Gauge(
            "relay_post_call_pending",
            "Post-call webhook deliveries in progress in this process (waiting, trying or retrying).",
            registry=reg,
        )
        self.first_audio_seconds = Histogram(
            "relay_first_audio_seconds",
            "Stream start to the first agent audio sent to Twilio.",
            buckets=VOICE_BUCKETS,
            registry=reg,
        )
        self.turn_latency_seconds = Histogram(
            "relay_turn_latency_seconds",
            "Per turn, the caller's end of speech (the VAD's, less its silence window and, on the realtime "
            "path, the audio the provider had not heard yet) to the first agent audio sent to Twilio, "
            "by path (realtime, cascade) and agent.",
            ["path", "agent"],
            buckets=VOICE_BUCKETS,
            registry=reg,
        )
        self.response_latency_seconds = Histogram(
            "relay_response_latency_seconds",
            "The caller's end of speech (as the VAD decided it) to the first agent audio of the answer.",
            buckets=VOICE_BUCKETS,
            registry=reg,
        )

    def observe_call_end(
        self,
        stats: CallStatsLike | None,
        mode: str,
        outcome: str,
        *,
        provider: str = "",
        count: bool = True,
        agent: str = "default",
    ) -> None:
        """Counts an ended call and its figures; call once per call, after the session has run.

        `stats` is None when the call ended before a session existed: only the call is counted.
        `agent` labels the count (the call's last agent: `default` without AGENTS_FILE).
        `provider` labels the connect time (`adapter.vendor`: openai, azure); the connect time is
        observed only when the provider was reached (`stats.connect_ms` set). `count=False` adds the
        figures of one phase (realtime before a fallback) without counting the call again.
        """
        if count:
            self.calls_total.labels(agent=agent, mode=mode, outcome=outcome).inc()
        if stats is None:
            return
        self.frames_in_total.inc(stats.frames_in)
        self.frames_out_total.inc(stats.frames_out)
        self.barge_ins_total.inc(stats.barge_ins)
        self.truncates_total.inc(stats.truncates)
        self.provider_bad_events_total.inc(getattr(stats, "bad_events", 0))
        if stats.connect_ms is not None:
            self.provider_connect_seconds.labels(provider=provider or "unknown").observe(
                stats.connect_ms / 1000
            )
        if stats.first_audio_ms is not None:
            self.first_audio_seconds.observe(stats.first_audio_ms / 1000)
        turns: Iterable[float] = getattr(stats, "turn_latencies_ms", None) or ()
        if turns:
            turn_latency = self.turn_latency_seconds.labels(
                path=getattr(stats, "path", "") or mode, agent=agent
            )
            for ms in turns:
                turn_latency.observe(ms / 1000)
        latencies: Iterable[float] = getattr(stats, "response_latencies_ms", None) or ()
        for ms in latencies:
            self.response_latency_seconds.observe(ms / 1000)

    def observe_tool(self, audit: Mapping[str, Any]) -> None:
        """Counts one tool call from its audit entry (relay.tools.registry.ToolResult.audit()).

        A name the registry does not know (outcome `unknown_tool`) is the model's invention: it is
        counted as `unknown`, so made-up names cannot grow the number of series without bound.
        """
        outcome = str(audit.get("outcome") or "unknown")
        name = "unknown" if outcome == "unknown_tool" else str(audit.get("name") or "unknown")
        self.tool_calls_total.labels(name=name, outcome=outcome).inc()
        duration_ms = audit.get("duration_ms")
        if isinstance(duration_ms, int | float):
            self.tool_duration_seconds.labels(name=name).observe(duration_ms / 1000)

    def observe_rejection(self, reason: str) -> None:
        """Counts a refused call: `manager.admit()`'s answer, or 'signature'."""
        self.calls_rejected_total.labels(reason=reason).inc()

    def observe_amd(self, answered_by: str) -> None:
        """Counts one AMD result; a value Twilio does not document is counted as `other`."""
        label = answered_by if answered_by in AMD_RESULTS else "other"
        self.amd_results_total.labels(answered_by=label).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = [
    "POST_CALL_OUTCOMES",
    "AMD_RESULTS",
    "OUTBOUND_OUTCOMES",
    "REJECT_REASONS",
    "TOOL_BUCKETS",
    "VOICE_BUCKETS",
    "CallStatsLike",
    "Metrics",
]
