"""`X-Twilio-Signature` checks, against the URL Twilio actually requested.

Behind a proxy (ngrok, a load balancer) the app sees `http://localhost:8000/...`, but Twilio signed
the public URL. The URL is rebuilt from PUBLIC_URL + path when set (and then from it alone), else
from `X-Forwarded-Proto` / `X-Forwarded-Host` (first value) when the peer is a trusted proxy
(FORWARDED_ALLOW_IPS; relay/transport/http.py applies the proto to the scope's scheme), else from
the connection's own scheme and `Host`. Without TWILIO_AUTH_TOKEN validation is off
(local development only; a warning is logged at startup).
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


def _candidates(base: str, path: str, query: str = "") -> list[str]:
    """The URL as requested and its trailing-slash twin (some setups sign the other form)."""
    alt = path[:-1] if path.endswith("/") and len(path) > 1 else path + "/"
    suffix = f"?{query}" if query else ""
    return [f"{base}{path}{suffix}", f"{base}{alt}{suffix}"]


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
    urls = _candidates(public_base(conn, settings), conn.url.path, conn.url.query)
    return _valid(settings, urls, form, conn.headers.get("x-twilio-signature", ""))


def websocket_signature_ok(conn: HTTPConnection, settings: Settings) -> bool:
    """Validates the Media Streams upgrade: `wss://host/path`, query parameters as params."""
    urls = _candidates(public_base(conn, settings, websocket=True), conn.url.path)
    return _valid(settings, urls, dict(conn.query_params), conn.headers.get("x-twilio-signature", ""))
