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

from relay.config import Settings
from tests.test_cli import relay_serve


def _clean_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return {**env, **variables}


async def test_relay_serve_refuses_an_invalid_agents_file_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[agents.sales]\nprovider = "azur"\nnumbers = ["555-0100"]\nhandoffs = ["suport"]\n')
    env = _clean_env(AGENTS_FILE=str(path), OPENAI_API_KEY="sk-test")
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
    assert text.startswith("relay: invalid configuration:\n"), text
    assert f'  - {path}: agents.sales.provider = "azur": use "openai" or "azure"\n' in text
    assert f'  - {path}: agents.sales.numbers: "555-0100" is not an E.164 number' in text
    assert f'  - {path}: agents.sales.handoffs: "suport" is not an agent' in text
    assert "Traceback" not in text and "relay doctor" in text


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
