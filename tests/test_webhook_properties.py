"""Property-based tests of the webhooks' form handling over a real socket: arbitrary bodies,
headers and framings never get a 5xx, and never make the relay read past its cap.

The relay runs under uvicorn in a thread of its own (one server for all examples); each example
is a raw HTTP/1.1 request written byte for byte on a new connection.
"""

from __future__ import annotations

import asyncio
import socket
import string
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from relay.app import create_app
from relay.sids import is_account_sid, is_call_sid
from relay.testing.server import serve_app
from tests.conftest import AUTH_TOKEN, make_settings
from tests.edge_clients import host_port, proc_status_kb, reset_peak_rss, status_of, stream_until_answered
from webhooks.form import MAX_BODY_BYTES

BODY_TIMEOUT_S = 0.2


@pytest.fixture(scope="module")
def relay() -> Iterator[dict[str, Any]]:
    """A relay served from a thread's event loop for the whole module: `url`, `app`."""
    served: dict[str, Any] = {}
    ready = threading.Event()

    async def serve() -> None:
        stop = asyncio.Event()
        served["stop"] = (asyncio.get_running_loop(), stop)
        app = create_app(make_settings(webhook_body_timeout=BODY_TIMEOUT_S))
        async with serve_app(app) as url:
            served.update(url=url, app=app)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(20), "the relay did not start"
    yield served
    loop, stop = served["stop"]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def send(url: str, request: bytes, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
    """Writes `request`, then reads everything until the relay closes."""
    with socket.create_connection(host_port(url), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except ConnectionError:
            pass  # refused mid-write: the answer, if any, is still readable
        answer = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionError:
                break
            if not chunk:
                break
            answer += chunk
        return bytes(answer)


token_chars = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
header_names = st.text(alphabet=token_chars, min_size=1, max_size=20).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "connection", "host", "expect")
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
form_like = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=12).map(
    lambda pairs: urlencode(pairs).encode()
)
bodies = form_like | st.binary(max_size=600) | st.text(alphabet="%&=+;a1Z\x00é", max_size=200).map(str.encode)
framings = st.sampled_from(["length", "length", "length", "chunked", "none", "short", "garbage-length"])
content_types = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "text/plain",
        None,
    ]
)


def build_request(
    path: str, body: bytes, framing: str, content_type: str | None, headers: list[tuple[str, str]]
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: relay.example.com", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{name}: {value}" for name, value in headers]
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
    elif framing == "short":  # announces more than it sends: the body deadline answers
        lines.append(f"Content-Length: {len(body) + 10}")
    elif framing == "garbage-length":
        lines.append("Content-Length: 12abc")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
    return head + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/incoming-call", "/call-status"]),
    body=bodies,
    framing=framings,
    content_type=content_types,
    headers=st.lists(st.tuples(header_names, header_values), max_size=6),
    signature=st.none() | st.text(alphabet=string.ascii_letters + "+/=", max_size=40),
)
def test_any_webhook_request_is_answered_below_500(
    relay, path, body, framing, content_type, headers, signature
) -> None:
    if signature is not None:
        headers = [*headers, ("X-Twilio-Signature", signature)]
    answer = send(relay["url"], build_request(path, body, framing, content_type, headers))
    status = status_of(answer)
    assert status is not None and 400 <= status < 500, answer[:300]  # unsigned: refused, never served


form_values = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)
sids = st.sampled_from(
    ["CA" + "a" * 32, "CA" + "0123456789ABCDEF" * 2, "CA123", "", "AC" + "1" * 32]
) | st.text(max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    call_sid=sids,
    account_sid=st.none() | sids,
    extra=st.dictionaries(
        st.sampled_from(["From", "To", "CallStatus", "Junk", "Digits", ""]), form_values, max_size=4
    ),
)
def test_any_signed_form_is_served_or_refused_400(relay, call_sid, account_sid, extra) -> None:
    form = {**extra, "CallSid": call_sid}
    if account_sid is not None:
        form["AccountSid"] = account_sid
    body = urlencode(form).encode()
    sig = RequestValidator(AUTH_TOKEN).compute_signature("https://relay.example.com/incoming-call", form)
    request = build_request(
        "/incoming-call", body, "length", "application/x-www-form-urlencoded", [("X-Twilio-Signature", sig)]
    )
    answer = send(relay["url"], request)
    good = is_call_sid(call_sid) and (account_sid is None or is_account_sid(account_sid))
    assert status_of(answer) == (200 if good else 400), answer[:300]
    if good:  # what the TwiML echoes is bounded
        assert b"<Connect><Stream" in answer and len(answer) < 2000


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(MAX_BODY_BYTES + 1, 32 * 1024 * 1024), announced=st.booleans())
def test_bodies_past_the_cap_are_refused_without_being_read(relay, size, announced) -> None:
    head = (
        b"POST /incoming-call HTTP/1.1\r\nHost: relay.example.com\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
    )
    if announced:  # refused on Content-Length alone: nothing of the body is sent
        answer = send(relay["url"], head + b"Content-Length: %d\r\n\r\n" % size)
        assert status_of(answer) == 413
        return
    reset_peak_rss()
    rss_before = proc_status_kb("VmRSS")
    answer, _ = asyncio.run(
        stream_until_answered(relay["url"], head + b"Transfer-Encoding: chunked\r\n\r\n", b"a" * 32768, size)
    )
    assert status_of(answer) == 413, answer[:200]
    # what the relay holds is bounded whatever the size (64 KB read; after the answer, 1 MB dropped
    # unparsed, then no more read); the relay runs in this process, so this is its peak
    assert proc_status_kb("VmHWM") - rss_before < 8 * 1024
