"""`relay demo`: a whole phone call with no account, in one process and one command.

Everything runs on 127.0.0.1 in this process: the local fakes of `relay.fakes` (the fake Realtime
model speaks in tones, with scripted transcripts; the fake Tavily web search), the real relay app
(`relay.app.create_app`, served by uvicorn) and the simulated Twilio caller of `relay call`. The
settings are built in code, so no `.env` is needed and the user's is not read.

The call goes to the number of a `reception` agent, one of two agents (AGENTS_FILE, written to a
temporary file): the agent greets; the caller asks a question (espeak-ng speech); the model hands
the call to the `weather` agent (the `handoff` tool: the session is updated in place), which calls
the `web_search` tool, run by the relay against the fake Tavily; the model starts a long answer;
the caller interrupts it (barge-in: Twilio `clear`, the model's memory truncated at what was
heard); the agent answers briefly; the caller hangs up. The timeline is printed as it happens,
then the transcript the relay stored, and the call is written as a stereo WAV.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from relay.app import create_app
from relay.config import load_settings
from relay.fakes import local_fakes
from relay.simulate.caller import run_call
from relay.simulate.command import print_line, record_lines
from relay.simulate.results import CallResult, Timeline
from relay.simulate.script import CallOptions, Utterance
from relay.testing.realtime import Call, FakeRealtimeServer, Reply, Say
from relay.testing.server import serve_app

__all__ = ["DemoOptions", "DemoResult", "demo_command", "run_demo"]

PUBLIC_URL = "https://relay-demo.invalid"  # what the simulated Twilio signs; never resolved
AUTH_TOKEN = "demo-auth-token"
RECEPTION = "+15550100100"  # the number the demo calls: the reception agent's
AGENTS = f"""
[agents.reception]
numbers = ["{RECEPTION}"]
description = "The front desk: greets callers and passes them on."
instructions = "You are the reception of the relay demo. Hand weather questions to the weather agent."
handoffs = ["weather"]

[agents.weather]
description = "Weather questions, with a web search."
instructions = "You answer weather questions briefly, after a web search."
tools = ["web_search", "end_call"]
handoffs = ["reception"]
"""


@dataclass
class DemoOptions:
    """The demo's script and pacing (the defaults take about 15 s)."""

    out: Path | None = Path("demo.wav")
    question: str = "What's the weather like in Paris today?"
    interruption: str = "Sorry, just the short version please."
    search_query: str = "weather in Paris today"
    search_answer: str = "Sunny, 22 °C, light westerly breeze, dry until Friday."
    greeting: str = "Hello! You are talking to the relay demo. How can I help you?"
    answer: str = (
        "I looked it up. According to the web it is sunny in Paris today, around twenty two degrees, "
        "with a light breeze from the west, and the evening should stay dry, although clouds may "
        "come in from the Atlantic later this week, so if you plan to be outside on Friday"
    )
    reply: str = "Sunny and twenty two degrees."
    greeting_ms: int = 2500
    answer_ms: int = 7000
    reply_ms: int = 1800
    barge_in_ms: int = 1800
    """The caller interrupts the answer this long after it starts."""
    quiet_ms: int = 800
    timeout: float = 55.0


@dataclass
class DemoResult:
    call: CallResult
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """The tool audit of the call record (name, arguments, outcome, duration)."""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    """The transcript the relay stored: only what the caller heard."""
    agents: list[str] = field(default_factory=list)
    """The agents the call passed through, as the record lists them."""
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.call.ok and not self.problems else 1


async def _watch_tools(server: FakeRealtimeServer, timeline: Timeline) -> None:
    """Adds the tool calls to the timeline: the model's request, and the result the relay sent back."""
    try:
        conn = await server.wait_connection(timeout=30)
        n = 0
        while True:
            n += 1
            done = await conn.wait_for(
                "response.function_call_arguments.done", timeout=3600, n=n, direction="sent"
            )
            name, call_id = done["name"], done["call_id"]
            timeline.add("tool", f"the model calls {name} {done['arguments']}")
            started = time.monotonic()

            def is_output(event: dict[str, Any], call_id: str = call_id) -> bool:
                item = event.get("item") or {}
                return bool(item.get("type") == "function_call_output" and item.get("call_id") == call_id)

            sent = await conn.wait_for(
                "conversation.item.create", timeout=30, predicate=is_output, direction="received"
            )
            took = (time.monotonic() - started) * 1000
            try:
                output = orjson.loads(sent["item"]["output"])
            except orjson.JSONDecodeError:
                output = {}
            summary = (
                f"answer {output.get('answer')!r} + {len(output.get('results') or [])} results"
                if isinstance(output, dict) and "answer" in output
                else f"{str(sent['item']['output'])[:80]!r}"
            )
            timeline.add(
                "tool", f"the relay ran {name} (fake Tavily) in {took:.0f} ms and sent back: {summary}"
            )
    except TimeoutError:  # EventNotSeen: the connection closed
        return


