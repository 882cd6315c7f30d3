"""Shared fixtures: settings builders and a served relay app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from relay.app import create_app
from relay.config import Settings, load_settings
from relay.logs import install_context_filter
from relay.testing.otlp import OtlpReceiver
from relay.testing.server import serve_app

AUTH_TOKEN = "test-auth-token"
ACCOUNT_SID = "AC" + "0" * 32


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "openai_api_key": "sk-test",
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_account_sid": ACCOUNT_SID,
        "public_url": "https://relay.example.com",
        "log_level": "DEBUG",
    }
    base.update(overrides)
    return load_settings(_env_file=None, **base)


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    return make_settings


@pytest.fixture(autouse=True)
def _call_context_in_caplog(caplog: pytest.LogCaptureFixture) -> None:
    install_context_filter(caplog.handler)
    caplog.set_level(logging.INFO)


@pytest.fixture
async def relay_url() -> AsyncIterator[str]:
    async with serve_app(create_app(make_settings())) as url:
        yield url


@pytest.fixture
async def collector() -> AsyncIterator[OtlpReceiver]:
    """An OpenTelemetry collector's OTLP/HTTP traces endpoint on 127.0.0.1 (`collector.url`)."""
    async with OtlpReceiver().serve() as receiver:
        yield receiver
