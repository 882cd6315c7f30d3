"""The tool registry, the built-in tools and Twilio call control, against fakes on real sockets."""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal
from xml.etree import ElementTree

import orjson
import pytest
from pydantic import BaseModel, Field

from relay.config import Settings
from relay.errors import ConfigError, ToolError
from relay.testing.tavily import FakeTavily
from relay.testing.twilio_rest import FakeTwilioRest
from relay.tools import (
    CallControl,
    ToolCallRequest,
    ToolContext,
    ToolRegistry,
    build_registry,
    load_tool_modules,
)
from relay.tools.builtin import SNIPPET_CHARS, end_call_tool, transfer_call_tool, web_search_tool
from relay.tools.twilio_rest import TwilioCalls
from relay.tools.whisper import (
    HOLD_MESSAGE,
    SUMMARY_CHARS,
    WHISPER_TTL_S,
    WhisperTokenError,
    mint_whisper_token,
    verify_whisper_token,
    warm_dial_twiml,
)
from webhooks.token import mint_stream_token

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "secret-token"


# --- helpers -------------------------------------------------------------------------------------
class RecordingControl:
    """The session's side of CallControl, recording what tools asked for."""

    def __init__(self) -> None:
        self.hang_ups: list[str] = []
        self.transfers: list[str] = []
        self.digits: list[str] = []
        self.handoffs: list[tuple[str, str]] = []

    async def hang_up_after_playback(self, reason: str) -> None:
        self.hang_ups.append(reason)

    async def transfer(self, twiml: str) -> None:
        self.transfers.append(twiml)

    async def send_digits(self, digits: str) -> None:
        self.digits.append(digits)

    async def handoff(self, agent: str, reason: str) -> bool:
        self.handoffs.append((agent, reason))
        return True


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "tavily_api_key": None,
        "transfer_allowlist": "",
        "relay_tools": "",
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        **overrides,
        "_env_file": None,  # a developer's .env must not leak into the tests
    }
    return Settings(**values)


def make_ctx(settings: Settings | None = None, control: RecordingControl | None = None) -> ToolContext:
    return ToolContext(
        call_sid="CA123",
        stream_sid="MZ456",
        settings=settings or make_settings(),
        control=control or RecordingControl(),
    )


def call(name: str, arguments: str | dict[str, Any], call_id: str = "call_1") -> ToolCallRequest:
    raw = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return ToolCallRequest(call_id=call_id, name=name, arguments=raw)


def error_of(output: str) -> str:
    doc = orjson.loads(output)
    assert set(doc) == {"error"}, doc
    return str(doc["error"])


@pytest.fixture
async def tavily() -> AsyncIterator[tuple[FakeTavily, str]]:
    fake = FakeTavily(api_key="tvly-good-key")
    async with fake.serve() as url:
        yield fake, url


@pytest.fixture
async def twilio_rest() -> AsyncIterator[tuple[FakeTwilioRest, str]]:
    fake = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    async with fake.serve() as url:
        yield fake, url


# --- schemas -------------------------------------------------------------------------------------
def test_schema_is_derived_from_the_signature() -> None:
    registry = ToolRegistry()

    @registry.tool(timeout=3.0)
    async def book_table(
        ctx: ToolContext,
        name: Annotated[str, Field(description="Name for the booking.")],
        guests: Annotated[int, Field(ge=1, description="How many people.")],
        time: str = "19:00",
        seating: Literal["inside", "outside"] | None = None,
    ) -> str:
        """Book a table at the restaurant."""
        return "booked"

    spec = registry.get("book_table")
    assert spec is not None
    assert spec.timeout == 3.0
    assert spec.description == "Book a table at the restaurant."
    assert spec.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 1000, "description": "Name for the booking."},
            "guests": {"type": "integer", "minimum": 1, "description": "How many people."},
            "time": {"type": "string", "maxLength": 1000, "default": "19:00"},
            "seating": {
                "anyOf": [{"enum": ["inside", "outside"], "type": "string"}, {"type": "null"}],
                "default": None,
            },
        },
        "required": ["name", "guests"],
    }


