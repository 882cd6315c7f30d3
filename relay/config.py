"""All configuration, read once from the environment and `.env`.

Every setting of the public contract (../shared/DESIGN.md) lives here; nothing else in the
code base reads `os.environ`. Secrets are `SecretStr` so they never appear in logs or reprs.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay.errors import ConfigError

RelayMode = Literal["realtime", "cascade", "auto"]
TurnDetection = Literal["server_vad", "semantic_vad"]

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, friendly voice assistant on a phone call. Keep answers short and "
    "conversational: one or two sentences. Speak in the caller's language."
)


def _normalize_http_url(value: str, *, name: str, default_scheme: str = "https") -> str:
    """Accepts `host`, `https://host` or `http://host[:port]`; returns `scheme://host[:port][/path]`."""
    value = value.strip().rstrip("/")
    if not value:
        return value
    if "://" not in value:
        value = f"{default_scheme}://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{name}={value!r} is not a valid URL: use 'my-resource.openai.azure.com', "
            f"'https://my-resource.openai.azure.com' or 'http://127.0.0.1:PORT' for a local server."
        )
    return value


class Settings(BaseSettings):
    """The relay's settings. Field names are the environment variable names, case-insensitive."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- provider choice -------------------------------------------------------------------
    use_azure_openai: bool = False
    relay_mode: RelayMode = "auto"
    allow_cross_provider_fallback: bool = False

    # --- OpenAI ----------------------------------------------------------------------------
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_realtime_model: str = "gpt-realtime"
    openai_stt_model: str = "gpt-4o-mini-transcribe"
    openai_chat_model: str = "gpt-4o-mini"
    openai_tts_model: str = "gpt-4o-mini-tts"
    openai_voice: str = "marin"

    # --- Azure OpenAI ----------------------------------------------------------------------
    azure_openai_api_key: SecretStr | None = None
    azure_openai_endpoint: str = ""
    azure_openai_deployment: str = ""
    azure_api_version: str = ""  # empty: GA protocol (/openai/v1/realtime); a preview version: preview
    azure_openai_stt_deployment: str = ""
    azure_openai_chat_deployment: str = ""
    azure_openai_tts_deployment: str = ""
    azure_cascade_api_version: str = "2025-03-01-preview"
    azure_token_scope: str = "https://cognitiveservices.azure.com/.default"
    # Where the realtime WebSocket lives when not at the HTTP endpoint (a proxy; tests). Empty: derived
    # from OPENAI_BASE_URL (e.g. ws://host/v1) or AZURE_OPENAI_ENDPOINT (e.g. ws://host).
    realtime_websocket_base_url: str = ""

    # --- the conversation ------------------------------------------------------------------
    instructions: str = DEFAULT_INSTRUCTIONS
    greeting: str = "Greet the caller briefly and ask how you can help."
    greeting_enabled: bool = True
    turn_detection: TurnDetection = "server_vad"
    vad_threshold: float = Field(0.5, ge=0.0, le=1.0)
    vad_prefix_padding_ms: int = Field(300, ge=0)
    vad_silence_duration_ms: int = Field(500, ge=0)
    vad_eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    input_transcription_model: str = "gpt-4o-mini-transcribe"
    noise_reduction: Literal["near_field", "far_field", "off"] = "near_field"
    realtime_session_max_minutes: float = Field(28.0, gt=0)
    provider_connect_timeout: float = Field(5.0, gt=0)
    realtime_preconnect: bool = True  # open the realtime socket during /incoming-call, before the stream
    realtime_early_greeting: bool = True  # on that socket, configure the session and ask for the greeting
    cascade_silence_ms: int = Field(500, ge=100)  # silence that ends the caller's turn (cascade VAD)
    cascade_min_speech_ms: int = Field(200, ge=20)  # shorter sounds (clicks, coughs) are not a turn
    cascade_vad_aggressiveness: int = Field(2, ge=0, le=3)  # webrtcvad 0 (lenient) … 3 (strict)
    slow_tool_feedback: Literal["tone", "none"] = "tone"
    slow_tool_after: float = Field(1.0, ge=0)  # seconds a tool may run before the hold tone starts

    # --- Twilio ----------------------------------------------------------------------------
    public_url: str = ""
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr | None = None
    twilio_phone_number: str = ""
    twilio_api_base_url: str = "https://api.twilio.com"
    stream_token_secret: SecretStr | None = None  # defaults to a key derived from TWILIO_AUTH_TOKEN
    stream_token_ttl: float = Field(60.0, gt=0)

    # --- tools -----------------------------------------------------------------------------
    tavily_api_key: SecretStr | None = None
    tavily_base_url: str = "https://api.tavily.com"
    relay_tools: str = ""  # comma-separated modules that register user tools
    transfer_allowlist: str = ""  # "+15551234567,sales=+15557654321"

    # --- storage and limits ----------------------------------------------------------------
    redis_url: SecretStr | None = None
    call_record_ttl_days: float = Field(7.0, gt=0)
    max_concurrent_calls: int = Field(100, ge=1)
    max_call_duration: float = Field(3600.0, gt=0)  # seconds
    drain_timeout: float = Field(30.0, ge=0)  # seconds active calls get to finish on SIGTERM

    # --- operations ------------------------------------------------------------------------
    relay_admin_token: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    host: str = "0.0.0.0"
    port: int = 8000

    # --- the HTTP edge (relay/transport/http.py, webhooks/form.py) ----------------------------
    # Peers whose X-Forwarded-Proto/-Host/-For are believed: IPs, CIDRs, comma-separated, or "*".
    forwarded_allow_ips: str = "127.0.0.1"
    http_header_timeout: float = Field(5.0, gt=0)  # seconds for a request's line and headers
    http_max_header_bytes: int = Field(16 * 1024, ge=1024)  # request line + headers; 431 past it
    http_max_connections: int = Field(0, ge=0)  # open connections served; 0: 2 x MAX_CONCURRENT_CALLS + 500
    webhook_body_timeout: float = Field(5.0, gt=0)  # seconds to receive a webhook's whole body

    # ---------------------------------------------------------------------------------------
    @field_validator("azure_openai_endpoint", mode="after")
    @classmethod
    def _normalize_endpoint(cls, v: str) -> str:
        return _normalize_http_url(v, name="AZURE_OPENAI_ENDPOINT")

    @field_validator("openai_base_url", "tavily_base_url", "twilio_api_base_url", mode="after")
    @classmethod
    def _normalize_base_urls(cls, v: str) -> str:
        return _normalize_http_url(v, name="base URL")

    @field_validator("public_url", mode="after")
    @classmethod
    def _check_public_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if v:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"PUBLIC_URL={v!r} must be an absolute URL such as 'https://abc123.ngrok.app' "
                    "(run scripts/ngrok.sh to set it)."
                )
        return v

    @field_validator(
        "openai_api_key",
        "azure_openai_api_key",
        "twilio_auth_token",
        "stream_token_secret",
        "tavily_api_key",
        "redis_url",
        "relay_admin_token",
        mode="after",
    )
    @classmethod
    def _empty_secret_is_unset(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value().strip() else None

    @field_validator("forwarded_allow_ips", mode="after")
    @classmethod
    def _check_forwarded_allow_ips(cls, v: str) -> str:
        entries = [e.strip() for e in v.split(",") if e.strip()]
        for entry in entries:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError:
                raise ConfigError(
                    f"FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or network: use e.g. "
                    "'127.0.0.1', '10.0.0.0/8,192.168.1.7' or '*' (any peer: only behind a proxy "
                    "that overwrites X-Forwarded-* itself)."
                ) from None
        return "*" if "*" in entries else ",".join(entries)

    @field_validator("log_level", mode="after")
    @classmethod
    def _upper_level(cls, v: str) -> str:
        return v.upper()

    @model_validator(mode="after")
    def _check_provider(self) -> Settings:
        if self.use_azure_openai:
            if not self.azure_openai_endpoint:
                raise ConfigError(
                    "USE_AZURE_OPENAI=true needs AZURE_OPENAI_ENDPOINT, e.g. "
                    "'my-resource.openai.azure.com' (Sweden Central for EU residency)."
                )
            if not self.azure_openai_deployment:
                raise ConfigError(
                    "USE_AZURE_OPENAI=true needs AZURE_OPENAI_DEPLOYMENT: the name of your realtime "
                    "deployment (e.g. 'gpt-realtime') in the Azure AI Foundry portal."
                )
        return self

    # --- derived values --------------------------------------------------------------------
    @property
    def public_host(self) -> str:
        """Host (and port) Twilio reaches, from PUBLIC_URL; empty when unset."""
        return urlsplit(self.public_url).netloc if self.public_url else ""

    @property
    def provider_configured(self) -> bool:
        """True when the chosen provider has what it needs to connect."""
        if self.use_azure_openai:
            return bool(self.azure_openai_endpoint and self.azure_openai_deployment)
        return self.openai_api_key is not None

    @property
    def azure_preview(self) -> bool:
        return bool(self.azure_api_version)

    @cached_property
    def transfer_targets(self) -> dict[str, str]:
        """TRANSFER_ALLOWLIST parsed: name or number -> number."""
        targets: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in self.transfer_allowlist.split(","))):
            name, _, number = entry.partition("=")
            number = (number or name).strip()
            targets[name.strip().lower()] = number
            targets[number] = number
        return targets

    @property
    def tool_modules(self) -> list[str]:
        return [m.strip() for m in self.relay_tools.split(",") if m.strip()]

    @property
    def connection_limit(self) -> int:
        """Open connections uvicorn serves (HTTP_MAX_CONNECTIONS, or sized from MAX_CONCURRENT_CALLS:
        each call holds its stream and, for a moment, a webhook request; 500 more for probes, admin
        and clients that are being timed out)."""
        return self.http_max_connections or 2 * self.max_concurrent_calls + 500

    def describe_provider(self) -> str:
        return "Azure OpenAI" if self.use_azure_openai else "OpenAI"


def load_settings(**overrides: object) -> Settings:
    """Reads the environment and `.env`; raises ConfigError naming the variable and the fix."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]).upper() or "configuration"
            ctx_error = (err.get("ctx") or {}).get("error")
            message = str(ctx_error) if ctx_error else err["msg"]
            problems.append(f"{loc}: {message}" if loc != "configuration" else message)
        raise ConfigError("Invalid configuration: " + "; ".join(problems)) from None
