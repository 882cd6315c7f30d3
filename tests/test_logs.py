"""relay.logs: JSON lines and text lines carrying the call, secrets masked, idempotent set-up."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from relay.config import load_settings
from relay.logs import bind_call, configure_logging

CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "2" * 32
SECRET = "sk-live-DO-NOT-LOG-0123456789"
NOISY = ("websockets", "httpx", "httpx2", "uvicorn.access", "azure")

log = logging.getLogger("relay.test_logs")


def relay_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_relay_handler", False)]


class Capture:
    """Runs configure_logging with sys.stderr pointing at a buffer: its handler binds sys.stderr when
    configured. (Patched inside the test body: pytest re-points sys.stderr between test phases.)"""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stream = io.StringIO()
        self._monkeypatch = monkeypatch

    def configure(self, fmt: str, level: str = "INFO") -> None:
        with self._monkeypatch.context() as patch:
            patch.setattr(sys, "stderr", self.stream)
            configure_logging(fmt, level)

    def getvalue(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    """A Capture; the root logger's handlers and the levels configure_logging changes are restored
    afterwards, so other tests are unaffected."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy_levels = {name: logging.getLogger(name).level for name in NOISY}
    try:
        yield Capture(monkeypatch)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        for name, noisy_level in noisy_levels.items():
            logging.getLogger(name).setLevel(noisy_level)


def json_lines(stream: Capture) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    docs = [orjson.loads(line) for line in lines]
    assert all(isinstance(doc, dict) for doc in docs)
    return docs


def test_json_lines_carry_the_call_and_extras(stderr: Capture) -> None:
    stderr.configure("json")
    with bind_call(CALL_SID, STREAM_SID):
        log.info("provider connected in %d ms", 240, extra={"provider": "azure", "attempt": 2})
    log.warning("outside any call")

    inside, outside = json_lines(stderr)
    assert inside["level"] == "info" and inside["logger"] == "relay.test_logs"
    assert inside["msg"] == "provider connected in 240 ms"
    assert inside["call_sid"] == CALL_SID and inside["stream_sid"] == STREAM_SID
    assert inside["provider"] == "azure" and inside["attempt"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", inside["ts"])
    assert outside["level"] == "warning" and outside["call_sid"] == "-" and outside["stream_sid"] == "-"
    assert "provider" not in outside


def test_json_each_line_is_one_object_even_with_newlines_and_tracebacks(stderr: Capture) -> None:
    stderr.configure("json")
    with bind_call(CALL_SID):
        log.info(
            'two\nlines and a "quote"', extra={"payload": {"nested": [1, 2]}, "when": datetime(2025, 1, 1)}
        )
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("tool failed")

    plain, failed = json_lines(stderr)  # exactly two lines: nothing leaked onto lines of its own
    assert plain["msg"] == 'two\nlines and a "quote"'
    assert plain["payload"] == {"nested": [1, 2]} and plain["when"].startswith("2025-01-01")
    assert failed["level"] == "error" and failed["call_sid"] == CALL_SID
    assert "ValueError: boom" in failed["exc"] and "Traceback" in failed["exc"]


async def test_call_context_follows_tasks_started_in_it(stderr: Capture) -> None:
    stderr.configure("json")

    async def work() -> None:
        await asyncio.sleep(0)
        log.info("from a task")

    with bind_call(CALL_SID, STREAM_SID):
        task = asyncio.create_task(work())
    await task
    (doc,) = json_lines(stderr)
    assert doc["call_sid"] == CALL_SID and doc["stream_sid"] == STREAM_SID


def test_text_lines_carry_the_call_sid(stderr: Capture) -> None:
    stderr.configure("text")
    with bind_call(CALL_SID, STREAM_SID):
        log.info("caller pressed %s", "5", extra={"digit": "5"})
    log.info("no call")

    inside, outside = stderr.getvalue().splitlines()
    assert f"[{CALL_SID}]" in inside and "INFO" in inside
    assert inside.endswith("relay.test_logs: caller pressed 5 digit=5")
    assert "[-] relay.test_logs: no call" in outside


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_secrets_are_masked(stderr: Capture, fmt: str) -> None:
    settings = load_settings(
        _env_file=None, openai_api_key=SECRET, twilio_auth_token=SECRET, relay_admin_token=SECRET
    )
    stderr.configure(fmt)
    assert settings.openai_api_key is not None
    log.info("using key %s", settings.openai_api_key)
    log.info("settings: %r", settings)
    log.info("settings: %s", settings)
    log.info("connecting", extra={"api_key": settings.openai_api_key})

    out = stderr.getvalue()
    assert SECRET not in out and "DO-NOT-LOG" not in out
    assert len(out.splitlines()) == 4
    assert "using key **********" in out
    assert out.count("**********") >= 4


def test_configure_twice_keeps_one_handler_and_the_last_format(
    stderr: Capture, caplog: pytest.LogCaptureFixture
) -> None:
    stderr.configure("text")
    stderr.configure("json", "WARNING")
    assert len(relay_handlers()) == 1
    assert caplog.handler in logging.getLogger().handlers  # handlers that are not ours are kept

    log.info("below the level")
    log.warning("once")
    (doc,) = json_lines(stderr)
    assert doc["msg"] == "once"
    assert logging.getLogger("httpx").level == logging.WARNING


def test_json_timestamp_is_utc_whatever_the_local_zone(stderr: Capture) -> None:
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "ABC-3"  # POSIX: three hours east of UTC, no tz database needed
    time.tzset()
    try:
        stderr.configure("json")
        log.info("stamped")
    finally:
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    (doc,) = json_lines(stderr)
    stamped = datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamped).total_seconds()) < 60


def test_uvicorn_color_message_extra_is_not_repeated(stderr: Capture) -> None:
    stderr.configure("text")
    logging.getLogger("tests.colors").warning(
        "Started server process [%d]", 1, extra={"color_message": "\x1b[36m%d"}
    )
    assert "color_message" not in stderr.getvalue() and "Started server process [1]" in stderr.getvalue()
