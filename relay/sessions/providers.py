"""Provider adapters: where and how to reach OpenAI or Azure OpenAI, for both paths.

One adapter per vendor, chosen by USE_AZURE_OPENAI. Each knows its realtime URL, its auth, its
protocol dialect, and the model or deployment names of every capability, and hands the cascade
its HTTP client, so no second set of credentials or URL logic exists anywhere.

Why `websockets` directly rather than the openai SDK's realtime client: the SDK parses every
server event into a pydantic model (tens of microseconds per audio delta, fifty deltas a second
per call) and hides the HTTP status of a refused upgrade, which `relay doctor` and the fallback
need (401 vs 404 vs 429). The URL and header shapes below are the ones the SDK builds
(PROTOCOLS.md §4.1–4.2); the fake Realtime server checks client events against the SDK's types.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from relay.config import Settings
from relay.errors import ConfigError, ProviderConnectError, ProviderTimeoutError
from relay.sessions.dialects import Dialect
from relay.transport.provider import ProviderSocket, connect

log = logging.getLogger("relay.providers")

Vendor = Literal["openai", "azure"]


class AsyncTokenCredential(Protocol):
    """What azure-identity's async credentials offer (and what tests' fakes implement)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...

    async def close(self) -> None: ...


def _ws_base(http_url: str) -> str:
    parts = urlsplit(http_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


class ProviderAdapter:
    """Common connect logic; subclasses say where and how."""

    vendor: Vendor
    display_name: str
    dialect: Dialect = "ga"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # --- what subclasses define -------------------------------------------------------------
    @property
    def realtime_url(self) -> str:
        raise NotImplementedError

    async def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def describe_not_found(self) -> str:
        raise NotImplementedError

    def describe_auth_failure(self) -> str:
        raise NotImplementedError

    def cascade_client(self) -> Any:
        """The openai SDK client the cascade uses for STT, chat and TTS."""
        raise NotImplementedError

    def cascade_models(self) -> dict[str, str]:
        """Model (OpenAI) or deployment (Azure) names: stt, chat, tts."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    async def connect_realtime(self) -> ProviderSocket:
        """Opens the realtime WebSocket; raises ProviderConnectError saying what to fix."""
        url = self.realtime_url
        log.info("Connecting to %s: %s", self.display_name, url)
        headers = await self.auth_headers()
        try:
            return await connect(
                url,
                headers=headers,
                open_timeout=self.settings.provider_connect_timeout,
                user_agent="twilio-realtime-relay",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ProviderConnectError(self._explain_status(status), status=status) from None
        except TimeoutError:
            raise ProviderTimeoutError(
                f"{self.display_name} did not answer within {self.settings.provider_connect_timeout:g} s "
                f"({url}); check the network or raise PROVIDER_CONNECT_TIMEOUT.",
                retryable=True,
            ) from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise ProviderConnectError(
                f"cannot reach {self.display_name} at {url}: {exc}. Check the endpoint and DNS.",
                retryable=isinstance(exc, OSError),
            ) from None

    def _explain_status(self, status: int) -> str:
        if status in (401, 403):
            return f"{status}: {self.describe_auth_failure()}"
        if status == 404:
            return f"404: {self.describe_not_found()}"
        if status == 429:
            return f"429: {self.display_name} rate-limited the connection; retry later or raise your quota."
        return f"{status}: {self.display_name} refused the realtime connection."

    async def aclose(self) -> None:
        return None


class OpenAIAdapter(ProviderAdapter):
    vendor: Vendor = "openai"
    display_name = "OpenAI"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
            raise ConfigError(
                "OPENAI_API_KEY is not set: put your key in .env (or set USE_AZURE_OPENAI=true)."
            )
        self._key = settings.openai_api_key.get_secret_value()
        self._client: Any = None

    @property
    def realtime_url(self) -> str:
        model = quote(self.settings.openai_realtime_model, safe="")
        base = self.settings.realtime_websocket_base_url.rstrip("/") or _ws_base(
            self.settings.openai_base_url
        )
        return f"{base}/realtime?model={model}"

    async def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    def describe_auth_failure(self) -> str:
        return "the OpenAI key was rejected; check OPENAI_API_KEY."

    def describe_not_found(self) -> str:
        return (
            f"model '{self.settings.openai_realtime_model}' not found at {self.settings.openai_base_url}; "
            "check OPENAI_REALTIME_MODEL."
        )

    def cascade_client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                api_key=self._key, base_url=self.settings.openai_base_url, max_retries=1
            )
        return self._client

    def cascade_models(self) -> dict[str, str]:
        s = self.settings
        return {"stt": s.openai_stt_model, "chat": s.openai_chat_model, "tts": s.openai_tts_model}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


class AzureAdapter(ProviderAdapter):
    """Azure OpenAI: GA (`/openai/v1/realtime`) when AZURE_API_VERSION is empty, else preview."""

    vendor: Vendor = "azure"
    display_name = "Azure OpenAI"

    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None = None) -> None:
        super().__init__(settings)
        key = settings.azure_openai_api_key
        self._key = key.get_secret_value() if key is not None and key.get_secret_value() else None
        self._credential = credential
        self._owns_credential = False
        self.dialect = "preview" if settings.azure_preview else "ga"
        self._client: Any = None

    @property
    def auth_mode(self) -> str:
        return "api-key" if self._key else "entra-id"

    @property
    def realtime_url(self) -> str:
        s = self.settings
        base = s.realtime_websocket_base_url.rstrip("/") or _ws_base(s.azure_openai_endpoint)
        dep = quote(s.azure_openai_deployment, safe="")
        if self.dialect == "preview":
            return (
                f"{base}/openai/realtime?api-version={quote(s.azure_api_version, safe='')}&deployment={dep}"
            )
        return f"{base}/openai/v1/realtime?model={dep}"

    async def bearer_token(self) -> str:
        """A fresh Entra ID token (azure-identity caches and refreshes it before expiry)."""
        if self._credential is None:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._owns_credential = True
        token = await self._credential.get_token(self.settings.azure_token_scope)
        return str(token.token)

    async def auth_headers(self) -> dict[str, str]:
        if self._key:
            return {"api-key": self._key}
        return {"Authorization": f"Bearer {await self.bearer_token()}"}

    def describe_auth_failure(self) -> str:
        if self._key:
            return "the Azure OpenAI key was rejected; check AZURE_OPENAI_API_KEY for this resource."
        return (
            "the Entra ID token was rejected; give your identity the 'Cognitive Services OpenAI User' "
            "role on the resource, or set AZURE_OPENAI_API_KEY."
        )

    def describe_not_found(self) -> str:
        s = self.settings
        host = urlsplit(s.azure_openai_endpoint).netloc
        hint = (
            f" (or api-version '{s.azure_api_version}' is not served; clear AZURE_API_VERSION for GA)"
            if self.dialect == "preview"
            else ""
        )
        return f"deployment '{s.azure_openai_deployment}' not found on resource '{host}'{hint}."

    def cascade_client(self) -> Any:
        if self._client is None:
            from openai import AsyncAzureOpenAI

            s = self.settings
            auth: dict[str, Any] = (
                {"api_key": self._key} if self._key else {"azure_ad_token_provider": self.bearer_token}
            )
            self._client = AsyncAzureOpenAI(
                azure_endpoint=s.azure_openai_endpoint,
                api_version=s.azure_cascade_api_version,
                max_retries=1,
                **auth,
            )
        return self._client

    def cascade_models(self) -> dict[str, str]:
        s = self.settings
        return {
            "stt": s.azure_openai_stt_deployment,
            "chat": s.azure_openai_chat_deployment,
            "tts": s.azure_openai_tts_deployment,
        }

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._owns_credential and self._credential is not None:
            await self._credential.close()


def make_adapter(
    settings: Settings, *, azure_credential: AsyncTokenCredential | None = None
) -> ProviderAdapter:
    """The adapter USE_AZURE_OPENAI selects."""
    if settings.use_azure_openai:
        return AzureAdapter(settings, azure_credential)
    return OpenAIAdapter(settings)
