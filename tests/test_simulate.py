"""`relay call` against the relay (uvicorn) and the fake Realtime server: the timeline, the WAV of
what was played, exit statuses (a refused signature, a barge-in's clear)."""

from __future__ import annotations

import asyncio
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from relay.cli import main
from relay.demo import DemoOptions, demo_command
from relay.simulate import CallOptions, Utterance, build_utterances, run_call
from relay.testing.audio import (
    correlation,
    float_to_ulaw,
    read_wav_ulaw,
    speech_ulaw,
    tone_ulaw,
    write_wav_ulaw,
)
from relay.testing.realtime import Say
from relay.testing.server import bind_free_port
from tests.conftest import AUTH_TOKEN
from tests.rig import rig

PUBLIC = "https://relay.example.com"


@pytest.fixture
def call_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """`relay call` reads TWILIO_AUTH_TOKEN / PUBLIC_URL from the settings: no .env, known env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.delenv("PUBLIC_URL", raising=False)
    monkeypatch.delenv("USE_AZURE_OPENAI", raising=False)
    return tmp_path


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


async def test_relay_call_prints_timeline_and_writes_played_audio(call_env: Path, capsys) -> None:
    replies = [Say("Hello, how can I help?", audio_ms=600), Say("It is sunny.", audio_ms=500)]
    out, record = call_env / "out.wav", call_env / "call.wav"
    async with rig("openai-ga", responses=replies) as r:
        code = await _main(
            [
                "call",
                "--url",
                r.url,
                "--public-url",
                PUBLIC,
                "--say",
                "What is the weather?",
                "--out",
                str(out),
                "--record",
                str(record),
            ]
        )
    printed = capsys.readouterr().out
    assert code == 0, printed
    for needle in (
        "POST /incoming-call → 200",
        "connected",
        "first audio (greeting)",
        'says: "What is the weather?"',
        "end of speech",
        "ms after the caller's end of speech",
        "the caller hung up (stop)",
        "result           OK",
    ):
        assert needle in printed, (needle, printed)
    # the WAV holds exactly what was played: the greeting and the answer
    assert abs(wav_seconds(out) - 1.1) < 0.05, wav_seconds(out)
    assert len(read_wav_ulaw(out)) == 1100 * 8
    # the recording: the caller on the left, the agent on the right, where each was heard
    with wave.open(str(record), "rb") as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 8000)
        tracks = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert wav_seconds(record) > wav_seconds(out)
    with wave.open(str(out), "rb") as w:
        played = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    agent = tracks[:, 1]
    assert np.array_equal(np.sort(agent[agent != 0]), np.sort(played[played != 0]))  # the same samples
    assert correlation(float_to_ulaw(tracks[:, 0] / 32768.0), speech_ulaw("What is the weather?")) > 0.9


async def _main(argv: list[str]) -> int:
    """`main()` runs its own event loop (asyncio.run): run it in a thread next to the served rig."""
    return await asyncio.to_thread(main, argv)


async def test_run_call_result_measures_each_turn() -> None:
    replies = [Say("Hi.", audio_ms=300), Say("One.", audio_ms=300), Say("Two.", audio_ms=300)]
    loud = tone_ulaw(500, 400, 0.6)
    utterances = [Utterance("first", loud), Utterance("second", loud)]
    async with rig("openai-ga", responses=replies) as r:
        result = await run_call(
            CallOptions(
                url=r.url, public_url=PUBLIC, auth_token=AUTH_TOKEN, utterances=utterances, quiet_ms=300
            )
        )
    assert result.ok and result.exit_code == 0, result.timeline.text()
    assert result.connected_ms is not None and result.greeting_ms is not None
    assert result.greeting_ms >= result.connected_ms
    assert [t.label for t in result.turns] == ["first", "second"]
    for turn in result.turns:
        assert turn.latency_ms is not None and 0 < turn.latency_ms < 3000, turn
    assert result.played_ms == pytest.approx(900, abs=1)
    assert result.closed_by_relay is False and result.close_code == 1000
    assert not result.barge_ins
    kinds = result.timeline.kinds()
    assert kinds[:3] == ["webhook", "connected", "agent"] and kinds[-1] == "hang-up"


async def test_wrong_token_is_refused_with_nonzero_exit(call_env: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "not-the-relay-token")
    async with rig("openai-ga") as r:
        code = await _main(["call", "--url", r.url, "--public-url", PUBLIC])
    printed = capsys.readouterr().out
    assert code != 0
    assert "HTTP 403" in printed and "TWILIO_AUTH_TOKEN" in printed, printed


async def test_barge_in_shows_a_clear(call_env: Path, capsys) -> None:
    replies = [Say("A long greeting the caller interrupts.", audio_ms=4000), Say("Sure.", audio_ms=300)]
    async with rig("openai-ga", responses=replies) as r:
        code = await _main(
            ["call", "--url", r.url, "--public-url", PUBLIC, "--barge-in", "500", "--say", "Stop please."]
        )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'barges in: "Stop please."' in printed
    assert "the relay sent clear" in printed and "after the caller started speaking" in printed, printed
    assert "barge-ins        1" in printed


async def test_unreachable_relay_fails() -> None:
    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()
    result = await run_call(CallOptions(url=f"http://127.0.0.1:{port}"))
    assert result.exit_code == 1
    assert "cannot reach the relay" in result.errors[0]


async def test_no_agent_audio_at_all_fails() -> None:
    async with rig("openai-ga", settings={"greeting_enabled": False}) as r:
        result = await run_call(
            CallOptions(
                url=r.url, public_url=PUBLIC, auth_token=AUTH_TOKEN, answer_timeout=0.7, progress_every=0.2
            )
        )
    assert result.exit_code == 1
    assert "no audio at all" in result.errors[0], result.timeline.text()
    assert "waiting" in result.timeline.kinds()  # long waits show progress lines


def test_barge_in_must_precede_an_utterance() -> None:
    with pytest.raises(ValueError, match="applies to the --say/--wav/--digits that follows"):
        build_utterances([("barge-in", "300")])
    with pytest.raises(ValueError, match="milliseconds"):
        build_utterances([("barge-in", "soon")])


async def test_demo_core_greets_searches_and_is_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "demo.wav"
    options = DemoOptions(
        out=out,
        question="Weather in Paris?",
        interruption="Short version.",
        greeting_ms=800,
        answer_ms=4000,
        barge_in_ms=700,
        reply_ms=500,
        quiet_ms=300,
    )
    lines: list[str] = []
    code = await demo_command(options, emit=lines.append)
    printed = "\n".join(lines)
    assert code == 0, printed
    assert "first audio (greeting)" in printed
    assert 'the model calls handoff {"agent":"weather","reason":"a weather question"}' in printed
    assert "agents           reception → weather" in printed  # two agents, one call
    assert 'the model calls web_search {"query":"weather in Paris today"}' in printed
    assert "the relay ran web_search (fake Tavily)" in printed and "Sunny, 22 °C" in printed
    assert "the relay sent clear" in printed and "barge-ins        1" in printed
    assert "[interrupted]" in printed  # the stored transcript keeps only what was heard
    assert "tool audit       web_search" in printed and "→ ok" in printed
    with wave.open(str(out), "rb") as w:
        assert w.getnchannels() == 2 and w.getnframes() > 8000


def test_wav_utterances_keep_their_order_and_barge_in(tmp_path: Path) -> None:
    path = tmp_path / "hello.wav"
    write_wav_ulaw(path, tone_ulaw(400, 300, 0.5))
    first, second = build_utterances([("wav", str(path)), ("barge-in", "250"), ("wav", str(path))])
    assert (first.label, first.barge_in_ms) == ("hello.wav", None)
    assert (second.label, second.barge_in_ms) == ("hello.wav", 250)
    assert first.duration_ms == pytest.approx(300, abs=1)


async def test_relay_call_prints_the_relays_record_with_the_admin_token(
    call_env: Path, monkeypatch, capsys
) -> None:
    from relay.testing.realtime import Call
    from relay.testing.tavily import FakeTavily

    monkeypatch.setenv("RELAY_ADMIN_TOKEN", "admin-secret")
    tavily = FakeTavily()
    replies = [
        Say("Hello, how can I help?", audio_ms=400),
        Call("web_search", {"query": "weather in Paris"}),
        Say("It is sunny.", audio_ms=400),
    ]
    async with tavily.serve() as tavily_url:
        settings = {
            "relay_admin_token": "admin-secret",
            "tavily_api_key": tavily.api_key,
            "tavily_base_url": tavily_url,
        }
        async with rig("openai-ga", settings=settings, responses=replies) as r:
            code = await _main(
                ["call", "--url", r.url, "--public-url", PUBLIC, "--say", "What is the weather?"]
            )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "transcript (as the relay stored it" in printed and "Hello, how can I help?" in printed
    assert 'tool audit       web_search {"query":"weather in Paris"} → ok' in printed
    assert re.search(r"relay's turns    \d+ ms \(its end of speech", printed), printed
