"""The addon's own checks, made before the scanner is asked (pure functions).

Each closes a way a request could reach an upstream without pipelock having seen what the upstream
will get: a body mitmproxy streamed past the hook, trailers or an upgraded connection the scanner
never sees, a Host that differs from where mitmproxy connects (domain fronting), bytes that cannot
be replayed faithfully to the scanner, a body pipelock cannot scan (encoded, or over its cap), or a
bound credential used outside its binding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import credentials

DEFAULT_PORTS = {"http": 80, "https": 443}
# The ports a bottle may reach (addon/README.md, "Only judged HTTP leaves"): HTTPS through a
# CONNECT tunnel, plain HTTP as an absolute-form request.
DEFAULT_CONNECT_PORTS = "443"
DEFAULT_HTTP_PORTS = "80"
# pipelock never judges the method, so the chain allows only these (plus bottle_extra_methods):
# a method is otherwise a free channel to the upstream (`curl -X <secret>`).
STANDARD_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
TOKEN = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class RequestView:
    """What the checks need from a decrypted request; built from a mitmproxy flow in `hooks`."""

    scheme: str
    # Where mitmproxy will connect: the CONNECT target inside a tunnel, else the URL's host.
    host: str
    port: int
    # The TLS server name the client sent, when the client side is TLS.
    sni: str | None
    # h2/h3 `:authority`, when present.
    authority: str | None
    method: bytes
    # The request target as received (origin-form path and query).
    target: bytes
    headers: Sequence[tuple[bytes, bytes]]
    # None when mitmproxy streamed the body instead of buffering it.
    body: bytes | None
    streamed: bool
    has_trailers: bool


@dataclass(frozen=True)
class Block:
    code: str
    message: str
    # The status the agent gets: 403, or 413 for a body too large to be judged.
    status: int = 403


@dataclass(frozen=True)
class Ports:
    """A set of TCP ports: `443`, `443,8443`, `8000-8999`; never empty, never port 0."""

    ranges: tuple[tuple[int, int], ...]

    @staticmethod
    def parse(text: str) -> Ports:
        ranges = []
        for item in text.split(","):
            item = item.strip()
            low, dash, high = item.partition("-")
            if not low.isdigit() or (dash and not high.isdigit()):
                raise ValueError(f"{text!r}: {item!r} is not a port or a range like 8000-8999")
            first, last = int(low), int(high) if dash else int(low)
            if not 0 < first <= last < 65536:
                raise ValueError(f"{text!r}: {item!r} is not within 1-65535")
            ranges.append((first, last))
        return Ports(tuple(ranges))

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(a <= port <= b for a, b in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ranges)


def parse_methods(extra: str) -> frozenset[bytes]:
    """The standard methods plus `extra` (comma-separated uppercase tokens)."""
    methods = set(STANDARD_METHODS)
    for item in extra.split(","):
        token = item.strip().encode("ascii", "replace")
        if not token:
            continue
        if not TOKEN.match(token) or token.upper() != token or token == b"CONNECT":
            raise ValueError(f"{item.strip()!r} is not an uppercase method name (CONNECT never)")
        methods.add(token)
    return frozenset(methods)


def connect_problem(*, port: int, in_tls: bool, connect_ports: Ports) -> Block | None:
    """Why a CONNECT is refused, if it is: only to the bottle's ports, and only from the proxy
    port itself (a CONNECT inside a decrypted tunnel would be sent on to the upstream)."""
    if in_tls:
        return Block("nested_connect", "a CONNECT inside a tunnel is not accepted")
    if port not in connect_ports:
        return Block(
            "port_not_allowed",
            f"CONNECT to port {port} is not allowed (this bottle allows {connect_ports})",
        )
    return None


@dataclass(frozen=True)
class Cleared:
    """The request may be put to the scanner; `hidden_headers` (index -> the value the scanner's
    copy carries instead) are the bound credentials' exact uses."""

    hidden_headers: Mapping[int, bytes] = field(default_factory=dict)
    credential_headers: tuple[str, ...] = ()


