"""The doctor's agents checks (AGENTS_FILE): the file loads, and each agent's provider answers,
one line per agent: the realtime check (`check_realtime`: DNS, Entra ID token, WebSocket connect
with the agent's key, first event) run against that agent's settings."""

from __future__ import annotations

import asyncio

from relay.agents import AgentBook, AgentSpec, load_agents
from relay.config import Settings
from relay.doctor.realtime import check_realtime
from relay.doctor.report import Check, Status, fail, ok
from relay.errors import ConfigError
from relay.sessions.providers import AsyncTokenCredential

__all__ = ["check_agent", "check_agents", "load_agents_checked"]

_WORST: tuple[Status, ...] = ("FAIL", "WARN", "SKIP", "OK")


def load_agents_checked(settings: Settings) -> tuple[AgentBook | None, list[Check]]:
    """The agents of AGENTS_FILE and a line saying which (or one FAIL line per problem)."""
    try:
        book = load_agents(settings)
    except ConfigError as exc:
        return None, [fail("agents", problem) for problem in exc.problems]
    described = ", ".join(_describe(spec, book) for spec in book.agents.values())
    return book, [ok("agents", f"{len(book.agents)} agents from {settings.agents_file}: {described}")]


def _describe(spec: AgentSpec, book: AgentBook) -> str:
    if spec is book.default:
        origin = "the environment's settings, " if spec.source == "environment" else ""
        return f"{spec.name} ({origin}every other number)"
    return f"{spec.name} ({', '.join(spec.numbers) or 'no number: outbound calls and handoffs'})"


async def check_agents(
    book: AgentBook, *, azure_credential: AsyncTokenCredential | None = None, limit: float = 10.0
) -> list[Check]:
    """One line per agent, checked concurrently, in the file's order."""
    jobs = [
        check_agent(spec, azure_credential=azure_credential, limit=limit) for spec in book.agents.values()
    ]
    return list(await asyncio.gather(*jobs))


async def check_agent(
    spec: AgentSpec, *, azure_credential: AsyncTokenCredential | None = None, limit: float = 10.0
) -> Check:
    """The agent's provider: reachable, its key or Entra ID accepted, its model or deployment there.
    The line's status is the worst of the realtime checks; its message theirs, prefixed with the
    provider (and the variable its key came from, when the file names one)."""
    checks = await check_realtime(spec.settings, azure_credential=azure_credential, limit=limit)
    status = next(s for s in _WORST if any(c.status == s for c in checks))
    message = "; ".join(c.message for c in checks if c.status == status)
    if status == "SKIP":  # no adapter (no key): this agent cannot take a call
        status, message = "FAIL", message.removeprefix("not checked: ")
    provider = spec.settings.describe_provider()
    key = f", key from {spec.api_key_env}" if spec.api_key_env else ""
    message = message.removeprefix(f"{provider}: ")
    return Check(f"agent {spec.name}", status, f"{provider}{key}: {message}")
