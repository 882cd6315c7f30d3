"""`AgentsHolder`: the agents of the moment, and their reload (SIGHUP, relay/server.py).

A reload reads AGENTS_FILE again (and the keys its `api_key_env` entries name); the other settings
stay as the relay started with them. A valid file replaces the book in one assignment: new calls
get the new agents, calls in progress keep the `AgentSpec` they were given (specs are immutable).
An invalid file is refused with one ERROR line listing its problems, and the old agents stay.
"""

from __future__ import annotations

import logging
import threading

from relay.agents.book import AgentBook
from relay.agents.loader import load_agents
from relay.config import Settings
from relay.errors import ConfigError

__all__ = ["AgentsHolder"]

log = logging.getLogger("relay.agents")


class AgentsHolder:
    """Holds the current AgentBook; `reload()` swaps it for the file's new content when valid."""

    def __init__(self, settings: Settings, book: AgentBook | None = None) -> None:
        self.settings = settings
        self._book = book if book is not None else load_agents(settings)
        self._reloading = threading.Lock()  # two SIGHUPs in a row: one load after the other

    @property
    def book(self) -> AgentBook:
        return self._book

    def reload(self) -> bool:
        """Loads AGENTS_FILE again; True when the new agents are in place. Safe from any thread."""
        if not self.settings.agents_file:
            log.info("agents: nothing to reload (AGENTS_FILE is not set)")
            return False
        with self._reloading:
            return self._reload()

    def _reload(self) -> bool:
        try:
            book = load_agents(self.settings)
        except ConfigError as exc:
            log.error(
                "agents: %s refused, keeping the agents %s: %s",
                self.settings.agents_file,
                ", ".join(self._book.names),
                " | ".join(exc.problems),
                extra={"problems": exc.problems},
            )
            return False
        self._book = book
        log.info(
            "agents: reloaded %s: %s",
            self.settings.agents_file,
            ", ".join(book.names),
            extra={"agents": list(book.names)},
        )
        return True