def check(
    view: RequestView,
    *,
    max_body_bytes: int,
    bindings: Sequence[credentials.Binding],
    ports: Mapping[str, Ports] | None = None,
    methods: frozenset[bytes] = STANDARD_METHODS,
) -> Block | Cleared:
    allowed_ports = ports if ports is not None else DEFAULT_PORT_SETS
    if view.port not in allowed_ports.get(view.scheme, Ports(())):
        return Block(
            "port_not_allowed",
            f"{view.scheme} to port {view.port} is not allowed (this bottle allows "
            f"{allowed_ports.get(view.scheme, 'none')})",
        )
    if view.method not in methods:
        return Block(
            "method_not_allowed",
            "the request method is not one this bottle allows (pipelock does not judge methods)",
        )
    if view.streamed or view.body is None:
        return Block("body_streamed", "the request body was streamed, so it was never scanned")
    if view.has_trailers:
        return Block("trailers", "request trailers are not scanned")
    if _header_values(view.headers, b"upgrade"):
        return Block("upgrade", "protocol upgrades (e.g. WebSocket) are not scanned")
    fronting = fronting_problem(view)
    if fronting:
        return Block("domain_fronting", fronting)
    unsendable = unsendable_problem(view)
    if unsendable:
        return Block("unsendable_request", unsendable)
    codings = [
        token.strip().lower()
        for value in _header_values(view.headers, b"transfer-encoding")
        for token in value.decode("latin-1").split(",")
    ]
    if codings and codings != ["chunked"]:
        return Block(
            "transfer_coding",
            "a Transfer-Encoding other than plain chunked is not accepted",
        )
    if view.body:
        encodings = [
            token.strip().lower()
            for value in _header_values(view.headers, b"content-encoding")
            for token in value.decode("latin-1").split(",")
        ]
        encoded = [e for e in encodings if e not in ("", "identity")]
        if encoded:
            return Block(
                "body_encoded",
                "the request body has a Content-Encoding; compressed bodies cannot be scanned "
                "for secrets",
            )
        if len(view.body) > max_body_bytes:
            return Block(
                "body_too_large",
                f"the request body ({len(view.body)} bytes) is larger than the scanner may judge "
                f"({max_body_bytes} bytes: bottle_max_body_bytes, and the verdict time cap)",
                413,
            )
    use = credentials.inspect(
        bindings,
        scheme=view.scheme,
        host=normalise_host(view.host),
        port=view.port,
        headers=view.headers,
        target=view.target,
        body=view.body,
    )
    if use.misuse:
        return Block("credential_misuse", use.misuse)
    return Cleared(use.hidden_headers, use.hidden_names)


def fronting_problem(view: RequestView) -> str | None:
    """Why the names in the request disagree with where mitmproxy connects, if they do."""
    target = normalise_host(view.host)
    default_port = DEFAULT_PORTS.get(view.scheme)
    if view.sni is not None and normalise_host(view.sni) != target:
        return "the TLS server name differs from the CONNECT target"
    names = [("Host", value.decode("latin-1")) for value in _header_values(view.headers, b"host")]
    if len(names) > 1:
        return "the request has more than one Host header"
    if view.authority:
        names.append((":authority", view.authority))
    for label, value in names:
        parsed = parse_authority(value)
        # The messages name the field, never its value: the agent's bytes are not echoed into
        # the decision log (addon/README.md, "Logs").
        if parsed is None:
            return f"{label} is not a valid authority"
        host, port = parsed
        if host != target or (port if port is not None else default_port) != view.port:
            return f"{label} differs from the connection target"
    return None


def unsendable_problem(view: RequestView) -> str | None:
    """Bytes the scanner's HTTP/1.1 request could not carry as they are: refuse, don't rewrite."""
    if not view.target.startswith(b"/") or any(b <= 0x20 or b == 0x7F for b in view.target):
        return "the request target is not an origin-form path the scanner can be shown"
    if b"#" in view.target:
        # A URL parser drops the fragment from what is judged; the upstream would get it.
        return "the request target has a fragment (#), which clients never send"
    if not TOKEN.match(view.method):
        return "the request method is not a token"
    for name, value in view.headers:
        if not name or any(b <= 0x20 or b in b":\x7f" for b in name):
            return "a request header name has characters the scanner cannot be shown"
        if any(b in b"\r\n\x00" for b in value):
            return "a request header value has CR, LF or NUL"
    return None


def normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def parse_authority(value: str) -> tuple[str, int | None] | None:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; None when malformed."""
    value = value.strip()
    if not value or any(ch in value for ch in "/?#@ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:
        return None
    else:
        host, _, port_text = value.partition(":")
        port_text = port_text if ":" in value else None
    if not host:
        return None
    if port_text is None:
        return normalise_host(host), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return normalise_host(host), int(port_text)


def _header_values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


DEFAULT_PORT_SETS = {
    "https": Ports.parse(DEFAULT_CONNECT_PORTS),
    "http": Ports.parse(DEFAULT_HTTP_PORTS),
}
