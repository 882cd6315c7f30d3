"""`relay doctor`: checks the configuration and every configured service, and says what to fix.

One line per check, `OK`, `WARN`, `FAIL` or `SKIP` (not configured, or impossible because an
earlier check failed), then a count. The exit status is 0 only when nothing FAILs.

What is checked:

* the settings themselves (`.env` + environment), the provider and its normalized realtime URL,
  missing or contradictory variables;
* the realtime endpoint: DNS, then a real WebSocket connect with the configured auth through the
  provider adapter (the same code the relay uses; its `ProviderConnectError` messages say what
  to fix: a rejected key, a missing deployment, a timeout), then the first server event;
* Azure without a key: whether an Entra ID credential can produce a token;
* Twilio: the account (REST `GET /Accounts/{sid}.json`, base URL from TWILIO_API_BASE_URL) and,
  with TWILIO_PHONE_NUMBER, whether that number's voice webhook is PUBLIC_URL/incoming-call;
* PUBLIC_URL answering `/health`, the tool registry (RELAY_TOOLS imports), Redis (PING) when
  REDIS_URL is set and Tavily (a one-result search) when TAVILY_API_KEY is set.

Network checks run concurrently, each bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from relay.config import Settings, load_settings
from relay.errors import ConfigError, ProviderConnectError
from relay.sessions.providers import AsyncTokenCredential, AzureAdapter, ProviderAdapter, make_adapter

__all__ = ["Check", "DoctorReport", "Status", "doctor_command", "run_doctor"]

Status = Literal["OK", "WARN", "FAIL", "SKIP"]
DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_AZURE_HOST_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


@dataclass(frozen=True)
class Check:
    """The outcome of one check: a short name, a status and what was found or what to fix."""

    name: str
    status: Status
    message: str

    def format(self) -> str:
        return f"{self.status:<5} {self.name:<15} {self.message}"


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def counts(self) -> str:
        parts = []
        for status in ("OK", "WARN", "FAIL", "SKIP"):
            n = sum(1 for c in self.checks if c.status == status)
            if n:
                parts.append(f"{n} {status}")
        return ", ".join(parts)

    def lines(self) -> list[str]:
        return [c.format() for c in self.checks]


def _ok(name: str, message: str) -> Check:
    return Check(name, "OK", message)


def _warn(name: str, message: str) -> Check:
    return Check(name, "WARN", message)


def _fail(name: str, message: str) -> Check:
    return Check(name, "FAIL", message)


def _skip(name: str, message: str) -> Check:
    return Check(name, "SKIP", message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _root_cause(exc: BaseException) -> str:
    """The innermost OS error of a wrapped network failure ("Connection refused"), else the first line.

    requests and urllib3 wrap a refused connection three levels deep, with URLs in every message.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        for nxt in (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return _first_line(exc)


def _is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOCAL_HOSTS


def _redact(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------- configuration


def check_configuration(settings: Settings) -> list[Check]:
    """Offline checks: the provider and its endpoint, missing and contradictory variables."""
    s = settings
    checks: list[Check] = []
    try:
        adapter = make_adapter(s, azure_credential=_NoCredential())
    except ConfigError as exc:
        checks.append(_fail("provider", str(exc)))
    else:
        via = " (from REALTIME_WEBSOCKET_BASE_URL)" if s.realtime_websocket_base_url else ""
        if isinstance(adapter, AzureAdapter):
            host = urlsplit(s.azure_openai_endpoint).netloc
            protocol = (
                f"preview protocol (api-version {s.azure_api_version})"
                if adapter.dialect == "preview"
                else "GA protocol"
            )
            auth = "api-key" if adapter.auth_mode == "api-key" else "Entra ID (DefaultAzureCredential)"
            checks.append(
                _ok(
                    "provider",
                    f"Azure OpenAI, resource {host}, deployment '{s.azure_openai_deployment}', {protocol}, "
                    f"auth {auth}; realtime URL {adapter.realtime_url}{via}",
                )
            )
        else:
            checks.append(_ok("provider", f"OpenAI, key set; realtime URL {adapter.realtime_url}{via}"))
    checks.extend(_contradictions(s))
    checks.extend(_cascade(s))
    checks.extend(_twilio_settings(s))
    return checks


class _NoCredential:
    """Lets an adapter be built for its URL without creating DefaultAzureCredential."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise RuntimeError("not used")

    async def close(self) -> None:
        return None


def _contradictions(s: Settings) -> list[Check]:
    checks: list[Check] = []
    azure_vars = [
        name
        for name, value in (
            ("AZURE_OPENAI_ENDPOINT", s.azure_openai_endpoint),
            ("AZURE_OPENAI_DEPLOYMENT", s.azure_openai_deployment),
            ("AZURE_OPENAI_API_KEY", s.azure_openai_api_key),
        )
        if value
    ]
    if not s.use_azure_openai and azure_vars:
        checks.append(
            _warn(
                "config",
                f"{', '.join(azure_vars)} set but USE_AZURE_OPENAI=false: calls go to OpenAI, not Azure. "
                "Set USE_AZURE_OPENAI=true to use Azure (e.g. for EU residency), or remove them.",
            )
        )
    if s.use_azure_openai:
        host = urlsplit(s.azure_openai_endpoint).hostname or ""
        if not _is_local(s.azure_openai_endpoint) and not host.endswith(_AZURE_HOST_SUFFIXES):
            checks.append(
                _warn(
                    "config",
                    f"AZURE_OPENAI_ENDPOINT host {host!r} is not an Azure OpenAI host "
                    "(expected e.g. my-resource.openai.azure.com)",
                )
            )
        version = s.azure_api_version
        if version and not (version.endswith("-preview") or version == "2024-12-17"):
            checks.append(
                _warn(
                    "config",
                    f"AZURE_API_VERSION={version} selects the preview Realtime protocol; "
                    "leave it empty for the GA protocol (/openai/v1/realtime)",
                )
            )
        if s.allow_cross_provider_fallback and s.openai_api_key is None:
            checks.append(
                _warn(
                    "config",
                    "ALLOW_CROSS_PROVIDER_FALLBACK=true but OPENAI_API_KEY is not set: there is nothing to "
                    "fall back to",
                )
            )
    elif urlsplit(s.openai_base_url).scheme == "http" and not _is_local(s.openai_base_url):
        checks.append(
            _warn("config", f"OPENAI_BASE_URL={s.openai_base_url} is plain http: the key travels unencrypted")
        )
    return checks


def _cascade(s: Settings) -> list[Check]:
    if not s.use_azure_openai or s.relay_mode == "realtime":
        return []
    missing = [
        name
        for name, value in (
            ("AZURE_OPENAI_STT_DEPLOYMENT", s.azure_openai_stt_deployment),
            ("AZURE_OPENAI_CHAT_DEPLOYMENT", s.azure_openai_chat_deployment),
            ("AZURE_OPENAI_TTS_DEPLOYMENT", s.azure_openai_tts_deployment),
        )
        if not value
    ]
    if not missing:
        return [_ok("cascade", "Azure STT, chat and TTS deployments set")]
    if s.relay_mode == "cascade":
        return [_fail("cascade", f"RELAY_MODE=cascade needs {', '.join(missing)}")]
    return [
        _warn(
            "cascade",
            f"RELAY_MODE=auto cannot fall back to the cascade: set {', '.join(missing)} "
            "(or RELAY_MODE=realtime to silence this)",
        )
    ]


def _twilio_settings(s: Settings) -> list[Check]:
    checks: list[Check] = []
    if not s.public_url:
        checks.append(
            _warn(
                "public url",
                "PUBLIC_URL is not set: signatures are checked against the request's Host header, and "
                "Twilio needs a public https URL; run scripts/ngrok.sh (it writes PUBLIC_URL to .env)",
            )
        )
    elif _is_local(s.public_url):
        checks.append(
            _warn("public url", f"PUBLIC_URL={s.public_url} is local: Twilio cannot reach it; use a tunnel")
        )
    elif urlsplit(s.public_url).scheme != "https":
        checks.append(
            _warn(
                "public url",
                f"PUBLIC_URL={s.public_url} is not https: Twilio requires https webhooks and wss streams",
            )
        )
    if s.twilio_auth_token is None:
        checks.append(
            _warn(
                "signatures",
                "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked (anyone can call "
                "your webhook); set it before exposing the relay",
            )
        )
    else:
        checks.append(
            _ok("signatures", "TWILIO_AUTH_TOKEN set: webhooks and media streams are signature-checked")
        )
    sid = s.twilio_account_sid
    if sid and not (sid.startswith("AC") and len(sid) == 34):
        checks.append(
            _warn("config", f"TWILIO_ACCOUNT_SID={sid!r} does not look like an account SID (AC + 32 hex)")
        )
    number = s.twilio_phone_number.strip()
    if number and not (number.startswith("+") and number[1:].isdigit()):
        checks.append(
            _warn("config", f"TWILIO_PHONE_NUMBER={number!r} is not in E.164 form (e.g. +15551234567)")
        )
    return checks


def check_tools(settings: Settings) -> Check:
    """The tool registry builds (RELAY_TOOLS modules import) and which tools the model gets."""
    from relay.tools import build_registry

    try:
        registry = build_registry(settings)
    except ConfigError as exc:
        return _fail("tools", str(exc))
    except Exception as exc:  # a user module may raise anything at import
        return _fail("tools", f"building the tool registry failed: {_first_line(exc)}")
    return _ok("tools", "the model is offered: " + (", ".join(registry.names()) or "no tools"))


# --------------------------------------------------------------------------- the realtime endpoint


async def check_realtime(
    settings: Settings, *, azure_credential: AsyncTokenCredential | None = None, limit: float = 10.0
) -> list[Check]:
    """DNS, Entra ID token (Azure without key), WebSocket connect, first server event."""
    try:
        adapter = make_adapter(settings, azure_credential=azure_credential)
    except ConfigError as exc:
        return [_skip("realtime", f"not checked: {exc}")]
    try:
        with _quiet_logger("azure"):  # DefaultAzureCredential logs a page per failure; we say it in one line
            return await _realtime(adapter, settings, limit)
    finally:
        with contextlib.suppress(Exception):
            await adapter.aclose()


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _realtime(adapter: ProviderAdapter, settings: Settings, limit: float) -> list[Check]:
    checks: list[Check] = []
    if isinstance(adapter, AzureAdapter) and adapter.auth_mode == "entra-id":
        try:
            async with asyncio.timeout(limit):
                await adapter.bearer_token()
        except Exception as exc:
            return [
                _fail(
                    "azure auth",
                    "AZURE_OPENAI_API_KEY is empty and no Entra ID credential is available "
                    f"({_first_line(exc)}): run `az login`, set AZURE_CLIENT_ID / AZURE_TENANT_ID / "
                    "AZURE_CLIENT_SECRET, use a managed identity, or set AZURE_OPENAI_API_KEY",
                ),
                _skip("realtime", "not checked: no credential"),
            ]
        checks.append(_ok("azure auth", "Entra ID token obtained (DefaultAzureCredential)"))

    url = adapter.realtime_url
    parts = urlsplit(url)
    host = parts.hostname or ""
    variable = "AZURE_OPENAI_ENDPOINT" if isinstance(adapter, AzureAdapter) else "OPENAI_BASE_URL"
    if settings.realtime_websocket_base_url:
        variable = "REALTIME_WEBSOCKET_BASE_URL"
    try:
        async with asyncio.timeout(limit):
            await asyncio.get_running_loop().getaddrinfo(
                host, parts.port or (443 if parts.scheme == "wss" else 80), type=socket.SOCK_STREAM
            )
    except socket.gaierror as exc:
        return [
            *checks,
            _fail(
                "realtime",
                f"DNS: cannot resolve {host!r} ({exc.strerror}); check {variable} "
                "(a typo in the resource name?) and your network",
            ),
        ]
    except TimeoutError:
        return [
            *checks,
            _fail("realtime", f"DNS: resolving {host!r} took over {limit:g} s; check your network"),
        ]

    started = time.monotonic()
    try:
        ws = await adapter.connect_realtime()
    except ProviderConnectError as exc:
        return [*checks, _fail("realtime", str(exc))]
    except Exception as exc:
        return [*checks, _fail("realtime", f"connecting to {url} failed: {_first_line(exc)}")]
    connected_ms = (time.monotonic() - started) * 1000
    try:
        try:
            async with asyncio.timeout(limit):
                first = await ws.recv()
        except TimeoutError:
            return [
                *checks,
                _warn(
                    "realtime",
                    f"connected in {connected_ms:.0f} ms, but no event within {limit:g} s ({url})",
                ),
            ]
        except Exception as exc:
            return [*checks, _fail("realtime", f"connected, then the socket failed: {_first_line(exc)}")]
    finally:
        with contextlib.suppress(Exception):
            await ws.close()
    try:
        event = orjson.loads(first)
    except orjson.JSONDecodeError:
        event = {}
    kind = event.get("type") if isinstance(event, dict) else None
    if kind == "session.created":
        return [
            *checks,
            _ok(
                "realtime",
                f"{adapter.display_name}: connected in {connected_ms:.0f} ms, session.created ({url})",
            ),
        ]
    if kind == "error":
        error = event.get("error") or {}
        return [
            *checks,
            _fail("realtime", f"connected, then error {error.get('code')}: {error.get('message')}"),
        ]
    return [*checks, _warn("realtime", f"connected, but the first event was {kind!r}, not session.created")]


# --------------------------------------------------------------------------- Twilio


def _twilio_client(settings: Settings, limit: float) -> Any:
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    http = TwilioHttpClient(timeout=limit)
    client = Client(settings.twilio_account_sid, token, http_client=http)
    base = settings.twilio_api_base_url or DEFAULT_TWILIO_API_BASE_URL
    client.api.base_url = base  # where the twilio package builds every api.twilio.com URL
    if base != DEFAULT_TWILIO_API_BASE_URL:
        client.edge = None  # TWILIO_EDGE / TWILIO_REGION would rewrite the host
        client.region = None
    return client


def _twilio_checks(settings: Settings, limit: float) -> list[Check]:
    """Blocking (the twilio package's sync client); run in a thread."""
    client = _twilio_client(settings, limit)
    try:
        return _twilio_account_and_number(client, settings)
    finally:
        session = getattr(client.http_client, "session", None)
        if session is not None:
            session.close()


def _twilio_account_and_number(client: Any, s: Settings) -> list[Check]:
    from requests import RequestException
    from twilio.base.exceptions import TwilioException, TwilioRestException

    base = s.twilio_api_base_url or DEFAULT_TWILIO_API_BASE_URL
    try:
        account = client.api.v2010.accounts(s.twilio_account_sid).fetch()
    except TwilioRestException as exc:
        if exc.status == 401:
            message = (
                "Twilio rejected TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN (HTTP 401): copy both from the "
                "Twilio console, Account info"
            )
        elif exc.status == 404:
            message = f"Twilio has no account {s.twilio_account_sid} (HTTP 404): check TWILIO_ACCOUNT_SID"
        else:
            message = f"Twilio answered HTTP {exc.status} (error {exc.code}): {exc.msg}"
        return [_fail("twilio", message), *_number_skipped(s)]
    except (RequestException, TwilioException, OSError) as exc:
        return [
            _fail("twilio", f"cannot reach the Twilio REST API at {base}: {_root_cause(exc)}"),
            *_number_skipped(s),
        ]
    checks: list[Check] = []
    status = getattr(account, "status", None)
    name = getattr(account, "friendly_name", None) or s.twilio_account_sid
    if status not in (None, "active"):
        checks.append(_fail("twilio", f"account '{name}' is {status}: calls will not connect"))
    else:
        checks.append(_ok("twilio", f"credentials accepted: account '{name}' ({status or 'status unknown'})"))
    if s.twilio_phone_number:
        try:
            checks.append(_number_check(client, s))
        except TwilioRestException as exc:
            checks.append(
                _fail("twilio number", f"listing phone numbers failed: HTTP {exc.status}: {exc.msg}")
            )
        except (RequestException, TwilioException, OSError) as exc:
            checks.append(_fail("twilio number", f"listing phone numbers failed: {_root_cause(exc)}"))
    return checks


def _number_skipped(s: Settings) -> list[Check]:
    return [_skip("twilio number", "not checked: the account check failed")] if s.twilio_phone_number else []


def _number_check(client: Any, s: Settings) -> Check:
    number = s.twilio_phone_number.strip()
    numbers = client.api.v2010.accounts(s.twilio_account_sid).incoming_phone_numbers.list(
        phone_number=number, limit=20
    )
    match = next((n for n in numbers if n.phone_number == number), None)
    if match is None:
        return _fail(
            "twilio number",
            f"{number} is not a number of account {s.twilio_account_sid}: check TWILIO_PHONE_NUMBER (E.164)",
        )
    actual = (match.voice_url or "").strip()
    method = (match.voice_method or "POST").upper()
    where = f"Twilio console → Phone Numbers → {number} → Voice configuration, or scripts/ngrok.sh"
    if not s.public_url:
        return _warn(
            "twilio number",
            f"{number}'s voice webhook is {actual or 'not set'}; set PUBLIC_URL to compare it",
        )
    expected = s.public_url + "/incoming-call"
    if not actual:
        return _fail(
            "twilio number", f"{number} has no voice webhook: set it to {expected} (HTTP POST) in {where}"
        )
    if actual.rstrip("/") != expected:
        return _fail(
            "twilio number",
            f"{number}'s voice webhook is {actual}, not {expected}: calls do not reach this relay. "
            f"Fix it in {where}",
        )
    if method != "POST":
        return _fail(
            "twilio number", f"{number}'s voice webhook uses HTTP {method}: set it to POST in {where}"
        )
    return _ok("twilio number", f"{number} → {actual} (POST)")


async def check_twilio(settings: Settings, *, limit: float = 10.0) -> list[Check]:
    s = settings
    token = s.twilio_auth_token
    if not s.twilio_account_sid and token is None:
        note = " (TWILIO_PHONE_NUMBER is set but cannot be checked)" if s.twilio_phone_number else ""
        return [
            _skip(
                "twilio",
                "TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN not set: end_call and transfer_call cannot "
                f"control calls{note}",
            )
        ]
    if not s.twilio_account_sid:
        return [
            _warn("twilio", "TWILIO_AUTH_TOKEN is set but TWILIO_ACCOUNT_SID is not: call control is off")
        ]
    if token is None:
        return [
            _warn("twilio", "TWILIO_ACCOUNT_SID is set but TWILIO_AUTH_TOKEN is not: call control is off")
        ]
    try:
        async with asyncio.timeout(limit * 2 + 1):
            return await asyncio.to_thread(_twilio_checks, s, limit)
    except TimeoutError:
        return [_fail("twilio", f"the Twilio REST API did not answer within {limit * 2:g} s")]


# --------------------------------------------------------------------------- the rest


async def check_public_url(settings: Settings, *, limit: float = 5.0) -> list[Check]:
    """Whether PUBLIC_URL/health answers (the relay is up behind its tunnel). Only a warning."""
    if not settings.public_url:
        return []
    url = settings.public_url + "/health"
    try:
        async with httpx.AsyncClient(timeout=limit) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        return [
            _warn(
                "public url",
                f"{url} does not answer ({_first_line(exc)}): start `relay serve` and the tunnel "
                "(scripts/ngrok.sh) before calling",
            )
        ]
    if response.status_code != 200:
        return [_warn("public url", f"{url} answered HTTP {response.status_code}: is it this relay?")]
    return [_ok("public url", f"{url} answers")]


async def check_redis(settings: Settings, *, limit: float = 5.0) -> list[Check]:
    if settings.redis_url is None:
        return [_skip("redis", "REDIS_URL not set: call records stay in memory (lost on restart)")]
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, RedisError, ResponseError

    url = settings.redis_url.get_secret_value()
    shown = _redact(url)
    try:
        client = aioredis.from_url(url, socket_connect_timeout=limit, socket_timeout=limit)
    except ValueError as exc:
        return [_fail("redis", f"REDIS_URL is not a Redis URL ({exc}); e.g. redis://localhost:6379/0")]
    try:
        async with asyncio.timeout(limit + 1):
            await client.ping()
    except AuthenticationError as exc:
        return [_fail("redis", f"Redis at {shown} rejected the credentials in REDIS_URL: {exc}")]
    except ResponseError as exc:
        return [_fail("redis", f"Redis at {shown} refused PING: {exc}")]
    except (RedisError, OSError, TimeoutError) as exc:
        return [_fail("redis", f"cannot reach Redis at {shown}: {_root_cause(exc)}")]
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return [_ok("redis", f"{shown} answers PING")]


async def check_tavily(settings: Settings, *, limit: float = 10.0) -> list[Check]:
    if settings.tavily_api_key is None:
        return [_skip("tavily", "TAVILY_API_KEY not set: the web_search tool is not offered")]
    from tavily import AsyncTavilyClient
    from tavily.errors import ForbiddenError, InvalidAPIKeyError, UsageLimitExceededError

    base = settings.tavily_base_url
    client = AsyncTavilyClient(api_key=settings.tavily_api_key.get_secret_value(), api_base_url=base)
    try:
        async with asyncio.timeout(limit + 1), client:
            await client.search("relay doctor", max_results=1, timeout=limit)
    except InvalidAPIKeyError:
        return [_fail("tavily", "Tavily rejected TAVILY_API_KEY (401): copy it from app.tavily.com")]
    except UsageLimitExceededError:
        return [_warn("tavily", "Tavily's usage limit is reached (429): web_search answers with an apology")]
    except ForbiddenError as exc:
        return [_fail("tavily", f"Tavily refused the request (403): {exc}")]
    except TimeoutError:
        return [_fail("tavily", f"Tavily at {base} did not answer within {limit:g} s")]
    except Exception as exc:  # httpx errors, a non-JSON answer…
        return [_fail("tavily", f"Tavily search at {base} failed: {_first_line(exc)}")]
    return [_ok("tavily", f"a one-result search at {base} worked")]


# --------------------------------------------------------------------------- the command


def _load_settings() -> tuple[Settings | None, list[Check]]:
    """The settings from the environment and `./.env`, and a line saying where they came from (or
    one FAIL line per invalid setting, naming the variable and the fix)."""
    env_file = Path(".env")
    try:
        settings = load_settings()
    except ConfigError as exc:
        return None, [_fail("settings", problem) for problem in exc.problems]
    if env_file.exists():
        return settings, [_ok("settings", f"read from {env_file.resolve()} and the environment")]
    return settings, [
        _warn(
            "settings", f"no .env in {Path.cwd()}: only environment variables are used (cp .env.example .env)"
        )
    ]


async def run_doctor(
    settings: Settings | None = None,
    *,
    azure_credential: AsyncTokenCredential | None = None,
    limit: float = 10.0,
) -> DoctorReport:
    """Every check; `settings` default to `load_settings()` (the environment and `.env`)."""
    report = DoctorReport()
    if settings is None:
        settings, checks = _load_settings()
        report.checks.extend(checks)
        if settings is None:
            return report
    report.checks.extend(check_configuration(settings))
    report.checks.append(check_tools(settings))
    jobs: list[Awaitable[list[Check]]] = [
        check_realtime(settings, azure_credential=azure_credential, limit=limit),
        check_twilio(settings, limit=limit),
        check_public_url(settings, limit=min(limit, 5.0)),
        check_redis(settings, limit=min(limit, 5.0)),
        check_tavily(settings, limit=limit),
    ]
    for checks in await asyncio.gather(*jobs):
        report.checks.extend(checks)
    return report


async def doctor_command(emit: Callable[[str], None] | None = None) -> int:
    """`relay doctor`: prints one line per check and a count; returns the exit status."""
    out = emit or (lambda line: print(line, flush=True))
    out("relay doctor: checking the configuration and every configured service…")
    report = await run_doctor()
    for line in report.lines():
        out(line)
    out(report.counts() + (" — fix the FAIL lines above" if report.failed else ""))
    return report.exit_code
