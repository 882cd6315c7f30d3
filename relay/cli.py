"""`relay` command line: serve (more commands: call, doctor, demo)."""

from __future__ import annotations

import argparse
import logging
import sys

from relay.errors import ConfigError

log = logging.getLogger("relay.cli")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from relay.app import UVICORN_OPTIONS, create_app
    from relay.config import load_settings
    from relay.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    host = args.host or settings.host
    port = args.port or settings.port
    log.info("relay listening on http://%s:%d (public URL: %s)", host, port, settings.public_url or "not set")
    uvicorn.run(
        app, host=host, port=port, log_config=None, log_level=settings.log_level.lower(), **UVICORN_OPTIONS
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Twilio ⇄ speech-AI relay")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        sys.stderr.write(f"relay: {exc}\n")
        return 2
