"""The tool registry: typed async functions the model can call, whichever path (realtime or cascade)
the call is on.

A tool's JSON schema comes from one place: either the typed signature of its handler (a pydantic
model is built from the parameters after `ctx`) or an explicit pydantic model. `ToolRegistry.dispatch`
turns a model's function call into a `ToolResult` and never raises for the model's mistakes or the
tool's failures: those become an `{"error": "..."}` output the model can read and talk about. Only
`asyncio.CancelledError` (the call ended) propagates.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType, UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    Protocol,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    overload,
    runtime_checkable,
)

import orjson
from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from relay.errors import ConfigError, ToolError

if TYPE_CHECKING:
    from relay.config import Settings
    from relay.tools.twilio_rest import TwilioCalls

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

Outcome = Literal["ok", "error", "timeout", "invalid_arguments", "unknown_tool"]
BoundHandler = Callable[["ToolContext", Any], Awaitable[Any]]
"""A normalized handler: `(ctx, validated params model) -> output`."""
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_OUTPUT_BYTES = 4096
MAX_ARGUMENTS_BYTES = 8192
"""Hard cap on a function call's raw arguments JSON; longer is refused before parsing."""
DEFAULT_MAX_STRING_CHARS = 1000
"""maxLength given to every `str` parameter of a typed signature that does not set its own."""
AUDIT_VALUE_CHARS = 200
"""Longest argument string kept in the call record's tool audit (the rest marked as truncated)."""
AUDIT_ARGUMENTS_BYTES = 1024
"""Longest tool audit `arguments` (JSON) kept in the call record."""
_TRUNCATION_NOTE = "…[truncated: {n} bytes omitted]"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Schema keys whose values are data, not sub-schemas: copied as they are.
_DATA_KEYS = frozenset({"default", "enum", "const", "examples"})
_SCHEMA_MAP_KEYS = frozenset({"properties", "patternProperties"})


# --- what a tool sees of the call ---------------------------------------------------------------
@runtime_checkable
class CallControl(Protocol):
    """What a tool may ask of the live call. The call session implements it.

    Both methods must return promptly: the model speaks its goodbye (or "connecting you now")
    *after* it receives the tool's output, so the session acts once that audio has played.
    """

    async def hang_up_after_playback(self, reason: str) -> None:
        """End the call once the audio of the model's next response (the goodbye) has played."""
        ...

    async def transfer(self, twiml: str) -> None:
        """Replace the call's TwiML with `twiml` (e.g. `<Dial>`) once the queued audio has played.

        The Media Stream ends when Twilio runs the new TwiML.
        """
        ...


@dataclass(slots=True)
class ToolContext:
    """Everything a handler gets besides its arguments: the call, settings and call control."""

    call_sid: str
    stream_sid: str
    settings: Settings
    control: CallControl
    twilio: TwilioCalls | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """A function call from the model; `arguments` is the model's JSON string, unparsed."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The output for the model plus what the call record keeps about the call."""

    call_id: str
    name: str
    output: str
    ok: bool
    outcome: Outcome
    duration_ms: float
    output_bytes: int
    arguments: dict[str, Any] | str
    truncated_bytes: int = 0

    def audit(self) -> dict[str, Any]:
        """The call record's entry for this tool call: bounded (arguments truncated with a marker,
        the output by its size only), whatever the model sent."""
        return {
            "call_id": _truncate(self.call_id, 64),
            "name": _truncate(self.name, 64),
            "arguments": audit_arguments(self.arguments),
            "outcome": self.outcome,
            "duration_ms": round(self.duration_ms, 1),
            "output_bytes": self.output_bytes,
            "truncated_bytes": self.truncated_bytes,
        }


