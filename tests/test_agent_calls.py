"""Agents on real calls (AGENTS_FILE): each number gets its agent's session and only its agent's
provider; the handoff tool moves a call to another agent on the same session or on a new one
(another provider), the conversation kept; a reload under calls drops none of them; an agent's
tool list is what its calls are offered and allowed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.app import create_app, reload_agents
from relay.testing.realtime import Call, FakeConnection, FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.twilio import FakeTwilioCall
from tests.conftest import AUTH_TOKEN, make_settings
from tests.rig import PUBLIC_URL, FakeCredential, speak

SUPPORT, SALES, PRAXIS, UNCLAIMED = "+15550100001", "+15550100002", "+4930120000", "+15550100099"

AGENTS = """
[agents.support]
numbers = ["+15550100001"]
description = "Orders and deliveries."
instructions = "You are Support."
language = "en"
handoffs = ["sales", "praxis"]

[agents.sales]
numbers = ["+15550100002"]
description = "Prices and new orders."
instructions = "You are Sales."
voice = "cedar"
handoffs = ["support"]

[agents.praxis]
numbers = ["+4930120000"]
description = "Appointments, in German."
instructions = "Du bist die Praxis."
voice = "alloy"
language = "de"
provider = "azure"
azure_endpoint = "AZURE_ENDPOINT"
azure_deployment = "gpt-realtime"
"""


@dataclass
class AgentsRig:
    openai: FakeRealtimeServer  # the OpenAI agents' provider
    azure: FakeRealtimeServer  # the Azure agent's (another region, in real life)
    url: str
    app: Any
    path: Path

    def caller(self, to: str) -> FakeTwilioCall:
        return FakeTwilioCall(base_url=self.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, to=to)

    async def dial(self, call: FakeTwilioCall, server: FakeRealtimeServer) -> FakeConnection:
        n = len(server.connections) + 1
        twiml = await call.fetch_twiml()
        assert twiml.status_code == 200 and twiml.stream_url, twiml.body
        assert await call.connect(twiml)
        conn = await server.wait_connection(n=n)
        await conn.wait_for("session.update")
        return conn

    def write(self, text: str) -> None:
        self.path.write_text(text.replace("AZURE_ENDPOINT", self.azure.azure_endpoint))


@contextlib.asynccontextmanager
async def agents_rig(
    tmp_path: Path,
    text: str = AGENTS,
    *,
    openai_replies: list[Any] | None = None,
    azure_replies: list[Any] | None = None,
    **settings: Any,
) -> AsyncIterator[AgentsRig]:
    tokens = {f"entra-{i}" for i in range(1, 20)}
    async with (
        FakeRealtimeServer(responses=openai_replies or [], transcripts=["I need an appointment"]) as openai,
        FakeRealtimeServer(responses=azure_replies or [], bearer_tokens=tokens) as azure,
    ):
        path = tmp_path / "agents.toml"
        path.write_text(text.replace("AZURE_ENDPOINT", azure.azure_endpoint))
        cfg = {
            "relay_mode": "realtime",
            "openai_base_url": openai.openai_base_url,
            "greeting_enabled": False,
            "agents_file": str(path),
            **settings,
        }
        app = create_app(make_settings(**cfg), azure_credential=FakeCredential())
        async with serve_app(app) as url:
            yield AgentsRig(openai, azure, url, app, path)


def session_of(conn: FakeConnection, n: int = 1) -> dict[str, Any]:
    """The `session` of the n-th `session.update` the connection received."""
    updates = conn.events("session.update", "received")
    assert len(updates) >= n, [e.get("type") for _, e in conn.received]
    session: dict[str, Any] = updates[n - 1]["session"]
    return session


def voice_of(session: dict[str, Any]) -> Any:
    return (session.get("audio") or {}).get("output", {}).get("voice")


def tool_names(session: dict[str, Any]) -> set[str]:
    return {tool["name"] for tool in session.get("tools", [])}


def received_types(conn: FakeConnection) -> list[str]:
    """The client events in order, function outputs named as such."""
    types = []
    for _, event in conn.received:
        kind = event.get("type", "")
        if kind == "conversation.item.create":
            kind = f"item:{event['item'].get('type')}"
        types.append(kind)
    return [t for t in types if t != "input_audio_buffer.append"]


async def record_of(rig: AgentsRig, call_sid: str) -> dict[str, Any]:
    await rig.app.state.manager.wait_idle(timeout=5)
    record = await rig.app.state.store.get(call_sid)
    assert record is not None
    return record


async def test_each_number_gets_its_agent_and_only_that_agents_provider(tmp_path: Path) -> None:
    async with agents_rig(tmp_path) as r:
        async with r.caller(SALES) as call:
            sales = await r.dial(call, r.openai)
            await sales.wait_for("session.update")
            await call.stop()
        async with r.caller(PRAXIS) as call_b:
            praxis = await r.dial(call_b, r.azure)
            await praxis.wait_for("session.update")
            await call_b.stop()
        async with r.caller(UNCLAIMED) as call_c:
            other = await r.dial(call_c, r.openai)
            await other.wait_for("session.update")
            await call_c.stop()
        assert (
            session_of(sales)["instructions"] == "You are Sales." and voice_of(session_of(sales)) == "cedar"
        )
        assert session_of(praxis)["instructions"] == "Du bist die Praxis."
        assert voice_of(session_of(praxis)) == "alloy" and praxis.provider == "azure"
        assert session_of(praxis)["audio"]["input"]["transcription"]["language"] == "de"  # its hint
        assert "language" not in session_of(sales)["audio"]["input"]["transcription"]
        assert session_of(other)["instructions"] == make_settings().instructions  # the environment's
        # each provider saw only its own agents' calls
        assert len(r.openai.connections) == 2 and len(r.azure.connections) == 1
        assert (await record_of(r, call.call_sid))["agent"] == "sales"
        assert (await record_of(r, call_b.call_sid))["agent"] == "praxis"
        assert (await record_of(r, call_c.call_sid))["agent"] == "default"


async def test_a_handoff_on_the_same_provider_updates_the_session_before_the_answer(tmp_path: Path) -> None:
    replies = [
        Call("handoff", {"agent": "sales", "reason": "a price"}, call_id="h1"),
        Say("Sales here.", 300),
    ]
    async with agents_rig(tmp_path, openai_replies=replies) as r, r.caller(SUPPORT) as call:
        conn = await r.dial(call, r.openai)
        assert tool_names(session_of(conn)) >= {"handoff", "end_call"}
        await speak(call)
        await conn.wait_for("response.create")
        await call.wait_for_media(min_bytes=300 * 8, timeout=10)  # the caller hears the new agent
        update = session_of(conn, 2)
        assert update["instructions"] == "You are Sales."
        assert voice_of(update) is None  # the voice of a session that has spoken cannot change
        assert "handoff" in tool_names(update) and "send_digits" not in tool_names(update)
        order = received_types(conn)
        second_update = order.index("session.update", 1)
        output = order.index("item:function_call_output")
        assert second_update < output < order.index("response.create", output)
        assert '"handed_off"' in conn.function_outputs["h1"]
        assert len(r.openai.connections) == 1 and not r.azure.connections
        await call.stop()
    record = await record_of(r, call.call_sid)
    assert [a["name"] for a in record["agents"]] == ["support", "sales"] and record["agent"] == "sales"
    assert record["agents"][1]["reason"] == "a price"


async def test_a_handoff_to_another_provider_opens_its_session_with_the_conversation(tmp_path: Path) -> None:
    async with (
        agents_rig(
            tmp_path,
            openai_replies=[Call("handoff", {"agent": "praxis"}, call_id="h1")],
            azure_replies=[Say("Praxis Dr. Weber, guten Tag.", 400)],
        ) as r,
        r.caller(SUPPORT) as call,
    ):
        first = await r.dial(call, r.openai)
        await speak(call)
        praxis = await r.azure.wait_connection(timeout=10)
        await praxis.wait_for("response.create")
        await call.wait_for_media(min_bytes=400 * 8, timeout=10)  # the new agent, heard
        await first.closed.wait()
        opening = session_of(praxis)
        assert opening["instructions"] == "Du bist die Praxis." and voice_of(opening) == "alloy"
        carried = [e["item"] for e in praxis.events("conversation.item.create", "received")]
        assert any(
            item["role"] == "user" and "I need an appointment" in item["content"][0]["text"]
            for item in carried
        ), carried
        order = received_types(praxis)
        assert order.index("session.update") < order.index("item:message") < order.index("response.create")
        assert "h1" not in first.function_outputs  # the old session is gone: no output goes to it
        await call.stop()
    record = await record_of(r, call.call_sid)
    assert [a["name"] for a in record["agents"]] == ["support", "praxis"]
    metrics = r.app.state.metrics
    assert (
        metrics.registry.get_sample_value(
            "relay_handoffs_total", {"from_agent": "support", "to_agent": "praxis"}
        )
        == 1
    )


async def test_an_agent_is_offered_and_allowed_only_its_tools(tmp_path: Path) -> None:
    text = AGENTS.replace(
        'instructions = "You are Sales."', 'instructions = "You are Sales."\ntools = ["end_call"]'
    )
    replies = [Call("send_digits", {"digits": "1"}, call_id="t1"), Say("No keys here.", 200)]
    async with agents_rig(tmp_path, text, openai_replies=replies) as r, r.caller(SALES) as call:
        conn = await r.dial(call, r.openai)
        assert tool_names(session_of(conn)) == {"end_call", "handoff"}
        await speak(call)
        await conn.wait_for("response.done", n=2)
        assert "There is no tool named 'send_digits'" in conn.function_outputs["t1"]
        await call.stop()


async def test_a_reload_under_calls_drops_none_and_new_calls_get_the_new_agents(tmp_path: Path) -> None:
    async with agents_rig(tmp_path) as r:
        calls = [r.caller(SUPPORT) for _ in range(3)]
        conns = [await r.dial(call, r.openai) for call in calls]
        r.write(AGENTS.replace("You are Support.", "You are Support, version 2."))
        assert await reload_agents(r.app)
        async with r.caller(SUPPORT) as late:
            newer = await r.dial(late, r.openai)
            await newer.wait_for("session.update")
            assert session_of(newer)["instructions"] == "You are Support, version 2."
            await late.stop()
        for call, conn in zip(calls, conns, strict=True):  # the calls in progress go on as they were
            heard = len(conn.audio_in)
            await speak(call)
            await conn.wait_for("response.done")
            assert len(conn.audio_in) > heard and call.is_open
            assert [s["instructions"] for s in [session_of(conn)]] == ["You are Support."]
            await call.stop()
        r.write("[agents.broken]\nprovider = 'azur'\n")
        assert not await reload_agents(r.app)  # refused: the agents stay
        for call in calls:
            assert (await record_of(r, call.call_sid))["outcome"] == "twilio_stop"
        assert "support" in r.app.state.manager.agents


@pytest.mark.slow
async def test_a_handoff_on_the_cascade_changes_the_system_message_and_tools(tmp_path: Path) -> None:
    from relay.testing.audio import silence_ulaw, speech_ulaw
    from relay.testing.openai_http import FakeOpenAIHTTP
    from relay.testing.openai_replies import Text, ToolCalls, ToolCallSpec

    http = FakeOpenAIHTTP(
        transcripts=["what does it cost"],
        replies=[ToolCalls([ToolCallSpec("handoff", {"agent": "sales"}, id="h1")]), Text("Sales here.")],
    )
    text = AGENTS.split("[agents.praxis]")[0].replace(
        'handoffs = ["sales", "praxis"]', 'handoffs = ["sales"]'
    )
    async with http.serve() as http_url:
        path = tmp_path / "agents.toml"
        path.write_text(text)
        cfg = {
            "relay_mode": "cascade",
            "openai_base_url": http_url + "/v1",
            "greeting_enabled": False,
            "agents_file": str(path),
        }
        app = create_app(make_settings(**cfg))
        async with serve_app(app) as url:
            call = FakeTwilioCall(base_url=url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, to=SUPPORT)
            async with call:
                twiml = await call.fetch_twiml()
                assert await call.connect(twiml)
                speech = speech_ulaw("What does it cost?")
                await call.send_audio(silence_ulaw(300) + speech + silence_ulaw(900))
                await http.wait_for("chat", n=2, timeout=10)
                await call.stop()
            await app.state.manager.wait_idle(timeout=5)
            record = await app.state.store.get(call.call_sid)
    first, second = (req.body or {} for req in http.chat_requests[:2])
    assert first["messages"][0] == {"role": "system", "content": "You are Support."}
    assert second["messages"][0] == {"role": "system", "content": "You are Sales."}
    handoff = [t["function"] for t in second["tools"] if t["function"]["name"] == "handoff"]
    assert handoff and handoff[0]["parameters"]["properties"]["agent"]["enum"] == ["support"]
    assert any(m.get("role") == "tool" and "handed_off" in m.get("content", "") for m in second["messages"])
    assert [a["name"] for a in record["agents"]] == ["support", "sales"]
    assert http.transcription_requests[0].form.get("language") == "en"  # the agent's transcription hint


@pytest.mark.slow
async def test_the_readme_agents_call_example_reaches_the_numbers_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README "Agents": `relay call --to <support's number>` is answered by support, which hands
    the call to sales; the printed record names both."""
    import asyncio
    import re
    import shlex

    from relay.cli import main

    section = (Path(__file__).parent.parent / "README.md").read_text().split("## Agents", 1)[1]
    block = re.findall(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)[0]
    call_line, dial_line = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert call_line[1:3] == ["call", "--to"] and call_line[3] == SUPPORT
    assert dial_line[1] == "dial" and dial_line[-2:] == ["--agent", "praxis"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", "admin-agents")
    replies = [Say("Support, hello.", 300), Call("handoff", {"agent": "sales"}), Say("Sales here.", 300)]
    rig_settings = {"relay_admin_token": "admin-agents", "greeting_enabled": True}
    async with agents_rig(tmp_path, openai_replies=replies, **rig_settings) as r:
        argv = [*call_line[1:], "--url", r.url, "--public-url", PUBLIC_URL]
        code = await asyncio.to_thread(main, argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "agents           support → sales" in printed


async def test_an_azure_agent_never_falls_back_to_openai_unless_it_allows_it(tmp_path: Path) -> None:
    """The environment allows cross-provider fallback and has OpenAI's cascade (a trap here); the
    Azure agent's realtime deployment is missing and it has no cascade of its own: its call ends
    with the apology, and nothing of it reaches OpenAI."""
    from relay.testing.openai_http import FakeOpenAIHTTP

    trap = FakeOpenAIHTTP()
    async with trap.serve() as trap_url:
        text = AGENTS.replace('azure_deployment = "gpt-realtime"', 'azure_deployment = "missing"')
        async with agents_rig(
            tmp_path,
            text,
            relay_mode="auto",
            allow_cross_provider_fallback=True,
            openai_base_url=trap_url + "/v1",
        ) as r:
            async with r.caller(PRAXIS) as call:
                twiml = await call.fetch_twiml()
                assert await call.connect(twiml)
                await call.wait_closed(timeout=15)
            record = await record_of(r, call.call_sid)
    assert record["agent"] == "praxis" and record["outcome"] == "provider_error"
    assert r.azure.rejected and not r.azure.connections  # its own endpoint refused it (404)
    assert trap.requests == [], "the Azure agent's call reached OpenAI"


async def test_ready_and_admission_follow_the_agents_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No OPENAI_API_KEY in the environment; the file's default agent has its own key: the relay is
    ready and takes its calls. An agent without any key is refused with the apology."""
    import httpx

    monkeypatch.setenv("RELAY_TEST_DEFAULT_KEY", "sk-test")
    text = """
[agents.default]
instructions = "You are the front desk."
api_key_env = "RELAY_TEST_DEFAULT_KEY"

[agents.keyless]
numbers = ["+15550100077"]
instructions = "Nobody gave me a key."
"""
    async with agents_rig(tmp_path, text, openai_api_key=None) as r:
        async with httpx.AsyncClient(base_url=r.url) as client:
            ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        async with r.caller(UNCLAIMED) as call:
            conn = await r.dial(call, r.openai)
            assert session_of(conn)["instructions"] == "You are the front desk."
            await call.stop()
        async with r.caller("+15550100077") as refused:
            twiml = await refused.fetch_twiml()
            assert twiml.stream_url is None and twiml.say  # the apology and a hang-up


async def test_a_handoff_whose_new_provider_refuses_ends_the_call_cleanly(tmp_path: Path) -> None:
    """The Azure agent's resource refuses the connection (401): the call is not left in silence nor
    sent to OpenAI; it ends with the apology, outcome provider_error, the record naming both agents."""
    async with agents_rig(tmp_path, openai_replies=[Call("handoff", {"agent": "praxis"}, call_id="h1")]) as r:
        r.azure.reject_status = 401
        async with r.caller(SUPPORT) as call:
            first = await r.dial(call, r.openai)
            await speak(call)
            await call.wait_closed(timeout=15)
            await first.closed.wait()
        record = await record_of(r, call.call_sid)
    assert record["outcome"] == "provider_error"
    assert [a["name"] for a in record["agents"]] == ["support", "praxis"]
    assert r.azure.rejected and not r.azure.connections and len(r.openai.connections) == 1
