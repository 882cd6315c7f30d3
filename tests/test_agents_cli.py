"""The agents file and `relay serve` as a real process: an invalid file stops it with every problem
(exit 2, no traceback); SIGHUP reloads the file, and an invalid one is refused while the relay
goes on serving with the old agents."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from relay.agents import load_agents
from relay.config import Settings
from tests.conftest import make_settings
from tests.test_cli import relay_serve


def _clean_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return {**env, **variables}


def _readme_block(after: str, fence: str = "```") -> str:
    """The first fenced block of the README after the text `after`."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rest = readme[readme.index(after) :]
    start = rest.index(fence)
    body = rest[rest.index("\n", start) + 1 :]
    return body[: body.index("```")]


async def test_relay_serve_refuses_an_invalid_agents_file_with_every_problem(tmp_path: Path) -> None:
    """The README's example of a refused file, word for word."""
    (tmp_path / "agents.toml").write_text(
        '[agents.sales]\nprovider = "azur"\nnumbers = ["555-0100"]\nhandoffs = ["suport"]\n'
        '[agents.support]\nnumbers = ["+15550100001"]\n'
    )
    env = _clean_env(AGENTS_FILE="agents.toml", OPENAI_API_KEY="sk-test")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--port",
        "1",
        env=env,
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    text = err.decode()
    assert proc.returncode == 2, text
    expected = _readme_block("**Validation.**")
    assert text.startswith(expected), (text, expected)
    assert "Traceback" not in text and "relay doctor" in text


def test_the_readme_example_is_part_of_the_example_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's TOML excerpt loads, and every line of it is in examples/agents.toml."""
    excerpt = _readme_block("## Agents", "```toml")
    example = (Path(__file__).resolve().parent.parent / "examples" / "agents.toml").read_text()
    assert all(line in example.splitlines() for line in excerpt.splitlines() if line), excerpt
    (tmp_path / "agents.toml").write_text(excerpt)
    monkeypatch.setenv("PRAXIS_AZURE_KEY", "praxis-key")
    book = load_agents(make_settings(agents_file=str(tmp_path / "agents.toml")))
    assert book.names == ("support", "praxis", "default")
    assert book.for_number("+4930120000").settings.use_azure_openai


async def test_sighup_reloads_the_agents_and_refuses_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[agents.support]\nnumbers = ["+15550100001"]\n')
    env = {"AGENTS_FILE": str(path), "OPENAI_API_KEY": "sk-test", "LOG_LEVEL": "INFO"}
    async with relay_serve(tmp_path, **env) as relay:
        await relay.read_until(f"agents from {path}: support, default")
        path.write_text('[agents.support]\nnumbers = ["+15550100001"]\n[agents.sales]\nvoice = "ash"\n')
        relay.proc.send_signal(signal.SIGHUP)
        await relay.read_until(f"agents: reloaded {path}: support, sales, default")

        path.write_text('[agents.support]\nprovider = "azur"\n')
        relay.proc.send_signal(signal.SIGHUP)
        await relay.read_until("refused, keeping the agents support, sales, default")
        refused = next(line for line in relay.seen if "refused, keeping" in line)
        assert "ERROR" in refused and 'agents.support.provider = "azur"' in refused
        async with httpx.AsyncClient(base_url=relay.url) as client:
            assert (await client.get("/health")).status_code == 200  # SIGHUP never stops it
        assert relay.proc.returncode is None
