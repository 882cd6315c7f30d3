"""All configuration, read once from the environment and `.env`.

Every setting of the public contract (../shared/DESIGN.md) lives here; nothing else in the
code base reads `os.environ`. Secrets are `SecretStr` so they never appear in logs or reprs.
Which check applies to which setting is decided here (by its type, e.g. `PublicUrl`); the checks of
single values, and the messages of every validation error, are in relay/config_checks.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay.config_checks import (
    check_account_sid,
    check_agents_file,
    check_api_version,
    check_forwarded_allow_ips,
    check_key_values,
    check_language,
    check_log_level,
    check_otlp_endpoint,
    check_phone_number,
    check_public_url,
    check_stream_public_url,
    check_token_scope,
    check_tool_modules,
    check_transfer_allowlist,
    check_webhook_url,
    check_websocket_url,
    describe_errors,
    early_greeting_default,
    normalize_http_url,
)
from relay.errors import ConfigError

RelayMode = Literal["realtime", "cascade", "auto"]
TurnDetection = Literal["server_vad", "semantic_vad"]
TracesSampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, friendly voice assistant on a phone call. Keep answers short and "
    "conversational: one or two sentences. Speak in the caller's language."
)

DEFAULT_VOICEMAIL_MESSAGE = (
    "Hello, this is an automated assistant returning your call. Sorry to have missed you; "
    "we will try again later. Goodbye."
)


# Each setting's check (relay/config_checks.py) rides on its type: it returns the value normalized or
# raises ConfigError naming the variable, the bad value and the fix.
def _named(check: Callable[[str, str], str]) -> AfterValidator:
    """A check told the name of the variable it checks."""
    return AfterValidator(lambda v, info: check(v, (info.field_name or "").upper()))


def _unset_if_empty(v: SecretStr | None) -> SecretStr | None:
    return v if v is not None and v.get_secret_value().strip() else None


def _not_empty(v: str, info: ValidationInfo) -> str:
    v = v.strip()
    if not v:
        default = Settings.model_fields[info.field_name or ""].default
        raise ConfigError(
            f"{(info.field_name or '').upper()} is empty: set a name such as {default!r} "
            "(the default when the line is removed)."
        )
    return v


def _base_url(v: str, name: str) -> str:
    if not v.strip():
        raise ConfigError(f"{name} is empty: remove the line to use the real service, or set a URL.")
    return normalize_http_url(v, name=name)


def _otlp_headers(v: SecretStr | None) -> SecretStr | None:
    if v is not None:
        check_key_values(v.get_secret_value(), "OTEL_EXPORTER_OTLP_HEADERS", secret=True)
    return v


def _resource_attributes(v: str) -> str:
    check_key_values(v, "OTEL_RESOURCE_ATTRIBUTES")
    return v.strip()


Secret = Annotated[SecretStr | None, AfterValidator(_unset_if_empty)]  # empty is unset
Name = Annotated[str, AfterValidator(_not_empty)]  # a model, voice or service name
BaseUrl = Annotated[str, _named(_base_url)]  # a service's base URL (scheme added when missing)
AzureEndpoint = Annotated[str, AfterValidator(lambda v: normalize_http_url(v, name="AZURE_OPENAI_ENDPOINT"))]
ApiVersion = Annotated[str, _named(check_api_version)]
TokenScope = Annotated[str, AfterValidator(check_token_scope)]
WebSocketUrl = Annotated[str, AfterValidator(check_websocket_url)]
Language = Annotated[str, AfterValidator(check_language)]
PublicUrl = Annotated[str, AfterValidator(check_public_url)]
StreamPublicUrl = Annotated[str, AfterValidator(check_stream_public_url)]
AccountSid = Annotated[str, AfterValidator(check_account_sid)]
PhoneNumber = Annotated[str, AfterValidator(check_phone_number)]
ToolModules = Annotated[str, AfterValidator(check_tool_modules)]
TransferAllowlist = Annotated[str, AfterValidator(check_transfer_allowlist)]
WebhookUrl = Annotated[str, AfterValidator(check_webhook_url)]
AgentsFile = Annotated[str, AfterValidator(check_agents_file)]
OtlpEndpoint = Annotated[str, _named(check_otlp_endpoint)]
OtlpHeaders = Annotated[SecretStr | None, AfterValidator(_unset_if_empty), AfterValidator(_otlp_headers)]
ResourceAttributes = Annotated[str, AfterValidator(_resource_attributes)]
LogLevel = Annotated[str, AfterValidator(check_log_level)]
ForwardedAllowIps = Annotated[str, AfterValidator(check_forwarded_allow_ips)]


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
    openai_api_key: Secret = None
    openai_base_url: BaseUrl = "https://api.openai.com/v1"
    openai_realtime_model: Name = "gpt-realtime"
    openai_stt_model: Name = "gpt-4o-mini-transcribe"
    openai_chat_model: Name = "gpt-4o-mini"
    openai_tts_model: Name = "gpt-4o-mini-tts"
    openai_voice: Name = "marin"

    # --- Azure OpenAI ----------------------------------------------------------------------
    azure_openai_api_key: Secret = None
    azure_openai_endpoint: AzureEndpoint = ""
    azure_openai_deployment: str = ""
    azure_api_version: ApiVersion = ""  # empty: GA protocol (/openai/v1/realtime); a preview version: preview
    azure_openai_stt_deployment: str = ""
    azure_openai_chat_deployment: str = ""
    azure_openai_tts_deployment: str = ""
    azure_cascade_api_version: ApiVersion = "2025-03-01-preview"
    azure_token_scope: TokenScope = "https://cognitiveservices.azure.com/.default"
    # Where the realtime WebSocket lives when not at the HTTP endpoint (a proxy; tests). Empty: derived
    # from OPENAI_BASE_URL (e.g. ws://host/v1) or AZURE_OPENAI_ENDPOINT (e.g. ws://host).
    realtime_websocket_base_url: WebSocketUrl = ""

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
    transcription_language: Language = ""  # ISO 639-1 hint for transcription ("de"); empty: detected
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
    # On that socket, configure the session and ask for the greeting. Unset (or empty): on for one
    # instance (no REDIS_URL) or with STREAM_PUBLIC_URL, off with REDIS_URL alone (`_early_greeting`).
    realtime_early_greeting: bool = True
    # cascade VAD: the silence that ends the caller's turn; shorter sounds (clicks, coughs) are not a turn
    cascade_silence_ms: int = Field(500, ge=100, le=10_000)
    cascade_min_speech_ms: int = Field(200, ge=20, le=10_000)
    cascade_vad_aggressiveness: int = Field(2, ge=0, le=3)  # webrtcvad 0 (lenient) … 3 (strict)
    slow_tool_feedback: Literal["tone", "none"] = "tone"
    slow_tool_after: float = Field(1.0, ge=0, le=60)  # seconds a tool may run before the hold tone starts
    dtmf_timeout_ms: int = Field(2000, ge=100, le=30_000)  # quiet that ends a key-press entry
    dtmf_tool: bool = False  # offer the send_digits tool on every call (outbound calls get it anyway)

    # --- Twilio ----------------------------------------------------------------------------
    public_url: PublicUrl = ""
    # This instance's own public Media Stream URL (call affinity): its TwiML names it, so the stream
    # comes back to the instance that answered the webhook; the upgrade's signature is checked
    # against it. Empty: the stream URL is derived from PUBLIC_URL or the request, as before.
    stream_public_url: StreamPublicUrl = ""
    twilio_account_sid: AccountSid = ""
    twilio_auth_token: Secret = None
    twilio_phone_number: PhoneNumber = ""  # the From of outbound calls (POST /calls)
    # outbound calls: Twilio's async answering-machine detection by default (a request may say otherwise),
    # and what the agent leaves on a machine ({name} placeholders from the call's context; empty: hang up)
    outbound_machine_detection: bool = True
    voicemail_message: str = DEFAULT_VOICEMAIL_MESSAGE
    record_calls: bool = False  # a dual-channel Twilio recording of every call, started at stream start
    recording_notice: str = ""  # said, word for word, before the greeting (recording consent)
    recording_wait_s: float = Field(60.0, ge=0, le=600)  # the post-call webhook's wait for the recording
    twilio_api_base_url: BaseUrl = "https://api.twilio.com"
    twilio_api_timeout: float = Field(10.0, gt=0, le=60)  # seconds per REST request (hang up, redirect)
    stream_token_secret: Secret = None  # defaults to a key derived from TWILIO_AUTH_TOKEN
    stream_token_ttl: float = Field(60.0, gt=0, le=3600)

    # --- tools -----------------------------------------------------------------------------
    tavily_api_key: Secret = None
    tavily_base_url: BaseUrl = "https://api.tavily.com"
    relay_tools: ToolModules = ""  # comma-separated modules that register user tools
    transfer_allowlist: TransferAllowlist = ""  # "+15551234567,sales=+15557654321"

    # --- storage and limits ----------------------------------------------------------------
    redis_url: Secret = None
    call_record_ttl_days: float = Field(7.0, gt=0)
    max_concurrent_calls: int = Field(100, ge=1, le=100_000)
    # seconds a call's concurrency slot outlives its instance's last refresh (every third of it); a
    # crashed instance's calls are marked `lost` this long after it died
    call_slot_ttl: float = Field(60.0, ge=1.0, le=3600)
    max_call_duration: float = Field(3600.0, gt=0, le=86_400)  # seconds (at most a day)
    drain_timeout: float = Field(30.0, ge=0)  # seconds active calls get to finish on SIGTERM

    # --- the post-call webhook (relay/post_call/) ----------------------------------------------
    post_call_webhook_url: WebhookUrl = ""  # empty: no webhook
    post_call_webhook_secret: Secret = None  # the HMAC key of X-Relay-Signature

    # --- agents (relay/agents/) ---------------------------------------------------------------
    agents_file: AgentsFile = (
        ""  # a TOML file of [agents.NAME] tables; empty: the environment is the one agent
    )

    # --- tracing (relay/tracing/): OpenTelemetry's own names, read here and handed to the SDK ------
    # No endpoint: no exporter, no tracer provider, nothing on any call's path.
    otel_exporter_otlp_endpoint: OtlpEndpoint = ""  # a collector's base URL; spans go to <it>/v1/traces
    otel_exporter_otlp_traces_endpoint: OtlpEndpoint = ""  # the full URL of the traces endpoint (wins)
    otel_exporter_otlp_protocol: Literal["http/protobuf"] = "http/protobuf"  # the only one the relay speaks
    otel_exporter_otlp_headers: OtlpHeaders = None  # "key=value,key2=value2" (often an API key)
    otel_exporter_otlp_compression: Literal["none", "gzip", "deflate"] = "none"
    otel_service_name: Name = "twilio-realtime-relay"
    otel_resource_attributes: ResourceAttributes = ""  # "deployment.environment=prod,service.namespace=voice"
    otel_traces_sampler: TracesSampler = "parentbased_always_on"
    otel_traces_sampler_arg: float = Field(1.0, ge=0.0, le=1.0)  # the ratio of the *traceidratio samplers
    otel_bsp_schedule_delay: int = Field(5000, ge=1, le=600_000)  # ms between two batch exports
    otel_bsp_max_queue_size: int = Field(2048, ge=1, le=100_000)  # spans waiting; more are dropped
    otel_bsp_max_export_batch_size: int = Field(512, ge=1, le=100_000)  # at most the queue size
    otel_sdk_disabled: bool = False  # true: no traces even with an endpoint
    otel_record_tool_arguments: bool = (
        False  # tool spans carry the model's arguments (may hold personal data)
    )

    # --- operations ------------------------------------------------------------------------
    relay_admin_token: Secret = None
    log_format: Literal["text", "json"] = "text"
    log_level: LogLevel = "INFO"
    host: str = Field("0.0.0.0", min_length=1)
    port: int = Field(8000, ge=1, le=65535)

    # --- the HTTP edge (relay/transport/http.py, webhooks/form.py) ----------------------------
    # Peers whose X-Forwarded-Proto/-Host/-For are believed: IPs, CIDRs, comma-separated, or "*".
    forwarded_allow_ips: ForwardedAllowIps = "127.0.0.1"
    http_header_timeout: float = Field(5.0, gt=0, le=120)  # seconds for a request's line and headers
    http_max_header_bytes: int = Field(16 * 1024, ge=1024)  # request line + headers; 431 past it
    http_max_connections: int = Field(0, ge=0)  # open connections served; 0: 2 x MAX_CONCURRENT_CALLS + 500
    webhook_body_timeout: float = Field(5.0, gt=0, le=120)  # seconds to receive a webhook's whole body

    @model_validator(mode="before")
    @classmethod
    def _empty_early_greeting_is_unset(cls, data: object) -> object:
        """`REALTIME_EARLY_GREETING=` (as in .env.example) leaves the choice to the deployment."""
        if isinstance(data, dict):
            key = next((k for k in data if str(k).lower() == "realtime_early_greeting"), None)
            if key is not None and isinstance(data[key], str) and not data[key].strip():
                data = {k: v for k, v in data.items() if k != key}
        return data

    @model_validator(mode="after")
    def _early_greeting(self) -> Settings:
        """REALTIME_EARLY_GREETING's default follows the deployment (`early_greeting_why` says how)."""
        if "realtime_early_greeting" in self.model_fields_set:
            on = self.realtime_early_greeting
            self._early_greeting_why = f"REALTIME_EARLY_GREETING={'true' if on else 'false'} is set"
            return self
        on, why = early_greeting_default(
            shared=self.redis_url is not None, affinity=bool(self.stream_public_url)
        )
        self.realtime_early_greeting = on
        self._early_greeting_why = why
        return self

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

    @model_validator(mode="after")
    def _check_post_call_webhook(self) -> Settings:
        if self.post_call_webhook_url and self.post_call_webhook_secret is None:
            raise ConfigError(
                "POST_CALL_WEBHOOK_URL is set but POST_CALL_WEBHOOK_SECRET is not: set a long random "
                "secret (e.g. `openssl rand -hex 32`), shared with the receiver, which checks each "
                "delivery's X-Relay-Signature with it."
            )
        return self

    @model_validator(mode="after")
    def _check_otel_batch(self) -> Settings:
        if self.otel_bsp_max_export_batch_size > self.otel_bsp_max_queue_size:
            raise ConfigError(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={self.otel_bsp_max_export_batch_size} is more than "
                f"OTEL_BSP_MAX_QUEUE_SIZE={self.otel_bsp_max_queue_size}: a batch is taken from the "
                "queue, so lower the batch size or raise the queue size."
            )
        return self

    # --- derived values --------------------------------------------------------------------
    _early_greeting_why: str = PrivateAttr("")

    @property
    def early_greeting_why(self) -> str:
        """Why REALTIME_EARLY_GREETING is on or off here (its value, or the deployment's default)."""
        return self._early_greeting_why

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
    """Reads the environment and `.env`; raises ConfigError naming the variable, the bad value
    (never a secret's) and the fix, one problem per line of `ConfigError.problems`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = describe_errors(exc, Settings.model_fields)
        raise ConfigError("Invalid configuration: " + "; ".join(problems), problems=problems) from None


def environment_secret(name: str) -> SecretStr | None:
    """The value of the environment variable `name` as a secret, else of its line in the `.env`
    the settings read (the environment wins, as for the settings; names compare case-insensitively);
    None when it is unset or empty. An agent's `api_key_env` names its key this way
    (relay/agents/): the only other place than `Settings` where the environment is read."""
    wanted = name.lower()
    found = next((v for k, v in os.environ.items() if k.lower() == wanted), None)
    env_file = Settings.model_config.get("env_file")
    if found is None and isinstance(env_file, str) and Path(env_file).is_file():
        from dotenv import dotenv_values

        values = dotenv_values(env_file, encoding=Settings.model_config.get("env_file_encoding"))
        found = next((v for k, v in values.items() if k.lower() == wanted), None)
    return SecretStr(found) if found is not None and found.strip() else None
