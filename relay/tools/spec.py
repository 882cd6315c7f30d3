"""`Tool`: one callable tool (name, description, parameters schema, async handler, timeout), built
from a typed handler or from a handler and an explicit pydantic model."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from relay.tools.context import ToolContext
from relay.tools.schema import json_schema, model_from_signature, require_async, tool_description

__all__ = ["DEFAULT_TIMEOUT", "BoundHandler", "Tool"]

BoundHandler = Callable[["ToolContext", Any], Awaitable[Any]]
"""A normalized handler: `(ctx, validated params model) -> output`."""
DEFAULT_TIMEOUT = 10.0
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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
        require_async(fn, tool_name)
        model, field_to_param = model_from_signature(fn, tool_name)

        async def call(ctx: ToolContext, params: BaseModel) -> Any:
            kwargs = {param: getattr(params, fld) for fld, param in field_to_param.items()}
            return await fn(ctx, **kwargs)

        return cls(tool_name, tool_description(fn, description, tool_name), model, call, timeout)

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
        require_async(fn, tool_name)
        return cls(tool_name, tool_description(fn, description, tool_name), params, fn, timeout)
