"""TwiML as the fake Twilio reads it: `Twiml`, the relay's parsed answer to the incoming-call webhook.

`FakeTwilioCall.fetch_twiml` (relay/testing/twilio.py) returns one, and `connect` opens the
`<Connect><Stream>` URL it names.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit


def ws_url(http_url: str) -> str:
    """http(s)://host → ws(s)://host; ws(s) URLs unchanged."""
    parts = urlsplit(http_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class Twiml:
    """The relay's answer to the incoming-call webhook.

    `stream_url` is the `url` of `<Connect><Stream>` exactly as written (possibly relative; see
    `resolved_stream_url`), `parameters` its `<Parameter name value>` pairs, `stream_attributes`
    all its attributes. `say` joins the texts of every `<Say>` (None when there is none), `hangup`
    tells whether a `<Hangup/>` is present, `verbs` lists the top-level verbs in order.
    `parse_error` is set when the body is not XML (e.g. a 403 page).
    """

    status_code: int
    body: str
    request_url: str
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    stream_attributes: dict[str, str] = field(default_factory=dict)
    say: str | None = None
    hangup: bool = False
    verbs: list[str] = field(default_factory=list)
    parse_error: str | None = None

    @property
    def resolved_stream_url(self) -> str | None:
        """The stream URL made absolute against the webhook's public URL (https → wss)."""
        if self.stream_url is None:
            return None
        return ws_url(urljoin(self.request_url, self.stream_url))

    @classmethod
    def parse(cls, status_code: int, body: str, request_url: str) -> Twiml:
        """Parses a webhook response body; never raises (see `parse_error`)."""
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            return cls(status_code, body, request_url, parse_error=str(exc))
        if root.tag != "Response":
            return cls(status_code, body, request_url, parse_error=f"root element is <{root.tag}>")
        stream = root.find("./Connect/Stream")
        parameters: dict[str, str] = {}
        attributes: dict[str, str] = {}
        if stream is not None:
            attributes = dict(stream.attrib)
            for param in stream.findall("./Parameter"):
                parameters[param.get("name", "")] = param.get("value", "")
        says = [(el.text or "").strip() for el in root.iter("Say")]
        return cls(
            status_code=status_code,
            body=body,
            request_url=request_url,
            stream_url=attributes.get("url"),
            parameters=parameters,
            stream_attributes=attributes,
            say=" ".join(says) if says else None,
            hangup=root.find(".//Hangup") is not None,
            verbs=[child.tag for child in root],
        )
