"""`relay call --outbound`: the simulator as the callee of a call the relay places, and as the
Twilio around that callee.

In order: `place_call` checks that the relay's URL serves the fake Twilio REST API (so that
`POST /calls` cannot ring a real phone), then asks the relay for the call (`POST /calls`, admin
token). The caller (`relay.simulate.caller`) then answers as Twilio does when a callee picks up: the
signed `POST /outbound-answer` with the new SID, and the Media Stream. `Callee` does the rest of
Twilio's part: the answering-machine detection report (`POST /amd-status`, signed), and watching the
call through the fake REST API (a fetch held until the call is completed), because the relay hangs
up an outbound call through Twilio's API (`Status=completed`), after which Twilio stops the stream:
the simulator then does the same. `answering_machine` is the callee of `--voicemail`: a spoken
greeting, a beep, the AMD report `machine_end_beep`, then it records what the agent says.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httpx

from relay.simulate.results import Timeline
from relay.simulate.script import CallOptions, OutboundCall, Utterance
from relay.testing.audio import tone_ulaw
from relay.testing.twilio import SIGNATURE_HEADER, FakeTwilioCall
from webhooks.outbound import AMD_PATH, ANSWER_PATH  # the Url and AsyncAmdStatusCallback the relay gives

if TYPE_CHECKING:
    from relay.simulate.caller import Caller

__all__ = [
    "AMD_PATH",
    "ANSWER_PATH",
    "Callee",
    "OutboundRefused",
    "answering_machine",
    "machine_utterances",
    "place_call",
]

API = "/2010-04-01/Accounts/{account}/Calls"
BEEP_HZ, BEEP_MS = 1000, 500
WATCH_WAIT_S = 5  # each fetch of the call's status is held this long at most (the fake's `Wait`)
HANG_UP_GRACE_S = 5.0  # after the agent's message, how long the machine waits for the relay to hang up


class OutboundRefused(Exception):
    """The outbound call could not be placed; the message says why and what to do."""


def machine_utterances(outbound: OutboundCall) -> tuple[Utterance, Utterance]:
    """The answering machine's greeting (espeak-ng: RuntimeError without it) and its beep."""
    return Utterance.say(outbound.greeting), Utterance("beep", tone_ulaw(BEEP_HZ, BEEP_MS, 0.5))


def _api_auth(options: CallOptions, outbound: OutboundCall) -> tuple[str, str]:
    return outbound.account_sid, options.auth_token or ""


async def _check_fake_twilio(client: httpx.AsyncClient, options: CallOptions, outbound: OutboundCall) -> None:
    api = (outbound.twilio_api_url or options.url).rstrip("/")
    url = api + API.format(account=outbound.account_sid) + ".json"
    try:
        response = await client.get(url, auth=_api_auth(options, outbound))
    except httpx.HTTPError as exc:
        raise OutboundRefused(
            f"cannot reach the relay at {api}: {type(exc).__name__}: {exc or 'no answer'}. "
            "Is `relay serve --fakes` running there (or give --url)?"
        ) from None
    if response.status_code == 401:
        raise OutboundRefused(
            "the fake Twilio REST API refused TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN: set the relay's "
            "(both commands read the same .env)"
        )
    if response.status_code == 404 and "code" in response.text:
        raise OutboundRefused(
            f"the fake Twilio REST API knows no account {outbound.account_sid}: set TWILIO_ACCOUNT_SID "
            "as the relay has it, or unset it for both commands"
        )
    if response.status_code != 200:
        raise OutboundRefused(
            f"the relay at {api} does not serve the fake Twilio REST API (HTTP {response.status_code}): "
            "`relay call --outbound` is the callee of a call placed through `relay serve --fakes`; a "
            "relay on a real Twilio account would ring a real phone, so nothing was asked of it"
        )


async def place_call(options: CallOptions, timeline: Timeline) -> str:
    """`POST /calls` to the relay, once the fake Twilio REST API answers at its URL; the new call's
    SID. OutboundRefused with the reason (the relay's own for a refused request)."""
    outbound = options.outbound
    assert outbound is not None
    if not options.admin_token:
        raise OutboundRefused("set RELAY_ADMIN_TOKEN (the relay's): POST /calls needs it")
    body: dict[str, object] = {
        "to": outbound.to,
        "context": outbound.context,
        "machine_detection": outbound.machine_detection,
    }
    if outbound.agent is not None:
        body["agent"] = outbound.agent
    async with httpx.AsyncClient(timeout=10.0) as client:
        await _check_fake_twilio(client, options, outbound)
        try:
            response = await client.post(
                options.url + "/calls", json=body, headers={"Authorization": f"Bearer {options.admin_token}"}
            )
        except httpx.HTTPError as exc:
            raise OutboundRefused(f"POST /calls failed: {type(exc).__name__}: {exc or 'no answer'}") from None
    if response.status_code == 404:
        raise OutboundRefused("the relay has no POST /calls: set RELAY_ADMIN_TOKEN where it runs too")
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:200]}
    if response.status_code != 201 or not isinstance(answer.get("call_sid"), str):
        reason = answer.get("error", answer) if isinstance(answer, dict) else answer
        raise OutboundRefused(f"the relay refused POST /calls with HTTP {response.status_code}: {reason}")
    detection = "on" if outbound.machine_detection else "off"
    timeline.add(
        "placed",
        f"POST /calls → 201, call {answer['call_sid']} to {outbound.to} (machine detection {detection})",
    )
    return str(answer["call_sid"])


