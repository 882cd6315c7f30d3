"""The relay's exception types, in one place.

Each carries a message that tells the user what to do, and a `retryable` flag: 4xx answers are
final except 408 and 429; timeouts, 5xx and dropped connections are retryable.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, retryable={self.retryable})"


class ConfigError(RelayError, ValueError):
    """The configuration is missing something or contradicts itself.

    `problems` lists each problem on its own (one line each, naming the variable and the fix);
    by default the message is the only one.
    """

    def __init__(
        self, message: str, *, problems: list[str] | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.problems = list(problems) if problems else [message]


class ProtocolError(RelayError):
    """A peer sent something that breaks its protocol (bad JSON, bad base64, wrong order)."""


class StreamAuthError(RelayError):
    """A Media Stream failed its signature or stream-token check."""


class ProviderError(RelayError):
    """The speech provider failed: connect refused, auth, missing deployment, dropped socket."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        if retryable is None:
            retryable = status is None or status >= 500 or status in (408, 429)
        super().__init__(message, retryable=retryable)
        self.status = status
        self.code = code


class ProviderConnectError(ProviderError):
    """The realtime connection could not be opened."""


class ProviderClosedError(ProviderError):
    """The realtime connection closed during the call."""


class ToolError(RelayError):
    """A tool failed; its message becomes the tool's output to the model."""


class StoreError(RelayError):
    """The call store could not be reached."""

    retryable = True


class ProviderEventError(ProtocolError, ValueError):
    """One provider event that is not JSON, not an object, or has a field of the wrong type. The
    event is dropped and counted; the call goes on (a flood of them is `ProviderMalformedError`)."""


class ProviderUnresponsiveError(ProviderError):
    """The realtime connection is open but the provider stopped answering: no first event after
    connecting (PROVIDER_FIRST_EVENT_TIMEOUT), or no answer to a heartbeat (PROVIDER_HEARTBEAT_*)."""


class ProviderMalformedError(ProviderError):
    """The provider sent a run of events that do not parse, with no valid one between them."""
