"""Tools the model can call: the registry, the built-ins and user tools (RELAY_TOOLS).

A user tool module::

    from typing import Annotated
    from pydantic import Field
    from relay.tools import ToolContext, tool

    @tool(timeout=5.0)
    async def order_status(
        ctx: ToolContext, order_id: Annotated[str, Field(description="The order number")]
    ) -> dict[str, str]:
        \"\"\"Look up the delivery status of an order.\"\"\"
        ...
"""

from relay.tools.context import CallControl, ToolCallRequest, ToolContext, ToolResult
from relay.tools.registry import ToolRegistry, build_registry, default_registry, load_tool_modules, tool
from relay.tools.spec import Tool

__all__ = [
    "CallControl",
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
