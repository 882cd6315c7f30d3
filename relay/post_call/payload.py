"""What the post-call webhook sends: the payload built from a stored call record, and its signature.

The body is compact JSON; `X-Relay-Timestamp` is the unix time of the attempt (each retry is signed
anew) and `X-Relay-Signature` is `sha256=` + hex HMAC-SHA256(secret, timestamp + "." + body), so a
receiver can check both that the relay sent it and that it is fresh.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import orjson

__all__ = ["build_payload", "encode", "sign", "signed_headers"]

USER_AGENT = "twilio-realtime-relay post-call webhook"


def build_payload(record: dict[str, Any]) -> dict[str, Any]:
    """The webhook's JSON object from a call record (relay/sessions/records.py's shape).

    Fields the record may not hold yet (`answered_by`, `recording_url`, set by outbound calls and
    recordings) are null; `direction` is "inbound" unless the record says otherwise. The latency
    figures are those of every phase of the call (realtime, then the cascade after a fallback).
    """
    stats = [phase for phase in record.get("stats") or [] if isinstance(phase, dict)]
    return {
        "call_sid": record.get("call_sid"),
        "direction": record.get("direction") or "inbound",
        "from": record.get("from") or None,
        "to": record.get("to") or None,
        "started_at": record.get("started_at"),
        "ended_at": record.get("ended_at"),
        "outcome": record.get("outcome") or None,
        "answered_by": record.get("answered_by") or None,
        "mode": record.get("mode") or None,
        "provider": record.get("provider") or None,
        "agent": record.get("agent") or None,
        "agents": [a.get("name") for a in record.get("agents") or [] if isinstance(a, dict)],
        "transcript": [
            {"role": turn.get("role"), "text": turn.get("text")}
            for turn in record.get("transcript") or []
            if isinstance(turn, dict)
        ],
        "tool_calls": list(record.get("tools") or []),
        "recording_url": record.get("recording_url") or None,
        "fallback": list(record.get("fallbacks") or []) or None,
        "first_audio_ms": next(
            (p["first_audio_ms"] for p in stats if p.get("first_audio_ms") is not None), None
        ),
        "response_latencies_ms": [ms for p in stats for ms in p.get("response_latencies_ms") or []],
        "turn_latencies_ms": [ms for p in stats for ms in p.get("turn_latencies_ms") or []],
        "heard_latencies_ms": [ms for p in stats for ms in p.get("heard_latencies_ms") or []],
        "turn_timings": [timing for p in stats for timing in p.get("turn_timings") or []],
    }


def encode(payload: dict[str, Any]) -> bytes:
    """The body as sent and signed: compact JSON (whatever JSON cannot hold becomes its str())."""
    return orjson.dumps(payload, default=str)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers of one attempt: content type, timestamp (unix seconds) and signature."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Relay-Timestamp": timestamp,
        "X-Relay-Signature": sign(secret, timestamp, body),
    }
