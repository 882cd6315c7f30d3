"""A real fleet on loopback (relay/testing/fleet.py): nginx running deploy/nginx/relay.conf, two
`relay serve` processes, one redis-server; the fake provider and the fake Twilio REST API here;
simulated Twilio calls through nginx, webhook then stream, as Twilio places them.

With affinity each stream returns to the instance that answered its webhook and takes the early
connection it opened. SIGTERM to one instance: its call is ended with the goodbye after
DRAIN_TIMEOUT, nginx passes new calls to the other (the draining one answers their webhook 503),
and the other instance's call loses no frame either way."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from twilio.request_validator import RequestValidator

from relay.app import create_app
from relay.testing.fleet import (
    NGINX_CONF,
    RELAY_SERVE,
    Fleet,
    ManagedProcess,
    fleet,
    render_nginx_conf,
    write_nginx_confs,
)
from relay.testing.realtime import FakeConnection, FakeRealtimeServer, Say
from relay.testing.redis_server import free_port
from relay.testing.server import serve_app
from relay.testing.twilio import FakeTwilioCall
from relay.testing.twilio_rest import FakeTwilioRest
from relay.testing.twilio_twiml import Twiml
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, make_settings
from webhooks.routes import DRAINING

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
needs_fleet = pytest.mark.skipif(
    NGINX is None or shutil.which("redis-server") is None,
    reason="nginx and redis-server are needed: run `make test` (installs them) or apt-get install them",
)
FRAME = 160
DRAIN_TIMEOUT = 2.0
CATCH_UP_S = 3.0  # longest wait for frames still in flight once a caller stops


def test_relay_conf_renders_for_the_fleet_size_and_nginx_accepts_it() -> None:
    """The substitution alone: ports rewritten, instances beyond the fleet left out; nothing else."""
    text = NGINX_CONF.read_text()
    rendered = render_nginx_conf(text, listen_port=18080, relay_ports=[19001, 19002])
    assert "listen 127.0.0.1:18080;" in rendered and "listen 80;" not in rendered
    assert (
        "server 127.0.0.1:19001 " in rendered
        and "location /i/relay-2/ { proxy_pass http://127.0.0.1:19002/; }" in rendered
    )
    assert "relay-3" not in rendered and "127.0.0.1:800" not in rendered
    changed = [line for line in text.splitlines() if line not in rendered.splitlines()]
    assert len(changed) == 3 + 3 + 1  # each instance's two lines (relay-3's left out), and `listen`
    if NGINX is None:
        pytest.skip("nginx is not installed: run `make test` (installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        main = write_nginx_confs(Path(tmp), NGINX_CONF, listen_port=18080, relay_ports=[19001, 19002, 19003])
        checked = subprocess.run(
            [NGINX, "-t", "-p", tmp, "-e", "stderr", "-c", str(main)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    assert checked.returncode == 0, checked.stderr


async def test_relay_conf_routes_strips_the_prefix_and_answers_for_a_fleet_that_is_gone() -> None:
    """nginx alone in front of instance 1 (a socket that records what reaches it) and instance 2
    (nobody listening): the affinity route strips its prefix and hands on the headers the
    signature check needs; /metrics stays inside; the voice webhook, refused by both (a 503, as
    from a draining relay, and no connection), gets the relay's own "restarting" TwiML from nginx."""
    if NGINX is None:
        pytest.skip("nginx is not installed: run `make test` (installs it)")
    heads: asyncio.Queue[bytes] = asyncio.Queue()

    async def instance_1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.put_nowait(head)
        status = b"503 Service Unavailable" if head.startswith(b"POST") else b"200 OK"  # draining
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(instance_1, "127.0.0.1", 0)
    port, gone = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        ports = [server.sockets[0].getsockname()[1], gone]
        main = write_nginx_confs(Path(tmp), NGINX_CONF, listen_port=port, relay_ports=ports)
        nginx = ManagedProcess(
            "nginx", [NGINX, "-p", tmp, "-e", "stderr", "-c", str(main)], env={}, cwd=Path(tmp)
        )
        await nginx.start("start worker process")
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                assert (await client.get("/i/relay-1/media-stream")).text == "ok"
                head = (await asyncio.wait_for(heads.get(), 5)).decode()
                metrics = [
                    (await client.get(path)).status_code for path in ("/metrics", "/i/relay-1/metrics")
                ]
                webhook = await client.post("/incoming-call", data={"CallSid": "CA" + "0" * 32})
                tried = await asyncio.wait_for(heads.get(), 5)
        finally:
            await nginx.stop()
            server.close()
    assert head.startswith("GET /media-stream HTTP/1.1\r\n")
    for header in (
        f"X-Forwarded-Host: 127.0.0.1:{port}",
        "X-Forwarded-Proto: http",
        "X-Forwarded-For: 127.0.0.1",
    ):
        assert header in head
    assert "X-Forwarded-Prefix: /i/relay-1" in head and "X-Relay-Failover: on" in head
    assert metrics == [404, 404]
    assert tried.startswith(b"POST /incoming-call HTTP/1.1\r\n")
    twiml = Twiml.parse(webhook.status_code, webhook.text, "")
    assert webhook.status_code == 200 and webhook.headers["content-type"].startswith("application/xml")
    assert twiml.say == DRAINING and twiml.hangup and twiml.stream_url is None