def test_schema_from_an_explicit_model_and_renderings() -> None:
    class Address(BaseModel):
        street: str = Field(description="Street and number.")
        city: str

    class ShipParams(BaseModel):
        """Where to ship."""

        address: Address
        express: bool = False

    registry = ToolRegistry()

    @registry.tool("ship_order", description="Ship the order.", params=ShipParams)
    async def ship(ctx: ToolContext, params: ShipParams) -> str:
        return params.address.city

    realtime = registry.realtime_tools()
    chat = registry.chat_tools()
    parameters = realtime[0]["parameters"]
    assert parameters["properties"]["address"] == {
        "type": "object",
        "properties": {
            "street": {"type": "string", "description": "Street and number."},
            "city": {"type": "string"},
        },
        "required": ["street", "city"],
    }
    assert "$defs" not in parameters and "title" not in parameters
    assert realtime == [
        {"type": "function", "name": "ship_order", "description": "Ship the order.", "parameters": parameters}
    ]
    assert chat == [
        {
            "type": "function",
            "function": {"name": "ship_order", "description": "Ship the order.", "parameters": parameters},
        }
    ]
    assert registry.names() == ["ship_order"]


async def test_parameter_names_pydantic_reserves_still_work() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def convert(ctx: ToolContext, json: str, schema: int = 2) -> dict[str, Any]:
        """Names that shadow BaseModel attributes."""
        return {"json": json, "schema": schema}

    spec = registry.get("convert")
    assert spec is not None
    assert set(spec.parameters["properties"]) == {"json", "schema"}
    assert spec.parameters["required"] == ["json"]
    result = await registry.dispatch(call("convert", {"json": "x", "schema": 5}), make_ctx())
    assert orjson.loads(result.output) == {"json": "x", "schema": 5}


def test_bad_tool_definitions_are_refused() -> None:
    registry = ToolRegistry()

    def not_async(ctx: ToolContext) -> str:
        """Sync."""
        return ""

    async def no_doc(ctx: ToolContext) -> str:
        return ""

    async def untyped(ctx: ToolContext, x) -> str:
        """Untyped."""
        return ""

    with pytest.raises(TypeError, match="async def"):
        registry.tool(not_async)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="description"):
        registry.tool(no_doc)
    with pytest.raises(TypeError, match="type annotation"):
        registry.tool(untyped)

    async def twin(ctx: ToolContext) -> str:
        """One."""
        return ""

    registry.tool("same")(twin)
    with pytest.raises(ConfigError, match="same"):
        registry.tool("same", description="Two.")(twin)


# --- dispatch ------------------------------------------------------------------------------------
@pytest.fixture
def registry() -> ToolRegistry:
    registry = ToolRegistry(max_output_bytes=256)

    @registry.tool
    async def add(ctx: ToolContext, a: int, b: int = 1) -> dict[str, Any]:
        """Add two numbers."""
        return {"sum": a + b, "call_sid": ctx.call_sid}

    @registry.tool(timeout=0.05)
    async def hang(ctx: ToolContext) -> str:
        """Never answers."""
        await asyncio.Event().wait()
        return "unreachable"

    @registry.tool
    async def explode(ctx: ToolContext) -> str:
        """Fails."""
        raise ValueError("boom")

    @registry.tool
    async def refuse(ctx: ToolContext) -> str:
        """Fails politely."""
        raise ToolError("I can't do that right now.")

    @registry.tool
    async def chatty(ctx: ToolContext, text: str) -> str:
        """Echoes a lot."""
        return text * 100

    return registry


async def test_dispatch_valid_call(registry: ToolRegistry) -> None:
    result = await registry.dispatch(call("add", {"a": 2, "b": 3}, call_id="c9"), make_ctx())
    assert result.ok and result.outcome == "ok"
    assert orjson.loads(result.output) == {"sum": 5, "call_sid": "CA123"}
    assert result.call_id == "c9" and result.arguments == {"a": 2, "b": 3}
    assert result.output_bytes == len(result.output.encode())
    audit = result.audit()
    assert audit["name"] == "add" and audit["outcome"] == "ok" and audit["arguments"] == {"a": 2, "b": 3}
    assert audit["output_bytes"] == result.output_bytes and audit["duration_ms"] >= 0


async def test_dispatch_empty_arguments_mean_no_arguments(registry: ToolRegistry) -> None:
    result = await registry.dispatch(call("refuse", ""), make_ctx())
    assert result.outcome == "error"
    assert error_of(result.output) == "I can't do that right now."


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"b": 2}', "a: Field required"),
        ('{"a": "two"}', "a: Input should be a valid integer"),
        ('{"a": 1, "c": 3}', "c: Extra inputs are not permitted"),
    ],
)
async def test_dispatch_bad_arguments_become_error_output(
    registry: ToolRegistry, arguments: str, expected: str
) -> None:
    result = await registry.dispatch(call("add", arguments), make_ctx())
    assert not result.ok and result.outcome == "invalid_arguments"
    assert expected in error_of(result.output)
    assert result.audit()["arguments"] == (
        arguments if arguments.startswith(("{not", "[")) else orjson.loads(arguments)
    )


