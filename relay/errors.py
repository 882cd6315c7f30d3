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
    """The speech provider failed: connect refused, auth, missing deployment, dropped socket.

    `cause` is the short label a fallback is counted and recorded under; each subclass says its
    own, and an HTTP status, when the provider answered one, says the rest."""

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

    @property
    def cause(self) -> str:
        """auth, not_found, rate_limited, server_error, or this type's own label."""
        status = self.status
        if status in (401, 403):
            return "auth"
        if status == 404:
            return "not_found"
        if status == 429:
            return "rate_limited"
        if status is not None and status >= 500:
            return "server_error"
        return self.default_cause

    default_cause = "failed"


class ProviderConnectError(ProviderError):
    """The realtime connection could not be opened."""

    default_cause = "unreachable"


class ProviderTimeoutError(ProviderConnectError):
    """The realtime connection was not open within PROVIDER_CONNECT_TIMEOUT."""

    default_cause = "timeout"


class ProviderClosedError(ProviderError):
    """The realtime connection closed during the call."""

    default_cause = "dropped"


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

    default_cause = "unresponsive"


class ProviderMalformedError(ProviderError):
    """The provider sent a run of events that do not parse, with no valid one between them."""

    default_cause = "malformed"