# --- tools ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Tool:
    """A callable tool: name, description, parameters schema, async handler and timeout.

    `parameters` (the JSON schema) is derived from `params_model`, never written by hand. Build one
    with `Tool.from_function` (typed signature) or `Tool.from_model` (explicit pydantic model).
    """

    name: str
    description: str
    params_model: type[BaseModel]
    handler: BoundHandler
    timeout: float = DEFAULT_TIMEOUT
    parameters: dict[str, Any] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if not self.description.strip():
            raise ValueError(f"tool {self.name!r} needs a description (the model reads it)")
        if self.timeout <= 0:
            raise ValueError(f"tool {self.name!r}: timeout must be positive, got {self.timeout}")
        object.__setattr__(self, "parameters", json_schema(self.params_model))

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Tool:
        """A tool from `async def fn(ctx: ToolContext, a: T, b: U = default, ...)`.

        Parameter descriptions come from `Annotated[T, Field(description=...)]`; the description
        defaults to the function's docstring.
        """
        tool_name = name or fn.__name__
        _require_async(fn, tool_name)
        model, field_to_param = _model_from_signature(fn, tool_name)

        async def call(ctx: ToolContext, params: BaseModel) -> Any:
            kwargs = {param: getattr(params, fld) for fld, param in field_to_param.items()}
            return await fn(ctx, **kwargs)

        return cls(tool_name, _description(fn, description, tool_name), model, call, timeout)

    @classmethod
    def from_model(
        cls,
        fn: Callable[[ToolContext, Any], Awaitable[Any]],
        params: type[BaseModel],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Tool:
        """A tool whose parameters are the explicit pydantic model `params`; `fn(ctx, params)`."""
        tool_name = name or fn.__name__
        _require_async(fn, tool_name)
        return cls(tool_name, _description(fn, description, tool_name), params, fn, timeout)


def _require_async(fn: Callable[..., Any], name: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"tool {name!r}: the handler must be an `async def` function")


def _description(fn: Callable[..., Any], description: str | None, name: str) -> str:
    text = description if description is not None else inspect.getdoc(fn)
    if not text or not text.strip():
        raise TypeError(f"tool {name!r} needs a description: give it a docstring or description=")
    # Docstring line breaks are layout, not meaning: keep paragraphs, join their lines.
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text.strip())


class _Annotations:
    """Carries a subset of a function's annotations for `get_type_hints`."""

    def __init__(self, annotations: dict[str, Any]) -> None:
        self.__annotations__ = annotations


