"""Agents: one relay, many numbers, each answered by its own agent (instructions, voice, tools,
provider and region), read from the TOML file AGENTS_FILE.

`load_agents(settings)` reads and checks the file (`loader`; the fields are in `fields`, a tool
entry's resolution in `tool_names`) and returns an `AgentBook` of immutable `AgentSpec`s (`book`);
`AgentsHolder` keeps the book of the moment and reloads it on SIGHUP (`holder`). Without
AGENTS_FILE the environment is the one agent, `default`, and nothing changes.
"""

from relay.agents.book import DEFAULT_AGENT, AgentBook, AgentSpec
from relay.agents.fields import AGENT_FIELDS, BUILTIN_TOOLS
from relay.agents.holder import AgentsHolder
from relay.agents.loader import load_agents

__all__ = [
    "AGENT_FIELDS",
    "BUILTIN_TOOLS",
    "DEFAULT_AGENT",
    "AgentBook",
    "AgentSpec",
    "AgentsHolder",
    "load_agents",
]
