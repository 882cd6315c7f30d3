"""The built-in tools: web_search (Tavily), end_call, transfer_call, send_digits, and an agent's
handoff (built per agent: relay.sessions.agent_runtime).

Failures a caller should hear about (search service down, destination not allowed) are raised as
`ToolError` with a sentence the model can say; the registry turns it into `{"error": "..."}`.
"""

# No `from __future__ import annotations` here: transfer_call's parameter description is built
# from a closure variable, so its annotations must be evaluated where the function is defined.
import logging
from collections.abc import Mapping
from typing import Annotated, Any

import httpx
from pydantic import Field
from tavily import AsyncTavilyClient
from tavily.errors import (
    BadRequestError,
    ForbiddenError,
    InvalidAPIKeyError,
    UsageLimitExceededError,
)
from tavily.errors import TimeoutError as TavilyTimeoutError
from twilio.twiml.voice_response import VoiceResponse

from relay.config import Settings
from relay.errors import ToolError
from relay.phone_numbers import normalize_number
from relay.tools.context import ToolContext
from relay.tools.spec import Tool
from relay.tools.whisper import SUMMARY_CHARS, clean_summary, warm_dial_twiml

__all__ = [
    "SNIPPET_CHARS",
    "builtin_tools",
    "dial_twiml",
    "end_call_tool",
    "handoff_tool",
    "resolve_transfer_target",
    "send_digits_tool",
    "transfer_call_tool",
    "web_search_tool",
]

logger = logging.getLogger(__name__)

SNIPPET_CHARS = 300
TITLE_CHARS = 120
QUERY_CHARS = 400  # Tavily's own limit on a query
REASON_CHARS = 200
DESTINATION_CHARS = 100


def builtin_tools(settings: Settings) -> list[Tool]:
    """The built-ins this configuration supports, in the order the model sees them."""
    tools: list[Tool] = []
    if settings.tavily_api_key is not None and settings.tavily_api_key.get_secret_value():
        tools.append(web_search_tool())
    tools.append(end_call_tool())
    if settings.transfer_targets:
        tools.append(transfer_call_tool(settings.transfer_targets))
    tools.append(send_digits_tool())  # offered on outbound calls, or on every call with DTMF_TOOL
    return tools


# --- web_search ----------------------------------------------------------------------------------
def web_search_tool(*, request_timeout: float = 8.0, timeout: float = 10.0) -> Tool:
    """The Tavily web search tool. `request_timeout` (the HTTP timeout) is kept below `timeout`
    (the registry's limit) so a slow search ends with a sentence the model can say."""

    async def web_search(
        ctx: ToolContext,
        query: Annotated[
            str,
            Field(
                min_length=1,
                max_length=QUERY_CHARS,
                description="What to look up, as a short web search query.",
            ),
        ],
        max_results: Annotated[int, Field(ge=1, le=10, description="How many results to return.")] = 3,
    ) -> dict[str, Any]:
        """Search the web for current or specific information (news, opening hours, prices, facts
        you are not sure of). Returns a short answer and the top results."""
        key = ctx.settings.tavily_api_key
        if key is None or not key.get_secret_value():
            raise ToolError("Web search is not set up on this line, so I can't search right now.")
        client = AsyncTavilyClient(api_key=key.get_secret_value(), api_base_url=ctx.settings.tavily_base_url)
        async with client:
            response = await _search(client, query, max_results, request_timeout)
        return {
            "answer": response.get("answer"),
            "results": [_hit(item) for item in (response.get("results") or [])[:max_results]],
        }

    return Tool.from_function(web_search, timeout=timeout)


