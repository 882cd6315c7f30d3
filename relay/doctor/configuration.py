"""Offline doctor checks: the provider and its endpoint, missing and contradictory variables, the
cascade's deployments, Twilio's settings and the tool registry. Nothing here opens a socket."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from relay.config import Settings
from relay.doctor.report import Check, fail, first_line, is_local, ok, warn
from relay.errors import ConfigError
from relay.sessions.providers import AzureAdapter, make_adapter

__all__ = ["check_configuration", "check_tools"]

_AZURE_HOST_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


def check_configuration(settings: Settings) -> list[Check]:
    """Offline checks: the provider and its endpoint, missing and contradictory variables."""
    s = settings
    checks: list[Check] = []
    try:
        adapter = make_adapter(s, azure_credential=_NoCredential())
    except ConfigError as exc:
        checks.append(fail("provider", str(exc)))
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
                ok(
                    "provider",
                    f"Azure OpenAI, resource {host}, deployment '{s.azure_openai_deployment}', {protocol}, "
                    f"auth {auth}; realtime URL {adapter.realtime_url}{via}",
                )
            )
        else:
            checks.append(ok("provider", f"OpenAI, key set; realtime URL {adapter.realtime_url}{via}"))
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
            warn(
                "config",
                f"{', '.join(azure_vars)} set but USE_AZURE_OPENAI=false: calls go to OpenAI, not Azure. "
                "Set USE_AZURE_OPENAI=true to use Azure (e.g. for EU residency), or remove them.",
            )
        )
    if s.use_azure_openai:
        host = urlsplit(s.azure_openai_endpoint).hostname or ""
        if not is_local(s.azure_openai_endpoint) and not host.endswith(_AZURE_HOST_SUFFIXES):
            checks.append(
                warn(
                    "config",
                    f"AZURE_OPENAI_ENDPOINT host {host!r} is not an Azure OpenAI host "
                    "(expected e.g. my-resource.openai.azure.com)",
                )
            )
        version = s.azure_api_version
        if version and not (version.endswith("-preview") or version == "2024-12-17"):
            checks.append(
                warn(
                    "config",
                    f"AZURE_API_VERSION={version} selects the preview Realtime protocol; "
                    "leave it empty for the GA protocol (/openai/v1/realtime)",
                )
            )
        if s.allow_cross_provider_fallback and s.openai_api_key is None:
            checks.append(
                warn(
                    "config",
                    "ALLOW_CROSS_PROVIDER_FALLBACK=true but OPENAI_API_KEY is not set: there is nothing to "
                    "fall back to",
                )
            )
    elif urlsplit(s.openai_base_url).scheme == "http" and not is_local(s.openai_base_url):
        checks.append(
            warn("config", f"OPENAI_BASE_URL={s.openai_base_url} is plain http: the key travels unencrypted")
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
        return [ok("cascade", "Azure STT, chat and TTS deployments set")]
    if s.relay_mode == "cascade":
        return [fail("cascade", f"RELAY_MODE=cascade needs {', '.join(missing)}")]
    return [
        warn(
            "cascade",
            f"RELAY_MODE=auto cannot fall back to the cascade: set {', '.join(missing)} "
            "(or RELAY_MODE=realtime to silence this)",
        )
    ]


def _twilio_settings(s: Settings) -> list[Check]:
    checks: list[Check] = []
    if not s.public_url:
        checks.append(
            warn(
                "public url",
                "PUBLIC_URL is not set: signatures are checked against the request's Host header, and "
                "Twilio needs a public https URL; run scripts/ngrok.sh (it writes PUBLIC_URL to .env)",
            )
        )
    elif is_local(s.public_url):
        checks.append(
            warn("public url", f"PUBLIC_URL={s.public_url} is local: Twilio cannot reach it; use a tunnel")
        )
    elif urlsplit(s.public_url).scheme != "https":
        checks.append(
            warn(
                "public url",
                f"PUBLIC_URL={s.public_url} is not https: Twilio requires https webhooks and wss streams",
            )
        )
    if s.twilio_auth_token is None:
        checks.append(
            warn(
                "signatures",
                "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked (anyone can call "
                "your webhook); set it before exposing the relay",
            )
        )
    else:
        checks.append(
            ok("signatures", "TWILIO_AUTH_TOKEN set: webhooks and media streams are signature-checked")
        )
    # TWILIO_ACCOUNT_SID and TWILIO_PHONE_NUMBER are checked by the settings themselves
    # (relay/config_checks.py): a malformed one is a FAIL line of `settings`, before any check here.
    return checks


def check_tools(settings: Settings) -> Check:
    """The tool registry builds (RELAY_TOOLS modules import) and which tools the model gets."""
    from relay.tools import build_registry

    try:
        registry = build_registry(settings)
    except ConfigError as exc:
        return fail("tools", str(exc))
    except Exception as exc:  # a user module may raise anything at import
        return fail("tools", f"building the tool registry failed: {first_line(exc)}")
    per_call = [] if settings.dtmf_tool else ["send_digits"]  # offered on outbound calls only
    offered = [name for name in registry.names() if name not in per_call]
    also = f" (and on outbound calls: {', '.join(per_call)})" if per_call else ""
    return ok("tools", "the model is offered: " + (", ".join(offered) or "no tools") + also)
