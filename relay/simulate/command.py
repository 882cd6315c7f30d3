"""`relay call`: runs a simulated call, prints its timeline as it happens and a summary, and, with
RELAY_ADMIN_TOKEN, the relay's own record of the call (its transcript and tool audit)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from relay.simulate.caller import run_call
from relay.simulate.results import Timeline
from relay.simulate.script import CallOptions

__all__ = ["call_command", "fetch_record", "print_line", "record_lines"]


def print_line(line: str) -> None:
    """Prints one timeline line at once (the output may be a pipe)."""
    print(line, flush=True)


def record_lines(record: dict[str, Any]) -> list[str]:
    """The relay's view of a call: who answered (an outbound call's AMD result), the outcome, the
    transcript it stored (only what the caller heard) and the tool audit. A Media Stream carries
    only audio, so this comes from `GET /calls/{call_sid}`."""
    lines: list[str] = []
    if record.get("answered_by"):
        detection = record.get("machine_detection_ms")
        after = f" (AMD, {detection} ms)" if detection is not None else ""
        lines.append(f"answered_by      {record['answered_by']}{after}")
    if record.get("outcome"):
        lines.append(f"outcome          {record['outcome']}")
    agents = [a.get("name") for a in record.get("agents") or [] if isinstance(a, dict)]
    if agents:
        lines.append(f"agents           {' → '.join(str(name) for name in agents)}")
    transcript = record.get("transcript") or []
    if transcript:
        lines.append("transcript (as the relay stored it: only what the caller heard)")
        for turn in transcript:
            cut = "  [interrupted]" if turn.get("interrupted") else ""
            lines.append(f"  {turn.get('role', '?'):<10} {turn.get('text', '')}{cut}")
    for tool in record.get("tools") or []:
        lines.append(
            f"tool audit       {tool.get('name')} {orjson.dumps(tool.get('arguments')).decode()} → "
            f"{tool.get('outcome')} in {tool.get('duration_ms')} ms"
        )
    phases = [p for p in record.get("stats") or [] if isinstance(p, dict)]
    turns = [ms for p in phases for ms in p.get("turn_latencies_ms") or []]
    if turns:
        figures = ", ".join(f"{ms:.0f} ms" for ms in turns)
        lines.append(f"relay's turns    {figures} (its end of speech → first agent audio sent)")
    for fallback in record.get("fallbacks") or []:
        lines.append(f"fallback         to the cascade ({fallback.get('cause')}): {fallback.get('error')}")
    return lines


async def fetch_record(options: CallOptions, call_sid: str) -> dict[str, Any] | None:
    """The relay's record of the call, waiting briefly for the call to be closed; None if unavailable."""
    headers = {"Authorization": f"Bearer {options.admin_token}"}
    async with httpx.AsyncClient(base_url=options.url, timeout=5.0) as client:
        record: dict[str, Any] | None = None
        for _ in range(20):  # the relay writes the end of the record just after the stream closes
            response = await client.get(f"/calls/{call_sid}", headers=headers)
            if response.status_code != 200:
                return None
            record = response.json()
            if record.get("ended_at"):
                break
            await asyncio.sleep(0.1)
        return record


async def call_command(options: CallOptions, emit: Callable[[str], None] = print_line) -> int:
    """`relay call`: runs the call, prints the timeline as it happens and a summary; the exit status."""
    signing = (
        f"signed for {options.public_url or options.url}"
        if options.auth_token
        else "unsigned: TWILIO_AUTH_TOKEN is not set"
    )
    out = options.outbound
    what = f"relay call --outbound {out.to} (the callee)" if out else "relay call"
    emit(f"{what} → {options.url} ({signing})")
    result = await run_call(options, timeline=Timeline(emit))
    emit("summary")
    for line in result.summary_lines():
        emit("  " + line)
    if options.admin_token and result.call_sid:
        try:
            record = await fetch_record(options, result.call_sid)
        except httpx.HTTPError as exc:
            record = None
            emit(f"record           not fetched: {exc}")
        if record is None:
            emit("record           not available (is RELAY_ADMIN_TOKEN the relay's?)")
        for line in record_lines(record or {}):
            emit(line)
    return result.exit_code
