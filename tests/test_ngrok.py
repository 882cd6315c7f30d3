"""scripts/ngrok.sh with a fake `ngrok` on PATH (a Python script serving the agent API) and an
inline fake of Twilio's IncomingPhoneNumbers endpoints: .env written, the number's webhook
updated; an existing tunnel reused; ngrok missing or not authenticated → a clear error."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.testing.server import bind_free_port, serve_app

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ngrok.sh"
PUBLIC = "https://abc123.ngrok-free.app"
SID = "AC" + "5" * 32
TOKEN = "ngrok-test-token"
NUMBER = "+15550007777"
NUMBER_SID = "PN" + "7" * 32

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="scripts/ngrok.sh needs curl")

FAKE_NGROK = """#!{python}
# A fake ngrok: `ngrok http PORT ...` serves the agent API (/api/tunnels) on $FAKE_NGROK_API_PORT.
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

with open(os.environ["FAKE_NGROK_ARGS"], "w") as f:
    f.write(" ".join(sys.argv[1:]))
if os.environ.get("FAKE_NGROK_MODE") == "auth":
    print('t=2026-01-01T00:00:00+0000 lvl=eror msg="failed to reconnect session" '
          'err="authentication failed: Usage of ngrok requires a verified account and authtoken. '
          'ERR_NGROK_4018"')
    sys.exit(1)
with open(os.environ["FAKE_NGROK_PIDFILE"], "w") as f:
    f.write(str(os.getpid()))
