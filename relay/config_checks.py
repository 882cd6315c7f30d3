"""The checks behind relay/config.py's settings, and the messages they give.

Each `check_*` takes a value as pydantic parsed it and returns it normalized, or raises
ConfigError with a message that names the variable, shows the bad value (never a secret's, and a
URL's password masked) and says what it accepts. `describe_errors` turns every other validation
error (a type, a bound, a choice) into a message of the same shape. The settings themselves, and
which check applies to which setting, stay in relay/config.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from relay.errors import ConfigError
from relay.phone_numbers import is_dialable, is_e164
from relay.sids import is_account_sid

__all__ = [
    "LOG_LEVELS",
    "LOG_LEVEL_ALIASES",
    "check_account_sid",
    "check_agents_file",
    "check_api_version",
    "check_forwarded_allow_ips",
    "check_language",
    "check_key_values",
    "check_log_level",
    "check_otlp_endpoint",
    "check_phone_number",
    "check_public_url",
    "check_stream_public_url",
    "early_greeting_default",
    "check_webhook_url",
    "check_token_scope",
    "check_tool_modules",
    "check_transfer_allowlist",
    "check_websocket_url",
    "describe_errors",
    "normalize_http_url",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Spellings other tools use, accepted and normalized: `warn` (Go, Node, log4j), `fatal`.
LOG_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}$")
_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _shown(url: str) -> str:
    """`url` for an error message: a password in it (`user:pass@host`) masked."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return repr(url)
    scheme, _, userinfo = head.partition("://")
    user, colon, _ = userinfo.partition(":")
    return repr(f"{scheme}://{user}{':***' if colon else ''}@{tail}")


# --- URLs ------------------------------------------------------------------------------------------


def _is_url(value: str, schemes: tuple[str, ...] = ("http", "https")) -> bool:
    """True for an absolute URL of one of `schemes` (a host, at least)."""
    parts = urlsplit(value)
    return parts.scheme in schemes and bool(parts.netloc)


def normalize_http_url(value: str, *, name: str, default_scheme: str = "https") -> str:
    """Accepts `host`, `https://host` or `http://host[:port]`; returns `scheme://host[:port][/path]`."""
    value = value.strip().rstrip("/")
    if not value:
        return value
    if "://" not in value:
        value = f"{default_scheme}://{value}"
    if not _is_url(value):
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


def check_websocket_url(v: str) -> str:
    """REALTIME_WEBSOCKET_BASE_URL: empty, or a ws(s):// (or http(s)://) URL."""
    v = v.strip().rstrip("/")
    if v and not _is_url(v, ("ws", "wss", "http", "https")):
        raise ConfigError(
            f"REALTIME_WEBSOCKET_BASE_URL={_shown(v)} is not a WebSocket URL: use e.g. 'wss://proxy/v1' "
            "(OpenAI) or 'wss://proxy' (Azure), or leave it empty to derive it."
        )
    return v


def check_public_url(v: str) -> str:
    """PUBLIC_URL: empty, or an absolute http(s) URL, without its trailing slash."""
    v = v.strip().rstrip("/")
    if v and not _is_url(v):
        raise ConfigError(
            f"PUBLIC_URL={_shown(v)} must be an absolute URL such as 'https://abc123.ngrok.app' "
            "(run scripts/ngrok.sh to set it)."
        )
    return v


STREAM_PATH = "/media-stream"


def check_stream_public_url(v: str) -> str:
    """STREAM_PUBLIC_URL: empty, or an absolute ws(s):// URL whose path ends with /media-stream
    (the relay's own path, after whatever prefix the load balancer routes to this instance), with
    no query string (Twilio drops it) and no trailing slash."""
    v = v.strip().rstrip("/")
    if not v:
        return v
    parts = urlsplit(v)
    if not _is_url(v, ("ws", "wss")) or parts.query or parts.fragment or not parts.path.endswith(STREAM_PATH):
        raise ConfigError(
            f"STREAM_PUBLIC_URL={_shown(v)} must be this instance's public Media Stream URL: wss:// "
            "(ws:// for local tests), no query string, its path ending with /media-stream, e.g. "
            "'wss://relay-2.voice.example.com/media-stream' or "
            "'wss://voice.example.com/i/relay-2/media-stream'; or leave it empty."
        )
    return v