class Callee:
    """Twilio's part around the callee of one outbound call: the AMD report, and the hang-up the
    relay asks of Twilio's REST API."""

    def __init__(self, options: CallOptions, call: FakeTwilioCall, caller: Caller) -> None:
        assert options.outbound is not None
        self.options = options
        self.outbound = options.outbound
        self.call = call
        self.caller = caller
        self.hung_up = asyncio.Event()
        self.played_at_hang_up: float | None = None

    @staticmethod
    def answer_params() -> dict[str, str]:
        """The answer webhook's form beyond CallSid, AccountSid, From and To (as Twilio sends it)."""
        return {"CallStatus": "in-progress", "Direction": "outbound-api"}

    async def report_amd(self, answered_by: str, duration_ms: int) -> None:
        """Twilio's async AMD callback (signed, like every webhook), on the timeline with its status."""
        call, result = self.call, self.caller.result
        params = {
            "CallSid": call.call_sid,
            "AccountSid": call.account_sid,
            "From": call.from_,
            "To": call.to,
            "Direction": "outbound-api",
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": str(duration_ms),
        }
        headers = {SIGNATURE_HEADER: call.sign(call.public_url + AMD_PATH, params)} if call.auth_token else {}
        result.answered_by = answered_by
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.post(call.base_url + AMD_PATH, data=params, headers=headers)
        except httpx.HTTPError as exc:
            self.caller.error(f"POST {AMD_PATH} failed: {type(exc).__name__}: {exc or 'no answer'}")
            return
        result.amd_status = response.status_code
        self.caller.t.add(
            "amd",
            f"POST {AMD_PATH} AnsweredBy={answered_by} MachineDetectionDuration={duration_ms} "
            f"→ HTTP {response.status_code}",
        )
        if response.status_code >= 300:
            self.caller.error(f"the relay refused the AMD report with HTTP {response.status_code}")

    async def watch_hang_up(self) -> None:
        """Until the call ends: asks the fake REST API for the call's status (each fetch held until
        it changes); once the relay completed the call, stops the stream as Twilio does."""
        api = (self.outbound.twilio_api_url or self.options.url).rstrip("/")
        url = api + API.format(account=self.outbound.account_sid) + f"/{self.call.call_sid}.json"
        auth = _api_auth(self.options, self.outbound)
        async with httpx.AsyncClient(timeout=WATCH_WAIT_S + 5.0) as client:
            while self.call.is_open:
                try:
                    response = await client.get(url, params={"Wait": str(WATCH_WAIT_S)}, auth=auth)
                except httpx.HTTPError as exc:
                    self.caller.t.add("watch", f"cannot watch the call through the fake REST API: {exc}")
                    return
                if response.status_code != 200:
                    self.caller.t.add("watch", f"the fake REST API answers HTTP {response.status_code}")
                    return
                if response.json().get("status") == "completed":
                    break
        if not self.call.is_open:
            return
        now = time.monotonic()
        self.played_at_hang_up = self.call.played_ms
        result = self.caller.result
        result.hung_up_via_api = True
        result.hangup_ms = self.caller.t.ms(now)
        self.caller.t.add(
            "hang-up",
            "the relay hung up: Twilio's REST API completed the call (Status=completed); "
            "Twilio stops the stream",
            at=now,
        )
        self.hung_up.set()
        await self.call.stop()


async def answering_machine(caller: Caller, callee: Callee, machine: tuple[Utterance, Utterance]) -> None:
    """The voicemail callee: its greeting, its beep, the AMD report `machine_end_beep` (when machine
    detection is on), then it records the agent's message until the relay hangs up."""
    t, call, result = caller.t, caller.call, caller.result
    result.voicemail = True
    answered_at = call.started_at or time.monotonic()
    beep_end: float | None = None
    for utterance, what in zip(machine, ("greeting", "beep"), strict=True):
        speech = caller.voice.say(utterance)
        await speech.started.wait()
        if speech.started_at is None:
            return
        label = utterance.label if what == "greeting" else f"{BEEP_HZ / 1000:g} kHz tone"
        t.add("machine", f"{what}: {label} ({utterance.duration_ms / 1000:.1f} s)", at=speech.started_at)
        await speech.done.wait()
        beep_end = speech.ended_at
    if beep_end is None or not call.is_open:
        return
    beep_end += 0.02  # its last frame's end
    if callee.outbound.machine_detection:
        await callee.report_amd("machine_end_beep", round((beep_end - answered_at) * 1000))
    else:
        t.add("amd", "no report: machine detection is off for this call (the agent is not told)")
    first = await caller.first_audio_after(
        beep_end, caller.o.answer_timeout, "waiting for the agent's message"
    )
    if first is None:
        if call.is_open:
            t.add("agent", f"no message within {caller.o.answer_timeout:g} s after the beep")
        return
    played_before = call.played_ms
    t.add("agent", f"message: first audio {(first - beep_end) * 1000:.0f} ms after the beep", at=first)
    await caller.agent_finished()
    if call.is_open:
        try:
            await asyncio.wait_for(callee.hung_up.wait(), HANG_UP_GRACE_S)
        except TimeoutError:
            t.add("machine", f"the relay did not hang up within {HANG_UP_GRACE_S:g} s after the message")
    played = callee.played_at_hang_up if callee.played_at_hang_up is not None else call.played_ms
    result.message_ms = max(0.0, played - played_before)
    t.add("machine", f"recorded {result.message_ms / 1000:.1f} s of agent audio after the beep (the message)")
