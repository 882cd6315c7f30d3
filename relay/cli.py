"""`relay` command line: serve, call (a simulated Twilio caller), dial (an outbound call through a
running relay), doctor (configuration checks), demo.

Only `serve` runs the relay for real; `call`, `demo` and `serve --fakes` use the local fakes of
`relay.testing`, imported lazily so `relay serve` (without --fakes) never loads them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relay.errors import ConfigError

log = logging.getLogger("relay.cli")


def _serve(args: argparse.Namespace) -> int:
    if args.fakes:  # the only serve path that loads relay.testing
        from relay.fakes import serve_with_fakes

        return serve_with_fakes(host=args.host, port=args.port)
    from relay.agents import AgentsHolder
    from relay.app import create_app
    from relay.config import load_settings
    from relay.logs import configure_logging
    from relay.server import serve

    settings = load_settings()
    agents = AgentsHolder(settings)  # an invalid AGENTS_FILE stops here: every problem, exit 2
    configure_logging(settings.log_format, settings.log_level)
    if settings.agents_file:
        log.info("agents from %s: %s", settings.agents_file, ", ".join(agents.book.names))
    app = create_app(settings, agents=agents)  # app.state.agents: what SIGHUP reloads (relay/server.py)
    host = args.host or settings.host
    port = args.port or settings.port
    log.info("relay listening on http://%s:%d (public URL: %s)", host, port, settings.public_url or "not set")
    serve(app, host=host, port=port, log_level=settings.log_level.lower(), grace=settings.drain_timeout)
    return 0


@contextlib.contextmanager
def _command_logging(verbose: bool) -> Iterator[None]:
    """Log lines on stderr (warnings only unless `verbose`) while a command runs, so its own
    output on stdout stays readable; the logging set-up is restored afterwards."""
    from relay.logs import TextFormatter, install_context_filter

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    install_context_filter(handler)
    level = root.level
    root.addHandler(handler)
    if verbose:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _call(args: argparse.Namespace) -> int:
    from relay.config import load_settings
    from relay.phone_numbers import is_e164
    from relay.simulate.command import call_command
    from relay.simulate.script import CallOptions, build_utterances

    settings = load_settings()
    try:
        utterances = build_utterances(args.script)
        outbound = _outbound_call(args, settings)
        if args.to is not None and not is_e164(args.to):
            raise ValueError(f"--to {args.to!r}: an E.164 number, such as +15551234567")
    except (ValueError, RuntimeError, OSError) as exc:
        sys.stderr.write(f"relay call: {exc}\n")
        return 2
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
    options = CallOptions(
        url=args.url.rstrip("/"),
        public_url=(args.public_url or settings.public_url or args.url).rstrip("/"),
        auth_token=token,
        utterances=utterances,
        out=args.out,
        record=args.record,
        timeout=args.timeout,
        admin_token=settings.relay_admin_token.get_secret_value() if settings.relay_admin_token else None,
        outbound=outbound,
        to=args.to,
    )
    with _command_logging(args.verbose):
        return asyncio.run(call_command(options))


def _context(pairs: Sequence[str]) -> dict[str, str]:
    """`--context name=value` pairs as a dict (ValueError naming the bad one)."""
    context: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--context takes name=value, not {pair!r}")
        context[name] = value
    return context


def _outbound_call(args: argparse.Namespace, settings: Any) -> Any:
    """`relay call --outbound`'s call (None without --outbound); ValueError for options that need
    it, or settings it cannot do without. From and AccountSid default to `relay serve --fakes`'s."""
    if args.outbound is None:
        if args.voicemail or args.context or args.machine_detection is not None or args.agent:
            raise ValueError(
                "--voicemail, --context, --machine-detection and --agent go with --outbound NUMBER"
            )
        return None
    if args.to is not None:
        raise ValueError("--to is an inbound call's number; an outbound call's is --outbound NUMBER")
    from relay.fakes import FAKE_ACCOUNT_SID, FAKE_PHONE_NUMBER
    from relay.simulate.script import OutboundCall

    if settings.relay_admin_token is None:
        raise ValueError("--outbound: set RELAY_ADMIN_TOKEN (the relay's): POST /calls needs it")
    if settings.twilio_auth_token is None:
        raise ValueError(
            "--outbound: set TWILIO_AUTH_TOKEN (the relay's): the relay hangs up through Twilio's API "
            "with it, and the callee's requests are signed with it"
        )
    detection = args.machine_detection
    return OutboundCall(
        to=args.outbound,
        context=_context(args.context),
        machine_detection=settings.outbound_machine_detection if detection is None else detection == "on",
        voicemail=args.voicemail,
        agent=args.agent,
        account_sid=settings.twilio_account_sid or FAKE_ACCOUNT_SID,
        from_=settings.twilio_phone_number or FAKE_PHONE_NUMBER,
    )