async def test_dispatch_unknown_tool(registry: ToolRegistry) -> None:
    result = await registry.dispatch(call("fly", "{}"), make_ctx())
    assert result.outcome == "unknown_tool"
    message = error_of(result.output)
    assert "'fly'" in message and "add" in message


async def test_dispatch_timeout(registry: ToolRegistry) -> None:
    result = await registry.dispatch(call("hang", "{}"), make_ctx())
    assert result.outcome == "timeout"
    assert "took too long" in error_of(result.output)


async def test_dispatch_exception_becomes_error_output(
    registry: ToolRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    result = await registry.dispatch(call("explode", "{}"), make_ctx())
    assert result.outcome == "error"
    assert error_of(result.output) == "ValueError: boom"
    assert any(r.exc_info and "explode" in r.getMessage() for r in caplog.records)


async def test_dispatch_caps_output(registry: ToolRegistry) -> None:
    result = await registry.dispatch(call("chatty", {"text": "é"}), make_ctx())  # 200 bytes: fits
    assert result.output == "é" * 100 and result.truncated_bytes == 0

    result = await registry.dispatch(call("chatty", {"text": "éa"}), make_ctx())  # 300 bytes
    assert result.outcome == "ok"
    assert result.output_bytes <= 256 == registry.max_output_bytes
    kept, _, note = result.output.partition("…[truncated: ")
    omitted = int(note.removesuffix(" bytes omitted]"))
    assert omitted == 300 - len(kept.encode()) == result.truncated_bytes
    assert ("éa" * 100).startswith(kept)


async def test_dispatch_cancellation_propagates() -> None:
    registry = ToolRegistry()
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    @registry.tool
    async def wait_forever(ctx: ToolContext) -> str:
        """Waits."""
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    task = asyncio.create_task(registry.dispatch(call("wait_forever", "{}"), make_ctx()))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_dispatches_run_concurrently() -> None:
    registry = ToolRegistry()
    events: list[str] = []

    @registry.tool
    async def slow(ctx: ToolContext, label: str) -> str:
        """Takes 0.2 s."""
        events.append(f"start {label}")
        await asyncio.sleep(0.2)
        events.append(f"end {label}")
        return label

    ctx = make_ctx()
    first, second = await asyncio.gather(
        registry.dispatch(call("slow", {"label": "a"}, "c1"), ctx),
        registry.dispatch(call("slow", {"label": "b"}, "c2"), ctx),
    )
    assert (first.output, second.output) == ("a", "b")
    # Both started before either finished: the handlers overlapped.
    assert sorted(events[:2]) == ["start a", "start b"]
    assert sorted(events[2:]) == ["end a", "end b"]


# --- web_search ----------------------------------------------------------------------------------
async def test_web_search_against_fake_tavily(tavily: tuple[FakeTavily, str]) -> None:
    fake, url = tavily
    registry = ToolRegistry()
    registry.register(web_search_tool())
    ctx = make_ctx(make_settings(tavily_api_key="tvly-good-key", tavily_base_url=url))

    result = await registry.dispatch(call("web_search", {"query": "pharmacy opening hours"}), ctx)

    assert result.outcome == "ok", result.output
    [request] = fake.requests
    assert request.query == "pharmacy opening hours"
    assert request.api_key == "tvly-good-key"
    assert request.headers["authorization"] == "Bearer tvly-good-key"
    assert request.body["include_answer"] is True and request.body["max_results"] == 3
    doc = orjson.loads(result.output)
    assert doc["answer"] == "Canned answer about pharmacy opening hours."
    assert len(doc["results"]) == 3
    first = doc["results"][0]
    assert set(first) == {"title", "url", "snippet"}
    assert first["url"] == "https://example.com/pharmacy-opening-hours/1"
    assert first["snippet"].startswith("Result 1 says this about pharmacy opening hours.")
    assert first["snippet"].endswith("…") and len(first["snippet"]) <= SNIPPET_CHARS + 1


@pytest.mark.parametrize(
    ("status", "key", "expected"),
    [
        (None, "tvly-wrong-key", "rejected our API key"),
        (401, "tvly-good-key", "rejected our API key"),
        (429, "tvly-good-key", "usage limit"),
        (500, "tvly-good-key", "had a problem"),
    ],
)
async def test_web_search_failures_are_speakable(
    tavily: tuple[FakeTavily, str], status: int | None, key: str, expected: str
) -> None:
    fake, url = tavily
    fake.status = status
    registry = ToolRegistry()
    registry.register(web_search_tool())
    ctx = make_ctx(make_settings(tavily_api_key=key, tavily_base_url=url))

    result = await registry.dispatch(call("web_search", {"query": "weather"}), ctx)

    assert result.outcome == "error"
    message = error_of(result.output)
    assert expected in message and "can't search" in message
    assert fake.queries == ["weather"]


async def test_web_search_timeout_is_speakable(tavily: tuple[FakeTavily, str]) -> None:
    fake, url = tavily
    fake.delay = 30.0  # released when the fake stops serving
    registry = ToolRegistry()
    registry.register(web_search_tool(request_timeout=0.2, timeout=5.0))
    ctx = make_ctx(make_settings(tavily_api_key="tvly-good-key", tavily_base_url=url))

    result = await registry.dispatch(call("web_search", {"query": "slow news"}), ctx)

    assert result.outcome == "error"
    assert error_of(result.output) == (
        "The web search took too long to answer, so I don't have results right now."
    )


# --- end_call and transfer_call ------------------------------------------------------------------
async def test_end_call_asks_the_session_to_hang_up() -> None:
    registry = ToolRegistry()
    registry.register(end_call_tool())
    control = RecordingControl()

    result = await registry.dispatch(
        call("end_call", {"reason": "caller said bye"}), make_ctx(control=control)
    )

    assert result.ok
    assert control.hang_ups == ["caller said bye"]
    assert "goodbye" in orjson.loads(result.output)["instruction"]


def _transfer_registry(settings: Settings) -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(transfer_call_tool(settings.transfer_targets))
    return registry


async def test_transfer_to_an_allowed_name_dials_it() -> None:
    settings = make_settings(transfer_allowlist="sales=+15557654321,+15551234567")
    registry = _transfer_registry(settings)
    spec = registry.get("transfer_call")
    assert spec is not None
    assert "sales, +15551234567" in spec.parameters["properties"]["destination"]["description"]
    control = RecordingControl()

    result = await registry.dispatch(
        call("transfer_call", {"destination": "Sales"}), make_ctx(settings, control)
    )
    assert result.ok, result.output
    assert control.transfers == ["<Response><Dial>+15557654321</Dial></Response>"]

    result = await registry.dispatch(
        call("transfer_call", {"destination": "+1 555-123-4567"}), make_ctx(settings, control)
    )
    assert result.ok, result.output
    assert control.transfers[-1] == "<Response><Dial>+15551234567</Dial></Response>"


async def test_transfer_off_the_list_is_refused() -> None:
    settings = make_settings(transfer_allowlist="sales=+15557654321,support=+15550001234")
    control = RecordingControl()

    result = await _transfer_registry(settings).dispatch(
        call("transfer_call", {"destination": "+15559999999"}), make_ctx(settings, control)
    )

    assert result.outcome == "error"
    message = error_of(result.output)
    assert "can't transfer" in message and "sales, support" in message
    assert control.transfers == [] and control.hang_ups == []


async def test_a_summary_without_public_url_is_refused_with_a_way_out() -> None:
    """The whisper's URL lives under PUBLIC_URL: without it, the model is told to transfer cold."""
    settings = make_settings(transfer_allowlist="sales=+15557654321", public_url="")
    control = RecordingControl()

    result = await _transfer_registry(settings).dispatch(
        call("transfer_call", {"destination": "sales", "summary": "Ada, order A-42"}),
        make_ctx(settings, control),
    )

    assert result.outcome == "error" and "without a summary" in error_of(result.output)
    assert control.transfers == []


def test_whisper_token_carries_the_summary_and_refuses_forgeries() -> None:
    settings = make_settings(public_url="https://relay.example.com")
    token = mint_whisper_token("CA123", "  Ada\n\twants\x00 a refund.\u200b ", settings, now=1000.0)

    whisper = verify_whisper_token(token, settings, now=1000.0 + WHISPER_TTL_S)
    assert (whisper.call_sid, whisper.summary) == ("CA123", "Ada wants a refund.")
    with pytest.raises(WhisperTokenError, match="expired"):
        verify_whisper_token(token, settings, now=1001.0 + WHISPER_TTL_S)
    with pytest.raises(WhisperTokenError, match="signature"):
        verify_whisper_token(token, make_settings(twilio_auth_token="another-token"), now=1000.0)
    with pytest.raises(WhisperTokenError, match="signature"):  # a stream token is not a whisper token
        verify_whisper_token(mint_stream_token("CA123", settings, now=1000.0), settings, now=1000.0)
    for garbage in ("", "a.b.c", "!!!.???", token.replace(".", "")):
        with pytest.raises(WhisperTokenError):
            verify_whisper_token(garbage, settings, now=1000.0)


def test_warm_dial_twiml_has_the_hold_message_and_a_bounded_whisper_url() -> None:
    settings = make_settings(public_url="https://relay.example.com")
    twiml = warm_dial_twiml("+15557654321", "CA123", "é" * 1000, settings)  # cut to SUMMARY_CHARS
    root = ElementTree.fromstring(twiml)
    assert root[0].tag == "Say" and root[0].text == HOLD_MESSAGE
    number = root.find("./Dial/Number")
    assert number is not None and number.text == "+15557654321"
    url = number.attrib["url"]
    assert url.startswith("https://relay.example.com/transfer-whisper?t=") and len(url) < 1800
    token = url.partition("?t=")[2]
    assert verify_whisper_token(token, settings).summary == "é" * SUMMARY_CHARS


def test_recording_control_satisfies_the_protocol() -> None:
    assert isinstance(RecordingControl(), CallControl)


async def test_the_handoff_tool_lists_its_agents_and_hands_off_only_to_them() -> None:
    from relay.tools.builtin import handoff_tool

    registry = ToolRegistry().with_tools([handoff_tool({"sales": "Prices and orders.", "praxis": ""})])
    [spec] = registry.realtime_tools()
    assert spec["parameters"]["properties"]["agent"]["enum"] == ["sales", "praxis"]
    assert "sales: Prices and orders.; praxis" in spec["description"]
    control = RecordingControl()
    ctx = ToolContext(
        call_sid="CA" + "0" * 32, stream_sid="MZ" + "0" * 32, settings=make_settings(), control=control
    )
    moved = await registry.dispatch(
        ToolCallRequest("c1", "handoff", '{"agent": "sales", "reason": "a price"}'), ctx
    )
    assert moved.ok and '"handed_off"' in moved.output and control.handoffs == [("sales", "a price")]
    refused = await registry.dispatch(ToolCallRequest("c2", "handoff", '{"agent": "support"}'), ctx)
    assert not refused.ok and "sales, praxis" in refused.output and len(control.handoffs) == 1
    hidden = await registry.dispatch(ToolCallRequest("c3", "handoff", '{"agent": "sales"}'), ctx, {"handoff"})
    assert hidden.outcome == "unknown_tool" and len(control.handoffs) == 1  # not offered: not run


# --- Twilio REST ---------------------------------------------------------------------------------
async def test_twilio_hang_up_and_redirect(twilio_rest: tuple[FakeTwilioRest, str]) -> None:
    fake, url = twilio_rest
    async with TwilioCalls(make_settings(twilio_api_base_url=url)) as calls:
        assert calls.base_url == url
        await calls.hang_up("CA111")
        await calls.redirect("CA222", "<Response><Dial>+15557654321</Dial></Response>")

    assert [(u.account_sid, u.call_sid) for u in fake.updates] == [
        (ACCOUNT_SID, "CA111"),
        (ACCOUNT_SID, "CA222"),
    ]
    assert fake.updates[0].status == "completed" and fake.updates[0].twiml is None
    assert fake.updates[1].twiml == "<Response><Dial>+15557654321</Dial></Response>"
    assert {(r.username, r.password) for r in fake.requests} == {(ACCOUNT_SID, AUTH_TOKEN)}


async def test_twilio_wrong_token_is_a_tool_error(twilio_rest: tuple[FakeTwilioRest, str]) -> None:
    fake, url = twilio_rest
    settings = make_settings(twilio_api_base_url=url, twilio_auth_token="wrong")
    async with TwilioCalls(settings) as calls:
        with pytest.raises(ToolError, match="TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN") as info:
            await calls.hang_up("CA111")
    assert not info.value.retryable
    assert fake.updates == [] and fake.requests[0].password == "wrong"


async def test_twilio_missing_call_is_a_tool_error(twilio_rest: tuple[FakeTwilioRest, str]) -> None:
    fake, url = twilio_rest
    fake.status = 404
    async with TwilioCalls(make_settings(twilio_api_base_url=url)) as calls:
        with pytest.raises(ToolError, match="no call CA404"):
            await calls.hang_up("CA404")


async def test_twilio_unreachable_is_a_retryable_tool_error() -> None:
    async with FakeTwilioRest().serve() as url:
        pass  # the port is closed again
    async with TwilioCalls(make_settings(twilio_api_base_url=url)) as calls:
        with pytest.raises(ToolError, match="Could not reach") as info:
            await calls.hang_up("CA111")
    assert info.value.retryable


def test_twilio_calls_needs_credentials() -> None:
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        TwilioCalls(make_settings(twilio_auth_token=None))


def test_fake_twilio_decodes_basic_auth() -> None:
    # The header the twilio package (aiohttp BasicAuth) sends, decoded the same way.
    header = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    from relay.testing.twilio_rest import _basic_auth

    assert _basic_auth(header) == (ACCOUNT_SID, AUTH_TOKEN)
    assert _basic_auth("Bearer x") == (None, None)


# --- user tools and build_registry ---------------------------------------------------------------
@pytest.fixture
def project_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    if str(ROOT) not in sys.path:
        monkeypatch.syspath_prepend(str(ROOT))


@pytest.mark.usefixtures("project_on_path")
async def test_user_tool_module_is_loaded_and_dispatched() -> None:
    [module] = load_tool_modules(["tests.fixtures.user_tools"])
    assert module.__name__ == "tests.fixtures.user_tools"
    settings = make_settings(relay_tools="tests.fixtures.user_tools")

    registry = build_registry(settings)

    assert "order_status" in registry.names()
    spec = registry.get("order_status")
    assert spec is not None
    assert spec.description == "Look up the delivery status of an order."
    assert (
        spec.parameters["properties"]["order_id"]["description"] == "The order number the caller reads out."
    )
    result = await registry.dispatch(call("order_status", {"order_id": "A-17"}), make_ctx(settings))
    assert orjson.loads(result.output) == {"order_id": "A-17", "status": "shipped", "call_sid": "CA123"}


@pytest.mark.usefixtures("project_on_path")
def test_user_tools_belong_to_the_app_whose_relay_tools_named_them() -> None:
    # Two apps in one process (tests, or an embedding): the module imported for the first must not
    # lend its tools to the second, whose RELAY_TOOLS is empty.
    with_tools = build_registry(make_settings(relay_tools="tests.fixtures.user_tools"))
    without = build_registry(make_settings())
    assert {"order_status", "slow_lookup"} <= set(with_tools.names())
    assert not {"order_status", "slow_lookup"} & set(without.names())


def test_missing_tool_module_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"'no_such_module_for_relay'.*RELAY_TOOLS"):
        load_tool_modules(["no_such_module_for_relay"])


