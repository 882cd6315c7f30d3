"""`relay doctor` against the local fakes: the realtime endpoint (good key, rejected key, missing
deployment, Entra ID, unreachable, silent), the Twilio REST API (an inline fake of the account and
IncomingPhoneNumbers endpoints), Tavily, Redis, and the configuration checks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.cli import main
from relay.doctor import (
    check_configuration,
    check_realtime,
    check_redis,
    check_tavily,
    check_twilio,
    run_doctor,
)
from relay.testing.realtime import FakeRealtimeServer
from relay.testing.server import bind_free_port, serve_app
from relay.testing.tavily import FakeTavily
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, make_settings
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.rig import FakeCredential

NUMBER = "+15550001234"


def closed_port() -> int:
    sock = bind_free_port()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def only(checks: list[Any], name: str) -> Any:
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, checks
    return found[0]


# --------------------------------------------------------------------------- realtime


async def test_realtime_good_key_is_ok() -> None:
    async with FakeRealtimeServer() as server:
        settings = make_settings(openai_base_url=server.openai_base_url)
        check = only(await check_realtime(settings), "realtime")
        assert server.connections  # a real connect
    assert check.status == "OK", check
    assert "session.created" in check.message and "/v1/realtime?model=gpt-realtime" in check.message


async def test_realtime_wrong_key_fails_with_the_401_text() -> None:
    async with FakeRealtimeServer() as server:
        settings = make_settings(openai_base_url=server.openai_base_url, openai_api_key="sk-wrong")
        check = only(await check_realtime(settings), "realtime")
    assert check.status == "FAIL"
    assert "401: the OpenAI key was rejected; check OPENAI_API_KEY" in check.message


async def test_realtime_unknown_azure_deployment_fails_with_the_404_text() -> None:
    async with FakeRealtimeServer() as server:
        settings = make_settings(
            use_azure_openai=True,
            azure_openai_endpoint=server.azure_endpoint,
            azure_openai_deployment="nope",
            azure_openai_api_key="azure-key",
        )
        check = only(await check_realtime(settings), "realtime")
    assert check.status == "FAIL"
    assert "404: deployment 'nope' not found on resource '127.0.0.1:" in check.message


async def test_azure_entra_credential_ok_and_missing() -> None:
    async with FakeRealtimeServer(bearer_tokens={"entra-1", "entra-2"}) as server:
        settings = make_settings(
            use_azure_openai=True,
            azure_openai_endpoint=server.azure_endpoint,
            azure_openai_deployment="gpt-realtime",
        )
        checks = await check_realtime(settings, azure_credential=FakeCredential())
        assert only(checks, "azure auth").status == "OK"
        assert only(checks, "realtime").status == "OK", checks

        class NoCredential(FakeCredential):
            async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
                raise RuntimeError("DefaultAzureCredential failed to retrieve a token")

        checks = await check_realtime(settings, azure_credential=NoCredential())
    auth = only(checks, "azure auth")
    assert auth.status == "FAIL"
    assert "no Entra ID credential is available" in auth.message and "az login" in auth.message
    assert only(checks, "realtime").status == "SKIP"


async def test_realtime_unreachable_port_fails() -> None:
    port = closed_port()
    settings = make_settings(openai_base_url=f"http://127.0.0.1:{port}/v1")
    check = only(await check_realtime(settings), "realtime")
    assert check.status == "FAIL"
    assert f"cannot reach OpenAI at ws://127.0.0.1:{port}/v1/realtime" in check.message


async def test_realtime_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts TCP (backlog) but never answers the upgrade
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        settings = make_settings(openai_base_url=f"http://127.0.0.1:{port}/v1", provider_connect_timeout=0.3)
        check = only(await check_realtime(settings), "realtime")
    assert check.status == "FAIL"
    assert "did not answer within 0.3 s" in check.message


# --------------------------------------------------------------------------- Twilio


@dataclass
class FakeTwilioAccount:
    """The two read-only Twilio REST endpoints the doctor uses, with Basic auth."""

    voice_url: str = ""
    voice_method: str = "POST"
    status: str = "active"
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = "/2010-04-01/Accounts/{sid}"
        self.app = Starlette(
            routes=[
                Route(base + ".json", self.account),
                Route(base + "/IncomingPhoneNumbers.json", self.numbers),
                Route("/health", lambda request: JSONResponse({"status": "ok"})),
            ]
        )

    def authorized(self, request: Request) -> bool:
        expected = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    def error(self, status: int, code: int, message: str) -> Response:
        body = {"code": code, "message": message, "more_info": "", "status": status}
        return JSONResponse(body, status_code=status)

    async def account(self, request: Request) -> Response:
        self.requests.append(request.url.path)
        if not self.authorized(request):
            return self.error(401, 20003, "Authenticate")
        sid = request.path_params["sid"]
        if sid != ACCOUNT_SID:
            return self.error(404, 20404, "The requested resource was not found")
        return JSONResponse(
            {"sid": sid, "friendly_name": "Test account", "status": self.status, "type": "Full"}
        )

    async def numbers(self, request: Request) -> Response:
        self.requests.append(f"{request.url.path}?{request.url.query}")
        if not self.authorized(request):
            return self.error(401, 20003, "Authenticate")
        wanted = request.query_params.get("PhoneNumber")
        records = [
            {
                "sid": "PN" + "1" * 32,
                "account_sid": ACCOUNT_SID,
                "phone_number": NUMBER,
                "voice_url": self.voice_url,
                "voice_method": self.voice_method,
            }
        ]
        uri = request.url.path
        return JSONResponse(
            {
                "incoming_phone_numbers": [r for r in records if r["phone_number"] == wanted],
                "end": 0,
                "first_page_uri": uri,
                "next_page_uri": None,
                "page": 0,
                "page_size": 50,
                "previous_page_uri": None,
                "start": 0,
                "uri": uri,
            }
        )


@contextlib.asynccontextmanager
async def twilio_fake(**kw: Any) -> AsyncIterator[tuple[FakeTwilioAccount, str]]:
    fake = FakeTwilioAccount(**kw)
    async with serve_app(fake.app) as url:
        yield fake, url


async def test_twilio_account_and_matching_webhook_ok() -> None:
    async with twilio_fake(voice_url="https://relay.example.com/incoming-call") as (fake, url):
        settings = make_settings(twilio_api_base_url=url, twilio_phone_number=NUMBER)
        checks = await check_twilio(settings)
    assert only(checks, "twilio").status == "OK" and "Test account" in only(checks, "twilio").message
    number = only(checks, "twilio number")
    assert number.status == "OK", number
    assert f"PhoneNumber={NUMBER.replace('+', '%2B')}" in fake.requests[-1]


async def test_twilio_webhook_elsewhere_fails_with_both_urls() -> None:
    async with twilio_fake(voice_url="https://old.ngrok.app/incoming-call") as (_, url):
        settings = make_settings(twilio_api_base_url=url, twilio_phone_number=NUMBER)
        number = only(await check_twilio(settings), "twilio number")
    assert number.status == "FAIL"
    assert "https://old.ngrok.app/incoming-call" in number.message
    assert "https://relay.example.com/incoming-call" in number.message


async def test_twilio_get_webhook_and_unknown_number_fail() -> None:
    async with twilio_fake(voice_url="https://relay.example.com/incoming-call", voice_method="GET") as (
        _,
        url,
    ):
        settings = make_settings(twilio_api_base_url=url, twilio_phone_number=NUMBER)
        assert "HTTP GET" in only(await check_twilio(settings), "twilio number").message
        settings = make_settings(twilio_api_base_url=url, twilio_phone_number="+15559999999")
        number = only(await check_twilio(settings), "twilio number")
    assert number.status == "FAIL" and "is not a number of account" in number.message


async def test_twilio_wrong_token_fails_and_skips_the_number() -> None:
    async with twilio_fake() as (_, url):
        settings = make_settings(
            twilio_api_base_url=url, twilio_auth_token="wrong", twilio_phone_number=NUMBER
        )
        checks = await check_twilio(settings)
    account = only(checks, "twilio")
    assert (
        account.status == "FAIL"
        and "rejected TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN (HTTP 401)" in account.message
    )
    assert only(checks, "twilio number").status == "SKIP"


async def test_twilio_unreachable_fails() -> None:
    port = closed_port()
    settings = make_settings(twilio_api_base_url=f"http://127.0.0.1:{port}")
    check = only(await check_twilio(settings, limit=2.0), "twilio")
    assert (
        check.status == "FAIL"
        and f"cannot reach the Twilio REST API at http://127.0.0.1:{port}" in check.message
    )


async def test_twilio_not_configured_is_skipped() -> None:
    settings = make_settings(twilio_account_sid="", twilio_auth_token=None)
    assert only(await check_twilio(settings), "twilio").status == "SKIP"


# --------------------------------------------------------------------------- configuration, Tavily, Redis


def test_configuration_warnings_and_failures() -> None:
    checks = check_configuration(make_settings(public_url="", twilio_auth_token=None))
    assert (
        only(checks, "public url").status == "WARN"
        and "scripts/ngrok.sh" in only(checks, "public url").message
    )
    assert only(checks, "signatures").status == "WARN"
    assert (
        "OpenAI, key set; realtime URL wss://api.openai.com/v1/realtime" in only(checks, "provider").message
    )

    checks = check_configuration(
        make_settings(openai_api_key=None, azure_openai_endpoint="x.openai.azure.com")
    )
    assert only(checks, "provider").status == "FAIL" and "OPENAI_API_KEY" in only(checks, "provider").message
    assert "USE_AZURE_OPENAI=false" in only(checks, "config").message

    azure = make_settings(
        use_azure_openai=True,
        azure_openai_endpoint="https://my-res.openai.azure.com/",
        azure_openai_deployment="gpt-realtime",
        relay_mode="auto",
    )
    checks = check_configuration(azure)
    provider = only(checks, "provider")
    assert provider.status == "OK", provider
    assert "resource my-res.openai.azure.com" in provider.message and "Entra ID" in provider.message
    assert "wss://my-res.openai.azure.com/openai/v1/realtime?model=gpt-realtime" in provider.message
    assert only(checks, "cascade").status == "WARN"


async def test_tavily_key_checked_against_the_fake() -> None:
    tavily = FakeTavily()
    async with tavily.serve() as url:
        good = await check_tavily(make_settings(tavily_api_key=tavily.api_key, tavily_base_url=url))
        bad = await check_tavily(make_settings(tavily_api_key="tvly-wrong", tavily_base_url=url))
    assert good[0].status == "OK"
    assert bad[0].status == "FAIL" and "TAVILY_API_KEY" in bad[0].message
    assert (await check_tavily(make_settings()))[0].status == "SKIP"


async def test_redis_ping(redis_server: RedisServer) -> None:  # noqa: F811
    ok = await check_redis(make_settings(redis_url=redis_server.url))
    assert ok[0].status == "OK", ok
    port = closed_port()
    down = await check_redis(make_settings(redis_url=f"redis://:secret@127.0.0.1:{port}/0"), limit=2.0)
    assert down[0].status == "FAIL" and "cannot reach Redis" in down[0].message
    assert "secret" not in down[0].message


# --------------------------------------------------------------------------- the whole command


async def test_run_doctor_all_configured_exits_zero() -> None:
    tavily = FakeTavily()
    async with (
        FakeRealtimeServer() as server,
        twilio_fake() as (fake, twilio_url),
        tavily.serve() as tavily_url,
    ):
        fake.voice_url = twilio_url + "/incoming-call"
        settings = make_settings(
            openai_base_url=server.openai_base_url,
            public_url=twilio_url,  # the fake answers /health too
            twilio_api_base_url=twilio_url,
            twilio_phone_number=NUMBER,
            tavily_api_key=tavily.api_key,
            tavily_base_url=tavily_url,
        )
        report = await run_doctor(settings)
    assert report.exit_code == 0, report.lines()
    statuses = {c.name: c.status for c in report.checks}
    assert statuses["realtime"] == statuses["twilio"] == statuses["twilio number"] == "OK"
    assert statuses["tavily"] == statuses["tools"] == "OK"
    assert only(report.checks, "tools").message.endswith(
        "web_search, end_call (and on outbound calls: send_digits)"
    )


async def test_relay_doctor_command_reports_and_exits_nonzero(monkeypatch, tmp_path: Path, capsys) -> None:
    async with FakeRealtimeServer() as server:
        monkeypatch.chdir(tmp_path)
        (tmp_path / ".env").write_text(f"OPENAI_API_KEY=sk-wrong\nOPENAI_BASE_URL={server.openai_base_url}\n")
        for name in ("PUBLIC_URL", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TAVILY_API_KEY", "REDIS_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("USE_AZURE_OPENAI", "false")
        code = await asyncio.to_thread(main, ["doctor"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL  realtime        401: the OpenAI key was rejected" in out
    assert "WARN  signatures" in out and "WARN  public url" in out
    assert f"OK    settings        read from {tmp_path / '.env'}" in out
    assert out.rstrip().endswith("fix the FAIL lines above")


async def test_relay_doctor_names_an_invalid_configuration(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("USE_AZURE_OPENAI", "true")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "")
    code = await asyncio.to_thread(main, ["doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  settings" in out and "AZURE_OPENAI_ENDPOINT" in out


# --------------------------------------------------------------------------- agents (AGENTS_FILE)


async def test_doctor_checks_every_agent_against_its_own_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRAXIS_AZURE_KEY", "praxis-key")
    async with FakeRealtimeServer() as openai, FakeRealtimeServer(azure_api_key="praxis-key") as azure:
        path = tmp_path / "agents.toml"
        path.write_text(
            '[agents.support]\nnumbers = ["+15550100001"]\n'
            '[agents.praxis]\nnumbers = ["+4930120000"]\nprovider = "azure"\n'
            f'azure_endpoint = "{azure.azure_endpoint}"\n'
            'azure_deployment = "gpt-realtime"\napi_key_env = "PRAXIS_AZURE_KEY"\n'
            f'[agents.broken]\nprovider = "azure"\nazure_endpoint = "{azure.azure_endpoint}"\n'
            'azure_deployment = "nope"\napi_key_env = "PRAXIS_AZURE_KEY"\n'
        )
        settings = make_settings(openai_base_url=openai.openai_base_url, agents_file=str(path))
        report = await run_doctor(settings)
        openai_paths = [c.path for c in openai.connections] + [path for path, _ in openai.rejected]
        azure_paths = [c.path for c in azure.connections] + [path for path, _ in azure.rejected]
    lines = report.lines()
    names = [c.name for c in report.checks]
    assert "realtime" not in names and "provider" not in names  # one line per agent instead
    agents = only(report.checks, "agents")
    assert agents.status == "OK" and agents.message == (
        f"4 agents from {path}: support (+15550100001), praxis (+4930120000), "
        "broken (no number: outbound calls and handoffs), "
        "default (the environment's settings, every other number)"
    )
    support, praxis, broken, default = (
        only(report.checks, f"agent {n}") for n in ("support", "praxis", "broken", "default")
    )
    assert support.status == "OK" and support.message.startswith("OpenAI: connected in "), lines
    assert praxis.status == "OK", lines
    assert praxis.message.startswith("Azure OpenAI, key from PRAXIS_AZURE_KEY: connected in ")
    assert "session.created (ws://127.0.0.1:" in praxis.message
    assert broken.status == "FAIL" and "404: deployment 'nope' not found on resource" in broken.message
    assert default.status == "OK" and default.message.startswith("OpenAI: connected")
    assert report.exit_code == 1
    # each agent reached only its own endpoint: two OpenAI connects, two Azure ones
    assert len(openai_paths) == 2 and all(p.startswith("/v1/realtime") for p in openai_paths), openai_paths
    assert len(azure_paths) == 2 and all(p.startswith("/openai/v1/realtime") for p in azure_paths), (
        azure_paths
    )


async def test_relay_doctor_lists_each_problem_of_the_agents_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agents.toml").write_text('[agents.sales]\nprovider = "azur"\nvoise = "ash"\n')
    monkeypatch.setenv("AGENTS_FILE", "agents.toml")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    code = await asyncio.to_thread(main, ["doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert 'FAIL  agents          agents.toml: agents.sales.provider = "azur": use "openai" or "azure"' in out
    assert (
        "FAIL  agents          agents.toml: agents.sales.voise is not an agent field: did you mean voice?"
        in out
    )