async def _search(
    client: AsyncTavilyClient, query: str, max_results: int, http_timeout: float
) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await client.search(
            query, include_answer=True, max_results=max_results, timeout=http_timeout
        )
        return result
    except InvalidAPIKeyError as exc:
        logger.warning("Tavily rejected TAVILY_API_KEY (401): %s", exc)
        raise ToolError("The web search service rejected our API key, so I can't search right now.") from exc
    except UsageLimitExceededError as exc:
        logger.warning("Tavily usage limit reached (429): %s", exc)
        raise ToolError(
            "The web search service's usage limit has been reached, so I can't search right now.",
            retryable=True,
        ) from exc
    except ForbiddenError as exc:
        logger.warning("Tavily refused the request (403): %s", exc)
        raise ToolError("The web search service refused the request, so I can't search right now.") from exc
    except BadRequestError as exc:
        raise ToolError(
            f"The web search service could not handle that query ({exc}); try a simpler query."
        ) from exc
    except (TavilyTimeoutError, httpx.TimeoutException) as exc:
        raise ToolError(
            "The web search took too long to answer, so I don't have results right now.", retryable=True
        ) from exc
    except (httpx.HTTPStatusError, ValueError) as exc:  # ValueError: a 200 whose body is not JSON
        logger.warning("Tavily failed: %s: %s", type(exc).__name__, exc)
        raise ToolError(
            "The web search service had a problem, so I can't search right now.", retryable=True
        ) from exc
    except httpx.HTTPError as exc:
        logger.warning("Tavily unreachable: %s: %s", type(exc).__name__, exc)
        raise ToolError(
            "I couldn't reach the web search service, so I can't search right now.", retryable=True
        ) from exc


def _hit(item: Mapping[str, Any]) -> dict[str, str]:
    return {
        "title": _trim(str(item.get("title") or ""), TITLE_CHARS),
        "url": str(item.get("url") or ""),
        "snippet": _trim(str(item.get("content") or ""), SNIPPET_CHARS),
    }


def _trim(text: str, limit: int) -> str:
    """Whitespace collapsed, cut at a word boundary to at most `limit` characters plus '…'."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "…"


# --- end_call ------------------------------------------------------------------------------------
async def end_call(
    ctx: ToolContext,
    reason: Annotated[
        str, Field(max_length=REASON_CHARS, description="Why the call is ending, e.g. 'caller said goodbye'.")
    ] = "",
) -> dict[str, str]:
    """End the phone call. Use it when the caller says goodbye or asks to hang up, or when the
    conversation is clearly over. Then say one short goodbye; the call ends after it plays."""
    await ctx.control.hang_up_after_playback(reason)
    return {
        "status": "ending",
        "instruction": "Say a short goodbye now, in one sentence. The call ends when you finish speaking.",
    }


def end_call_tool(*, timeout: float = 5.0) -> Tool:
    """The end_call tool: asks the session to hang up once the goodbye has played."""
    return Tool.from_function(end_call, timeout=timeout)


# --- transfer_call -------------------------------------------------------------------------------
def resolve_transfer_target(destination: str, targets: Mapping[str, str]) -> str | None:
    """The number for `destination` (a name, case-insensitive, or an allowed number), or None."""
    key = destination.strip().lower()
    if key in targets:
        return targets[key]
    wanted = normalize_number(destination)
    for number in targets.values():
        if wanted and normalize_number(number) == wanted:
            return number
    return None


def _allowed_names(targets: Mapping[str, str]) -> list[str]:
    """Names first, then the allowed numbers that have no name."""
    names = sorted({name for name, number in targets.items() if name != number})
    named_numbers = {targets[name] for name in names}
    return names + sorted({number for number in targets.values() if number not in named_numbers})


def dial_twiml(number: str) -> str:
    """`<Response><Dial>number</Dial></Response>`, built with the twilio package."""
    response = VoiceResponse()
    response.dial(number)
    return str(response.to_xml(xml_declaration=False))


def transfer_call_tool(targets: Mapping[str, str], *, timeout: float = 10.0) -> Tool:
    """The transfer_call tool; its description lists the allowed destinations of `targets`
    (TRANSFER_ALLOWLIST). The check itself uses the call's settings at run time."""
    allowed = ", ".join(_allowed_names(targets))

    async def transfer_call(
        ctx: ToolContext,
        destination: Annotated[
            str,
            Field(
                min_length=1,
                max_length=DESTINATION_CHARS,
                description=f"Who to transfer the caller to; one of: {allowed}.",
            ),
        ],
        summary: Annotated[
            str,
            Field(
                max_length=SUMMARY_CHARS,
                description=(
                    "Optional: one or two sentences for the person taking the call, said to them "
                    "before the caller is connected (who is calling and what they need). "
                    "Leave it out for a plain transfer."
                ),
            ),
        ] = "",
    ) -> dict[str, Any]:
        """Transfer the caller to a person or department (allowed destinations are listed in the
        parameter). Use it only when the caller asks to be transferred or needs a human. With a
        summary, the person taking the call hears it first while the caller is asked to hold."""
        targets = ctx.settings.transfer_targets
        number = resolve_transfer_target(destination, targets)
        if number is None:
            raise ToolError(
                f"I can't transfer calls to {destination.strip()!r}. "
                f"I can transfer you to: {', '.join(_allowed_names(targets))}."
            )
        summary = clean_summary(summary)
        if summary and not ctx.settings.public_url:
            logger.warning("a transfer with a summary needs PUBLIC_URL (the whisper's URL); it is not set")
            raise ToolError(
                "I can't pass a summary on from this line; call transfer_call again without a summary."
            )
        if summary:
            twiml = warm_dial_twiml(number, ctx.call_sid, summary, ctx.settings)
        else:
            twiml = dial_twiml(number)
        await ctx.control.transfer(twiml)
        return {
            "status": "transferring",
            "destination": destination.strip(),
            "warm": bool(summary),
            "instruction": "Tell the caller in one short sentence that you are connecting them now.",
        }

    return Tool.from_function(transfer_call, timeout=timeout)


