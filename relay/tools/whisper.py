"""Warm transfer: the TwiML that dials with a whisper, and the signed token that carries the summary.

A warm `transfer_call` replaces the call's TwiML with
`<Say>HOLD_MESSAGE</Say><Dial><Number url="PUBLIC_URL/transfer-whisper?t=TOKEN">number</Number></Dial>`.
When the person transferred to answers, Twilio requests that URL (signed, like every webhook) and
plays the `<Say>summary</Say>` it answers to that person only, then bridges the caller.

The summary travels in the URL itself, so any instance can answer the whisper without a store:
token = base64url("<call_sid>.<expiry>.<summary>") + "." + base64url(HMAC-SHA256(key, that)). The
key comes from the stream token's secrets (STREAM_TOKEN_SECRET, else TWILIO_AUTH_TOKEN, else random
per process) through a label of its own, so neither kind of token passes for the other. The
summary is at most SUMMARY_CHARS, which keeps the URL under about 1.7 KB.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass

from twilio.twiml.voice_response import Dial, VoiceResponse

from relay.config import Settings

__all__ = [
    "HOLD_MESSAGE",
    "SUMMARY_CHARS",
    "WHISPER_PATH",
    "WHISPER_TTL_S",
    "Whisper",
    "WhisperTokenError",
    "clean_summary",
    "mint_whisper_token",
    "verify_whisper_token",
    "warm_dial_twiml",
]

WHISPER_PATH = "/transfer-whisper"
HOLD_MESSAGE = "Please hold while I connect you."
SUMMARY_CHARS = 300
"""Longest summary: about 20 s of speech for the person answering, and a URL of at most ~1.7 KB."""
WHISPER_TTL_S = 900
"""How long a whisper URL stays good: the wait for "connecting you now" to play (at most 15 s), then
ringing up to `<Dial>`'s longest timeout (600 s), with room to spare."""
_LABEL = b"relay-transfer-whisper"
_PROCESS_KEY = secrets.token_bytes(32)


class WhisperTokenError(ValueError):
    """A whisper token that is malformed, signed with another key, or expired."""


@dataclass(frozen=True, slots=True)
class Whisper:
    """What a good whisper token carries: the call it was minted on, and the summary."""

    call_sid: str
    summary: str
    expiry: int


def _key(settings: Settings) -> bytes:
    for secret in (settings.stream_token_secret, settings.twilio_auth_token):
        if secret is not None and secret.get_secret_value():
            return hmac.new(secret.get_secret_value().encode(), _LABEL, hashlib.sha256).digest()
    return _PROCESS_KEY


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def clean_summary(summary: str) -> str:
    """The summary as spoken: whitespace (newlines included) collapsed to single spaces, and
    characters XML cannot carry or a voice cannot say (controls, format characters) left out."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in summary).split())


def mint_whisper_token(call_sid: str, summary: str, settings: Settings, now: float | None = None) -> str:
    expiry = math.ceil((time.time() if now is None else now) + WHISPER_TTL_S)
    body = f"{call_sid}.{expiry}.{clean_summary(summary)[:SUMMARY_CHARS]}".encode()
    sig = hmac.new(_key(settings), body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(sig)}"


def verify_whisper_token(token: str, settings: Settings, now: float | None = None) -> Whisper:
    """What the token carries when it was minted here (or by an instance with the same secret) and
    has not expired; else WhisperTokenError saying why not."""
    try:
        body_b64, sig_b64 = token.split(".")
        body, sig = _unb64(body_b64), _unb64(sig_b64)
    except ValueError:  # binascii.Error included
        raise WhisperTokenError("the whisper token is malformed") from None
    expected = hmac.new(_key(settings), body, hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        raise WhisperTokenError("the whisper token's signature is wrong (minted with another secret?)")
    try:
        call_sid, expiry_text, summary = body.decode().split(".", 2)
        expiry = int(expiry_text)
    except (ValueError, UnicodeDecodeError):
        raise WhisperTokenError("the whisper token is malformed") from None
    if (time.time() if now is None else now) > expiry:
        raise WhisperTokenError("the whisper token has expired")
    return Whisper(call_sid, summary, expiry)


def warm_dial_twiml(number: str, call_sid: str, summary: str, settings: Settings) -> str:
    """`<Response><Say>HOLD_MESSAGE</Say><Dial><Number url=whisper>number</Number></Dial></Response>`,
    built with the twilio package; the whisper URL is under PUBLIC_URL (which must be set)."""
    token = mint_whisper_token(call_sid, summary, settings)
    url = f"{settings.public_url.rstrip('/')}{WHISPER_PATH}?t={token}"
    response = VoiceResponse()
    response.say(HOLD_MESSAGE)
    dial = Dial()
    dial.number(number, url=url, method="POST")
    response.append(dial)
    return str(response.to_xml(xml_declaration=False))