def check_webhook_url(v: str) -> str:
    """POST_CALL_WEBHOOK_URL: empty (no webhook), or an absolute http(s) URL."""
    v = v.strip()
    if v and not _is_url(v):
        raise ConfigError(
            f"POST_CALL_WEBHOOK_URL={_shown(v)} is not an absolute URL: use e.g. "
            "'https://crm.example.com/hooks/calls', or leave it empty for no webhook."
        )
    return v


def check_otlp_endpoint(v: str, name: str) -> str:
    """OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT: empty (no traces), or an absolute http(s) URL."""
    v = v.strip().rstrip("/")
    if v and not _is_url(v):
        example = "'http://collector:4318/v1/traces'" if "TRACES" in name else "'http://collector:4318'"
        raise ConfigError(
            f"{name}={_shown(v)} is not an OTLP/HTTP URL: use e.g. {example} (the collector's "
            "OTLP/HTTP port, 4318 by default), or leave it empty for no traces."
        )
    return v


def check_key_values(v: str, name: str, *, secret: bool = False) -> None:
    """OpenTelemetry's `key=value,key2=value2` lists (OTEL_RESOURCE_ATTRIBUTES, _HEADERS): every
    entry has a key and an `=`. A secret's value is never shown."""
    for entry in filter(None, (e.strip() for e in v.split(","))):
        key, equals, _ = entry.partition("=")
        if not equals or not key.strip():
            shown = "" if secret else f"={v.strip()!r}"
            raise ConfigError(
                f"{name}{shown} is not a list of key=value pairs: use e.g. "
                "'key=value,other.key=value' (values URL-encoded), or leave it empty."
            )


def check_token_scope(v: str) -> str:
    """AZURE_TOKEN_SCOPE: an https URL, as Entra ID scopes are."""
    v = v.strip()
    if not _is_url(v, ("https",)):
        raise ConfigError(
            f"AZURE_TOKEN_SCOPE={v!r} is not an Entra ID scope: use "
            "'https://cognitiveservices.azure.com/.default' (the default)."
        )
    return v


# --- names and numbers -----------------------------------------------------------------------------


def check_api_version(v: str, name: str) -> str:
    """AZURE_API_VERSION (empty: the GA protocol) or AZURE_CASCADE_API_VERSION: `YYYY-MM-DD[-preview]`."""
    v = v.strip()
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


def check_account_sid(v: str) -> str:
    """TWILIO_ACCOUNT_SID: empty or `AC` + 32 hex digits."""
    v = v.strip()
    if v and not is_account_sid(v):
        raise ConfigError(
            f"TWILIO_ACCOUNT_SID={v!r} is not an account SID: it is 'AC' and 32 hex digits, "
            "shown under Account info in the Twilio console."
        )
    return v


def check_phone_number(v: str) -> str:
    """TWILIO_PHONE_NUMBER: empty or E.164."""
    v = v.strip()
    if v and not is_e164(v):
        raise ConfigError(
            f"TWILIO_PHONE_NUMBER={v!r} is not an E.164 number: write it as '+15551234567' "
            "(a '+', the country code, no spaces)."
        )
    return v


def check_tool_modules(v: str) -> str:
    """RELAY_TOOLS: comma-separated dotted module names."""
    for module in filter(None, (m.strip() for m in v.split(","))):
        if not _MODULE_RE.match(module):
            raise ConfigError(
                f"RELAY_TOOLS: {module!r} is not a module name: use comma-separated importable "
                "modules such as 'myapp.tools,otherapp.tools'."
            )
    return v


