"""The doctor's realtime check: DNS, an Entra ID token (Azure without a key), a real WebSocket
connect through the provider adapter (the code the relay uses, so its `ProviderConnectError` says
what to fix), then the first server event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson

from relay.config import Settings
from relay.doctor.report import Check, fail, first_line, ok, skip, warn
from relay.errors import ConfigError, ProviderConnectError
from relay.sessions.providers import AsyncTokenCredential, AzureAdapter, ProviderAdapter, make_adapter

__all__ = ["check_realtime"]


async def check_realtime(
    settings: Settings, *, azure_credential: AsyncTokenCredential | None = None, limit: float = 10.0
) -> list[Check]:
    """DNS, Entra ID token (Azure without key), WebSocket connect, first server event."""
    try:
        adapter = make_adapter(settings, azure_credential=azure_credential)
    except ConfigError as exc:
        return [skip("realtime", f"not checked: {exc}")]
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
                fail(
                    "azure auth",
                    "AZURE_OPENAI_API_KEY is empty and no Entra ID credential is available "
                    f"({first_line(exc)}): run `az login`, set AZURE_CLIENT_ID / AZURE_TENANT_ID / "
                    "AZURE_CLIENT_SECRET, use a managed identity, or set AZURE_OPENAI_API_KEY",
                ),
                skip("realtime", "not checked: no credential"),
            ]
        checks.append(ok("azure auth", "Entra ID token obtained (DefaultAzureCredential)"))

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
            fail(
                "realtime",
                f"DNS: cannot resolve {host!r} ({exc.strerror}); check {variable} "
                "(a typo in the resource name?) and your network",
            ),
        ]
    except TimeoutError:
        return [
            *checks,
            fail("realtime", f"DNS: resolving {host!r} took over {limit:g} s; check your network"),
        ]

    started = time.monotonic()
    try:
        ws = await adapter.connect_realtime()
    except ProviderConnectError as exc:
        return [*checks, fail("realtime", str(exc))]
    except Exception as exc:
        return [*checks, fail("realtime", f"connecting to {url} failed: {first_line(exc)}")]
    connected_ms = (time.monotonic() - started) * 1000
    try:
        try:
            async with asyncio.timeout(limit):
                first = await ws.receive()
                if first is None:
                    raise ConnectionError(f"the provider closed it (code {ws.close_code})")
        except TimeoutError:
            return [
                *checks,
                warn(
                    "realtime",
                    f"connected in {connected_ms:.0f} ms, but no event within {limit:g} s ({url})",
                ),
            ]
        except Exception as exc:
            return [*checks, fail("realtime", f"connected, then the socket failed: {first_line(exc)}")]
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
            ok(
                "realtime",
                f"{adapter.display_name}: connected in {connected_ms:.0f} ms, session.created ({url})",
            ),
        ]
    if kind == "error":
        error = event.get("error") or {}
        return [
            *checks,
            fail("realtime", f"connected, then error {error.get('code')}: {error.get('message')}"),
        ]
    return [*checks, warn("realtime", f"connected, but the first event was {kind!r}, not session.created")]
