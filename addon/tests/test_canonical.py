"""One builder for both: what the scanner judges is what mitmproxy sends upstream."""

import dataclasses

import pytest
from flows import https_flow

from bottle_addon import canonical, scanner
from bottle_addon.policy import RequestView

SECRET = b"AKIAIOSFODNN7EXAMPLE"

BASE = RequestView(
    scheme="https",
    host="api.example.com",
    port=443,
    sni="api.example.com",
    authority=None,
    method=b"POST",
    target=b"/v1/messages",
    headers=[(b"Host", b"api.example.com"), (b"Content-Type", b"application/json")],
    body=b'{"a": 1}',
    streamed=False,
    has_trailers=False,
)


def with_headers(*extra: tuple[bytes, bytes], **change: object) -> RequestView:
    return dataclasses.replace(BASE, headers=[*BASE.headers, *extra], **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "header",
    [
        (b"X-Pipelock-Agent", SECRET),
        (b"Keep-Alive", SECRET),
        (b"Proxy-Connection", SECRET),
        (b"Proxy-Authorization", b"Basic " + SECRET),
        (b"TE", SECRET),
        (b"Trailer", SECRET),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", SECRET),
        (b"Expect", SECRET),
        (b"Content-Length", b"999"),
        (b"host", b"other.example"),
    ],
)
def test_hop_by_hop_and_chain_owned_headers_leave_neither_copy(header: tuple[bytes, bytes]) -> None:
    judged = canonical.judge(with_headers(header), {})
    names = [name.lower() for name, _ in judged.headers]
    assert header[0].lower() not in names or header[0].lower() == b"content-length"
    assert all(SECRET not in value for _, value in judged.headers)
    assert judged.headers[-1] == (b"content-length", b"8")


def test_names_the_connection_header_lists_leave_both_copies() -> None:
    view = with_headers((b"Connection", b"keep-alive, X-Leak"), (b"X-Leak", SECRET), (b"X-B", b"1"))
    judged = canonical.judge(view, {})
    assert judged.headers == (
        (b"Content-Type", b"application/json"),
        (b"X-B", b"1"),
        (b"content-length", b"8"),
    )


def test_end_to_end_headers_keep_their_order_case_and_repeats() -> None:
    view = with_headers((b"X-A", b"1"), (b"x-b", b"2"), (b"X-A", b"3"))
    judged = canonical.judge(view, {})
    assert judged.headers[:4] == (
        (b"Content-Type", b"application/json"),
        (b"X-A", b"1"),
        (b"x-b", b"2"),
        (b"X-A", b"3"),
    )


@pytest.mark.parametrize(
    ("method", "body", "framing"),
    [
        (b"GET", b"", None),
        (b"DELETE", b"", None),
        (b"POST", b"", b"0"),
        (b"PUT", b"", b"0"),
        (b"GET", b"x" * 5, b"5"),
        (b"POST", b"x" * 70000, b"70000"),
    ],
)
def test_the_chain_states_the_framing(method: bytes, body: bytes, framing: bytes | None) -> None:
    judged = canonical.judge(dataclasses.replace(BASE, method=method, body=body), {})
    lengths = [value for name, value in judged.headers if name == b"content-length"]
    assert lengths == ([framing] if framing is not None else [])


@pytest.mark.parametrize(
    ("host", "port", "authority"),
    [
        ("ExAmPlE.cOm.......", 443, b"example.com"),
        ("example.com.", 8443, b"example.com:8443"),
        ("bücher.example", 443, b"xn--bcher-kva.example"),
        ("::1", 443, b"[::1]"),
    ],
)
def test_the_chain_writes_the_authority(host: str, port: int, authority: bytes) -> None:
    judged = canonical.judge(dataclasses.replace(BASE, host=host, port=port), {})
    assert judged.authority == authority
    # The IDNA codec applied to a whole URL once produced b"xn--https://...": never again.
    assert judged.url == b"https://" + authority + b"/v1/messages"


def test_a_host_that_cannot_be_a_dns_name_cannot_be_written() -> None:
    with pytest.raises(ValueError):
        canonical.judge(dataclasses.replace(BASE, host="a..b"), {})


def test_a_bound_credential_is_hidden_from_the_scanners_copy_only() -> None:
    view = with_headers((b"Keep-Alive", b"x"), (b"X-Api-Key", b"the-bound-key"))
    judged = canonical.judge(view, {3: b"redacted"})
    asked = scanner.build_request(judged, agent_id="f")
    assert (b"X-Api-Key", b"the-bound-key") in judged.headers
    assert (b"X-Api-Key", b"the-bound-key") not in asked.headers
    assert (b"X-Api-Key", b"redacted") in asked.headers
    assert len(asked.headers) == len(judged.headers) + 1  # + X-Bottle-Header-Names


@pytest.mark.parametrize("http2", [False, True])
def test_what_mitmproxy_sends_is_what_the_scanner_was_asked(http2: bool) -> None:
    headers = [
        (b"Host", b"API.example.com"),
        (b"X-Pipelock-Agent", SECRET),
        (b"Connection", b"x-leak"),
        (b"x-leak", SECRET),
        (b"Content-Length", b"99"),
        (b"x-a", b"1"),
    ]
    if http2:  # no Host, and no Connection (so no names it lists) in h2
        dropped = (b"connection", b"host", b"x-leak")
        headers = [(k.lower(), v) for k, v in headers if k.lower() not in dropped]
    flow = https_flow(host="api.example.com", headers=headers, http2=http2, body=b"hello")
    view = dataclasses.replace(
        BASE,
        headers=list(flow.request.headers.fields),
        body=flow.request.raw_content,
        target=flow.request.path.encode(),
    )
    judged = canonical.judge(view, {})
    asked = scanner.build_request(judged, agent_id=flow.id)
    canonical.apply(flow.request, judged)
    sent = list(flow.request.headers.fields)
    if http2:
        assert flow.request.data.authority == asked.host_header
    else:
        assert sent[0] == (b"Host", asked.host_header)
        assert flow.request.data.authority == b""
        sent = sent[1:]
    asked_headers = [h for h in asked.headers if h[0] != scanner.HEADER_NAMES]
    assert [(k.lower(), v) for k, v in sent] == [(k.lower(), v) for k, v in asked_headers]
    assert (flow.request.data.method, flow.request.data.path) == (b"POST", b"/v1/messages")
    assert flow.request.raw_content == asked.body == b"hello"
    assert all(SECRET not in value for _, value in sent)


def test_the_summary_names_what_was_judged_without_the_hidden_value() -> None:
    view = with_headers((b"X-Api-Key", b"the-bound-key"))
    summary = canonical.judge(view, {2: b"redacted"}).summary()
    assert summary["method"] == "POST" and summary["authority"] == "api.example.com"
    assert summary["headers"] == [
        ["Content-Type", "application/json"],
        ["X-Api-Key", None],
        ["content-length", "8"],
    ]
    assert summary["body_len"] == 8 and len(summary["body_sha256"]) == 64


def test_header_names_reach_the_scanner_as_a_value() -> None:
    # pipelock scans header values only: a secret as a header *name* would otherwise pass.
    view = with_headers((b"AKIAIOSFODNN7EXAMPLE", b"1"))
    asked = scanner.build_request(canonical.judge(view, {}), agent_id="f")
    names = dict(asked.headers)[scanner.HEADER_NAMES]
    assert names == b"Content-Type, AKIAIOSFODNN7EXAMPLE"