def _dial(args: argparse.Namespace) -> int:
    """`POST /calls` to a running relay; prints the new call's SID."""
    import httpx

    try:
        context = _context(args.context)
    except ValueError as exc:
        sys.stderr.write(f"relay dial: {exc}\n")
        return 2
    token = args.token
    if token is None:
        from relay.config import load_settings

        secret = load_settings().relay_admin_token
        token = secret.get_secret_value() if secret is not None else None
    if not token:
        sys.stderr.write("relay dial: set RELAY_ADMIN_TOKEN (the relay's) or pass --token\n")
        return 2
    body: dict[str, object] = {"to": args.number, "context": context}
    if args.agent:
        body["agent"] = args.agent
    if args.machine_detection is not None:
        body["machine_detection"] = args.machine_detection == "on"
    try:
        response = httpx.post(
            args.url.rstrip("/") + "/calls",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        sys.stderr.write(f"relay dial: could not reach the relay at {args.url}: {exc}\n")
        return 1
    if response.status_code == 404:
        sys.stderr.write("relay dial: the relay has no POST /calls: set RELAY_ADMIN_TOKEN on it\n")
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:200]}
    if response.status_code != 201:
        sys.stderr.write(f"relay dial: HTTP {response.status_code}: {answer.get('error', answer)}\n")
        return 1
    sys.stdout.write(f"{answer['call_sid']}\n")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from relay.doctor.command import doctor_command

    with _command_logging(args.verbose):
        return asyncio.run(doctor_command())


def _demo(args: argparse.Namespace) -> int:
    from relay.demo import DemoOptions, demo_command

    with _command_logging(args.verbose):
        try:
            return asyncio.run(demo_command(DemoOptions(out=args.out)))
        except RuntimeError as exc:  # espeak-ng missing: the caller cannot speak
            if "espeak-ng" not in str(exc):
                raise
            sys.stderr.write(f"relay demo: {exc}\n")
            return 2


