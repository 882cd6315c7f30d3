"""What an agent is (`AgentSpec`) and the agents a relay serves (`AgentBook`).

Both are immutable: a call keeps the spec it was given even when a reload swaps the book, and a
handoff looks the other agent up in the book of the moment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from relay.config import Settings
from relay.phone_numbers import normalize_number

__all__ = ["DEFAULT_AGENT", "AgentBook", "AgentSpec"]

DEFAULT_AGENT = "default"
"""The name of the agent that answers every number no agent claims."""


@dataclass(frozen=True, eq=False)
class AgentSpec:
    """One agent: its name, the numbers whose inbound calls it answers, and its settings (the
    environment's with this agent's fields applied, validated like the environment's).

    `tools` are the registry names of the tools it is offered (a `module:function` entry of the
    file resolved to its tool's name; None: every tool offered today); `handoffs` the agents it may
    hand a call to; `source` says where it was defined: `file` or `environment`; `api_key_env` the
    environment variable its key was read from, when the file names one (never the key)."""

    name: str
    numbers: tuple[str, ...]
    description: str
    tools: tuple[str, ...] | None
    handoffs: tuple[str, ...]
    settings: Settings
    source: Literal["file", "environment"]
    api_key_env: str | None = None  # the variable its key came from, when the file names one

    def __repr__(self) -> str:
        provider = self.settings.describe_provider()
        return f"AgentSpec({self.name!r}, {provider}, numbers={list(self.numbers)}, source={self.source!r})"


@dataclass(frozen=True, eq=False)
class AgentBook:
    """The agents of one load of the file, in file order (the environment's `default`, when the
    file has none, last), the default agent and the file they came from (None: no AGENTS_FILE)."""

    agents: Mapping[str, AgentSpec]
    default: AgentSpec
    path: Path | None = None
    _by_number: Mapping[str, AgentSpec] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "agents", MappingProxyType(dict(self.agents)))
        numbers = {number: spec for spec in self.agents.values() for number in spec.numbers}
        object.__setattr__(self, "_by_number", MappingProxyType(numbers))

    @classmethod
    def single(cls, settings: Settings) -> AgentBook:
        """No AGENTS_FILE: the environment's settings are the one agent, `default`."""
        spec = environment_agent(settings)
        return cls({spec.name: spec}, spec, None)

    def for_number(self, number: str) -> AgentSpec:
        """The agent whose `numbers` hold `number` (a call's `To`), else the default."""
        found = self._by_number.get(number)
        if found is None:
            found = self._by_number.get(normalize_number(number))
        return found or self.default

    def get(self, name: str) -> AgentSpec | None:
        return self.agents.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Every agent's name, in file order: the bounded set a metric label takes."""
        return tuple(self.agents)


def environment_agent(settings: Settings) -> AgentSpec:
    """The environment's settings as the agent `default`: no numbers, every tool, no handoffs."""
    return AgentSpec(
        name=DEFAULT_AGENT,
        numbers=(),
        description="",
        tools=None,
        handoffs=(),
        settings=settings,
        source="environment",
    )