def test_readme_scaling_commands_are_what_the_fleet_runs() -> None:
    """The README's "Scaling on one host" block: each relay as the harness starts it, with its
    STREAM_PUBLIC_URL on the route relay.conf gives that instance, and relay.conf as the file nginx
    loads."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Scaling on one host (nginx)", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    serve = re.search(r"STREAM_PUBLIC_URL=(\S+) relay (serve .*) 800\$k", block)
    assert serve is not None, block
    assert serve.group(2).split() == list(RELAY_SERVE)
    public = urlsplit(serve.group(1).replace("$k", "2"))
    assert public.path == "/i/relay-2/media-stream" and "location /i/relay-2/ " in NGINX_CONF.read_text()
    assert "cp deploy/nginx/relay.conf /etc/nginx/conf.d/relay.conf" in block and "nginx -t" in block


@pytest.mark.parametrize(
    ("allowed", "status"), [("127.0.0.1", 503), ("10.0.0.1", 200)], ids=["trusted", "not"]
)
async def test_a_draining_relay_answers_its_webhook_503_only_to_a_trusted_balancer(
    allowed: str, status: int
) -> None:
    """`X-Relay-Failover` from a peer in FORWARDED_ALLOW_IPS: 503, for the balancer to try another
    instance; from anyone else the header changes nothing: the spoken refusal, as for Twilio."""
    app = create_app(make_settings(forwarded_allow_ips=allowed))
    assert await app.state.manager.drain(0) == 0  # no call: the instance is draining at once
    params = {
        "CallSid": "CA" + "1" * 32,
        "AccountSid": ACCOUNT_SID,
        "From": "+15550001111",
        "To": "+15550002222",
    }
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        signature = RequestValidator(AUTH_TOKEN).compute_signature(
            "https://relay.example.com/incoming-call", params
        )
        headers = {"X-Twilio-Signature": signature, "X-Relay-Failover": "on"}
        answer = await client.post("/incoming-call", data=params, headers=headers)
    assert answer.status_code == status
    if status == 503:
        assert answer.headers["retry-after"] == "1" and answer.text == DRAINING
    else:
        twiml = Twiml.parse(answer.status_code, answer.text, "")
        assert twiml.say == DRAINING and twiml.hangup and twiml.stream_url is None


def settings(rt: FakeRealtimeServer, rest_url: str) -> dict[str, str]:
    return {
        "RELAY_MODE": "realtime",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": rt.openai_base_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_API_BASE_URL": rest_url,
        "DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
        "INSTRUCTIONS": "The fleet's agent, answering {caller}.",  # names the call on the provider side
    }


def connection_of(rt: FakeRealtimeServer, call: FakeTwilioCall) -> FakeConnection:
    """The provider connection that served `call` (its instructions name the caller)."""
    mine = [c for c in rt.connections if call.from_ in str(c.session.get("instructions", ""))]
    assert len(mine) == 1, f"{len(mine)} provider connections for {call.call_sid}"
    return mine[0]


async def talk(call: FakeTwilioCall, done: asyncio.Event) -> None:
    """The caller's side: 20 ms frames of silence in real time until `done`."""
    while not done.is_set() and call.is_open:
        await call.send_silence(200)


