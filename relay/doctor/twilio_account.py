"""The doctor's Twilio check: the account (REST `GET /Accounts/{sid}.json`, base URL from
TWILIO_API_BASE_URL) and, with TWILIO_PHONE_NUMBER, whether that number's voice webhook is
PUBLIC_URL/incoming-call. The twilio package's client is synchronous: it runs in a thread."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.config import Settings
from relay.doctor.report import Check, fail, ok, root_cause, skip, warn

__all__ = ["DEFAULT_TWILIO_API_BASE_URL", "check_twilio"]

DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"


def _twilio_client(settings: Settings, limit: float) -> Any:
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    http = TwilioHttpClient(timeout=limit)
    client = Client(settings.twilio_account_sid, token, http_client=http)
    base = settings.twilio_api_base_url or DEFAULT_TWILIO_API_BASE_URL
    client.api.base_url = base  # where the twilio package builds every api.twilio.com URL
    if base != DEFAULT_TWILIO_API_BASE_URL:
        client.edge = None  # TWILIO_EDGE / TWILIO_REGION would rewrite the host
        client.region = None
    return client


def _twilio_checks(settings: Settings, limit: float) -> list[Check]:
    """Blocking (the twilio package's sync client); run in a thread."""
    client = _twilio_client(settings, limit)
    try:
        return _twilio_account_and_number(client, settings)
    finally:
        session = getattr(client.http_client, "session", None)
        if session is not None:
            session.close()


def _twilio_account_and_number(client: Any, s: Settings) -> list[Check]:
    from requests import RequestException
    from twilio.base.exceptions import TwilioException, TwilioRestException

    base = s.twilio_api_base_url or DEFAULT_TWILIO_API_BASE_URL
    try:
        account = client.api.v2010.accounts(s.twilio_account_sid).fetch()
    except TwilioRestException as exc:
        if exc.status == 401:
            message = (
                "Twilio rejected TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN (HTTP 401): copy both from the "
                "Twilio console, Account info"
            )
        elif exc.status == 404:
            message = f"Twilio has no account {s.twilio_account_sid} (HTTP 404): check TWILIO_ACCOUNT_SID"
        else:
            message = f"Twilio answered HTTP {exc.status} (error {exc.code}): {exc.msg}"
        return [fail("twilio", message), *_number_skipped(s)]
    except (RequestException, TwilioException, OSError) as exc:
        return [
            fail("twilio", f"cannot reach the Twilio REST API at {base}: {root_cause(exc)}"),
            *_number_skipped(s),
        ]
    checks: list[Check] = []
    status = getattr(account, "status", None)
    name = getattr(account, "friendly_name", None) or s.twilio_account_sid
    if status not in (None, "active"):
        checks.append(fail("twilio", f"account '{name}' is {status}: calls will not connect"))
    else:
        checks.append(ok("twilio", f"credentials accepted: account '{name}' ({status or 'status unknown'})"))
    if s.twilio_phone_number:
        try:
            checks.append(_number_check(client, s))
        except TwilioRestException as exc:
            checks.append(
                fail("twilio number", f"listing phone numbers failed: HTTP {exc.status}: {exc.msg}")
            )
        except (RequestException, TwilioException, OSError) as exc:
            checks.append(fail("twilio number", f"listing phone numbers failed: {root_cause(exc)}"))
    return checks


def _number_skipped(s: Settings) -> list[Check]:
    return [skip("twilio number", "not checked: the account check failed")] if s.twilio_phone_number else []


def _number_check(client: Any, s: Settings) -> Check:
    number = s.twilio_phone_number.strip()
    numbers = client.api.v2010.accounts(s.twilio_account_sid).incoming_phone_numbers.list(
        phone_number=number, limit=20
    )
    match = next((n for n in numbers if n.phone_number == number), None)
    if match is None:
        return fail(
            "twilio number",
            f"{number} is not a number of account {s.twilio_account_sid}: check TWILIO_PHONE_NUMBER (E.164)",
        )
    actual = (match.voice_url or "").strip()
    method = (match.voice_method or "POST").upper()
    where = f"Twilio console → Phone Numbers → {number} → Voice configuration, or scripts/ngrok.sh"
    if not s.public_url:
        return warn(
            "twilio number",
            f"{number}'s voice webhook is {actual or 'not set'}; set PUBLIC_URL to compare it",
        )
    expected = s.public_url + "/incoming-call"
    if not actual:
        return fail(
            "twilio number", f"{number} has no voice webhook: set it to {expected} (HTTP POST) in {where}"
        )
    if actual.rstrip("/") != expected:
        return fail(
            "twilio number",
            f"{number}'s voice webhook is {actual}, not {expected}: calls do not reach this relay. "
            f"Fix it in {where}",
        )
    if method != "POST":
        return fail(
            "twilio number", f"{number}'s voice webhook uses HTTP {method}: set it to POST in {where}"
        )
    return ok("twilio number", f"{number} → {actual} (POST)")


async def check_twilio(settings: Settings, *, limit: float = 10.0) -> list[Check]:
    s = settings
    token = s.twilio_auth_token
    if not s.twilio_account_sid and token is None:
        note = " (TWILIO_PHONE_NUMBER is set but cannot be checked)" if s.twilio_phone_number else ""
        return [
            skip(
                "twilio",
                "TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN not set: end_call and transfer_call cannot "
                f"control calls{note}",
            )
        ]
    if not s.twilio_account_sid:
        return [warn("twilio", "TWILIO_AUTH_TOKEN is set but TWILIO_ACCOUNT_SID is not: call control is off")]
    if token is None:
        return [warn("twilio", "TWILIO_ACCOUNT_SID is set but TWILIO_AUTH_TOKEN is not: call control is off")]
    try:
        async with asyncio.timeout(limit * 2 + 1):
            return await asyncio.to_thread(_twilio_checks, s, limit)
    except TimeoutError:
        return [fail("twilio", f"the Twilio REST API did not answer within {limit * 2:g} s")]
