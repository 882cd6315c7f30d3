"""What a realtime session is opened with: the session configuration for a Twilio call, its first
events, the early connection (opened during /incoming-call), the connect retry, and the
conversation so far for a replacement session."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from relay.config import Settings
from relay.errors import ProviderConnectError
from relay.sessions.call import Turn
from relay.sessions.client_events import opening_events, text_item_event
from relay.sessions.dialects import Dialect, session_update
from relay.sessions.providers import ProviderAdapter
from relay.transport.provider import ProviderSocket

log = logging.getLogger("relay.realtime")

MAX_HISTORY_TURNS = 40


def session_config(settings: Settings, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The GA session configuration for a Twilio call: μ-law both ways, no transcoding."""
    if settings.turn_detection == "semantic_vad":
        turn: dict[str, Any] = {"type": "semantic_vad", "eagerness": settings.vad_eagerness}
    else:
        turn = {
            "type": "server_vad",
            "threshold": settings.vad_threshold,
            "prefix_padding_ms": settings.vad_prefix_padding_ms,
            "silence_duration_ms": settings.vad_silence_duration_ms,
        }
    turn.update(create_response=True, interrupt_response=True)
    audio_in: dict[str, Any] = {"format": {"type": "audio/pcmu"}, "turn_detection": turn}
    if settings.input_transcription_model:
        audio_in["transcription"] = {"model": settings.input_transcription_model}
        if settings.transcription_language:  # a hint (TRANSCRIPTION_LANGUAGE, an agent's `language`)
            audio_in["transcription"]["language"] = settings.transcription_language
    audio_in["noise_reduction"] = (
        None if settings.noise_reduction == "off" else {"type": settings.noise_reduction}
    )
    voice = settings.openai_voice
    return {
        "type": "realtime",
        "instructions": settings.instructions,
        "output_modalities": ["audio"],
        "audio": {"input": audio_in, "output": {"format": {"type": "audio/pcmu"}, "voice": voice}},
        "tools": tools,
        "tool_choice": "auto",
    }


@dataclass(frozen=True, slots=True)
class Opening:
    """What every new realtime session of a process opens with: its `session.update` in the
    provider's dialect, and the greeting's instructions (None when GREETING_ENABLED is off). Built
    once per process (`CallManager.opening`): the same for every call, early connection or not."""

    session_update: dict[str, Any]
    greeting: str | None

    @classmethod
    def build(cls, settings: Settings, tools: list[dict[str, Any]], dialect: Dialect) -> Opening:
        greeting = None
        if settings.greeting_enabled and settings.greeting:
            greeting = f"{settings.instructions}\n\n{settings.greeting}"
        return cls(session_update(session_config(settings, tools), dialect), greeting)

    def events(self) -> list[str]:
        """The session's first events: its configuration, then the greeting's request."""
        return opening_events(self.session_update, self.greeting)


async def open_early(adapter: ProviderAdapter, settings: Settings, opening: Opening) -> ProviderSocket:
    """An early connection (relay.sessions.early): connected, and with REALTIME_EARLY_GREETING
    already sent its opening events (configuration, greeting request), so the greeting is on its
    way, or waiting in the socket, before the call's stream starts. A socket the provider closes
    meanwhile is returned closed: the session then connects anew and greets by itself."""
    socket = await connect_with_retry(adapter)
    if settings.realtime_early_greeting:
        for text in opening.events():
            await socket.send(text)
    return socket


async def connect_with_retry(adapter: ProviderAdapter) -> ProviderSocket:
    """Connects; a 5xx answer is retried once at once (a 4xx or a timeout is final)."""
    try:
        return await adapter.connect_realtime()
    except ProviderConnectError as exc:
        if exc.status is None or exc.status < 500:
            raise
        log.warning("%s; retrying once", exc)
        return await adapter.connect_realtime()


def history_events(turns: list[Turn], dialect: str, max_turns: int = MAX_HISTORY_TURNS) -> list[str]:
    """The conversation so far as `conversation.item.create` events, for a new realtime session."""
    return [text_item_event(role, text, dialect=dialect) for role, text in turns[-max_turns:]]


__all__ = [
    "connect_with_retry",
    "history_events",
    "open_early",
    "Opening",
    "session_config",
]
