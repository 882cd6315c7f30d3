"""A Twilio webhook's form, read from a bounded body before anything else is done with it.

Twilio's webhooks are a few hundred bytes of `application/x-www-form-urlencoded`. The body is read
here, counting while reading: past `MAX_BODY_BYTES` (or a `Content-Length` announcing more) the
request is refused with 413 without reading further; a body that takes longer than the deadline
to arrive gets 408; more than `MAX_FIELDS` fields, 413; anything that is not a well-formed UTF-8
form, 400. Only then is the form parsed (and only then is the signature checked, by the route).
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 200
FORM_TYPE = "application/x-www-form-urlencoded"


class FormRefused(Exception):
    """The request's body is not a form the relay reads; `status` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"FormRefused({self.status}, {self.reason!r})"


def _check_headers(request: Request) -> None:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != FORM_TYPE:
        raise FormRefused(415, f"a Twilio webhook's body is {FORM_TYPE}")
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise FormRefused(400, "malformed Content-Length")
        if len(length) > 12 or int(length) > MAX_BODY_BYTES:
            raise FormRefused(413, f"a webhook's body is at most {MAX_BODY_BYTES} bytes")


async def _read_body(request: Request, within: float) -> bytes:
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                if len(body) + len(chunk) > MAX_BODY_BYTES:
                    raise FormRefused(413, f"a webhook's body is at most {MAX_BODY_BYTES} bytes")
                body += chunk
    except TimeoutError:
        raise FormRefused(408, f"the body did not arrive within {within:g} s") from None
    except ClientDisconnect:
        raise FormRefused(400, "the client left before its body was complete") from None
    return bytes(body)


def parse_form(body: bytes) -> dict[str, str]:
    """The fields of a form-encoded body (the last value of a repeated name); FormRefused if it
    has more than MAX_FIELDS fields or is not well-formed UTF-8 form encoding."""
    if body.count(b"&") >= MAX_FIELDS:
        raise FormRefused(413, f"a webhook has at most {MAX_FIELDS} fields")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except ValueError:  # UnicodeDecodeError included
        raise FormRefused(400, "the body is not a well-formed UTF-8 form") from None
    return dict(pairs)


async def read_form(request: Request, *, within: float) -> dict[str, str]:
    """The webhook's form, from a body of at most MAX_BODY_BYTES that arrived within `within` seconds."""
    _check_headers(request)
    return parse_form(await _read_body(request, within))
