"""One place builds both: the request pipelock judges and the request that goes upstream.

The agent's request is never passed through. From what mitmproxy decoded, `judge` makes a
`Judged` request: method, scheme, authority, target, the end-to-end headers in the agent's order
and case, the body. The scanner's copy is serialised from it (`scanner.build_request`), and once
pipelock allowed it, `apply` writes the same fields into mitmproxy's request, so what mitmproxy
serialises upstream is what was judged:

- **Host / `:authority`** is written by the chain: the CONNECT target (or the URL's host) in
  lowercase, IDNA A-labels, no trailing dot, `:port` only when not the scheme's default. The
  agent's own Host has been checked against it (domain fronting) and is dropped.
- **Framing** is the chain's: `Content-Length` with the body's length when there is a body or
  the method carries one (POST, PUT, PATCH), nothing otherwise; mitmproxy then frames the body
  by that length for HTTP/1.1 and sends DATA frames for h2, whatever the agent spoke.
- **Stripped from both** (`STRIPPED`, plus every name the agent's `Connection` header lists):
  hop-by-hop headers, the agent's Host, Content-Length and Transfer-Encoding (rewritten above),
  `Expect` (mitmproxy answers `100-continue` itself), and `X-Pipelock-Agent` (the chain's own
  join key; pipelock strips it before scanning).
- **Added to the scanner's copy only** (scanner.py): `X-Pipelock-Agent` and
  `X-Bottle-Header-Names` (the names as a value: pipelock scans values only).
- **Hidden from the scanner only**: a bound credential's bytes, in its one exact form
  (`credentials.py`): the scanner's copy carries the header with the secret replaced, the one
  documented difference between the two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from . import policy

STRIPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"host",
        b"content-length",
        b"x-pipelock-agent",
    }
)
# Methods whose requests carry a body: their framing is stated even when it is empty.
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@dataclass(frozen=True)
class Judged:
    method: bytes
    scheme: str
    authority: bytes
    target: bytes
    # End-to-end headers as the agent sent them (order, case), then the chain's framing.
    headers: tuple[tuple[bytes, bytes], ...]
    # Index into `headers` -> the value the scanner's copy carries instead (a bound credential).
    hidden: Mapping[int, bytes]
    body: bytes

    @property
    def url(self) -> bytes:
        return self.scheme.encode() + b"://" + self.authority + self.target

    def scanner_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return tuple(
            (name, self.hidden.get(i, value)) for i, (name, value) in enumerate(self.headers)
        )

    def summary(self) -> dict[str, Any]:
        """What the decision record says was judged and sent (a bound credential's value left
        out), so that a receipt can be compared with it field by field."""
        return {
            "method": self.method.decode("latin-1"),
            "target": self.target.decode("latin-1"),
            "authority": self.authority.decode("ascii"),
            "headers": [
                [name.decode("latin-1"), None if i in self.hidden else value.decode("latin-1")]
                for i, (name, value) in enumerate(self.headers)
            ],
            "body_len": len(self.body),
            "body_sha256": hashlib.sha256(self.body).hexdigest(),
        }


def authority(scheme: str, host: str, port: int) -> bytes:
    """`host[:port]` as the chain writes it; ValueError when the host cannot be a DNS name."""
    host = policy.normalise_host(host)
    if ":" in host:
        name = f"[{host}]".encode("ascii")
    else:
        labels = host.split(".")
        if not all(labels):
            raise ValueError(f"{host!r} has an empty label")
        # Label by label (the codec on a whole URL would encode "https://…" as a label).
        name = b".".join(label.encode("idna") for label in labels)
    if port == policy.DEFAULT_PORTS.get(scheme):
        return name
    return name + b":%d" % port


def judge(view: policy.RequestView, hidden_in_view: Mapping[int, bytes]) -> Judged:
    """The request as it will be judged and sent; ValueError when it cannot be written."""
    listed = {
        token.strip().lower().encode("latin-1")
        for name, value in view.headers
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
        if token.strip()
    }
    headers: list[tuple[bytes, bytes]] = []
    hidden: dict[int, bytes] = {}
    for index, (name, value) in enumerate(view.headers):
        lowered = name.lower()
        if lowered in STRIPPED or lowered in listed:
            continue
        if index in hidden_in_view:
            hidden[len(headers)] = hidden_in_view[index]
        headers.append((name, value))
    body = view.body or b""
    if body or view.method in BODY_METHODS:
        headers.append((b"content-length", b"%d" % len(body)))
    return Judged(
        method=view.method,
        scheme=view.scheme,
        authority=authority(view.scheme, view.host, view.port),
        target=view.target,
        headers=tuple(headers),
        hidden=hidden,
        body=body,
    )


def apply(request: http.Request, judged: Judged) -> None:
    """Writes the judged request into mitmproxy's, whole: nothing of the agent's is left."""
    headers: list[tuple[bytes, bytes]] = list(judged.headers)
    if request.is_http2 or request.is_http3:
        # mitmproxy sends `:authority` from here (h2 upstream) or makes it the Host (h1).
        request.data.authority = judged.authority
        headers = [(name.lower(), value) for name, value in headers]
    else:
        request.data.authority = b""
        headers.insert(0, (b"Host", judged.authority))
    request.data.method = judged.method
    request.data.path = judged.target
    request.data.headers = http.Headers(headers)
    request.data.content = judged.body
    request.data.trailers = None
