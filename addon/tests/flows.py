"""The one place the tests touch mitmproxy.test helpers (they promise no stable API)."""

from collections.abc import Sequence
from typing import Any

from mitmproxy import http
from mitmproxy.addons import default_addons
from mitmproxy.test import taddons, tflow, tutils

# The settings the addon insists on (mitmproxy's defaults are eager and rawtcp).
SAFE = {"connection_strategy": "lazy", "rawtcp": False}


def context(addon: Any) -> taddons.context:
    """A test context with mitmdump's own addons, so every option the addon checks exists."""
    return taddons.context(*default_addons(), addon, loadcore=False)


def https_flow(
    *,
    host: str = "api.example.com",
    port: int = 443,
    method: bytes = b"POST",
    path: bytes = b"/v1/messages",
    headers: Sequence[tuple[bytes, bytes]] | None = None,
    body: bytes = b'{"hello": "world"}',
    http2: bool = False,
    sni: str | None = None,
) -> http.HTTPFlow:
    """A decrypted request inside a CONNECT tunnel to host:port, as the request hook sees it."""
    if headers is None:
        headers = [] if http2 else [(b"Host", host.encode())]
    request = tutils.treq(
        host=host,
        port=port,
        method=method,
        scheme=b"https",
        authority=host.encode() if http2 else b"",
        path=path,
        http_version=b"HTTP/2.0" if http2 else b"HTTP/1.1",
        headers=http.Headers(list(headers)),
        content=body,
    )
    flow = tflow.tflow(req=request)
    flow.client_conn.sni = host if sni is None else sni
    flow.client_conn.tls = True
    flow.server_conn.address = (host, port)
    flow.server_conn.timestamp_tcp_setup = None
    return flow


def upstream_response(flow: http.HTTPFlow, content_type: str, alpn: bytes = b"h2") -> None:
    """What mitmproxy has when an allowed request got its upstream's response headers."""
    flow.response = tutils.tresp(headers=http.Headers([(b"content-type", content_type.encode())]))
    flow.server_conn.timestamp_tcp_setup = 1.0
    flow.server_conn.alpn = alpn
