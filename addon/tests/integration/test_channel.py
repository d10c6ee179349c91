"""Every request gets its own verdict: kept-alive connections, h2 streams, methods, big bodies,
plain HTTP, and a scanner that closes its kept-alive connections."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from itsupport import (
    ALLOW_BODY,
    Chain,
    ChainFactory,
    H2Req,
    Pki,
    Respond,
    ScannerRequest,
    Upstream,
    allow,
    block,
    h1_plain_request,
    h1_session,
    header,
)


def block_marked(r: ScannerRequest) -> Respond:
    return block() if "/blocked" in r.target else allow()


def test_each_request_on_a_kept_alive_h1_connection_is_scanned(chain: Chain) -> None:
    c = chain
    c.scanner.behaviour = block_marked
    rs = h1_session(
        c.mitm.port,
        c.mitm.ca_pem,
        "localhost",
        c.upstream.port,
        [("GET", "/one", b""), ("POST", "/blocked", b"x"), ("GET", "/three", b"")],
    )
    assert [r.status for r in rs] == [200, 403, 200]
    assert [q.target for q in c.scanner.requests] == [
        c.url("/one"),
        c.url("/blocked"),
        c.url("/three"),
    ]
    assert [q.target for q in c.upstream.requests] == ["/one", "/three"]
    ids = [q.header("x-pipelock-agent") for q in c.scanner.requests]
    assert len(set(ids)) == 3


def test_mixed_verdicts_on_one_h2_connection(chain: Chain) -> None:
    c = chain
    c.scanner.behaviour = block_marked
    rs = c.h2(
        [
            H2Req("GET", "/a"),
            H2Req("POST", "/blocked", body=b"secret"),
            H2Req("GET", "/b"),
        ]
    )
    assert [r.status for r in rs] == [200, 403, 200]
    assert rs[1].header("x-pipelock-block-reason") == "dlp_match"
    assert sorted(q.target for q in c.upstream.requests) == ["/a", "/b"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_method_reaches_the_scanner_unchanged(chain: Chain, method: str) -> None:
    """Same method to the scanner, except HEAD: asked as GET, since pipelock's (Go's) answer to
    HEAD has no body to read the verdict from (the addon's documented choice)."""
    c = chain
    body = b"" if method in ("HEAD", "OPTIONS") else b'{"m": 1}'
    r = c.h1(method, "/m?x=y", body=body)
    assert r.status == 200
    [sc] = c.scanner.requests
    asked = "GET" if method == "HEAD" else method
    assert (sc.method, sc.target, sc.body) == (asked, c.url("/m?x=y"), body)
    [up] = c.upstream.requests
    assert up.method == method


def test_scanner_copy_has_no_hop_by_hop_headers_and_one_host(chain: Chain) -> None:
    c = chain
    r = c.h1(
        "POST",
        "/hop",
        headers=[("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("X-End", "e")],
        body=b"abc",
    )
    assert r.status == 200
    [sc] = c.scanner.requests
    names = [k for k, _ in sc.headers]
    for hop in ("keep-alive", "transfer-encoding", "upgrade", "te", "proxy-connection"):
        assert hop not in names, hop
    assert sc.header("connection") in (None, "keep-alive", "close")
    assert names.count("host") == 1
    assert names.count("content-length") == 1
    assert names.count("x-pipelock-agent") == 1
    assert sc.header("x-end") == "e"


def test_large_allowed_body_is_scanned_and_forwarded_intact(chain: Chain) -> None:
    c = chain
    body = bytes(range(256)) * 4096  # 1 MiB
    r = c.h1("POST", "/big", body=body, headers=[("Content-Type", "application/octet-stream")])
    assert r.status == 200, r.text
    assert c.scanner.requests[0].body == body
    assert c.upstream.requests[0].body == body


def test_scanner_closing_idle_kept_alive_connections_causes_no_false_block(chain: Chain) -> None:
    """pipelock drops idle connections (IdleTimeout); a pooled one must not turn into a 502."""
    c = chain
    c.scanner.set(Respond(502, ALLOW_BODY, close_after_s=0.05))
    statuses = []
    for i in range(4):
        statuses.append(c.h1("GET", f"/idle{i}").status)
        time.sleep(0.2)
    assert statuses == [200] * 4
    assert [q.target for q in c.upstream.requests] == [f"/idle{i}" for i in range(4)]


def test_scanner_answering_connection_close_is_fine(chain: Chain) -> None:
    c = chain
    c.scanner.set(
        Respond(502, ALLOW_BODY, (("Content-Type", "text/plain"), ("Connection", "close")))
    )
    assert [c.h1("GET", f"/cc{i}").status for i in range(3)] == [200] * 3
    assert len(c.scanner.requests) == 3


@pytest.fixture(scope="module")
def plain_upstream(pki: Pki) -> Iterator[Upstream]:
    up = Upstream(pki, tls=False)
    up.start()
    yield up
    up.stop()


def test_plain_http_request_is_scanned_with_an_http_url(
    chain: Chain, plain_upstream: Upstream
) -> None:
    c = chain
    plain_upstream.reset()
    c.scanner.behaviour = block_marked
    url = f"http://127.0.0.1:{plain_upstream.port}/plain?q=1"
    r = h1_plain_request(c.mitm.port, "GET", url, headers=[("X-P", "1")])
    assert r.status == 200, r.text
    [sc] = c.scanner.requests
    assert sc.target == url
    assert sc.header("x-p") == "1"
    [up] = plain_upstream.requests
    assert up.target == "/plain?q=1"
    assert header(up.headers, "x-pipelock-agent") is None

    blocked = h1_plain_request(
        c.mitm.port, "POST", f"http://127.0.0.1:{plain_upstream.port}/blocked", body=b"k"
    )
    assert blocked.status == 403
    assert len(plain_upstream.requests) == 1
    assert len(plain_upstream.connections) == 1


def test_head_block_is_relayed(chain: Chain) -> None:
    """A blocked HEAD gets pipelock's block status and headers (not a 502)."""
    c = chain
    c.scanner.set(block())
    r = c.h1("HEAD", "/h")
    assert r.status == 403, r.headers
    assert r.header("x-pipelock-block-reason") == "dlp_match"
    assert c.upstream.connections == []


def test_chunked_request_body_is_scanned_whole(chain: Chain) -> None:
    c = chain
    body = b"0123456789" * 500
    r = c.h1("POST", "/chunked", headers=[("Transfer-Encoding", "chunked")], body=body)
    assert r.status == 200, r.text
    [sc] = c.scanner.requests
    assert sc.body == body
    assert sc.header("content-length") == str(len(body))
    assert sc.header("transfer-encoding") is None
    assert c.upstream.requests[0].body == body


def test_expect_100_continue(chain: Chain) -> None:
    c = chain
    r = c.h1("POST", "/expect", headers=[("Expect", "100-continue")], body=b"x" * 2000)
    assert r.status == 200, r.text
    assert c.scanner.requests[0].body == b"x" * 2000
    assert c.upstream.requests[0].body == b"x" * 2000


def test_a_late_answer_is_never_taken_as_the_next_verdict(make_chain: ChainFactory) -> None:
    """After a timeout, the scanner's late 'allow' must not be read as the next request's."""
    c = make_chain({"bottle_verdict_timeout_ms": "500"})
    c.scanner.behaviour = lambda r: (
        Respond(502, ALLOW_BODY, delay_s=0.8) if "/late" in r.target else block()
    )
    first = c.h1("GET", "/late")
    assert first.status == 502
    assert first.header("x-bottle-block-reason") == "verdict_unavailable"
    time.sleep(0.5)  # the late allow is now sitting on the first connection
    second = c.h1("POST", "/next", body=b"AKIAIOSFODNN7EXAMPLE")
    assert second.status == 403, second.text
    assert c.upstream.connections == []