def test_build_registry_offers_only_configured_builtins() -> None:
    empty = ToolRegistry()
    bare = build_registry(make_settings(), user_tools=empty)
    assert bare.names() == ["end_call", "send_digits"]  # send_digits: offered per call (outbound, DTMF_TOOL)

    full = build_registry(
        make_settings(tavily_api_key="tvly-key", transfer_allowlist="sales=+15557654321"), user_tools=empty
    )
    assert full.names() == ["web_search", "end_call", "transfer_call", "send_digits"]
    assert [t["name"] for t in full.realtime_tools()] == full.names()
    hidden = {"send_digits"}
    assert [t["name"] for t in full.realtime_tools(hidden)] == ["web_search", "end_call", "transfer_call"]
    assert [t["function"]["name"] for t in full.chat_tools(hidden)] == [
        "web_search",
        "end_call",
        "transfer_call",
    ]


def test_user_tool_may_not_shadow_a_builtin() -> None:
    user = ToolRegistry()

    @user.tool
    async def end_call(ctx: ToolContext) -> str:
        """My own end_call."""
        return ""

    with pytest.raises(ConfigError, match="end_call"):
        build_registry(make_settings(), user_tools=user)


async def test_send_digits_takes_keypad_keys_only() -> None:
    registry = build_registry(make_settings())
    control = RecordingControl()
    ok = await registry.dispatch(call("send_digits", {"digits": "1#"}), make_ctx(control=control))
    assert ok.ok and control.digits == ["1#"]
    for bad in ("12x", "", "1" * 33):
        refused = await registry.dispatch(call("send_digits", {"digits": bad}), make_ctx(control=control))
        assert refused.outcome == "invalid_arguments", bad
    assert control.digits == ["1#"]
