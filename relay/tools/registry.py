"""The tool registry: typed async functions the model can call, whichever path (realtime or cascade)
the call is on.

A tool's JSON schema comes from one place: either the typed signature of its handler (a pydantic
model is built from the parameters after `ctx`) or an explicit pydantic model. `ToolRegistry.dispatch`
turns a model's function call into a `ToolResult` and never raises for the model's mistakes or the
tool's failures: those become an `{"error": "..."}` output the model can read and talk about. Only
`asyncio.CancelledError` (the call ended) propagates.

The parts live beside it: `context` (what a tool sees and returns), `spec` (`Tool`), `schema`
(parameters schema from a signature or a model), `bounds` (argument, output and audit limits).
The public names of `context` and `spec` stay importable from here, as before.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, overload

import orjson
from pydantic import BaseModel, ValidationError

from relay.errors import ConfigError, ToolError
from relay.tools.bounds import (
    DEFAULT_MAX_OUTPUT_BYTES,
    MAX_ARGUMENTS_BYTES,
    cap_output,
    render_output,
    truncate,
)
from relay.tools.context import CallControl, Outcome, ToolCallRequest, ToolContext, ToolResult
from relay.tools.spec import DEFAULT_TIMEOUT, Tool

if TYPE_CHECKING:
    from relay.config import Settings

__all__ = [
    "CallControl",
    "Outcome",
    "Tool",
    "ToolCallRequest",
    "ToolContext",
    "ToolRegistry",
    "ToolResult",
    "build_registry",
    "default_registry",
    "load_tool_modules",
    "tool",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class ToolRegistry:
    """Named tools, rendered for either API, and dispatched with validation, timeout and caps."""

    def __init__(self, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        if max_output_bytes < 64:
            raise ValueError("max_output_bytes must be at least 64")
        self.max_output_bytes = max_output_bytes
        self._tools: dict[str, Tool] = {}
        self._modules: dict[str, str] = {}  # tool name → the module whose `@tool` registered it

    def register(self, spec: Tool) -> Tool:
        """Adds a tool; a different tool under the same name is a `ConfigError`."""
        existing = self._tools.get(spec.name)
        if existing is not None and existing is not spec:
            raise ConfigError(f"two tools are named {spec.name!r}: rename one of them")
        self._tools[spec.name] = spec
        return spec

    def with_tools(self, tools: Sequence[Tool]) -> ToolRegistry:
        """A copy with `tools` added, each replacing the tool of its name in place (an agent's own
        `transfer_call` for its allowlist, its `handoff` for its agents); this one is unchanged."""
        copy = ToolRegistry(max_output_bytes=self.max_output_bytes)
        copy._tools = dict(self._tools)
        copy._modules = dict(self._modules)
        for spec in tools:
            copy._tools[spec.name] = spec
        return copy

    @overload
    def tool(self, name: F, /) -> F: ...

    @overload
    def tool(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        params: type[BaseModel] | None = None,
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        name: str | Callable[..., Awaitable[Any]] | None = None,
        *,
        description: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        params: type[BaseModel] | None = None,
    ) -> Any:
        """Registers an async function as a tool; use as `@tool` or `@tool("name", timeout=5)`.

        The schema comes from the signature after `ctx`, or from `params=` (a pydantic model that
        the handler then receives whole: `async def f(ctx, params: Model)`). The description
        defaults to the docstring. The function is returned unchanged.
        """
        if callable(name):
            return self.tool()(name)
        tool_name = name

        def decorate(fn: F) -> F:
            if params is not None:
                made = Tool.from_model(fn, params, name=tool_name, description=description, timeout=timeout)
            else:
                made = Tool.from_function(fn, name=tool_name, description=description, timeout=timeout)
            self.register(made)
            self._modules[made.name] = fn.__module__
            return fn

        return decorate

    def from_modules(self, modules: Sequence[str]) -> list[Tool]:
        """The tools `@tool` registered from `modules` (or their submodules), in registration order:
        a module imported for one app (RELAY_TOOLS) must not lend its tools to another."""
        prefixes = tuple(f"{m}." for m in modules)
        return [
            spec
            for name, spec in self._tools.items()
            if (f"{self._modules.get(name, '')}.").startswith(prefixes)
        ]

    def get(self, name: str) -> Tool | None:
        """The tool called `name`, or None."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """Tool names in registration order."""
        return list(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def realtime_tools(self, hidden: Collection[str] = ()) -> list[dict[str, Any]]:
        """Realtime `session.tools`: flat `{type, name, description, parameters}` (all but `hidden`)."""
        return [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
            for t in self._tools.values()
            if t.name not in hidden
        ]

    def chat_tools(self, hidden: Collection[str] = ()) -> list[dict[str, Any]]:
        """Chat Completions `tools`: `{type: "function", function: {name, description, parameters}}`
        (all but `hidden`)."""
        return [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in self._tools.values()
            if t.name not in hidden
        ]

    async def dispatch(
        self, call: ToolCallRequest, ctx: ToolContext, hidden: Collection[str] = ()
    ) -> ToolResult:
        """Runs one function call; every failure becomes an `{"error": ...}` output, not an exception.
        A tool in `hidden` (not offered to this call) is unknown to it, whatever the model sends.

        `asyncio.CancelledError` propagates: it means the call (or the response) ended.
        """
        started = time.perf_counter()
        arguments: dict[str, Any] | str = call.arguments
        spec = self._tools.get(call.name) if call.name not in hidden else None
        if spec is None:
            available = ", ".join(name for name in self._tools if name not in hidden) or "none"
            message = f"There is no tool named {truncate(call.name, 64)!r}. Available tools: {available}."
            return self._result(call, "unknown_tool", _error(message), arguments, started)
        size = len(call.arguments.encode())
        if size > MAX_ARGUMENTS_BYTES:
            message = (
                f"The arguments for {spec.name} are too long ({size} bytes; at most "
                f"{MAX_ARGUMENTS_BYTES}). Call it again with shorter values."
            )
            return self._result(call, "invalid_arguments", _error(message), arguments, started)
        try:
            parsed = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError as exc:
            message = f"The arguments for {spec.name} are not valid JSON ({exc}); send one JSON object."
            return self._result(call, "invalid_arguments", _error(message), arguments, started)
        if not isinstance(parsed, dict):
            message = f"The arguments for {spec.name} must be a JSON object, not {type(parsed).__name__}."
            return self._result(call, "invalid_arguments", _error(message), arguments, started)
        arguments = parsed
        try:
            params = spec.params_model.model_validate(parsed)
        except ValidationError as exc:
            message = f"Invalid arguments for {spec.name}: {_describe_validation(exc)}."
            return self._result(call, "invalid_arguments", _error(message), arguments, started)
        outcome, output = await self._run(spec, params, ctx)
        return self._result(call, outcome, output, arguments, started)

    async def _run(self, spec: Tool, params: BaseModel, ctx: ToolContext) -> tuple[Outcome, str]:
        scope = asyncio.timeout(spec.timeout)
        try:
            async with scope:
                value = await spec.handler(ctx, params)
            return "ok", render_output(value)
        except TimeoutError as exc:
            if not scope.expired():
                logger.exception("tool %s failed", spec.name, extra={"tool": spec.name})
                return "error", _error(_exception_text(exc))
            logger.warning("tool %s timed out after %g s", spec.name, spec.timeout, extra={"tool": spec.name})
            message = f"The {spec.name} tool took too long (over {spec.timeout:g} seconds) and was stopped."
            return "timeout", _error(message)
        except ToolError as exc:
            logger.warning("tool %s failed: %s", spec.name, exc, extra={"tool": spec.name})
            return "error", _error(str(exc))
        except Exception as exc:
            logger.exception("tool %s failed", spec.name, extra={"tool": spec.name})
            return "error", _error(_exception_text(exc))

    def _result(
        self,
        call: ToolCallRequest,
        outcome: Outcome,
        output: str,
        arguments: dict[str, Any] | str,
        started: float,
    ) -> ToolResult:
        capped, omitted = cap_output(output, self.max_output_bytes)
        result = ToolResult(
            call_id=call.call_id,
            name=call.name,
            output=capped,
            ok=outcome == "ok",
            outcome=outcome,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            output_bytes=len(capped.encode()),
            arguments=arguments,
            truncated_bytes=omitted,
        )
        logger.info(
            "tool %s: %s in %.0f ms",
            call.name,
            outcome,
            result.duration_ms,
            extra={"tool": call.name, "outcome": outcome, "output_bytes": result.output_bytes},
        )
        return result


def _error(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


def _exception_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe_validation(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        where = truncate(".".join(str(p) for p in err["loc"]), 64) or "arguments"
        problem = f"{where}: {err['msg']}"
        if err["type"] == "string_too_long" and isinstance(err.get("input"), str):
            problem += f" (it had {len(err['input'])}); shorten it"
        problems.append(problem)
    return "; ".join(problems[:10])


# --- user tools and the per-process registry ----------------------------------------------------
default_registry = ToolRegistry()
"""Where `@tool` puts user tools; `build_registry` adds them to the built-ins."""

tool = default_registry.tool


def load_tool_modules(modules: Sequence[str]) -> list[ModuleType]:
    """Imports each module of RELAY_TOOLS so its `@tool` functions register themselves."""
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as exc:
            raise ConfigError(
                f"Could not import tool module {name!r} ({exc}). Check RELAY_TOOLS: it takes "
                "comma-separated importable module names such as 'myapp.tools', on the Python path."
            ) from exc
        except Exception as exc:
            raise ConfigError(
                f"Tool module {name!r} (from RELAY_TOOLS) failed while importing: {_exception_text(exc)}"
            ) from exc
    return loaded


def build_registry(settings: Settings, *, user_tools: ToolRegistry | None = None) -> ToolRegistry:
    """The call's tools: the configured built-ins plus the user tools of RELAY_TOOLS.

    web_search only when TAVILY_API_KEY is set, end_call always, transfer_call only when
    TRANSFER_ALLOWLIST has entries. `user_tools` defaults to the tools `@tool` registered from the
    RELAY_TOOLS modules (not from modules another app in the same process loaded).
    """
    from relay.tools.builtin import builtin_tools

    registry = ToolRegistry()
    for builtin in builtin_tools(settings):
        registry.register(builtin)
    load_tool_modules(settings.tool_modules)
    chosen = (
        list(user_tools) if user_tools is not None else default_registry.from_modules(settings.tool_modules)
    )
    for user_tool in chosen:
        if user_tool.name in registry:
            raise ConfigError(
                f"The user tool {user_tool.name!r} has the same name as a built-in tool: rename it."
            )
        registry.register(user_tool)
    return registry