def check_transfer_allowlist(v: str) -> str:
    """TRANSFER_ALLOWLIST: comma-separated `number` or `name=number` entries."""
    for entry in filter(None, (e.strip() for e in v.split(","))):
        name, sep, number = entry.partition("=")
        number = (number if sep else name).strip()
        if (sep and not name.strip()) or not is_dialable(number):
            raise ConfigError(
                f"TRANSFER_ALLOWLIST entry {entry!r} is not a number or name=number: use "
                "comma-separated entries such as '+15551234567,sales=+15557654321'."
            )
    return v


def check_language(v: str) -> str:
    """TRANSCRIPTION_LANGUAGE: empty (the model detects it) or an ISO 639-1 code, returned lower-case."""
    code = v.strip().lower()
    if code and not _LANGUAGE_RE.match(code):
        raise ConfigError(
            f"TRANSCRIPTION_LANGUAGE={v!r} is not a language code: use an ISO 639-1 code such as "
            "'de' or 'en', or leave it empty to let the model detect the language."
        )
    return code


def check_agents_file(v: str) -> str:
    """AGENTS_FILE: empty (the environment is the one agent) or a file that exists. What is in it is
    checked by relay/agents/ (every problem at once, with the agent and the field)."""
    v = v.strip()
    if v and not Path(v).is_file():
        what = "is a directory" if Path(v).is_dir() else "does not exist"
        raise ConfigError(
            f"AGENTS_FILE={v!r} {what} (relative to {Path.cwd()}): name a TOML file of [agents.NAME] "
            "tables such as examples/agents.toml, or leave it empty for one agent from the environment."
        )
    return v


def check_forwarded_allow_ips(v: str) -> str:
    """FORWARDED_ALLOW_IPS: IPs and networks, comma-separated, or `*`; returned normalized."""
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


def check_log_level(v: str) -> str:
    """LOG_LEVEL: a logging level name in any case (`warn` and `fatal` too), returned upper-case."""
    level = v.strip().upper()
    level = LOG_LEVEL_ALIASES.get(level, level)
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"LOG_LEVEL={v!r} is not a log level: use one of {', '.join(LOG_LEVELS)} "
            "(any case; 'warn' means WARNING)."
        )
    return level


# --- the other validation errors -------------------------------------------------------------------


def early_greeting_default(*, shared: bool, affinity: bool) -> tuple[bool, str]:
    """REALTIME_EARLY_GREETING when it is not set, and why: on for one instance or with call
    affinity (`affinity`: STREAM_PUBLIC_URL), off for a fleet (`shared`: REDIS_URL) without it."""
    if not shared:
        return True, "one instance (no REDIS_URL): its streams come to it"
    if affinity:
        return True, "call affinity (STREAM_PUBLIC_URL): streams come back to this instance"
    return False, (
        "REDIS_URL without STREAM_PUBLIC_URL: a stream may reach another instance than its "
        "webhook's, where the greeting would be made in vain; set STREAM_PUBLIC_URL per "
        "instance to have it"
    )


def describe_errors(exc: ValidationError, fields: Mapping[str, FieldInfo]) -> list[str]:
    """Each error of `exc` (validating the settings `fields`) as `VARIABLE='value': what is wrong —
    use what`; a secret's value is never shown."""
    secrets = frozenset(name for name, f in fields.items() if "SecretStr" in str(f.annotation))
    return [_problem(err, fields, secrets) for err in exc.errors()]


def _problem(err: Any, fields: Mapping[str, FieldInfo], secrets: frozenset[str]) -> str:
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
    fix = _accepted(fields.get(field))
    if fix and err["type"] in ("literal_error", "bool_parsing", "bool_type"):
        return f"{name}={shown} is not accepted: use {fix}."
    return f"{name}={shown}: {message}" + (f"; use {fix}." if fix else ".")


def _accepted(field: FieldInfo | None) -> str:
    """What a setting accepts, from its type and bounds: the fix for a parse error."""
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
