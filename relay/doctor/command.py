"""`relay doctor`: loads the settings, runs every check (the network ones concurrently) and prints
one line per check and a count. With AGENTS_FILE, the file is checked and each agent's provider
gets its own line (`agent NAME`) in place of the environment's `provider` and `realtime` lines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.config import Settings, load_settings
from relay.doctor.agents import check_agents, load_agents_checked
from relay.doctor.configuration import check_configuration, check_tools
from relay.doctor.realtime import check_realtime
from relay.doctor.report import Check, DoctorReport, fail, ok, warn
from relay.doctor.services import check_public_url, check_redis, check_tavily
from relay.doctor.twilio_account import check_twilio
from relay.errors import ConfigError
from relay.sessions.providers import AsyncTokenCredential

__all__ = ["doctor_command", "run_doctor"]


def _load_settings() -> tuple[Settings | None, list[Check]]:
    """The settings from the environment and `./.env`, and a line saying where they came from (or
    one FAIL line per invalid setting, naming the variable and the fix)."""
    env_file = Path(".env")
    try:
        settings = load_settings()
    except ConfigError as exc:
        return None, [fail("settings", problem) for problem in exc.problems]
    if env_file.exists():
        return settings, [ok("settings", f"read from {env_file.resolve()} and the environment")]
    return settings, [
        warn(
            "settings", f"no .env in {Path.cwd()}: only environment variables are used (cp .env.example .env)"
        )
    ]


async def run_doctor(
    settings: Settings | None = None,
    *,
    azure_credential: AsyncTokenCredential | None = None,
    limit: float = 10.0,
) -> DoctorReport:
    """Every check; `settings` default to `load_settings()` (the environment and `.env`)."""
    report = DoctorReport()
    if settings is None:
        settings, checks = _load_settings()
        report.checks.extend(checks)
        if settings is None:
            return report
    book, agent_lines = load_agents_checked(settings) if settings.agents_file else (None, [])
    report.checks.extend(agent_lines)
    configuration = check_configuration(settings)
    if book is not None:  # each agent's line says its provider, as `provider` does without agents
        configuration = [c for c in configuration if c.name != "provider"]
    report.checks.extend(configuration)
    report.checks.append(check_tools(settings))
    providers = (
        check_realtime(settings, azure_credential=azure_credential, limit=limit)
        if book is None
        else check_agents(book, azure_credential=azure_credential, limit=limit)
    )
    jobs: list[Awaitable[list[Check]]] = [
        providers,
        check_twilio(settings, limit=limit),
        check_public_url(settings, limit=min(limit, 5.0)),
        check_redis(settings, limit=min(limit, 5.0)),
        check_tavily(settings, limit=limit),
    ]
    for checks in await asyncio.gather(*jobs):
        report.checks.extend(checks)
    return report


async def doctor_command(emit: Callable[[str], None] | None = None) -> int:
    """`relay doctor`: prints one line per check and a count; returns the exit status."""
    out = emit or (lambda line: print(line, flush=True))
    out("relay doctor: checking the configuration and every configured service…")
    report = await run_doctor()
    for line in report.lines():
        out(line)
    out(report.counts() + (" — fix the FAIL lines above" if report.failed else ""))
    return report.exit_code
