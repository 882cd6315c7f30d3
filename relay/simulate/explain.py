"""Why the relay refused a simulated call: its `<Say>` answer to the webhook, or the close code of
a Media Stream it accepted and then closed, explained with what to check."""

from __future__ import annotations

from webhooks.routes import APOLOGY, BUSY, DRAINING

__all__ = ["explain_close", "explain_refusal"]


_REFUSALS = {
    APOLOGY: (
        "the relay cannot serve calls: most often it has no provider credentials (OPENAI_API_KEY, or "
        "USE_AZURE_OPENAI=true with AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT)"
    ),
    BUSY: "the relay is at MAX_CONCURRENT_CALLS (fleet-wide when REDIS_URL is set)",
    DRAINING: "the relay is shutting down (draining after SIGTERM)",
}


def explain_refusal(say: str | None, parse_error: str | None = None) -> str:
    """Why the webhook answered without `<Connect><Stream>`: the relay's `<Say>` and what it means."""
    if say is None:
        return f"the relay answered without a <Connect><Stream> and without a <Say>{parse_error or ''}"
    why = _REFUSALS.get(say, "see the relay's log ('refusing call: …') for why")
    return (
        f"the relay refused the call: it answered <Say> {say!r} and <Hangup/> instead of "
        f"<Connect><Stream>; {why}. Run `relay doctor` where the relay runs: it says what to fix."
    )


_CLOSE_CHECKS = {
    "invalid signature": (
        "the X-Twilio-Signature of the upgrade was refused. This caller signed {url} (the <Stream "
        "url> of the TwiML) with TWILIO_AUTH_TOKEN: check that the token is the relay's, and that "
        "the relay checks that same URL (its PUBLIC_URL, scheme and host; behind a proxy, the "
        "X-Forwarded-Proto/-Host it receives)"
    ),
    "invalid stream token": (
        "the stream token of the TwiML was refused: it expired (STREAM_TOKEN_TTL), was used "
        "already, or the stream reached another instance whose TWILIO_AUTH_TOKEN or "
        "STREAM_TOKEN_SECRET differs from the one that answered the webhook"
    ),
}


def explain_close(code: int | None, reason: str | None, stream_url: str | None) -> str:
    """Why the relay closed a Media Stream it had accepted (before any agent audio)."""
    said = f"code {code}" + (f" {reason!r}" if reason else "")
    head = f"the relay accepted the Media Stream (HTTP 101) and then closed it with {said}: "
    check = _CLOSE_CHECKS.get(reason or "")
    if check is not None:
        return head + check.format(url=stream_url or "the stream URL") + "."
    if code == 1008:
        return head + "a policy violation; the relay's log says why (grep this call SID)."
    if code == 1011:
        return head + "an internal error; the relay's log has the traceback (grep this call SID)."
    if code in (1012, 1013):
        return head + "the relay is restarting or overloaded; try again in a moment."
    if code == 1006:
        return "the Media Stream was cut without a close frame (code 1006): the relay or a proxy died."
    return head + "see the relay's log for this call SID."
