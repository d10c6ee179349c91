"""pipelock's answers, read as verdicts: only its request-side blocks block; only its failed
forward leg allows; everything else is no verdict (and the hooks block it)."""

import pytest

from bottle_addon.verdict import Kind, ScannerAnswer, read_answer

TEXT = (("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff"))
V24 = (
    ("X-Pipelock-Block-Reason", "dlp_match"),
    ("X-Pipelock-Block-Version", "1"),
    ("X-Pipelock-Block-Severity", "critical"),
    ("X-Pipelock-Block-Retry", "none"),
)


def answer(status: int, body: bytes, headers: tuple[tuple[str, str], ...] = TEXT) -> ScannerAnswer:
    return ScannerAnswer(status, headers, body)


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind"),
    [
        # The forward leg that cannot reach anything: all request-side checks passed.
        (502, b"forward proxy fetch failed\n", TEXT, Kind.ALLOW),
        # Request-side blocks, v2.3 (no headers) and v2.4 (block headers).
        (403, b"blocked: request body contains secret: AWS Access ID\n", TEXT, Kind.BLOCK),
        (403, b"blocked: request header contains secret\n", TEXT + V24, Kind.BLOCK),
        (403, b"blocked: SSRF blocked: x resolves to internal IP 10.0.0.7\n", TEXT, Kind.BLOCK),
        (403, b"blocked: request body exceeds max_body_bytes (5242880)\n", TEXT, Kind.BLOCK),
        (403, b"blocked: invalid JSON body\n", TEXT, Kind.BLOCK),
        (403, b"blocked: domain blocked: evil.com matches evil.com\n", TEXT, Kind.BLOCK),
        (429, b"blocked: rate limit exceeded for api.example.com\n", TEXT, Kind.BLOCK),
        # Response-side blocks: pipelock reached an upstream, so this is no verdict.
        (403, b"blocked: compressed response cannot be scanned\n", TEXT, Kind.UNAVAILABLE),
        (403, b"blocked: response contains injection\n", TEXT, Kind.UNAVAILABLE),
        (403, b"blocked: media_policy: audio stripped\n", TEXT, Kind.UNAVAILABLE),
        (403, b"blocked: redirect blocked: SSRF\n", TEXT, Kind.UNAVAILABLE),
        # A request-side-looking text with a response-side v2.4 reason is not trusted either.
        (
            403,
            b"blocked: something\n",
            (*TEXT, ("X-Pipelock-Block-Reason", "compressed_response")),
            Kind.UNAVAILABLE,
        ),
        # An upstream's own 403 that a forwarding scanner relayed is not a pipelock block.
        (403, b"<html>Forbidden</html>", (("Content-Type", "text/html"),), Kind.UNAVAILABLE),
        (403, b'{"error":"forbidden"}', (("Content-Type", "application/json"),), Kind.UNAVAILABLE),
        (403, b"Forbidden\n", TEXT, Kind.UNAVAILABLE),
        # A forwarded answer means the scanner reached an upstream.
        (200, b"hello", TEXT, Kind.UNAVAILABLE),
        (301, b"", TEXT, Kind.UNAVAILABLE),
        (404, b"not found\n", TEXT, Kind.UNAVAILABLE),
        # Other failures of the scanner.
        (500, b"internal error\n", TEXT, Kind.UNAVAILABLE),
        (502, b"bad gateway\n", TEXT, Kind.UNAVAILABLE),
        (502, b"forward proxy fetch failed\n", (("Content-Type", "text/html"),), Kind.UNAVAILABLE),
        (503, b"scanner unavailable during reload\n", TEXT, Kind.UNAVAILABLE),
        (405, b"forward proxy not enabled\n", TEXT, Kind.UNAVAILABLE),
        (403, b"blocked: \xff\xfe\n", TEXT, Kind.UNAVAILABLE),
    ],
)
def test_answers(
    status: int, body: bytes, headers: tuple[tuple[str, str], ...], kind: Kind
) -> None:
    assert read_answer(answer(status, body, headers)).kind is kind


def test_a_block_relays_pipelocks_status_body_and_block_headers() -> None:
    body = b"blocked: request header contains secret\n"
    verdict = read_answer(answer(403, body, (*TEXT, *V24, ("Date", "x"), ("Server", "y"))))
    assert verdict.kind is Kind.BLOCK
    assert (verdict.status, verdict.body) == (403, body)
    assert verdict.reason == "blocked: request header contains secret"
    assert verdict.block_reason == "dlp_match"
    relayed = {name.lower() for name, _ in verdict.headers}
    assert relayed == {
        "content-type",
        "x-content-type-options",
        "x-pipelock-block-reason",
        "x-pipelock-block-version",
        "x-pipelock-block-severity",
        "x-pipelock-block-retry",
    }


def test_the_kill_switch_blocks_with_its_own_status() -> None:
    body = b'{"error":"kill_switch_active","message":"Emergency deny-all active"}'
    verdict = read_answer(answer(503, body, (("Content-Type", "application/json"),)))
    assert verdict.kind is Kind.BLOCK
    assert verdict.status == 503
    assert "Emergency deny-all active" in verdict.reason


def test_a_502_carrying_a_block_reason_is_no_verdict() -> None:
    headers = (*TEXT, ("X-Pipelock-Block-Reason", "dlp_match"))
    verdict = read_answer(answer(502, b"forward proxy fetch failed\n", headers))
    assert verdict.kind is Kind.UNAVAILABLE


def test_no_verdict_explains_what_to_fix() -> None:
    assert (
        "forward_proxy.enabled" in read_answer(answer(405, b"forward proxy not enabled\n")).reason
    )
    assert (
        "reached an upstream"
        in read_answer(answer(403, b"blocked: compressed response cannot be scanned\n")).reason
    )
    assert "forwarded the request" in read_answer(answer(200, b"ok")).reason
