"""Raw HTTP clients for the edge tests: byte-exact requests over real sockets, slow or oversized."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def open_raw(
    url: str, *, local_host: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = host_port(url)
    return await asyncio.open_connection(host, port, local_addr=(local_host, 0) if local_host else None)


def first_response_complete(data: bytes) -> bool:
    """True once `data` holds a whole response with a Content-Length body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


async def read_answer(
    reader: asyncio.StreamReader,
    timeout: float = 10.0,  # noqa: ASYNC109
    *,
    first_response: bool = False,
) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close), or, with
    `first_response`, until its first response is complete (a kept-alive connection stays open)."""
    data = bytearray()
    async with asyncio.timeout(timeout):
        while not (first_response and first_response_complete(data)):
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


def status_of(answer: bytes) -> int | None:
    """The status code of the first response in `answer` (None when nothing was answered)."""
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


async def exchange(url: str, request: bytes, timeout: float = 10.0) -> bytes:  # noqa: ASYNC109
    """Sends `request` as is, returns all the server answers until it closes."""
    reader, writer = await open_raw(url)
    try:
        writer.write(request)
        await writer.drain()
        return await read_answer(reader, timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def stream_until_answered(
    url: str,
    head: bytes,
    chunk: bytes,
    total: int,
    timeout: float = 20.0,  # noqa: ASYNC109
    *,
    chunked: bool = True,
) -> tuple[bytes, int]:
    """Sends `head`, then `total` bytes (the same `chunk` again and again; in chunked framing unless
    `chunked` is false) while reading: returns the answer and how many bytes were written before
    the server closed."""
    reader, writer = await open_raw(url)
    sent = 0

    async def pump() -> None:
        nonlocal sent
        framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n" if chunked else chunk
        with contextlib.suppress(ConnectionError):
            while sent < total:
                writer.write(framed)
                await writer.drain()
                sent += len(chunk)
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()

    writer.write(head)
    pumping = asyncio.create_task(pump())
    try:
        answer = await read_answer(reader, timeout, first_response=True)
    finally:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        writer.transport.abort()  # what is still buffered will never be read: drop it
    return answer, sent


def proc_status_kb(field: str, pid: str = "self") -> int:
    """A memory figure of /proc/PID/status in KB (VmRSS, VmHWM...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: str = "self") -> None:
    """Resets VmHWM (the peak RSS) to the current RSS (Linux: clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