# --- send_digits ---------------------------------------------------------------------------------
async def send_digits(
    ctx: ToolContext,
    digits: Annotated[
        str,
        Field(
            pattern=r"^[0-9*#A-D]{1,32}$",
            description="The keys to press, in order: digits 0-9, * and # (e.g. '1', '42#').",
        ),
    ],
) -> dict[str, str]:
    """Press keys on the phone keypad: the other side hears them as DTMF tones. Use it to choose
    in a phone menu ("press 1 for sales") or to enter a number it asks for."""
    await ctx.control.send_digits(digits)
    return {"status": "sent", "digits": digits}


def send_digits_tool(*, timeout: float = 5.0) -> Tool:
    """The send_digits tool: DTMF tones played to the other side (DTMF_TOOL, and outbound calls)."""
    return Tool.from_function(send_digits, timeout=timeout)


# --- handoff -------------------------------------------------------------------------------------
AGENT_CHARS = 64


def handoff_tool(agents: Mapping[str, str], *, timeout: float = 15.0) -> Tool:
    """The handoff tool of an agent that lists `handoffs`: `agents` maps each agent it may hand the
    call to to its one-line description, which the model reads to choose."""
    names = list(agents)
    listing = "; ".join(f"{name}: {about}" if about else name for name, about in agents.items())

    async def handoff(
        ctx: ToolContext,
        agent: Annotated[
            str,
            Field(
                min_length=1,
                max_length=AGENT_CHARS,
                description=f"The agent to hand the call to; one of: {', '.join(names)}.",
                json_schema_extra={"enum": names},
            ),
        ],
        reason: Annotated[
            str,
            Field(
                max_length=REASON_CHARS,
                description="Optional: why, in a few words (kept on the call's record).",
            ),
        ] = "",
    ) -> dict[str, str]:
        chosen = agent.strip()
        if chosen not in agents:
            raise ToolError(f"I can hand this call only to: {', '.join(names)}.")
        same_session = await ctx.control.handoff(chosen, reason.strip())
        return {
            "status": "handed_off",
            "agent": chosen,
            "instruction": (
                f"You are now the {chosen} agent and the caller is still on the line: carry on the "
                "conversation as that agent, in one or two sentences."
                if same_session
                else "A new session has taken the call."
            ),
        }

    description = (
        "Hand this call to another agent, who takes over the conversation at once (the caller "
        "stays on the line and the conversation so far is kept). Use it when the caller needs "
        f"what another agent does. The agents: {listing}."
    )
    return Tool.from_function(handoff, description=description, timeout=timeout)
