"""A fake Tavily search API (`POST /search`) for tests and demos, served over a real socket.

It checks the key the way tavily-python 0.8.5 sends it (`Authorization: Bearer <key>`; a body
`api_key`, which older clients sent, is accepted too), answers canned results, records every
request, and has failure knobs: `status` (answer that HTTP status instead) and `delay` (seconds
before answering).

    fake = FakeTavily(api_key="tvly-test")
    async with fake.serve() as url:        # or: async with serve_app(fake.app) as url
        ...                                # TAVILY_BASE_URL=url
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from relay.testing.server import serve_app

__all__ = ["FakeTavily", "TavilyRequest", "canned_results"]

# Error bodies in the shape tavily-python reads (`body["detail"]["error"]`).
_ERRORS = {
    400: "Invalid request.",
    401: "Unauthorized: missing or invalid API key.",
    403: "Forbidden.",
    429: "This request exceeds your plan's set usage limit.",
    500: "Internal server error.",
}


@dataclass(frozen=True, slots=True)
class TavilyRequest:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def query(self) -> str | None:
        value = self.body.get("query")
        return value if isinstance(value, str) else None

    @property
    def api_key(self) -> str | None:
        """The key as sent: the Bearer token, else the body's `api_key`."""
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        value = self.body.get("api_key")
        return value if isinstance(value, str) else None


def canned_results(query: str, count: int = 5) -> list[dict[str, Any]]:
    """Deterministic results for `query`, each with a long `content` (trimming is testable)."""
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-") or "query"
    filler = " ".join(["This paragraph repeats so the snippet is long enough to need trimming."] * 8)
    return [
        {
            "title": f"Result {i} about {query}",
            "url": f"https://example.com/{slug}/{i}",
            "content": f"Result {i} says this about {query}. {filler}",
            "score": round(0.9 - i * 0.1, 2),
            "raw_content": None,
        }
        for i in range(1, count + 1)
    ]


@dataclass
class FakeTavily:
    """Scripted Tavily. `answers`/`results` map a query to canned values; others get defaults."""

    api_key: str = "tvly-test-key"
    answers: Mapping[str, str | None] = field(default_factory=dict)
    results: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    status: int | None = None
    """Failure knob: answer every request with this HTTP status (401, 429, 500…)."""
    delay: float = 0.0
    """Failure knob: seconds to wait before answering (released when `serve()` exits)."""
    requests: list[TavilyRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._released = asyncio.Event()
        self.app = Starlette(routes=[Route("/search", self._search, methods=["POST"])])

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serves the fake; yields its base URL. Requests held by `delay` are released on exit."""
        self._released = asyncio.Event()
        async with serve_app(self.app) as url:
            try:
                yield url
            finally:
                self._released.set()

    @property
    def queries(self) -> list[str | None]:
        return [r.query for r in self.requests]

    async def _search(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400)
        record = TavilyRequest(request.url.path, dict(request.headers), body)
        self.requests.append(record)
        if self.delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.delay):
                    await self._released.wait()
        if self.status is not None and self.status != 200:
            return _error(self.status)
        if record.api_key != self.api_key:
            return _error(401)
        query = record.query
        if not query:
            return _error(400)
        return JSONResponse(self._answer(query, body))

    def _answer(self, query: str, body: Mapping[str, Any]) -> dict[str, Any]:
        max_results = body.get("max_results")
        count = max_results if isinstance(max_results, int) and max_results > 0 else 5
        results = [dict(r) for r in self.results.get(query, canned_results(query, count))][:count]
        include_answer = body.get("include_answer")
        answer = self.answers.get(query, f"Canned answer about {query}.") if include_answer else None
        return {
            "query": query,
            "answer": answer,
            "images": [],
            "follow_up_questions": None,
            "results": results,
            "response_time": 0.01,
        }


def _error(status: int) -> JSONResponse:
    message = _ERRORS.get(status, f"HTTP {status}")
    return JSONResponse({"detail": {"error": message}}, status_code=status)
