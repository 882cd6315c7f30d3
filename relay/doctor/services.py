"""The doctor's checks of the other services: PUBLIC_URL answering `/health`, Redis (PING) when
REDIS_URL is set, Tavily (a one-result search) when TAVILY_API_KEY is set."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from relay.config import Settings
from relay.doctor.report import Check, fail, first_line, ok, root_cause, skip, warn
from relay.redis_client import redact_url

__all__ = ["check_public_url", "check_redis", "check_tavily"]


async def check_public_url(settings: Settings, *, limit: float = 5.0) -> list[Check]:
    """Whether PUBLIC_URL/health answers (the relay is up behind its tunnel). Only a warning."""
    if not settings.public_url:
        return []
    url = settings.public_url + "/health"
    try:
        async with httpx.AsyncClient(timeout=limit) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        return [
            warn(
                "public url",
                f"{url} does not answer ({first_line(exc)}): start `relay serve` and the tunnel "
                "(scripts/ngrok.sh) before calling",
            )
        ]
    if response.status_code != 200:
        return [warn("public url", f"{url} answered HTTP {response.status_code}: is it this relay?")]
    return [ok("public url", f"{url} answers")]


async def check_redis(settings: Settings, *, limit: float = 5.0) -> list[Check]:
    if settings.redis_url is None:
        return [skip("redis", "REDIS_URL not set: call records stay in memory (lost on restart)")]
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, RedisError, ResponseError

    url = settings.redis_url.get_secret_value()
    shown = redact_url(url)
    try:
        client = aioredis.from_url(url, socket_connect_timeout=limit, socket_timeout=limit)
    except ValueError as exc:
        return [fail("redis", f"REDIS_URL is not a Redis URL ({exc}); e.g. redis://localhost:6379/0")]
    try:
        async with asyncio.timeout(limit + 1):
            await client.ping()
    except AuthenticationError as exc:
        return [fail("redis", f"Redis at {shown} rejected the credentials in REDIS_URL: {exc}")]
    except ResponseError as exc:
        return [fail("redis", f"Redis at {shown} refused PING: {exc}")]
    except (RedisError, OSError, TimeoutError) as exc:
        return [fail("redis", f"cannot reach Redis at {shown}: {root_cause(exc)}")]
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return [ok("redis", f"{shown} answers PING")]


async def check_tavily(settings: Settings, *, limit: float = 10.0) -> list[Check]:
    if settings.tavily_api_key is None:
        return [skip("tavily", "TAVILY_API_KEY not set: the web_search tool is not offered")]
    from tavily import AsyncTavilyClient
    from tavily.errors import ForbiddenError, InvalidAPIKeyError, UsageLimitExceededError

    base = settings.tavily_base_url
    client = AsyncTavilyClient(api_key=settings.tavily_api_key.get_secret_value(), api_base_url=base)
    try:
        async with asyncio.timeout(limit + 1), client:
            await client.search("relay doctor", max_results=1, timeout=limit)
    except InvalidAPIKeyError:
        return [fail("tavily", "Tavily rejected TAVILY_API_KEY (401): copy it from app.tavily.com")]
    except UsageLimitExceededError:
        return [warn("tavily", "Tavily's usage limit is reached (429): web_search answers with an apology")]
    except ForbiddenError as exc:
        return [fail("tavily", f"Tavily refused the request (403): {exc}")]
    except TimeoutError:
        return [fail("tavily", f"Tavily at {base} did not answer within {limit:g} s")]
    except Exception as exc:  # httpx errors, a non-JSON answer…
        return [fail("tavily", f"Tavily search at {base} failed: {first_line(exc)}")]
    return [ok("tavily", f"a one-result search at {base} worked")]
