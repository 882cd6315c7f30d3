"""The HTTP edge before authentication, over real sockets: request heads bounded in time and size,
webhook bodies bounded in size, fields and time, X-Forwarded-* believed only from trusted peers."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import httptools
import httpx
import orjson
import pytest
import uvicorn
from twilio.request_validator import RequestValidator

from relay.app import create_app
from relay.cli import main
from relay.errors import ConfigError
from relay.logs import JsonFormatter, TextFormatter
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.transport.http import HTTPTOOLS_CHECKED, UVICORN_CHECKED
from tests.conftest import AUTH_TOKEN, make_settings
from tests.edge_clients import (
    exchange,
    open_raw,
    proc_status_kb,
    read_answer,
    reset_peak_rss,
    status_of,
    stream_until_answered,
)

FORM = {
    "CallSid": "CA" + "3" * 32,
    "AccountSid": "AC" + "0" * 32,
    "From": "+15550001111",
    "To": "+15550002222",
}
FORM_TYPE = "application/x-www-form-urlencoded"


def test_uvicorn_and_httptools_are_the_versions_the_edge_was_checked_against() -> None:
    """relay/transport/http.py extends uvicorn's HttpToolsProtocol (its parser callbacks,
    data_received, on_response_complete, cycle.more_body) and uses ProxyHeadersMiddleware's
    trusted_hosts. On an upgrade: read those again in the new version, rerun this file, then bump."""
    assert uvicorn.__version__ == UVICORN_CHECKED, (
        f"uvicorn {uvicorn.__version__} is not {UVICORN_CHECKED}: re-check relay/transport/http.py"
    )
    assert httptools.__version__ == HTTPTOOLS_CHECKED, (
        f"httptools {httptools.__version__} is not {HTTPTOOLS_CHECKED}: re-check relay/transport/http.py"
    )


def head(path: str, *extra: bytes, method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: relay.example.com\r\n" % (method, path.encode()) + b"".join(extra)


# --- request heads ---------------------------------------------------------------------------


async def test_a_header_past_the_cap_is_refused_431_having_read_no_more() -> None:
    app = create_app(make_settings(http_max_header_bytes=4096))
    async with serve_app(app) as url:
        small = await exchange(
            url, head("/health", b"X-Pad: " + b"a" * 3000 + b"\r\n", b"Connection: close\r\n\r\n")
        )
        big = await exchange(url, head("/health", b"X-Pad: " + b"a" * 256 * 1024 + b"\r\n\r\n"))
        # in pieces, as a client trickling a header of 8 MB would: refused once past the cap
        reader, writer = await open_raw(url)
        writer.write(head("/health", b"X-Pad: "))
        for _ in range(8):
            writer.write(b"b" * 1024)
            await writer.drain()
        trickled = await read_answer(reader)
        writer.close()
    assert status_of(small) == 200
    assert status_of(big) == 431 and big.endswith(b"Request Header Fields Too Large")
    assert status_of(trickled) == 431


async def test_a_slow_head_is_answered_408_and_closed_at_the_deadline() -> None:
    app = create_app(make_settings(http_header_timeout=0.5))
    async with serve_app(app) as url:
        reader, writer = await open_raw(url)
        t0 = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
        answer = await read_answer(reader, timeout=5)
        waited = time.monotonic() - t0
        writer.close()
        # a connection that sends nothing at all is closed silently at the same deadline
        reader, writer = await open_raw(url)
        silent = await read_answer(reader, timeout=5)
        writer.close()
    assert status_of(answer) == 408 and 0.4 < waited < 2.0, (answer, waited)
    assert silent == b""


async def test_a_kept_alive_connections_next_head_has_its_own_deadline() -> None:
    app = create_app(make_settings(http_header_timeout=0.5))
    async with serve_app(app) as url:
        reader, writer = await open_raw(url)
        writer.write(head("/health", b"\r\n"))
        first = await reader.readuntil(b'{"status":"ok"}')
        await asyncio.sleep(0.3)  # the client's pause: shorter than keep-alive, the deadline restarts
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        second = await read_answer(reader, timeout=5)
        writer.close()
    assert status_of(first) == 200 and status_of(second) == 408


async def test_a_response_before_the_body_ends_closes_the_connection() -> None:
    """A slow body cannot pin a connection after its answer (here /health, which reads no body)."""
    async with serve_app(create_app(make_settings())) as url:
        reader, writer = await open_raw(url)
        writer.write(head("/health", b"Content-Length: 1000000\r\n\r\n", method=b"POST") + b"x" * 10)
        answer = await read_answer(reader, timeout=5)
        writer.close()
    assert status_of(answer) == 405  # answered, then closed rather than read to the end


# --- webhook bodies --------------------------------------------------------------------------


async def test_an_unsigned_40_mb_body_is_refused_413_without_the_memory_growing() -> None:
    async with serve_app(create_app(make_settings())) as url:
        request = head("/incoming-call", f"Content-Type: {FORM_TYPE}\r\n".encode(), method=b"POST")
        chunk = b"From=" + b"9" * (64 * 1024 - 5)
        reset_peak_rss()
        rss_before = proc_status_kb("VmRSS")
        answer, sent = await stream_until_answered(
            url, request + b"Transfer-Encoding: chunked\r\n\r\n", chunk, 40 * 1024 * 1024
        )
        peak_growth_mb = (proc_status_kb("VmHWM") - rss_before) / 1024
        # announced up front: refused on the Content-Length alone, nothing read
        announced = await exchange(url, request + b"Content-Length: 41943040\r\n\r\n" + b"From=1", timeout=5)
    assert status_of(answer) == 413, answer[:200]
    assert sent < 40 * 1024 * 1024, "the relay read the whole body before answering"
    assert peak_growth_mb < 8, f"peak RSS grew by {peak_growth_mb:.1f} MB for a 40 MB body"
    assert status_of(announced) == 413


def body_request(body: bytes, *, content_type: str = FORM_TYPE, extra: bytes = b"") -> bytes:
    return (
        head("/incoming-call", method=b"POST")
        + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def test_webhook_bodies_that_are_not_small_forms_are_refused_before_the_signature(caplog) -> None:
    async with serve_app(create_app(make_settings(webhook_body_timeout=0.5))) as url:
        too_many = await exchange(url, body_request(b"&".join(b"f%d=1" % i for i in range(300))))
        bad_utf8 = await exchange(url, body_request(b"From=%ff%fe"))
        not_a_form = await exchange(url, body_request(b"CallSid=x", content_type="text/plain"))
        bad_length = await exchange(
            url,
            head("/incoming-call", method=b"POST")
            + b"Content-Type: "
            + FORM_TYPE.encode()
            + b"\r\nContent-Length: 10\r\n\r\nFrom=1",
        )
    assert status_of(too_many) == 413 and b"200 fields" in too_many
    assert status_of(bad_utf8) == 400
    assert status_of(not_a_form) == 415
    assert status_of(bad_length) == 408  # 10 bytes announced, 6 sent: the deadline, not a hang
    assert "invalid X-Twilio-Signature" not in caplog.text  # nothing got as far as the signature


def signed(url: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, form)}


async def test_signed_but_malformed_sids_are_refused_400_and_never_stored() -> None:
    app = create_app(make_settings())
    bad = {**FORM, "CallSid": "CA123\n12:00:00.000 INFO [CAfake] forged line"}
    bad_account = {**FORM, "AccountSid": "ACnot-hex"}
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        r1 = await client.post(
            "/incoming-call", data=bad, headers=signed("https://relay.example.com/incoming-call", bad)
        )
        r2 = await client.post(
            "/incoming-call",
            data=bad_account,
            headers=signed("https://relay.example.com/incoming-call", bad_account),
        )
        status = {**FORM, "CallStatus": "completed\nforged"}
        r3 = await client.post(
            "/call-status", data=status, headers=signed("https://relay.example.com/call-status", status)
        )
    assert r1.status_code == 400 and "'CA'" in r1.text
    assert r2.status_code == 400
    assert r3.status_code == 400
    assert await app.state.store.get(bad["CallSid"]) is None
    assert await app.state.store.get(FORM["CallSid"]) is None


# --- forwarded headers -----------------------------------------------------------------------


async def test_forwarded_host_from_an_untrusted_peer_cannot_replay_another_hosts_signature() -> None:
    """Twilio signed a request for another app's URL (same account, same token); replayed here with
    X-Forwarded-Host naming that app, from a peer not in FORWARDED_ALLOW_IPS: 403."""
    app = create_app(make_settings(public_url="", forwarded_allow_ips="127.0.0.1"))
    headers = signed("https://other-app.example.com/incoming-call", FORM)
    headers.update({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "other-app.example.com"})
    async with serve_app(app) as url:
        untrusted = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=url, transport=untrusted) as client:
            replayed = await client.post("/incoming-call", data=FORM, headers=headers)
        async with httpx.AsyncClient(base_url=url) as client:  # from 127.0.0.1, the trusted proxy
            proxied = await client.post("/incoming-call", data=FORM, headers=headers)
    assert replayed.status_code == 403
    assert proxied.status_code == 200 and 'url="wss://other-app.example.com/media-stream"' in proxied.text


async def test_forwarded_allow_ips_takes_networks_and_public_url_wins_over_any_proxy() -> None:
    headers = signed("https://proxy-host.example.com/incoming-call", FORM)
    headers.update({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "proxy-host.example.com"})
    peer = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with (
        serve_app(
            create_app(make_settings(public_url="", forwarded_allow_ips="10.0.0.0/8, 127.0.0.0/24"))
        ) as url,
        httpx.AsyncClient(base_url=url, transport=peer) as client,
    ):
        via_network = await client.post("/incoming-call", data=FORM, headers=headers)
    # with PUBLIC_URL, it alone is the URL Twilio signed: a trusted proxy's X-Forwarded-Host changes nothing
    app = create_app(make_settings(forwarded_allow_ips="*"))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        with_public_url = await client.post("/incoming-call", data=FORM, headers=headers)
    assert via_network.status_code == 200
    assert with_public_url.status_code == 403


@pytest.mark.parametrize("value", ["localhost", "10.0.0.0/33", "127.0.0.1,,nonsense"])
def test_forwarded_allow_ips_must_be_addresses_or_networks(value: str) -> None:
    with pytest.raises(ConfigError, match="FORWARDED_ALLOW_IPS"):
        make_settings(forwarded_allow_ips=value)


def test_the_connection_limit_is_sized_above_the_call_limit() -> None:
    assert make_settings(max_concurrent_calls=100).connection_limit == 700
    assert make_settings(http_max_connections=50).connection_limit == 50


# --- what a request can put in a log line ----------------------------------------------------


async def test_request_fields_never_forge_or_flood_a_text_log_line(caplog) -> None:
    app = create_app(make_settings(relay_admin_token="admin"))
    forged = "CA1\n12:00:00.000 INFO    [CAx] relay.webhooks: forged\x1b[2J"
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        unsigned = await client.post("/incoming-call", data={**FORM, "CallSid": forged})
        huge = await client.post("/incoming-call", data={**FORM, "CallSid": "CA" + "f" * 60000})
        refused = await client.get("/calls/CA1%0Aforged%1B", headers={"Authorization": "Bearer wrong"})
        admin = await client.get("/calls/CA1%0Aforged", headers={"Authorization": "Bearer admin"})
    assert (unsigned.status_code, huge.status_code, refused.status_code, admin.status_code) == (
        403,
        403,
        401,
        400,
    )
    relay_records = [r for r in caplog.records if r.name.startswith(("relay", "uvicorn"))]  # not httpx's
    lines = [TextFormatter().format(record) for record in relay_records]
    assert not any("forged" in line or "f" * 100 in line for line in lines)  # not a SID: never logged
    assert all("\n" not in line and len(line) < 1000 for line in lines), lines


def test_the_text_format_escapes_control_characters_and_bounds_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "relay.x", "levelname": "WARNING", "msg": "from %s", "args": ("+1555\r\n\x1b[31mFAKE",)}
    )
    record.caller = "a\nb" + "z" * 5000
    try:
        raise ValueError("boom\n00:00:00.000 INFO    [-] relay.app: forged")
    except ValueError:
        record.exc_info = sys.exc_info()
    text = TextFormatter().format(record)
    first, *traceback = text.split("\n")
    assert "from +1555\\r\\n\\x1b[31mFAKE" in first and "caller=a\\nb" in first
    assert "…[4503 more chars]" in first and len(first) < 1000
    assert traceback and all(line.startswith("    ") for line in traceback)  # nothing looks like a line
    doc = orjson.loads(JsonFormatter().format(record))  # JSON escapes by itself; it is bounded too
    assert doc["msg"] == "from +1555\r\n\x1b[31mFAKE" and len(doc["caller"]) < 600


# --- the local flow without PUBLIC_URL -------------------------------------------------------


async def test_relay_call_works_against_a_relay_without_public_url(monkeypatch, tmp_path, capsys) -> None:
    """README's flow: `make run` with PUBLIC_URL empty and TWILIO_AUTH_TOKEN set, then `relay call`.
    The relay advertises ws:// (it was reached over plain http, no proxy), the caller signs that, the
    relay checks that: the call connects and the greeting is heard."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.delenv("PUBLIC_URL", raising=False)
    async with FakeRealtimeServer(responses=[Say("Hello from the relay.", audio_ms=600)]) as rt:
        settings = make_settings(public_url="", relay_mode="realtime", openai_base_url=rt.openai_base_url)
        async with serve_app(create_app(settings)) as url:
            code = await asyncio.to_thread(main, ["call", "--url", url, "--say", "Hi"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    host = url.removeprefix("http://")
    assert f'<Connect><Stream url="ws://{host}/media-stream">' in printed, printed
    assert "first audio (greeting)" in printed and "result           OK" in printed


async def test_pipelined_requests_past_the_cap_in_one_write_are_all_served() -> None:
    """The cap is per request head, not per read: 60 pipelined requests of 1 KB heads in one write."""
    app = create_app(make_settings(http_max_header_bytes=4096))
    request = head("/health", b"X-Pad: " + b"p" * 1000 + b"\r\n\r\n")
    async with serve_app(app) as url:
        reader, writer = await open_raw(url)
        writer.write(request * 59 + head("/health", b"Connection: close\r\n\r\n"))
        answer = await read_answer(reader)
        writer.close()
    assert answer.count(b"HTTP/1.1 200 OK") == 60 and b"HTTP/1.1 431" not in answer


async def test_upgrades_with_8_mb_headers_are_refused_and_leave_no_memory_behind() -> None:
    async with serve_app(create_app(make_settings())) as url:
        upgrade = (
            b"GET /media-stream HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Big: "
        )
        reset_peak_rss()
        rss_before = proc_status_kb("VmRSS")
        answers = []
        for _ in range(20):
            answer, _ = await stream_until_answered(
                url, upgrade, b"b" * 65536, 8 * 1024 * 1024, chunked=False
            )
            answers.append(status_of(answer))
        growth_mb = (proc_status_kb("VmHWM") - rss_before) / 1024
    assert answers == [431] * 20
    assert growth_mb < 8, f"peak RSS grew by {growth_mb:.1f} MB"
