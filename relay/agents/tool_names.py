"""An agent's `tools` entries checked and resolved to the tool registry's names.

An entry is a built-in tool's name (`web_search`, `end_call`, `transfer_call`, `send_digits`), the
name of a tool a RELAY_TOOLS module registers, or `module:name` (a tool `@tool` registers in
`module`, named after its function unless `@tool` names it), whose module is imported now, so a
typo is a problem at load time and not at a call.

relay.agents imports the tool registry, never the reverse: tools get what they need of agents
(names, descriptions) as plain values.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.agents.fields import BUILTIN_TOOLS
from relay.config import Settings
from relay.errors import ConfigError

__all__ = ["ResolvedTools", "resolve_tools"]

_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass
class ResolvedTools:
    """The registry names of an agent's tools, the modules to import for them (beyond RELAY_TOOLS)
    and the problems found, each starting with the entry as the file spells it."""

    names: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def resolve_tools(entries: Sequence[str], settings: Settings) -> ResolvedTools:
    from relay.tools.registry import default_registry, load_tool_modules

    out = ResolvedTools()
    try:
        load_tool_modules(settings.tool_modules)
        user = [t.name for t in default_registry.from_modules(settings.tool_modules)]
    except ConfigError:  # RELAY_TOOLS itself is reported by the tool registry's own check
        user = []
    for entry in entries:
        if entry in BUILTIN_TOOLS or entry in user:
            name: str | None = entry
        elif entry == "handoff":
            out.problems.append(
                '"handoff" is offered by handoffs: list the agents this one may hand a call to there'
            )
            continue
        elif ":" in entry:
            name = _module_tool(entry, out)
        else:
            known = [*BUILTIN_TOOLS, *user]
            close = difflib.get_close_matches(entry, known, n=1, cutoff=0.7)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            out.problems.append(
                f'"{entry}" is not a tool: {hint}use a built-in ({", ".join(BUILTIN_TOOLS)}), a tool of '
                'RELAY_TOOLS, or "module:name" for a tool registered with @tool in module'
            )
            continue
        if name is not None and name not in out.names:
            out.names.append(name)
    return out


def _module_tool(entry: str, out: ResolvedTools) -> str | None:
    """`module:name` -> the tool's name, importing `module`; None (and a problem) otherwise."""
    from relay.tools.registry import default_registry, load_tool_modules

    module, _, name = entry.partition(":")
    if not _MODULE_RE.match(module) or not name.isidentifier():
        out.problems.append(f'"{entry}" is not "module:name": e.g. "myapp.tools:order_status"')
        return None
    try:
        load_tool_modules([module])
    except ConfigError as exc:
        cause = exc.__cause__ or exc
        out.problems.append(f'"{entry}": cannot import {module} ({type(cause).__name__}: {cause})')
        return None
    names = [t.name for t in default_registry.from_modules([module])]
    if name not in names:
        has = f"it registers {', '.join(names)}" if names else "it registers no tool"
        out.problems.append(f'"{entry}": {module} registers no tool named {name} ({has} with @tool)')
        return None
    if module not in out.modules:
        out.modules.append(module)
    return name