class _ScriptAction(argparse.Action):
    """Appends `(kind, value)` to `script`, keeping the order of --say, --wav, --digits and --barge-in."""

    def __init__(self, *args: Any, kind: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        script = list(getattr(namespace, self.dest, None) or [])
        script.append((self.kind, str(values)))
        setattr(namespace, self.dest, script)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Twilio ⇄ speech-AI relay")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--fakes",
        action="store_true",
        help="start the local fakes (realtime model, OpenAI HTTP, Tavily, Twilio REST) in this process "
        "and point the relay at them: `relay call` works with no account; no real service is contacted",
    )
    serve.set_defaults(func=_serve)

    call = sub.add_parser(
        "call",
        help="a simulated Twilio phone call against a running relay",
        description=(
            "Calls the relay as Twilio does (signed webhook, Media Stream in real time), says each "
            "--say/--wav (or presses each --digits) in order, waiting for the agent's answer to play "
            "in between, then hangs up. With --outbound, asks the relay to place a call (POST /calls, "
            "RELAY_ADMIN_TOKEN) and is its callee: a person, or with --voicemail an answering machine. "
            "Prints a timeline with latencies; exits non-zero on a rejected webhook, a protocol "
            "error or no agent audio at all."
        ),
    )
    call.add_argument("--url", default="http://127.0.0.1:8000", help="the relay's base URL (%(default)s)")
    call.add_argument(
        "--public-url",
        default=None,
        help="the URL Twilio signs (default: PUBLIC_URL from the settings, else --url)",
    )
    call.add_argument(
        "--say",
        dest="script",
        action=_ScriptAction,
        kind="say",
        metavar="TEXT",
        default=[],
        help="say TEXT (espeak-ng); repeat for several turns",
    )
    call.add_argument(
        "--wav",
        dest="script",
        action=_ScriptAction,
        kind="wav",
        metavar="IN.wav",
        default=[],
        help="say the audio of a WAV file (16-bit PCM or μ-law, any rate); repeatable",
    )
    call.add_argument(
        "--digits",
        dest="script",
        action=_ScriptAction,
        kind="digits",
        metavar="KEYS",
        default=[],
        help="press KEYS (0-9 * # A-D; Twilio dtmf events, 120 ms apart), then wait for the answer; "
        "repeatable, in order with --say/--wav",
    )
    call.add_argument(
        "--barge-in",
        dest="script",
        action=_ScriptAction,
        kind="barge-in",
        metavar="MS",
        default=[],
        help="the NEXT --say/--wav/--digits starts MS ms after the agent starts talking, instead of "
        "waiting for it to finish (an interruption)",
    )
    call.add_argument(
        "--to",
        default=None,
        metavar="NUMBER",
        help="the number the caller dials (the call's To, E.164): with AGENTS_FILE, its agent answers",
    )
    call.add_argument(
        "--agent",
        default=None,
        metavar="NAME",
        help="with --outbound: the agent that makes the call (POST /calls's agent)",
    )
    call.add_argument(
        "--outbound",
        default=None,
        metavar="NUMBER",
        help="ask the relay to call NUMBER (POST /calls with RELAY_ADMIN_TOKEN) and be the callee; "
        "for a relay on `relay serve --fakes`",
    )
    call.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --outbound: a placeholder value of the call; repeatable",
    )
    call.add_argument(
        "--machine-detection",
        choices=["on", "off"],
        default=None,
        help="with --outbound: answering-machine detection (default: OUTBOUND_MACHINE_DETECTION)",
    )
    call.add_argument(
        "--voicemail",
        action="store_true",
        help="with --outbound: the callee is an answering machine (a greeting, a beep, then it records)",
    )
    call.add_argument("--out", type=Path, default=None, metavar="OUT.wav", help="the agent's audio as played")
    call.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="CALL.wav",
        help="both sides on the call's timeline (stereo: caller left, agent right)",
    )
    call.add_argument("--timeout", type=float, default=120.0, help="bound on the whole call, s (%(default)g)")
    call.add_argument("-v", "--verbose", action="store_true", help="log lines on stderr")
    call.set_defaults(func=_call)

    dial = sub.add_parser(
        "dial",
        help="place an outbound call through a running relay (POST /calls); prints its call SID",
        description="Asks the relay at --url to call NUMBER (E.164) with the admin token "
        "(--token, else RELAY_ADMIN_TOKEN); --context fills the placeholders of INSTRUCTIONS, "
        "GREETING and VOICEMAIL_MESSAGE.",
    )
    dial.add_argument("number", help="the number to call, E.164: +15551234567")
    dial.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a placeholder value; repeatable",
    )
    dial.add_argument(
        "--agent", default=None, metavar="NAME", help="the agent of AGENTS_FILE that makes the call"
    )
    dial.add_argument("--url", default="http://127.0.0.1:8000", help="the relay's base URL (%(default)s)")
    dial.add_argument("--token", default=None, help="the admin token (default: RELAY_ADMIN_TOKEN)")
    dial.add_argument(
        "--machine-detection",
        choices=["on", "off"],
        default=None,
        help="answering-machine detection (default: the relay's OUTBOUND_MACHINE_DETECTION)",
    )
    dial.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for the relay (%(default)g)"
    )
    dial.set_defaults(func=_dial)

    doctor = sub.add_parser(
        "doctor",
        help="check the configuration and every configured service",
        description="One line per check (OK / WARN / FAIL / SKIP) with what to fix; exit 0 when nothing "
        "FAILs.",
    )
    doctor.add_argument("-v", "--verbose", action="store_true", help="log lines on stderr")
    doctor.set_defaults(func=_doctor)

    demo = sub.add_parser(
        "demo",
        help="a whole call against local fakes, no account needed",
        description=(
            "Runs the relay with a fake realtime model and a fake web search in this process and "
            "calls it: greeting, a spoken question, a web_search tool call, an interruption. "
            "Prints the timeline and writes the call as a WAV."
        ),
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("demo.wav"),
        metavar="OUT.wav",
        help="the call, caller left / agent right (%(default)s)",
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="the relay's log lines on stderr")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:  # named, with its fix: no traceback
        if len(exc.problems) > 1:
            lines = "".join(f"  - {problem}\n" for problem in exc.problems)
            sys.stderr.write(f"relay: invalid configuration:\n{lines}")
        else:
            sys.stderr.write(f"relay: {exc}\n")
        sys.stderr.write("relay: `relay doctor` checks every setting and service.\n")
        return 2
    except BrokenPipeError:  # the reader went away (`relay call | head`): no traceback
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
