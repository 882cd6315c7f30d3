"""The agents this process serves calls with: the environment's one (`default`) or those of
AGENTS_FILE, which Twilio number each answers, and the ones a reload replaced while their calls
still run."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from relay.sessions.agent_runtime import AdapterFactory, AgentRuntime

__all__ = ["AgentSet"]

log = logging.getLogger("relay.agents")


class AgentSet:
    """Agents by name, the default one, and the number each answers."""

    def __init__(self, default: AgentRuntime, *, adapter_factory: AdapterFactory, registry: Any) -> None:
        self.default = default
        self._adapter_factory = adapter_factory
        self._registry = registry
        self._by_name: dict[str, AgentRuntime] = {default.name: default}
        self._numbers: dict[str, str] = {}  # a Twilio number -> the agent answering it
        self._retired: list[AgentRuntime] = []  # replaced by a reload; their calls may still run

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[AgentRuntime]:
        return iter(list(self._by_name.values()))

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> AgentRuntime | None:
        return self._by_name.get(name)

    def named(self, name: str | None) -> AgentRuntime:
        """The agent of that name; the default one for None or a name not known (any more: the
        agents were reloaded since the call's webhook)."""
        return self._by_name.get(name or "", self.default)

    def for_call(self, number: str, requested: str | None = None) -> AgentRuntime:
        """The agent of a new call: the one an outbound call asked for, else the one whose
        `numbers` hold the relay's side of the call (an inbound call's `To`, an outbound call's
        `From`), else the default."""
        return self.named(requested or self._numbers.get(number))

    def replace(self, book: Any) -> None:
        """The agents of AGENTS_FILE (a `relay.agents.AgentBook`), at startup and at each reload:
        new calls get these; calls in progress keep the agent they have (retired here, closed once
        no call runs with it)."""
        runtimes: dict[str, AgentRuntime] = {}
        for name, spec in book.agents.items():
            runtimes[name] = AgentRuntime(
                name,
                spec.settings,
                adapter_factory=self._adapter_factory,
                registry=self._registry,
                tools=frozenset(spec.tools) if spec.tools is not None else None,
                description=spec.description,
                handoffs={other: book.agents[other].description for other in spec.handoffs},
            )
        self._retired += self._by_name.values()
        self._by_name = runtimes
        self.default = runtimes[book.default.name]
        self._numbers = {number: name for name, spec in book.agents.items() for number in spec.numbers}
        log.info("agents: %s (default: %s)", ", ".join(runtimes), self.default.name)

    async def close_retired(self, in_use: Iterable[AgentRuntime]) -> None:
        """Closes the retired agents that no call in `in_use` runs with any more (`in_use` is not
        read while none is retired: a call's end after no reload costs nothing)."""
        if not self._retired:
            return
        using = {id(agent) for agent in in_use}
        retired, self._retired = self._retired, []
        for agent in retired:
            if id(agent) in using:
                self._retired.append(agent)
            else:
                await agent.aclose()

    async def aclose(self) -> None:
        for agent in [*self._by_name.values(), *self._retired]:
            await agent.aclose()
        self._retired = []
