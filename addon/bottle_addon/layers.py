"""What mitmproxy may do with a connection: HTTP, judged, and nothing else (the layer rule).

mitmproxy 12.2.3 picks a protocol layer for each connection in its `next_layer` hook, from the
first bytes, the CONNECT port and its options. Its built-in choice can relay bytes no request
hook ever sees: DNS for CONNECT targets on ports 53 and 5353 (`DNSLayer` relays the message to the
target), raw TCP/UDP (`TCPLayer`, `UDPLayer`), QUIC (`RawQuicLayer`), plaintext HTTP inside a
tunnel, and TLS inside TLS. This addon's `next_layer` runs before the built-in one (script addons
are loaded ahead of it) and makes the whole decision itself, from a closed list:

| where | the client sends | layer |
|---|---|---|
| the proxy port | not a TLS record | `HttpLayer(regular)`: absolute-form requests and CONNECT |
| a CONNECT tunnel (one deep) | a TLS record | `ServerTLSLayer` → `ClientTLSLayer` (decrypted) |
| inside that TLS | anything | `HttpLayer(transparent)`: HTTP/1.1 or h2 requests, each judged |

Everything else is refused: the client connection is closed before any byte goes anywhere, and
the refusal is logged and written to the decision record (`layer_refused`). A decision is never
deferred: a built-in choice made after ours would go unchecked.
"""

from __future__ import annotations

from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import ClientTLSLayer, HttpLayer, ServerTLSLayer, modes
from mitmproxy.proxy.layers.http import HTTPMode

# (layer, why) for a refusal; (layer, None) for an accepted decision.
Decision = tuple[layer.Layer, str | None]


def decide(context: Context, data_client: bytes) -> Decision:
    """The next layer for a connection whose client has sent `data_client` so far."""
    problem = _problem(context, data_client)
    if problem is not None:
        return Refused(context, problem), problem
    tunnel_depth = sum(isinstance(x, HttpLayer) for x in context.layers)
    if tunnel_depth == 0:
        return HttpLayer(context, HTTPMode.regular), None
    if not _has_client_tls(context):
        server_tls = ServerTLSLayer(context)
        server_tls.child_layer = ClientTLSLayer(context)
        return server_tls, None
    return HttpLayer(context, HTTPMode.transparent), None


def _problem(context: Context, data_client: bytes) -> str | None:
    if context.client.transport_protocol != "tcp":
        return "only TCP connections are proxied"
    if not context.layers or not isinstance(context.layers[0], modes.HttpProxy):
        return "only the regular proxy mode is supported"
    tunnel_depth = sum(isinstance(x, HttpLayer) for x in context.layers)
    tls_layers = sum(isinstance(x, ClientTLSLayer) for x in context.layers)
    looks_tls = starts_like_tls_record(data_client)
    if tunnel_depth == 0:
        if tls_layers or looks_tls:
            return "TLS to the proxy port itself is not accepted: use CONNECT"
        return None
    if tunnel_depth > 1:
        return "a tunnel inside a tunnel is not accepted"
    if tls_layers == 0:
        if not looks_tls:
            return (
                "a CONNECT tunnel must carry TLS (HTTPS); other bytes (plaintext HTTP, DNS, "
                "raw TCP) are not relayed"
            )
        return None
    if tls_layers > 1 or looks_tls:
        return "TLS inside TLS is not accepted"
    return None


def _has_client_tls(context: Context) -> bool:
    return any(isinstance(x, ClientTLSLayer) for x in context.layers)


class Refused(layer.Layer):
    """Closes the client connection at once; nothing is relayed, no server connection opened."""

    def __init__(self, context: Context, why: str) -> None:
        super().__init__(context)
        self.why = why
        self._closed = False

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if not self._closed:
            self._closed = True
            yield commands.CloseConnection(self.context.client)

    def __repr__(self) -> str:
        return f"Refused({self.why!r})"
