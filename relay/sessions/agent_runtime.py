"""One agent as this process serves it: its settings (the environment's, or an agent's of
AGENTS_FILE), its provider adapters (built once, shared by its calls), the texts and tools a call
of it gets, and the realtime session it opens with.

The manager holds one per agent; a call takes the one of its agent when its webhook or stream
starts and keeps it to the end, so a reload of the agents never changes a call in progress.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from relay.config import Settings
from relay.placeholders import CallTexts, has_placeholders, texts_for_call
from relay.sessions.providers import ProviderAdapter
from relay.sessions.realtime_setup import Opening
from relay.tools.builtin import handoff_tool, transfer_call_tool

__all__ = ["AdapterFactory", "AgentRuntime"]

log = logging.getLogger("relay.agents")

AdapterFactory = Callable[[Settings], ProviderAdapter]
"""Builds the adapter of a provider for settings (`relay.sessions.providers.make_adapter`, with
the app's Entra credential)."""


class AgentRuntime:
    """An agent's settings, adapters, texts, tools and realtime opening."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        adapter_factory: AdapterFactory,
        registry: Any = None,
        tools: frozenset[str] | None = None,
        description: str = "",
        handoffs: Mapping[str, str] | None = None,
    ) -> None:
        """`registry`: the process's tools (built-ins and RELAY_TOOLS); the agent's own
        `transfer_call` (its TRANSFER_ALLOWLIST) and `handoff` (its `handoffs`: name -> one-line
        description) are added to its copy. `tools`: the names it may be offered (None: all)."""
        self.name = name
        self.settings = settings
        self.tools = tools
        self.description = description
        self.handoffs: dict[str, str] = dict(handoffs or {})
        self.registry = registry
        if registry is not None:
            own = []
            if settings.transfer_targets:
                own.append(transfer_call_tool(settings.transfer_targets))
            if self.handoffs:
                own.append(handoff_tool(self.handoffs))
            self.registry = registry.with_tools(own)
        self._adapter_factory = adapter_factory
        self._adapter: ProviderAdapter | None = None
        self._alternate: ProviderAdapter | None = None
        self._alternate_built = False

    @property
    def adapter(self) -> ProviderAdapter:
        """The adapter of the agent's provider, built on first use."""
        if self._adapter is None:
            self._adapter = self._adapter_factory(self.settings)
        return self._adapter

    @property
    def provider_configured(self) -> bool:
        return self.settings.provider_configured

    @functools.cached_property
    def connection_key(self) -> tuple[str, ...]:
        """What a realtime connection of this agent is bound to: provider, URL (region, model or
        deployment, protocol version) and key. Two agents with the same key can share a session
        (a handoff updates it in place); different keys need a new connection."""
        s = self.settings
        secret = s.azure_openai_api_key if s.use_azure_openai else s.openai_api_key
        key = secret.get_secret_value() if secret is not None else ""
        digest = hashlib.sha256(key.encode()).hexdigest()  # compared, never shown
        return (self.adapter.vendor, self.adapter.realtime_url, digest)

    # --- a call's texts and tools -----------------------------------------------------------------
    def texts(self, values: Mapping[str, str]) -> CallTexts:
        """INSTRUCTIONS, GREETING and VOICEMAIL_MESSAGE filled with a call's placeholder values."""
        return texts_for_call(self.settings, values)

    def hidden_tools(self, texts: CallTexts) -> frozenset[str]:
        """Tools a call is not offered: those outside the agent's list, `transfer_call` without a
        TRANSFER_ALLOWLIST, and `send_digits` unless the call is outbound or DTMF_TOOL is on."""
        hidden: set[str] = set()
        if not (self.settings.dtmf_tool or texts.outbound):
            hidden.add("send_digits")
        if not self.settings.transfer_targets:
            hidden.add("transfer_call")
        if self.tools is not None and self.registry is not None:
            allowed = self.tools | ({"handoff"} if self.handoffs else set())
            hidden.update(name for name in self.registry.names() if name not in allowed)
        return frozenset(hidden)

    def realtime_tools(self, texts: CallTexts) -> list[dict[str, Any]]:
        return self.registry.realtime_tools(self.hidden_tools(texts)) if self.registry is not None else []

    def chat_tools(self, texts: CallTexts) -> list[dict[str, Any]]:
        return self.registry.chat_tools(self.hidden_tools(texts)) if self.registry is not None else []

    def call_settings(self, texts: CallTexts) -> Settings:
        """The agent's settings with this call's INSTRUCTIONS and GREETING (placeholders filled;
        the RECORDING_NOTICE first, when calls are recorded)."""
        settings = self.settings
        notice = settings.recording_notice.strip() if settings.record_calls else ""
        if not notice and not has_placeholders(settings.instructions, settings.greeting):
            return settings
        greeting = texts.greeting
        if notice:
            greeting = f'First say this notice, word for word: "{notice}" Then: {greeting}'
        return settings.model_copy(update={"instructions": texts.instructions, "greeting": greeting})

    # --- the realtime session's opening -----------------------------------------------------------
    def opening_for(self, texts: CallTexts) -> Opening:
        """The opening of a realtime session with these texts: the agent's own (`opening`) for an
        inbound call when its texts have no placeholders, else one built for the call."""
        if not texts.outbound and not has_placeholders(self.settings.instructions, self.settings.greeting):
            return self.opening
        return Opening.build(self.call_settings(texts), self.realtime_tools(texts), self.adapter.dialect)

    @functools.cached_property
    def opening(self) -> Opening:
        """What an inbound call's realtime session opens with when the texts have no placeholders."""
        inbound = CallTexts(self.settings.instructions, self.settings.greeting, "")
        return Opening.build(self.call_settings(inbound), self.realtime_tools(inbound), self.adapter.dialect)

    # --- the cascade ------------------------------------------------------------------------------
    def prepare_cascade(self) -> None:
        """At startup: builds the cascade's SDK client (an HTTP client and its TLS context) now
        rather than on the event loop at a call's first fallback (RELAY_MODE auto or cascade)."""
        if self.settings.relay_mode == "realtime" or not self.settings.provider_configured:
            return
        if all(self.adapter.cascade_models().values()):
            self.adapter.cascade_client()

    def cascade_adapter(self) -> ProviderAdapter | None:
        """The adapter whose cascade serves a fallback: the same vendor's; else, only when the
        agent allows it (ALLOW_CROSS_PROVIDER_FALLBACK), the other vendor's, if configured with
        cascade models. None: no fallback."""
        if all(self.adapter.cascade_models().values()):
            return self.adapter
        if not self.settings.allow_cross_provider_fallback:
            return None
        other = self._other_vendor()
        if other is not None and all(other.cascade_models().values()):
            return other
        return None

    def _other_vendor(self) -> ProviderAdapter | None:
        """The other vendor's adapter, with the same settings otherwise; None when that vendor is
        not configured (no OPENAI_API_KEY, or no Azure endpoint and deployment)."""
        if not self._alternate_built:
            self._alternate_built = True
            other = not self.settings.use_azure_openai
            flipped = self.settings.model_copy(update={"use_azure_openai": other})
            if flipped.provider_configured:
                self._alternate = self._adapter_factory(flipped)
        return self._alternate

    async def aclose(self) -> None:
        for adapter in (self._adapter, self._alternate):
            if adapter is not None:
                await adapter.aclose()
