"""The end-to-end rig: a fake Realtime server, the relay under uvicorn, fake Twilio callers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import AccessToken

from relay.app import create_app
from relay.post_call import DeliveryPolicy
from relay.testing.audio import tone_ulaw
from relay.testing.realtime import FakeConnection, FakeRealtimeServer
from relay.testing.server import serve_app
from relay.testing.twilio import FakeTwilioCall
from tests.conftest import AUTH_TOKEN, make_settings

PROVIDERS = ["openai-ga", "azure-ga-key", "azure-ga-entra", "azure-preview"]


@dataclass
class FakeCredential:
    """An async Entra credential: a new token at every call, recorded."""

    scopes: list[tuple[str, ...]] = field(default_factory=list)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(f"entra-{len(self.scopes)}", 2_000_000_000)

    async def close(self) -> None:
        return None


def provider_settings(kind: str, server: FakeRealtimeServer) -> dict[str, Any]:
    if kind == "openai-ga":
        return {"openai_base_url": server.openai_base_url, "openai_api_key": "sk-test"}
    azure = {
        "use_azure_openai": True,
        "azure_openai_endpoint": server.azure_endpoint,
        "azure_openai_deployment": "gpt-realtime",
        "openai_api_key": None,
    }
    if kind == "azure-ga-key":
        return {**azure, "azure_openai_api_key": "azure-key"}
    if kind == "azure-ga-entra":
        return azure
    return {**azure, "azure_openai_api_key": "azure-key", "azure_api_version": "2025-04-01-preview"}


PUBLIC_URL = "https://relay.example.com"


def twilio_caller(url: str) -> FakeTwilioCall:
    """A simulated Twilio call to the relay at `url`, signed for PUBLIC_URL like Twilio signs."""
    return FakeTwilioCall(base_url=url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)


@dataclass
class Rig:
    server: FakeRealtimeServer
    url: str
    app: Any
    credential: FakeCredential

    def caller(self) -> FakeTwilioCall:
        return twilio_caller(self.url)

    async def dial(self, call: FakeTwilioCall) -> FakeConnection:
        """Places the call; returns its provider connection (opened during the webhook, or at
        stream start when REALTIME_PRECONNECT is off)."""
        n = len(self.server.connections) + 1
        twiml = await call.fetch_twiml()
        assert twiml.status_code == 200 and twiml.stream_url, twiml.body
        assert await call.connect(twiml)
        return await self.server.wait_connection(n=n)


@contextlib.asynccontextmanager
async def rig(
    kind: str,
    *,
    settings: dict[str, Any] | None = None,
    post_call_policy: DeliveryPolicy | None = None,
    **server_kw: Any,
) -> AsyncIterator[Rig]:
    credential = FakeCredential()
    server_kw.setdefault("bearer_tokens", {f"entra-{i}" for i in range(1, 20)})
    async with FakeRealtimeServer(**server_kw) as server:
        cfg = {"relay_mode": "realtime", **provider_settings(kind, server), **(settings or {})}
        app = create_app(make_settings(**cfg), azure_credential=credential, post_call_policy=post_call_policy)
        async with serve_app(app) as url:
            yield Rig(server, url, app, credential)


def all_audio(conn: FakeConnection) -> bytes:
    return b"".join(bytes(a) for a in conn.audio_sent.values())


async def speak(call: FakeTwilioCall, ms: int = 400) -> None:
    """The caller speaks (loud enough for the fake VAD), then is silent long enough to end the turn."""
    await call.send_audio(tone_ulaw(500, ms, 0.6))
    await call.send_silence(700)
