"""The harness itself, through a plain mitmdump (no addon): if these fail, the other failures
say nothing about the addon."""

from __future__ import annotations

import json
import socket

from itsupport import SSE_EVENTS, ChainFactory, H2Req, Scanner, allow, block


def test_plain_mitmdump_h1_and_h2_reach_the_stub_upstream(make_chain: ChainFactory) -> None:
    c = make_chain(addon=False)
    r = c.h1("GET", "/hello?x=1", headers=[("X-Test", "1")])
    assert r.status == 200, r.text
    assert json.loads(r.body) == {"ok": True, "method": "GET", "target": "/hello?x=1"}
    [h2r] = c.h2([H2Req("GET", "/two")])
    assert h2r.status == 200
    assert h2r.http_version == "HTTP/2.0"
    assert [q.target for q in c.upstream.requests] == ["/hello?x=1", "/two"]
    assert c.upstream.requests[0].sni == "localhost"
    assert all(conn.tls_ok for conn in c.upstream.connections)
    assert c.scanner.requests == []


def test_plain_mitmdump_sse_route_delivers_all_events(make_chain: ChainFactory) -> None:
    c = make_chain(addon=False)
    r = c.h1("GET", "/sse")
    assert r.status == 200
    assert r.body.count(b"data: event") == SSE_EVENTS


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
        return buf


def test_stub_scanner_answers_as_programmed(scanner: Scanner) -> None:
    req = (
        b"POST https://localhost:1/p?q=1 HTTP/1.1\r\nHost: localhost:1\r\n"
        b"X-Pipelock-Agent: abc\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    scanner.set(allow())
    assert _raw_exchange(scanner.port, req).startswith(b"HTTP/1.1 502 ")
    scanner.set(block())
    out = _raw_exchange(scanner.port, req)
    assert out.startswith(b"HTTP/1.1 403 ")
    assert b"x-pipelock-block-reason: dlp_match" in out.lower()
    assert out.endswith(b"blocked: request body contains secret: AWS Access ID\n")
    assert [r.target for r in scanner.requests] == ["https://localhost:1/p?q=1"] * 2
    assert scanner.requests[0].header("x-pipelock-agent") == "abc"
    assert scanner.requests[0].body == b"hi"
