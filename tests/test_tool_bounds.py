"""Tool arguments are bounded: the built-ins' strings (web_search.query, transfer destination,
end_call reason) and every `str` of a user tool's typed signature carry a maxLength, the raw
arguments JSON has a hard cap, an oversized argument becomes an error output the model reads
(the call goes on), and the tool audit stored on the call record stays small."""

from __future__ import annotations

from typing import Annotated

import orjson
import pytest
from pydantic import Field

from relay.testing.realtime import Call, Say
from relay.tools.bounds import AUDIT_ARGUMENTS_BYTES, MAX_ARGUMENTS_BYTES, audit_arguments
from relay.tools.builtin import builtin_tools
from relay.tools.context import ToolContext
from relay.tools.registry import ToolRegistry
from relay.tools.schema import DEFAULT_MAX_STRING_CHARS
from tests.conftest import make_settings
from tests.rig import speak
from tests.test_tools_e2e import output, tool_rig


def test_builtin_string_arguments_have_a_max_length() -> None:
    settings = make_settings(tavily_api_key="tvly-key", transfer_allowlist="sales=+15557654321")
    schemas = {t.name: t.parameters["properties"] for t in builtin_tools(settings)}
    assert schemas["web_search"]["query"]["maxLength"] == 400
    assert schemas["transfer_call"]["destination"]["maxLength"] == 100
    assert schemas["transfer_call"]["summary"]["maxLength"] == 300
    assert schemas["end_call"]["reason"]["maxLength"] == 200


def test_user_tool_strings_get_a_default_max_length_unless_they_set_one() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def note(
        ctx: ToolContext,
        text: str,
        title: Annotated[str, Field(max_length=20, description="A short title.")],
        tags: list[str] | None = None,
        author: str | None = None,
    ) -> str:
        """Take a note."""
        return "ok"

    props = registry.realtime_tools()[0]["parameters"]["properties"]
    assert props["text"]["maxLength"] == DEFAULT_MAX_STRING_CHARS
    assert props["title"] == {"type": "string", "maxLength": 20, "description": "A short title."}
    assert props["tags"]["anyOf"][0]["items"]["maxLength"] == DEFAULT_MAX_STRING_CHARS
    assert props["author"]["anyOf"][0]["maxLength"] == DEFAULT_MAX_STRING_CHARS


def test_audit_arguments_are_cut_with_a_marker() -> None:
    small = {"query": "weather in Paris", "max_results": 3}
    assert audit_arguments(small) == small
    cut = audit_arguments({"query": "x" * 5000})
    assert isinstance(cut, dict) and cut["query"].endswith("…[truncated: 4800 chars omitted]")
    many = audit_arguments({f"k{i}": "y" * 150 for i in range(50)})
    assert isinstance(many, str) and "[truncated:" in many and len(many.encode()) <= AUDIT_ARGUMENTS_BYTES
    raw = audit_arguments("{" + '"a": "' + "z" * 20_000)
    assert isinstance(raw, str) and "[truncated:" in raw and len(raw.encode()) <= AUDIT_ARGUMENTS_BYTES


@pytest.mark.parametrize(
    ("name", "arguments", "needle"),
    [
        (
            "web_search",
            {"query": "q" * 5000},
            "at most 400 characters (it had 5000)",
        ),
        ("end_call", {"reason": "r" * (MAX_ARGUMENTS_BYTES + 10)}, f"at most {MAX_ARGUMENTS_BYTES}"),
    ],
)
async def test_an_oversized_argument_is_an_error_output_the_call_goes_on_and_the_audit_is_bounded(
    name: str, arguments: dict[str, str], needle: str
) -> None:
    replies = [Call(name, arguments, call_id="big"), Say("That was too long, sorry.", audio_ms=300)]
    async with tool_rig(replies) as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await speak(call)
        await conn.wait_for("response.done", n=2)
        error = output(conn, "big")["error"]
        assert needle in error and len(error) < 300, error
        await call.wait_for_media(min_bytes=300 * 8)  # the model's next answer reaches the caller
        assert call.is_open and not t.tavily.requests and not t.rest.updates  # no search, no hang-up
        await call.stop()
    record = await t.rt.app.state.store.get(call.call_sid)
    (audit,) = record["tools"]
    assert audit["name"] == name and audit["outcome"] == "invalid_arguments"
    stored = orjson.dumps(audit)
    assert len(stored) < AUDIT_ARGUMENTS_BYTES + 400 and b"[truncated:" in stored
    assert "output" not in audit and audit["output_bytes"] == len(conn.function_outputs["big"].encode())