port = sys.argv[2]
body = json.dumps({{"tunnels": [
    {{"name": "tcp", "public_url": "tcp://0.tcp.ngrok.io:12345", "config": {{"addr": "localhost:22"}}}},
    {{"name": "command_line", "public_url": "{public}", "proto": "https",
      "config": {{"addr": "http://localhost:" + port, "inspect": True}}}},
], "uri": "/api/tunnels"}}).encode()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/api/tunnels":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["FAKE_NGROK_API_PORT"])), Handler).serve_forever()
"""


def free_port() -> int:
    sock = bind_free_port()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def path_without_ngrok(*first: Path) -> str:
    """The PATH with `first` in front and no directory holding a real ngrok."""
    dirs = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if d]
    dirs = [d for d in dirs if not os.access(os.path.join(d, "ngrok"), os.X_OK)]
    return os.pathsep.join([*map(str, first), *dirs])


@dataclass
class FakeTwilioNumbers:
    """IncomingPhoneNumbers list (filtered by PhoneNumber) and update, with Basic auth."""

    updates: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = "/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers"
        self.app = Starlette(
            routes=[
                Route(base + ".json", self.list_numbers, methods=["GET"]),
                Route(base + "/{pn}.json", self.update, methods=["POST"]),
            ]
        )

    def authorized(self, request: Request) -> bool:
        expected = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
        return (
            request.path_params["sid"] == SID and request.headers.get("authorization") == f"Basic {expected}"
        )

    def record(self) -> dict[str, Any]:
        return {"sid": NUMBER_SID, "account_sid": SID, "phone_number": NUMBER, "voice_method": "POST"}

    async def list_numbers(self, request: Request) -> Response:
        if not self.authorized(request):
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        found = [self.record()] if request.query_params.get("PhoneNumber") == NUMBER else []
        return JSONResponse({"incoming_phone_numbers": found, "next_page_uri": None, "page": 0})

    async def update(self, request: Request) -> Response:
        if not self.authorized(request) or request.path_params["pn"] != NUMBER_SID:
            return JSONResponse({"code": 20404, "message": "Not found", "status": 404}, status_code=404)
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.updates.append(form)
        return JSONResponse({**self.record(), "voice_url": form.get("VoiceUrl")})


@contextlib.asynccontextmanager
async def twilio_numbers() -> AsyncIterator[tuple[FakeTwilioNumbers, str]]:
    fake = FakeTwilioNumbers()
    async with serve_app(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake_ngrok(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fake `ngrok` in tmp_path/bin; yields the env that drives it; kills it afterwards."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ngrok"
    exe.write_text(FAKE_NGROK.format(python=sys.executable, public=PUBLIC))
    exe.chmod(0o755)
    api_port = free_port()
    pidfile = tmp_path / "ngrok.pid"
    env = {
        "PATH": path_without_ngrok(bin_dir),
        "NGROK_API": f"http://127.0.0.1:{api_port}",
        "FAKE_NGROK_API_PORT": str(api_port),
        "FAKE_NGROK_PIDFILE": str(pidfile),
        "FAKE_NGROK_ARGS": str(tmp_path / "ngrok.args"),
    }
    yield env
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


async def run_script(cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    full_env = {
        "PATH": path_without_ngrok(),
        "HOME": str(cwd),
        "TMPDIR": str(cwd),
        "PYTHON": sys.executable,
        "NGROK_WAIT": "15",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        cwd=cwd,
        env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_starts_ngrok_writes_env_and_points_the_number(tmp_path: Path, fake_ngrok) -> None:
    work = tmp_path / "project"
    work.mkdir()
    env_file = work / ".env"
    env_file.write_text(
        "# my settings\n"
        "OPENAI_API_KEY=sk-keep-me\n"
        "PUBLIC_URL=https://old.ngrok.app\n"
        f"TWILIO_ACCOUNT_SID={SID}\n"
        f'TWILIO_AUTH_TOKEN="{TOKEN}"\n'
        "PUBLIC_URL=https://duplicate.example\n"
        f"TWILIO_PHONE_NUMBER={NUMBER}  # the main line"  # no newline at the end
    )
    async with twilio_numbers() as (fake, twilio_url):
        code, out, err = await run_script(
            work, {**fake_ngrok, "PORT": "8123", "TWILIO_API_BASE_URL": twilio_url}
        )
    assert code == 0, (out, err)
    assert (tmp_path / "ngrok.args").read_text().startswith("http 8123")
    lines = env_file.read_text().splitlines()
    assert lines == [
        "# my settings",
        "OPENAI_API_KEY=sk-keep-me",
        f"PUBLIC_URL={PUBLIC}",
        f"TWILIO_ACCOUNT_SID={SID}",
        f'TWILIO_AUTH_TOKEN="{TOKEN}"',
        f"TWILIO_PHONE_NUMBER={NUMBER}  # the main line",
    ]
    assert fake.updates == [{"VoiceUrl": f"{PUBLIC}/incoming-call", "VoiceMethod": "POST"}]
    assert f"Twilio: {NUMBER} → {PUBLIC}/incoming-call (POST)" in out
    assert TOKEN not in out + err


async def test_reuses_a_running_tunnel_and_creates_env(tmp_path: Path) -> None:
    api = Starlette(
        routes=[
            Route(
                "/api/tunnels",
                lambda request: JSONResponse(
                    {"tunnels": [{"public_url": PUBLIC + "/", "config": {"addr": "http://localhost:8000"}}]}
                ),
            )
        ]
    )
    async with serve_app(api) as api_url:
        code, out, err = await run_script(tmp_path, {"NGROK_API": api_url})  # no ngrok on PATH at all
    assert code == 0, (out, err)
    assert "using the tunnel already running" in out
    assert (tmp_path / ".env").read_text() == f"PUBLIC_URL={PUBLIC}\n"
    assert "voice webhook to " + PUBLIC + "/incoming-call" in out


async def test_wrong_twilio_token_is_named(tmp_path: Path, fake_ngrok) -> None:
    async with twilio_numbers() as (fake, twilio_url):
        env = {
            **fake_ngrok,
            "TWILIO_API_BASE_URL": twilio_url,
            "TWILIO_ACCOUNT_SID": SID,
            "TWILIO_AUTH_TOKEN": "wrong",
            "TWILIO_PHONE_NUMBER": NUMBER,
        }
        code, out, err = await run_script(tmp_path, env)
    assert code != 0
    assert "Twilio rejected TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN (HTTP 401)" in err
    assert (tmp_path / ".env").read_text() == f"PUBLIC_URL={PUBLIC}\n"  # the tunnel part still done
    assert not fake.updates


async def test_ngrok_missing_says_how_to_install(tmp_path: Path) -> None:
    code, out, err = await run_script(tmp_path, {"NGROK_API": f"http://127.0.0.1:{free_port()}"})
    assert code != 0
    assert "install ngrok: https://ngrok.com/download" in err
    assert not (tmp_path / ".env").exists()


async def test_ngrok_not_authenticated_shows_its_error(tmp_path: Path, fake_ngrok) -> None:
    code, out, err = await run_script(tmp_path, {**fake_ngrok, "FAKE_NGROK_MODE": "auth"})
    assert code == 1, (out, err)
    assert "ERR_NGROK_4018" in err and "authentication failed" in err
    assert "ngrok config add-authtoken" in err
    assert not (tmp_path / ".env").exists()