def _model_from_signature(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], dict[str, str]]:
    """A pydantic model of the parameters after `ctx`, and the map model field -> parameter."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"tool {name!r}: the handler's first parameter must be `ctx: ToolContext`")
    # Resolve only these parameters' annotations, so `ctx` and the return type may stay
    # TYPE_CHECKING-only names in the user's module.
    raw = {p.name: p.annotation for p in params[1:] if p.annotation is not inspect.Parameter.empty}
    hints = get_type_hints(_Annotations(raw), globalns=getattr(fn, "__globals__", {}), include_extras=True)
    fields: dict[str, Any] = {}
    field_to_param: dict[str, str] = {}
    for index, p in enumerate(params[1:]):
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"tool {name!r}: parameter {p.name!r} must be a plain or keyword-only parameter")
        if p.name not in hints:
            raise TypeError(f"tool {name!r}: parameter {p.name!r} needs a type annotation")
        default = ... if p.default is p.empty else p.default
        hint = _bounded(hints[p.name])
        if p.name.startswith("_") or hasattr(BaseModel, p.name):
            # pydantic reserves these names; keep the parameter's name on the wire via an alias.
            fld = f"param_{index}"
            while fld in raw:
                fld += "_"
            fields[fld] = (hint, Field(default, alias=p.name))
        else:
            fld = p.name
            fields[fld] = (hint, default)
        field_to_param[fld] = p.name
    model_name = "".join(part.capitalize() for part in re.split(r"[_-]", name)) + "Params"
    config = ConfigDict(extra="forbid", protected_namespaces=())
    model = create_model(model_name, __config__=config, **fields)
    return model, field_to_param


def _has_max_length(meta: Any) -> bool:
    if isinstance(meta, MaxLen) or getattr(meta, "max_length", None) is not None:
        return True
    return isinstance(meta, FieldInfo) and any(isinstance(m, MaxLen) for m in meta.metadata)


def _bounded(hint: Any) -> Any:
    """`hint` with DEFAULT_MAX_STRING_CHARS as the maxLength of every `str` in it (also inside
    Optional/unions and list/tuple/set/dict) that has no max_length of its own."""
    if hint is str:
        return Annotated[str, MaxLen(DEFAULT_MAX_STRING_CHARS)]
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        base, *meta = args
        if any(_has_max_length(m) for m in meta):
            return hint
        bounded = _bounded(base)
        return hint if bounded is base else Annotated[(bounded, *meta)]
    if origin in (Union, UnionType):
        return Union[tuple(_bounded(a) for a in args)]  # noqa: UP007 - built from a tuple
    if origin in (list, set, frozenset, tuple, dict) and args:
        return origin[tuple(a if a is Ellipsis else _bounded(a) for a in args)]
    return hint


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as a tool's `parameters`: `$ref`s inlined, titles dropped."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    cleaned = _clean_schema(schema, defs, ())
    cleaned.setdefault("properties", {})
    return cleaned


def _clean_schema(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_clean_schema(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = str(node["$ref"]).rsplit("/", 1)[-1]
        if ref in seen:
            raise TypeError(f"recursive model {ref!r} cannot be a tool parameter")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**_clean_schema(defs[ref], defs, (*seen, ref)), **_clean_schema(siblings, defs, seen)}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key in _DATA_KEYS:
            out[key] = value
        elif key in _SCHEMA_MAP_KEYS and isinstance(value, dict):
            out[key] = {prop: _clean_schema(sub, defs, seen) for prop, sub in value.items()}
        else:
            out[key] = _clean_schema(value, defs, seen)
    return out


# --- the registry --------------------------------------------------------------------------------
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

    def realtime_tools(self) -> list[dict[str, Any]]:
        """Realtime `session.tools`: flat `{type, name, description, parameters}`."""
        return [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
            for t in self._tools.values()
        ]

    def chat_tools(self) -> list[dict[str, Any]]:
        """Chat Completions `tools`: `{type: "function", function: {name, description, parameters}}`."""
        return [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in self._tools.values()
        ]

    async def dispatch(self, call: ToolCallRequest, ctx: ToolContext) -> ToolResult:
        """Runs one function call; every failure becomes an `{"error": ...}` output, not an exception.

        `asyncio.CancelledError` propagates: it means the call (or the response) ended.
        """
        started = time.perf_counter()
        arguments: dict[str, Any] | str = call.arguments
        spec = self._tools.get(call.name)
        if spec is None:
            available = ", ".join(self._tools) or "none"
            message = f"There is no tool named {_truncate(call.name, 64)!r}. Available tools: {available}."
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
        where = _truncate(".".join(str(p) for p in err["loc"]), 64) or "arguments"
        problem = f"{where}: {err['msg']}"
        if err["type"] == "string_too_long" and isinstance(err.get("input"), str):
            problem += f" (it had {len(err['input'])}); shorten it"
        problems.append(problem)
    return "; ".join(problems[:10])


def _truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a marker saying how many were left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[truncated: {len(text) - limit} chars omitted]"


def audit_arguments(arguments: dict[str, Any] | str) -> dict[str, Any] | str:
    """Tool arguments as the call record keeps them: each string cut to AUDIT_VALUE_CHARS, and the
    whole to AUDIT_ARGUMENTS_BYTES of JSON (then a string), each cut marked as truncated."""
    if isinstance(arguments, str):
        return cap_output(arguments, AUDIT_ARGUMENTS_BYTES)[0]
    trimmed = {
        _truncate(str(key), 64): _truncate(value, AUDIT_VALUE_CHARS) if isinstance(value, str) else value
        for key, value in arguments.items()
    }
    text = orjson.dumps(trimmed, default=str).decode()
    if len(text.encode()) <= AUDIT_ARGUMENTS_BYTES:
        return trimmed
    return cap_output(text, AUDIT_ARGUMENTS_BYTES)[0]


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"a tool returned a {type(value).__name__}, which is not JSON serializable")


def render_output(value: Any) -> str:
    """A handler's return value as the string the model reads.

    str as is; a pydantic model, dict, list or other JSON value JSON-encoded; None as "done".
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "done"
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def cap_output(text: str, limit: int) -> tuple[str, int]:
    """`text` cut to at most `limit` UTF-8 bytes, note included; returns (text, bytes omitted)."""
    data = text.encode()
    if len(data) <= limit:
        return text, 0
    budget = max(limit - len(_TRUNCATION_NOTE.format(n=len(data)).encode()), 0)
    kept = data[:budget].decode("utf-8", errors="ignore")
    omitted = len(data) - len(kept.encode())
    return kept + _TRUNCATION_NOTE.format(n=omitted), omitted


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