async def run_demo(
    options: DemoOptions | None = None, *, emit: Callable[[str], None] | None = None
) -> DemoResult:
    """Runs the whole demo call; `emit` receives every output line (None: silent)."""
    o = options or DemoOptions()
    say = emit or (lambda line: None)
    utterances = [
        Utterance.say(o.question),
        Utterance.say(o.interruption, barge_in_ms=o.barge_in_ms),
    ]
    script: list[Reply] = [
        Say(o.greeting, audio_ms=o.greeting_ms),
        Call("handoff", {"agent": "weather", "reason": "a weather question"}),
        Call("web_search", {"query": o.search_query}),
        Say(o.answer, audio_ms=o.answer_ms),
        Say(o.reply, audio_ms=o.reply_ms),
    ]
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as tmp:
        return await _demo_call(o, say, script, utterances, _agents_file(Path(tmp)))


def _agents_file(folder: Path) -> Path:
    """The demo's two agents, written to `folder` (a temporary one): AGENTS_FILE names it."""
    path = folder / "agents.toml"
    path.write_text(AGENTS)
    return path


async def _demo_call(
    o: DemoOptions,
    say: Callable[[str], None],
    script: list[Reply],
    utterances: list[Utterance],
    agents: Path,
) -> DemoResult:
    async with local_fakes(
        realtime_script=script,
        transcripts=[o.question, o.interruption],
        tavily_answers={o.search_query: o.search_answer},
        twilio_auth_token=AUTH_TOKEN,
    ) as fakes:
        server = fakes.realtime
        settings = load_settings(
            _env_file=None,
            **fakes.settings(),
            relay_mode="realtime",
            public_url=PUBLIC_URL,
            twilio_auth_token=AUTH_TOKEN,
            twilio_phone_number="",
            stream_token_secret=None,
            relay_tools="",
            transfer_allowlist="",
            relay_admin_token=None,
            greeting_enabled=True,
            turn_detection="server_vad",
            vad_silence_duration_ms=500,
            agents_file=str(agents),
        )
        app = create_app(settings)
        async with serve_app(app) as url:
            say(
                "relay demo: the relay with a fake realtime model (it speaks in tones) and a fake web "
                "search, all on 127.0.0.1 — no account needed"
            )
            say(f"  relay {url}   fake realtime {server.url}/v1   fake Tavily {fakes.tavily_url}")
            timeline = Timeline(say)
            watcher = asyncio.create_task(_watch_tools(server, timeline), name="demo-tool-watcher")
            try:
                result = await run_call(
                    CallOptions(
                        url=url,
                        public_url=PUBLIC_URL,
                        auth_token=AUTH_TOKEN,
                        utterances=utterances,
                        record=o.out,
                        quiet_ms=o.quiet_ms,
                        timeout=o.timeout,
                        to=RECEPTION,
                    ),
                    timeline=timeline,
                )
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        # The app has shut down: every record is written.
        record = await app.state.store.get(result.call_sid) or {}
    demo = DemoResult(result, list(record.get("tools") or []), list(record.get("transcript") or []))
    demo.agents = [str(a.get("name")) for a in record.get("agents") or [] if isinstance(a, dict)]
    if demo.agents != ["reception", "weather"]:
        demo.problems.append(f"the demo expected the agents reception → weather, not {demo.agents}")
    kinds = result.timeline.kinds()
    for kind, what in (("tool", "no web_search tool call"), ("barge-in", "no barge-in (clear)")):
        if kind not in kinds:
            demo.problems.append(f"the demo expected a {kind} event but saw {what}")
    return demo


async def demo_command(options: DemoOptions | None = None, emit: Callable[[str], None] = print_line) -> int:
    """`relay demo`: prints the timeline, a summary and the stored transcript; the exit status."""
    demo = await run_demo(options, emit=emit)
    emit("summary")
    for line in demo.call.summary_lines():
        emit("  " + line)
    agents = [{"name": name} for name in demo.agents]
    for line in record_lines({"transcript": demo.transcript, "tools": demo.tool_calls, "agents": agents}):
        emit(line)
    for problem in demo.problems:
        emit(f"problem          {problem}")
    return demo.exit_code
