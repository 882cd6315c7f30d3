"""`X-Twilio-Signature` checks, against the URL Twilio actually requested.

Behind a proxy (ngrok, a load balancer) the app sees `http://localhost:8000/...`, but Twilio signed
the public URL. The URL is rebuilt from PUBLIC_URL + path when set (and then from it alone), else
from `X-Forwarded-Proto` / `X-Forwarded-Host` (first value) when the peer is a trusted proxy
(FORWARDED_ALLOW_IPS; relay/transport/http.py applies the proto to the scope's scheme), else from
the connection's own scheme and `Host`. A trusted proxy that routes a path prefix to this
instance and strips it (`/i/relay-2/media-stream` → `/media-stream`) names it in
`X-Forwarded-Prefix`; the URL with the prefix is then accepted too. The Media Stream upgrade is
also checked against STREAM_PUBLIC_URL when set (call affinity: the URL this instance's TwiML
named, whatever path the proxy hands on). Without TWILIO_AUTH_TOKEN validation is off (local
development only; a warning is logged at startup).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator

from relay.config import Settings
from relay.transport.http import forwarded_trusted


def _first(value: str | None) -> str:
    return (value or "").split(",")[0].strip()


def public_base(conn: HTTPConnection, settings: Settings, *, websocket: bool = False) -> str:
    """`scheme://host` of the URL Twilio used for this request (ws/wss for WebSockets)."""
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        scheme, host = parts.scheme, parts.netloc
    else:
        scheme = conn.url.scheme  # X-Forwarded-Proto already applied when the peer is trusted
        forwarded_host = _first(conn.headers.get("x-forwarded-host")) if forwarded_trusted(conn.scope) else ""
        host = forwarded_host or conn.headers.get("host", "")
    if websocket:
        scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    else:
        scheme = {"wss": "https", "ws": "http"}.get(scheme, scheme)
    return f"{scheme}://{host}"


MAX_PREFIX_CHARS = 200


def forwarded_prefix(conn: HTTPConnection) -> str:
    """The path prefix a trusted proxy stripped (`X-Forwarded-Prefix`, first value, `/a/b` without
    its trailing slash); empty when there is none, the peer is not trusted or the value is not a
    plain path."""
    if not forwarded_trusted(conn.scope):
        return ""
    prefix = _first(conn.headers.get("x-forwarded-prefix")).rstrip("/")
    plain = prefix.startswith("/") and len(prefix) <= MAX_PREFIX_CHARS and not set("?#\\ ") & set(prefix)
    return prefix if plain else ""


def _candidates(base: str, path: str, query: str = "") -> list[str]:
    """The URL as requested and its trailing-slash twin (some setups sign the other form)."""
    alt = path[:-1] if path.endswith("/") and len(path) > 1 else path + "/"
    suffix = f"?{query}" if query else ""
    return [f"{base}{path}{suffix}", f"{base}{alt}{suffix}"]


def requested_urls(conn: HTTPConnection, settings: Settings, *, websocket: bool = False) -> list[str]:
    """The URLs Twilio may have signed for this request: as rebuilt (`public_base` + path), and
    with a trusted proxy's stripped prefix before the path; each with its trailing-slash twin."""
    base, path = public_base(conn, settings, websocket=websocket), conn.url.path
    query = "" if websocket else conn.url.query  # a stream's query string: none (Twilio drops it)
    urls = _candidates(base, path, query)
    prefix = forwarded_prefix(conn)
    if prefix:
        urls += _candidates(base, prefix + path, query)
    return urls


def stream_urls(conn: HTTPConnection, settings: Settings) -> list[str]:
    """The URLs a Media Stream upgrade's signature may be for: STREAM_PUBLIC_URL when set (what
    this instance's TwiML names), then the URL as requested (`requested_urls`: a stream whose
    webhook another instance answered, sent here by a restart or a failover)."""
    own = _candidates(settings.stream_public_url, "") if settings.stream_public_url else []
    return own + requested_urls(conn, settings, websocket=True)


def _valid(settings: Settings, urls: list[str], params: Mapping[str, Any], signature: str) -> bool:
    token = settings.twilio_auth_token
    if token is None or not token.get_secret_value():
        return True  # validation off: local development only (warned at startup)
    if not signature:
        return False
    validator = RequestValidator(token.get_secret_value())
    return any(validator.validate(u, dict(params), signature) for u in urls)


def request_signature_ok(conn: HTTPConnection, settings: Settings, form: Mapping[str, Any]) -> bool:
    """Validates a form-encoded webhook POST."""
    urls = requested_urls(conn, settings)
    return _valid(settings, urls, form, conn.headers.get("x-twilio-signature", ""))


def websocket_signature_ok(conn: HTTPConnection, settings: Settings) -> bool:
    """Validates the Media Streams upgrade against `stream_urls`, query parameters as params."""
    urls = stream_urls(conn, settings)
    return _valid(settings, urls, dict(conn.query_params), conn.headers.get("x-twilio-signature", ""))
