"""A fake OpenTelemetry collector: the OTLP/HTTP traces endpoint, on 127.0.0.1 and a free port.

It answers as a collector does (the OTLP/HTTP specification): `POST /v1/traces` with an
`ExportTraceServiceRequest` protobuf body (`application/x-protobuf`; `Content-Encoding: gzip` or
`deflate` when the exporter compresses) gets 200 and an `ExportTraceServiceResponse`; a body
that does not decode gets 400 with a `google.rpc.Status`; another content type 415; another path
404. Each span received is kept, decoded with the OpenTelemetry proto package, with its
resource; `wait_spans(n)` waits for them. Point OTEL_EXPORTER_OTLP_ENDPOINT at `url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.testing.server import serve_app

__all__ = ["OtlpReceiver", "ReceivedSpan"]

PROTOBUF = "application/x-protobuf"
STATUS_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, decoded; ids in hex, as the relay's logs carry them."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int  # SpanKind: 1 internal, 2 server, 3 client
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    resource: dict[str, Any] = field(repr=False)
    scope: str = ""

    @property
    def failed(self) -> bool:
        return self.status_code == STATUS_ERROR


class OtlpReceiver:
    """The collector at `url` once `serve()` runs; `spans` in the order they arrived, `requests`
    the headers of each export request (Content-Encoding, User-Agent...)."""

    def __init__(self) -> None:
        self.url = ""
        self.spans: list[ReceivedSpan] = []
        self.requests: list[dict[str, str]] = []
        self._changed = asyncio.Event()
        self.app = Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[OtlpReceiver]:
        async with serve_app(self.app) as url:
            self.url = url
            yield self

    async def wait_spans(self, n: int, timeout: float = 5.0) -> list[ReceivedSpan]:  # noqa: ASYNC109
        """The spans once at least `n` arrived; TimeoutError naming those that did, after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.spans) < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            names = [s.name for s in self.spans]
            raise TimeoutError(f"{len(names)} spans within {timeout} s, not {n}: {names}") from None
        return list(self.spans)

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    async def _traces(self, request: Request) -> Response:
        self.requests.append(dict(request.headers))
        if request.headers.get("content-type", "").split(";")[0].strip() != PROTOBUF:
            return Response(status_code=415)
        body = await request.body()
        try:
            export = ExportTraceServiceRequest.FromString(_decoded(body, request.headers))
        except (DecodeError, OSError, EOFError, zlib.error, ValueError) as exc:
            status = status_pb2.Status(
                code=3, message=f"cannot decode the request: {exc}"
            )  # INVALID_ARGUMENT
            return Response(status.SerializeToString(), status_code=400, media_type=PROTOBUF)
        self._keep(export)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)

    def _keep(self, export: ExportTraceServiceRequest) -> None:
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=_attributes(span.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in span.events],
                            status_code=span.status.code,
                            status_message=span.status.message,
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )
        self._changed.set()


def _decoded(body: bytes, headers: Any) -> bytes:
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding not in ("", "identity"):
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    return body
