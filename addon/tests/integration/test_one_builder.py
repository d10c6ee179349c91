"""The bytes judged are the bytes that leave: through a real mitmdump, the stub scanner's copy and
the stub upstream's receipt of the same request are equal field by field (canonical.py), for an
HTTP/1.1 and an h2 client, whatever the agent put around them."""

from __future__ import annotations

from itsupport import Chain, H2Req, ScannerRequest, UpstreamRequest

SECRET = "AKIAIOSFODNN7EXAMPLE"


def assert_same_request(asked: ScannerRequest, got: UpstreamRequest, port: int) -> None:
    """Field by field; the scanner's copy is in absolute form and carries the join key."""
    assert asked.method == got.method
    assert asked.target == f"https://localhost:{port}{got.target}"
    # The scanner's copy adds two headers of the chain's own: the join key and the names.
    scanner_only = ("x-pipelock-agent", "x-bottle-header-names")
    assert [h for h in asked.headers if h[0] not in scanner_only] == got.headers
    assert asked.body == got.body
    for name, value in got.headers:
        assert SECRET not in value, (name, value)


def test_h1_what_the_scanner_judged_is_what_the_upstream_got(chain: Chain) -> None:
    c = chain
    body = b'{"hello": "world"}'
    r = c.h1(
        "POST",
        "/v1/x?q=1",
        host_header=f"LOCALHOST.:{c.upstream.port}",
        headers=[
            ("X-Pipelock-Agent", SECRET),
            ("Keep-Alive", SECRET),
            ("Proxy-Connection", SECRET),
            ("Connection", "keep-alive, X-Leak"),
            ("X-Leak", SECRET),
            ("TE", "trailers"),
            ("X-A", "1"),
            ("Transfer-Encoding", "chunked"),
            ("x-b", "2"),
        ],
        body=body,
    )
    assert r.status == 200, r.text
    (asked,) = c.scanner.requests
    (got,) = c.upstream.requests
    assert_same_request(asked, got, c.upstream.port)
    assert got.headers == [
        ("host", f"localhost:{c.upstream.port}"),
        ("x-a", "1"),
        ("x-b", "2"),
        ("content-length", str(len(body))),
    ]


def test_h2_client_to_an_h1_upstream_what_was_judged_is_what_left(chain: Chain) -> None:
    c = chain
    body = b"a body sent in h2 DATA frames"
    (r,) = c.h2(
        [
            H2Req(
                "PUT",
                "/v1/y",
                headers=[("x-pipelock-agent", SECRET), ("te", "trailers"), ("x-a", "1")],
                body=body,
            )
        ]
    )
    assert r.status == 200, r.text
    (asked,) = c.scanner.requests
    (got,) = c.upstream.requests
    assert_same_request(asked, got, c.upstream.port)
    assert got.headers == [
        ("host", f"localhost:{c.upstream.port}"),
        ("x-a", "1"),
        ("content-length", str(len(body))),
    ]


def test_a_method_outside_the_closed_set_never_leaves(chain: Chain) -> None:
    c = chain
    r = c.h1(SECRET, "/")
    assert r.status == 403 and r.header("x-bottle-block-reason") == "method_not_allowed"
    assert c.scanner.requests == [] and c.upstream.connections == []
    # ... and is not written to the decision record either.
    (record,) = c.mitm.wait_decisions(1)
    assert SECRET not in str(record), record
