"""All configuration, read once from the environment and `.env`.

Every setting of the public contract (../shared/DESIGN.md) lives here; nothing else in the
code base reads `os.environ`. Secrets are `SecretStr` so they never appear in logs or reprs.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay.errors import ConfigError
from relay.sids import is_account_sid

RelayMode = Literal["realtime", "cascade", "auto"]
TurnDetection = Literal["server_vad", "semantic_vad"]

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, friendly voice assistant on a phone call. Keep answers short and "
    "conversational: one or two sentences. Speak in the caller's language."
)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Spellings other tools use, accepted and normalized: `warn` (Go, Node, log4j), `fatal`.
LOG_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_E164_RE = re.compile(r"^\+[1-9]\d{1,14}$")
_DIALABLE_RE = re.compile(r"^\+?\d{3,15}$")
_NUMBER_PUNCTUATION_RE = re.compile(r"[\s().\-]")
_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _shown(url: str) -> str:
    """`url` for an error message: a password in it (`user:pass@host`) masked."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return repr(url)
    scheme, _, userinfo = head.partition("://")
    user, colon, _ = userinfo.partition(":")
    return repr(f"{scheme}://{user}{':***' if colon else ''}@{tail}")


def _normalize_http_url(value: str, *, name: str, default_scheme: str = "https") -> str:
    """Accepts `host`, `https://host` or `http://host[:port]`; returns `scheme://host[:port][/path]`."""
    value = value.strip().rstrip("/")
    if not value:
        return value
    if "://" not in value:
        value = f"{default_scheme}://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        example = (
            "'my-resource.openai.azure.com', 'https://my-resource.openai.azure.com'"
            if name == "AZURE_OPENAI_ENDPOINT"
            else "'https://host[:port][/path]'"
        )
        raise ConfigError(
            f"{name}={_shown(value)} is not a valid URL: use {example} or 'http://127.0.0.1:PORT' for a "
            "local server."
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
    vad_prefix_padding_ms: int = Field(300, ge=0, le=10_000)
    vad_silence_duration_ms: int = Field(500, ge=0, le=10_000)
    vad_eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    input_transcription_model: str = "gpt-4o-mini-transcribe"
    noise_reduction: Literal["near_field", "far_field", "off"] = "near_field"
    realtime_session_max_minutes: float = Field(28.0, gt=0)
    provider_connect_timeout: float = Field(5.0, gt=0, le=60)
    # A provider that stops answering without closing (relay.sessions.liveness): seconds for the first
    # event of a connection, seconds of quiet before a heartbeat, seconds the heartbeat gets an answer.
    provider_first_event_timeout: float = Field(5.0, gt=0, le=60)
    provider_heartbeat_after: float = Field(2.0, gt=0, le=60)
    provider_heartbeat_timeout: float = Field(3.0, gt=0, le=60)
    provider_malformed_limit: int = Field(50, ge=1, le=10_000)  # malformed events in a row that make a fault
    realtime_preconnect: bool = True  # open the realtime socket during /incoming-call, before the stream
    realtime_early_greeting: bool = True  # on that socket, configure the session and ask for the greeting
    # cascade VAD: the silence that ends the caller's turn; shorter sounds (clicks, coughs) are not a turn
    cascade_silence_ms: int = Field(500, ge=100, le=10_000)
    cascade_min_speech_ms: int = Field(200, ge=20, le=10_000)
    cascade_vad_aggressiveness: int = Field(2, ge=0, le=3)  # webrtcvad 0 (lenient) … 3 (strict)
    slow_tool_feedback: Literal["tone", "none"] = "tone"
    slow_tool_after: float = Field(1.0, ge=0, le=60)  # seconds a tool may run before the hold tone starts

    # --- Twilio ----------------------------------------------------------------------------
    public_url: str = ""
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr | None = None
    twilio_phone_number: str = ""
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_api_timeout: float = Field(10.0, gt=0, le=60)  # seconds per REST request (hang up, redirect)
    stream_token_secret: SecretStr | None = None  # defaults to a key derived from TWILIO_AUTH_TOKEN
    stream_token_ttl: float = Field(60.0, gt=0, le=3600)

    # --- tools -----------------------------------------------------------------------------
    tavily_api_key: SecretStr | None = None
    tavily_base_url: str = "https://api.tavily.com"
    relay_tools: str = ""  # comma-separated modules that register user tools
    transfer_allowlist: str = ""  # "+15551234567,sales=+15557654321"

    # --- storage and limits ----------------------------------------------------------------
    redis_url: SecretStr | None = None
    call_record_ttl_days: float = Field(7.0, gt=0)
    max_concurrent_calls: int = Field(100, ge=1, le=100_000)
    # seconds a call's concurrency slot outlives its instance's last refresh (every third of it); a
    # crashed instance's calls are marked `lost` this long after it died
    call_slot_ttl: float = Field(60.0, ge=1.0, le=3600)
    max_call_duration: float = Field(3600.0, gt=0, le=86_400)  # seconds (at most a day)
    drain_timeout: float = Field(30.0, ge=0)  # seconds active calls get to finish on SIGTERM

    # --- operations ------------------------------------------------------------------------
    relay_admin_token: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    host: str = Field("0.0.0.0", min_length=1)
    port: int = Field(8000, ge=1, le=65535)

    # --- the HTTP edge (relay/transport/http.py, webhooks/form.py) ----------------------------
    # Peers whose X-Forwarded-Proto/-Host/-For are believed: IPs, CIDRs, comma-separated, or "*".
    forwarded_allow_ips: str = "127.0.0.1"
    http_header_timeout: float = Field(5.0, gt=0, le=120)  # seconds for a request's line and headers
    http_max_header_bytes: int = Field(16 * 1024, ge=1024)  # request line + headers; 431 past it
    http_max_connections: int = Field(0, ge=0)  # open connections served; 0: 2 x MAX_CONCURRENT_CALLS + 500
    webhook_body_timeout: float = Field(5.0, gt=0, le=120)  # seconds to receive a webhook's whole body

    # ---------------------------------------------------------------------------------------
    @field_validator("azure_openai_endpoint", mode="after")
    @classmethod
    def _normalize_endpoint(cls, v: str) -> str:
        return _normalize_http_url(v, name="AZURE_OPENAI_ENDPOINT")

    @field_validator("openai_base_url", "tavily_base_url", "twilio_api_base_url", mode="after")
    @classmethod
    def _normalize_base_urls(cls, v: str, info: ValidationInfo) -> str:
        name = (info.field_name or "base URL").upper()
        if not v.strip():
            raise ConfigError(f"{name} is empty: remove the line to use the real service, or set a URL.")
        return _normalize_http_url(v, name=name)

    @field_validator("realtime_websocket_base_url", mode="after")
    @classmethod
    def _check_websocket_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        parts = urlsplit(v)
        if v and (parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc):
            raise ConfigError(
                f"REALTIME_WEBSOCKET_BASE_URL={_shown(v)} is not a WebSocket URL: use e.g. 'wss://proxy/v1' "
                "(OpenAI) or 'wss://proxy' (Azure), or leave it empty to derive it."
            )
        return v

    @field_validator("azure_token_scope", mode="after")
    @classmethod
    def _check_scope(cls, v: str) -> str:
        v = v.strip()
        parts = urlsplit(v)
        if parts.scheme != "https" or not parts.netloc:
            raise ConfigError(
                f"AZURE_TOKEN_SCOPE={v!r} is not an Entra ID scope: use "
                "'https://cognitiveservices.azure.com/.default' (the default)."
            )
        return v

    @field_validator(
        "openai_realtime_model",
        "openai_stt_model",
        "openai_chat_model",
        "openai_tts_model",
        "openai_voice",
        mode="after",
    )
    @classmethod
    def _not_empty(cls, v: str, info: ValidationInfo) -> str:
        v = v.strip()
        if not v:
            default = cls.model_fields[info.field_name or ""].default
            raise ConfigError(
                f"{(info.field_name or '').upper()} is empty: set a name such as {default!r} "
                "(the default when the line is removed)."
            )
        return v

    @field_validator("azure_api_version", "azure_cascade_api_version", mode="after")
    @classmethod
    def _check_api_version(cls, v: str, info: ValidationInfo) -> str:
        v = v.strip()
        name = (info.field_name or "").upper()
        if not v and name == "AZURE_API_VERSION":
            return v  # empty: the GA protocol
        if not _API_VERSION_RE.match(v):
            fix = (
                "a preview version such as '2025-04-01-preview', or empty for the GA protocol"
                if name == "AZURE_API_VERSION"
                else "an api-version such as '2025-03-01-preview' (the default)"
            )
            raise ConfigError(f"{name}={v!r} is not an Azure api-version: use {fix}.")
        return v

    @field_validator("twilio_account_sid", mode="after")
    @classmethod
    def _check_account_sid(cls, v: str) -> str:
        v = v.strip()
        if v and not is_account_sid(v):
            raise ConfigError(
                f"TWILIO_ACCOUNT_SID={v!r} is not an account SID: it is 'AC' and 32 hex digits, "
                "shown under Account info in the Twilio console."
            )
        return v

    @field_validator("twilio_phone_number", mode="after")
    @classmethod
    def _check_phone_number(cls, v: str) -> str:
        v = v.strip()
        if v and not _E164_RE.match(v):
            raise ConfigError(
                f"TWILIO_PHONE_NUMBER={v!r} is not an E.164 number: write it as '+15551234567' "
                "(a '+', the country code, no spaces)."
            )
        return v

    @field_validator("relay_tools", mode="after")
    @classmethod
    def _check_tool_modules(cls, v: str) -> str:
        for module in filter(None, (m.strip() for m in v.split(","))):
            if not _MODULE_RE.match(module):
                raise ConfigError(
                    f"RELAY_TOOLS: {module!r} is not a module name: use comma-separated importable "
                    "modules such as 'myapp.tools,otherapp.tools'."
                )
        return v

    @field_validator("transfer_allowlist", mode="after")
    @classmethod
    def _check_transfer_allowlist(cls, v: str) -> str:
        for entry in filter(None, (e.strip() for e in v.split(","))):
            name, sep, number = entry.partition("=")
            number = (number if sep else name).strip()
            if (sep and not name.strip()) or not _DIALABLE_RE.match(_NUMBER_PUNCTUATION_RE.sub("", number)):
                raise ConfigError(
                    f"TRANSFER_ALLOWLIST entry {entry!r} is not a number or name=number: use "
                    "comma-separated entries such as '+15551234567,sales=+15557654321'."
                )
        return v

    @field_validator("public_url", mode="after")
    @classmethod
    def _check_public_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if v:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"PUBLIC_URL={_shown(v)} must be an absolute URL such as 'https://abc123.ngrok.app' "
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
    def _check_level(cls, v: str) -> str:
        level = v.strip().upper()
        level = LOG_LEVEL_ALIASES.get(level, level)
        if level not in LOG_LEVELS:
            raise ConfigError(
                f"LOG_LEVEL={v!r} is not a log level: use one of {', '.join(LOG_LEVELS)} "
                "(any case; 'warn' means WARNING)."
            )
        return level

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


def _accepted(name: str) -> str:
    """What the setting `name` accepts, from its type and bounds: the fix for a parse error."""
    field = Settings.model_fields.get(name)
    if field is None:
        return ""
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation not in (int, float):
        return ""
    kind = "a whole number" if annotation is int else "a number"
    low = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    bounds = [f"greater than {m.gt:g}" for m in field.metadata if isinstance(m, Gt)]
    if low is not None and high is not None:
        bounds = [f"from {low:g} to {high:g}"]
    elif low is not None:
        bounds.append(f"at least {low:g}")
    elif high is not None:
        bounds.append(f"at most {high:g}")
    bounds += [f"less than {m.lt:g}" for m in field.metadata if isinstance(m, Lt)]
    return f"{kind} {' and '.join(bounds)}".strip()


def _secret_fields() -> frozenset[str]:
    return frozenset(name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation))


def _problem(err: Any, secrets: frozenset[str]) -> str:
    """One validation error as `VARIABLE='value': what is wrong — use what`."""
    field = str(err["loc"][0]) if err["loc"] else ""
    name = field.upper()
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, ConfigError):  # our validators: the message names the variable and fix
        return str(ctx_error)
    message = str(ctx_error) if ctx_error else str(err["msg"])
    if not name:
        return message
    shown = "<hidden>" if field in secrets else repr(err.get("input"))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    fix = _accepted(field)
    if fix and err["type"] in ("literal_error", "bool_parsing", "bool_type"):
        return f"{name}={shown} is not accepted: use {fix}."
    return f"{name}={shown}: {message}" + (f"; use {fix}." if fix else ".")


def load_settings(**overrides: object) -> Settings:
    """Reads the environment and `.env`; raises ConfigError naming the variable, the bad value
    (never a secret's) and the fix, one problem per line of `ConfigError.problems`."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        secrets = _secret_fields()
        problems = [_problem(err, secrets) for err in exc.errors()]
        raise ConfigError("Invalid configuration: " + "; ".join(problems), problems=problems) from None
