"""`relay call`: a simulated Twilio phone call against a running relay, as a command.

It is the fake Twilio of `relay.testing.twilio` driven by a small script: fetch the TwiML from
`/incoming-call` (signed like Twilio), open the Media Stream, listen to the greeting, say each
utterance (espeak-ng speech or a WAV file) in real time and wait for the agent's answer to play,
then hang up. Between utterances the caller sends silence, as a real Twilio stream does. Key
presses (`dtmf` events) are script items too; as the callee of an outbound call, it first asks the
relay to place the call (`CallOptions.outbound`).

What it measures, on one clock (ms from the moment the call started, i.e. the webhook POST):

* connected: the Media Stream is open;
* greeting: the first agent audio;
* per turn: the caller's end of speech → the first agent audio after it;
* barge-ins: every Twilio `clear` the relay sent, how soon after the caller started speaking,
  and how much queued agent audio it dropped;
* the hang-up: who closed the stream, with which code.

`run_call` is the core: an async function returning a `CallResult` (tests and `relay demo` call it
directly). The timeline is printed line by line as things happen, so long calls show progress.
This is a development tool, not part of the server: it may use `relay.testing`.

Where things are: `script` (utterances and key presses, options), `voice` (the caller's 20 ms
frames), `caller` (the call and `run_call`), `outbound` (the callee of a call the relay places:
placing it, the AMD report, the answering machine, the relay's REST hang-up), `results` (timeline,
turns, summary), `explain` (why the relay refused a call), `recording` (both sides as a stereo
WAV), `command` (`relay call`'s output).
"""

from relay.simulate.caller import run_call
from relay.simulate.command import call_command, fetch_record, print_line, record_lines
from relay.simulate.explain import explain_close, explain_refusal
from relay.simulate.recording import write_conversation_wav
from relay.simulate.results import BargeIn, CallResult, Timeline, TimelineEntry, Turn
from relay.simulate.script import DEFAULT_URL, CallOptions, Utterance, build_utterances

__all__ = [
    "DEFAULT_URL",
    "BargeIn",
    "CallOptions",
    "CallResult",
    "Timeline",
    "TimelineEntry",
    "Turn",
    "Utterance",
    "build_utterances",
    "call_command",
    "explain_close",
    "explain_refusal",
    "fetch_record",
    "print_line",
    "record_lines",
    "run_call",
    "write_conversation_wav",
]
