"""The fake Realtime server's handshake: which URL shape, dialect and credentials an upgrade names,
and the error bodies OpenAI and Azure answer a refused one with.

The three URL shapes (PROTOCOLS.md §2–3): OpenAI GA ``/v1/realtime?model=M`` with a bearer; Azure
GA ``/openai/v1/realtime?model=DEPLOYMENT`` with ``api-key`` or a bearer (no ``api-version``);
Azure preview ``/openai/realtime?api-version=V&deployment=D``, which speaks the beta protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from websockets.datastructures import Headers

from relay.testing.realtime_connection import AuthKind, Provider
from relay.testing.realtime_dialects import Dialect
from relay.testing.realtime_replies import Event

if TYPE_CHECKING:
    from relay.testing.realtime import FakeRealtimeServer

__all__ = ["Reject", "Route", "knob_body", "route"]

_AZURE_BAD_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
    "key for an active subscription and use a correct regional API endpoint for your resource."
)
_AZURE_BAD_TOKEN = "Unauthorized. Access token is missing, invalid, audience is incorrect, or have expired."


@dataclass(frozen=True)
class Route:
    """What an accepted upgrade asked for."""

    provider: Provider
    dialect: Dialect
    auth: AuthKind
    model: str  # the model (OpenAI) or deployment (Azure)
    api_version: str | None
    beta_header: bool


class Reject(Exception):
    """The upgrade is refused with `status` and the JSON `body`."""

    def __init__(self, status: int, body: Event) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _openai_error(message: str, code: str | None, type_: str = "invalid_request_error") -> Event:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _azure_error(code: str, message: str) -> Event:
    return {"error": {"code": code, "message": message}}


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def knob_body(route: Route, status: int) -> Event:
    """The body of a refusal the `reject_status` knob asked for, in the provider's shape."""
    if route.provider == "azure":
        return _azure_error(str(status), f"Simulated failure {status}.")
    if status == 429:
        return _openai_error("Rate limit reached for requests.", "rate_limit_exceeded", "requests")
    if status == 401:
        return _openai_error("Incorrect API key provided.", "invalid_api_key")
    return _openai_error("The server had an error while processing your request.", None, "server_error")


def route(server: FakeRealtimeServer, path: str, query: dict[str, str], headers: Headers) -> Route:
    """The route of an upgrade to `path`, checked against `server`'s keys, models and deployments;
    raises `Reject` as the service would answer."""
    beta = any("realtime=v1" in v for v in headers.get_all("OpenAI-Beta"))
    ga_dialect: Dialect = "preview" if beta and server.beta_header_selects_preview else "ga"
    if path == "/v1/realtime":
        token = _bearer(headers)
        if not token:
            raise Reject(401, _openai_error("You didn't provide an API key (Authorization: Bearer).", None))
        if token != server.api_key:
            raise Reject(
                401, _openai_error(f"Incorrect API key provided: {token[:6]}***.", "invalid_api_key")
            )
        model = query.get("model", "")
        if model not in server.models:
            msg = f"The model '{model}' does not exist or you do not have access to it."
            raise Reject(404, _openai_error(msg, "model_not_found"))
        return Route("openai", ga_dialect, "bearer", model, None, beta)
    if path == "/openai/v1/realtime":
        if "api-version" in query:
            raise Reject(401, _azure_error("401", "api-version is not supported on the /openai/v1 path."))
        auth = _azure_auth(server, headers, query)
        deployment = query.get("model", "")
        _check_deployment(server, deployment)
        return Route("azure", ga_dialect, auth, deployment, None, beta)
    if path == "/openai/realtime":
        version = query.get("api-version")
        if not version or version not in server.preview_versions:
            raise Reject(404, _azure_error("404", "Resource not found"))
        auth = _azure_auth(server, headers, query)
        deployment = query.get("deployment", "")
        _check_deployment(server, deployment)
        return Route("azure", "preview", auth, deployment, version, beta)
    if path.startswith("/openai"):
        raise Reject(404, _azure_error("404", "Resource not found"))
    raise Reject(404, _openai_error(f"Invalid URL (GET {path})", None))


def _azure_auth(server: FakeRealtimeServer, headers: Headers, query: dict[str, str]) -> AuthKind:
    # UNVERIFIED: with both an `api-key` header and a bearer, the fake checks the api-key only.
    key = headers.get("api-key")
    if key is not None:
        if key != server.azure_api_key:
            raise Reject(401, _azure_error("401", _AZURE_BAD_KEY))
        return "api-key"
    token = _bearer(headers)
    if token is not None:
        if token not in server.bearer_tokens and token != server.azure_api_key:
            raise Reject(401, _azure_error("401", _AZURE_BAD_TOKEN))
        return "bearer"
    if query.get("api-key") == server.azure_api_key:
        return "api-key-query"
    raise Reject(401, _azure_error("401", _AZURE_BAD_KEY))


def _check_deployment(server: FakeRealtimeServer, deployment: str) -> None:
    if deployment not in server.deployments:
        msg = "The API deployment for this resource does not exist."
        raise Reject(404, _azure_error("DeploymentNotFound", msg))
