"""Short-lived stream tokens: `/incoming-call` mints one bound to the call SID, the Media Stream
presents it in `start.customParameters.token`.

token = base64url("<call_sid>.<expiry>") + "." + base64url(HMAC-SHA256(key, that)).
The key is STREAM_TOKEN_SECRET, else derived from TWILIO_AUTH_TOKEN, else (development without
any secret) random per process, so a token is only good on the instance that minted it.
Instances behind a load balancer share TWILIO_AUTH_TOKEN or STREAM_TOKEN_SECRET.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time

from relay.config import Settings
from relay.errors import StreamAuthError

_PROCESS_KEY = secrets.token_bytes(32)


def _key(settings: Settings) -> bytes:
    if settings.stream_token_secret is not None and settings.stream_token_secret.get_secret_value():
        return settings.stream_token_secret.get_secret_value().encode()
    if settings.twilio_auth_token is not None and settings.twilio_auth_token.get_secret_value():
        return hmac.new(
            settings.twilio_auth_token.get_secret_value().encode(), b"relay-stream-token", hashlib.sha256
        ).digest()
    return _PROCESS_KEY


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_stream_token(call_sid: str, settings: Settings, now: float | None = None) -> str:
    # whole seconds, rounded up: a token lives at least STREAM_TOKEN_TTL (truncating could leave a
    # 1 s token a few milliseconds)
    expiry = math.ceil((time.time() if now is None else now) + settings.stream_token_ttl)
    body = f"{call_sid}.{expiry}".encode()
    sig = hmac.new(_key(settings), body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(sig)}"


def verify_stream_token(token: str, call_sid: str, settings: Settings, now: float | None = None) -> int:
    """The token's expiry (epoch seconds) when it is good for this call; else StreamAuthError saying
    why not. Whether it was used before is `webhooks.replay`'s question."""
    if not token:
        raise StreamAuthError("the stream's start message carries no token parameter")
    try:
        body_b64, sig_b64 = token.split(".")
        body, sig = _unb64(body_b64), _unb64(sig_b64)
        token_call, expiry_text = body.decode().rsplit(".", 1)
        expiry = int(expiry_text)
    except (ValueError, UnicodeDecodeError):
        raise StreamAuthError("the stream token is malformed") from None
    expected = hmac.new(_key(settings), body, hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        raise StreamAuthError("the stream token's signature is wrong (minted with another secret?)")
    if token_call != call_sid:
        raise StreamAuthError("the stream token belongs to another call")
    if (time.time() if now is None else now) > expiry:
        raise StreamAuthError("the stream token has expired")
    return expiry
