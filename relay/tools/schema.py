"""A tool's parameters schema, derived from one place: the typed signature of its handler (a
pydantic model built from the parameters after `ctx`, every `str` given a maxLength) or an
explicit pydantic model, rendered as JSON schema with `$ref`s inlined and titles dropped."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

__all__ = [
    "DEFAULT_MAX_STRING_CHARS",
    "json_schema",
    "model_from_signature",
    "require_async",
    "tool_description",
]

DEFAULT_MAX_STRING_CHARS = 1000
"""maxLength given to every `str` parameter of a typed signature that does not set its own."""
# Schema keys whose values are data, not sub-schemas: copied as they are.
_DATA_KEYS = frozenset({"default", "enum", "const", "examples"})
_SCHEMA_MAP_KEYS = frozenset({"properties", "patternProperties"})


def require_async(fn: Callable[..., Any], name: str) -> None:
    """TypeError unless `fn` is an `async def` function: a handler runs under a timeout on the loop."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"tool {name!r}: the handler must be an `async def` function")


def tool_description(fn: Callable[..., Any], description: str | None, name: str) -> str:
    """`description`, else `fn`'s docstring, as the model reads it; TypeError when there is neither."""
    text = description if description is not None else inspect.getdoc(fn)
    if not text or not text.strip():
        raise TypeError(f"tool {name!r} needs a description: give it a docstring or description=")
    # Docstring line breaks are layout, not meaning: keep paragraphs, join their lines.
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text.strip())


class _Annotations:
    """Carries a subset of a function's annotations for `get_type_hints`."""

    def __init__(self, annotations: dict[str, Any]) -> None:
        self.__annotations__ = annotations


def model_from_signature(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], dict[str, str]]:
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