async def place(f: Fleet, stack: contextlib.AsyncExitStack) -> tuple[FakeTwilioCall, int]:
    """One call through nginx: its webhook, then its stream; (the call, the instance it names)."""
    call = await stack.enter_async_context(FakeTwilioCall(base_url=f.url, auth_token=AUTH_TOKEN))
    twiml = await call.fetch_twiml()
    instance = f.instance_of(twiml.stream_url)
    assert twiml.status_code == 200 and instance is not None, twiml.body
    assert await call.connect(twiml), call.upgrade_body
    await call.wait_for_media(timeout=5)
    return call, instance.index


def lost_frames(rt: FakeRealtimeServer, call: FakeTwilioCall, until: float) -> tuple[int, int]:
    """(caller frames the provider did not get, agent frames sent before `until` the caller did
    not get, or got out of order)."""
    conn = connection_of(rt, call)
    sent = sum(1 for _, m in call.sent if isinstance(m, dict) and m.get("event") == "media")
    agent = b"".join(
        base64.b64decode(e["delta"])
        for t, e in conn.sent
        if t <= until and e.get("type") == "response.output_audio.delta"
    )
    heard = call.received_audio
    return sent - len(conn.audio_in) // FRAME, 0 if heard[: len(agent)] == agent else len(agent) // FRAME


@contextlib.asynccontextmanager
async def fakes() -> AsyncIterator[tuple[FakeRealtimeServer, FakeTwilioRest, str]]:
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    talking = Say("The agent keeps talking all through the test.", audio_ms=30_000)
    async with FakeRealtimeServer(default_reply=talking, pace=1.0, delta_ms=20) as rt, rest.serve() as url:
        yield rt, rest, url


@pytest.mark.slow
@needs_fleet
async def test_two_instances_behind_nginx_keep_affinity_and_drain_one() -> None:
    async with (
        fakes() as (rt, rest, rest_url),
        fleet(2, settings=settings(rt, rest_url)) as f,
        contextlib.AsyncExitStack() as stack,
    ):
        done = asyncio.Event()
        # nginx balances webhooks round-robin: the first two land one on each instance
        placed = {}
        for _ in range(2):
            call, index = await place(f, stack)
            placed[index] = call
        assert sorted(placed) == [1, 2]
        staying, leaving = placed[1], placed[2]
        talkers = [asyncio.create_task(talk(call, done)) for call in placed.values()]
        # affinity: each stream took the early connection its webhook opened, greeting included
        assert len(rt.connections) == 2
        for relay in f.relays:
            assert await relay.metric("relay_preconnects_total", outcome="used") == 1

        drained = f.relays[1]
        mark = drained.process.lines_printed
        drained.process.signal(signal.SIGTERM)
        await drained.process.wait_line("draining: 1 active calls", timeout=5, after=mark)
        newcomers = [await place(f, stack) for _ in range(2)]
        assert [index for _, index in newcomers] == [1, 1]  # nginx sent both to the other
        assert await drained.metric("relay_calls_rejected_total", reason="draining") >= 1

        (goodbye,) = await rest.wait_requests(1, timeout=DRAIN_TIMEOUT + 5)
        assert goodbye.call_sid == leaving.call_sid and "restarting" in goodbye.form.get("Twiml", "")
        await leaving.wait_closed(timeout=5)
        assert leaving.closed_by_relay
        assert await drained.process.wait(timeout=10) == 0

        done.set()
        await asyncio.gather(*talkers)
        stop = time.monotonic()
        sent = sum(1 for _, m in staying.sent if isinstance(m, dict) and m.get("event") == "media")
        await connection_of(rt, staying).wait_for("input_audio_buffer.append", timeout=CATCH_UP_S, n=sent)
        assert sent >= 100 and len(staying.received_audio) >= 8000  # 2 s of the caller, 1 s of the agent
        assert lost_frames(rt, staying, until=stop - 0.5) == (0, 0)
        for call in [staying, *(call for call, _ in newcomers)]:
            await call.hangup()
