"""The addon's own checks before the scanner is asked: fronting, bodies, upgrades, odd bytes."""

import base64
import dataclasses
import json

import pytest

from bottle_addon import credentials
from bottle_addon.policy import (
    Block,
    Cleared,
    Ports,
    RequestView,
    check,
    connect_problem,
    parse_authority,
    parse_methods,
)

BASE = RequestView(
    scheme="https",
    host="api.example.com",
    port=443,
    sni="api.example.com",
    authority=None,
    method=b"POST",
    target=b"/v1/messages?beta=true",
    headers=[(b"Host", b"api.example.com"), (b"Content-Type", b"application/json")],
    body=b'{"hello": "world"}',
    streamed=False,
    has_trailers=False,
)


def verdict(view: RequestView, max_body_bytes: int = 5242880) -> Block | Cleared:
    return check(view, max_body_bytes=max_body_bytes, bindings=())


def code(view: RequestView, **kwargs: int) -> str | None:
    result = verdict(view, **kwargs)
    return result.code if isinstance(result, Block) else None


def with_host(value: bytes) -> RequestView:
    return dataclasses.replace(BASE, headers=[(b"Host", value)])


def test_a_plain_request_is_cleared_for_the_scanner() -> None:
    assert verdict(BASE) == Cleared()


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        (with_host(b"api.example.com:443"), None),
        (with_host(b"API.Example.COM."), None),
        (with_host(b"evil.example.net"), "domain_fronting"),
        (with_host(b"api.example.com:8443"), "domain_fronting"),
        (with_host(b"api.example.com.evil.net"), "domain_fronting"),
        (with_host(b"api.example.com@evil.net"), "domain_fronting"),
        (with_host(b""), "domain_fronting"),
        (dataclasses.replace(BASE, sni="evil.example.net"), "domain_fronting"),
        (
            dataclasses.replace(
                BASE, headers=[(b"Host", b"api.example.com"), (b"Host", b"evil.example.net")]
            ),
            "domain_fronting",
        ),
        # h2: no Host header, the :authority is checked; a Host header next to it is too.
        (dataclasses.replace(BASE, headers=[], authority="api.example.com"), None),
        (dataclasses.replace(BASE, headers=[], authority="evil.example.net"), "domain_fronting"),
        (
            dataclasses.replace(
                BASE, headers=[(b"host", b"evil.example.net")], authority="api.example.com"
            ),
            "domain_fronting",
        ),
        # A client that sends no SNI (an IP literal target, say) is checked on Host alone.
        (dataclasses.replace(BASE, sni=None), None),
        # Plain HTTP through the proxy: Host against the absolute URL's host.
        (dataclasses.replace(BASE, scheme="http", port=80, sni=None), None),
        (
            dataclasses.replace(
                BASE, scheme="http", port=80, sni=None, headers=[(b"Host", b"evil.example.net")]
            ),
            "domain_fronting",
        ),
    ],
)
def test_domain_fronting(view: RequestView, expected: str | None) -> None:
    assert code(view) == expected


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("example.com", ("example.com", None)),
        ("example.com:8080", ("example.com", 8080)),
        ("[::1]:443", ("::1", 443)),
        ("[::1]", ("::1", None)),
        ("example.com:0", None),
        ("example.com:99999", None),
        ("example.com:http", None),
        ("a:b:c", None),
        ("user@example.com", None),
        ("example.com/path", None),
    ],
)
def test_parse_authority(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert parse_authority(value) == parsed


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        (b"gzip", "body_encoded"),
        (b"br", "body_encoded"),
        (b"zstd", "body_encoded"),
        (b"identity, gzip", "body_encoded"),
        (b"identity", None),
    ],
)
def test_encoded_bodies_are_blocked_as_pipelock_blocks_them(
    encoding: bytes, expected: str | None
) -> None:
    view = dataclasses.replace(BASE, headers=[*BASE.headers, (b"Content-Encoding", encoding)])
    assert code(view) == expected


def test_the_encoded_body_message_does_not_echo_the_coding() -> None:
    # The coding is the agent's bytes (a secret, say): the message names the field only.
    coding = b"gzip, AKIAIOSFODNN7EXAMPLE"
    view = dataclasses.replace(BASE, headers=[*BASE.headers, (b"Content-Encoding", coding)])
    result = verdict(view)
    assert isinstance(result, Block)
    assert result.message == (
        "the request body has a Content-Encoding; compressed bodies cannot be scanned for secrets"
    )


def test_an_empty_body_with_an_encoding_goes_to_the_scanner() -> None:
    view = dataclasses.replace(
        BASE, body=b"", headers=[*BASE.headers, (b"Content-Encoding", b"gzip")]
    )
    assert verdict(view) == Cleared()


def test_body_cap_is_inclusive() -> None:
    assert code(dataclasses.replace(BASE, body=b"x" * 1000), max_body_bytes=1000) is None
    assert code(dataclasses.replace(BASE, body=b"x" * 1001), max_body_bytes=1000) == (
        "body_too_large"
    )


def test_a_huge_body_is_blocked_without_being_read_twice() -> None:
    view = dataclasses.replace(BASE, body=b"a" * (64 * 1024 * 1024))
    assert code(view) == "body_too_large"


def test_a_body_too_large_gets_413_and_says_its_size_and_the_limit() -> None:
    block = verdict(dataclasses.replace(BASE, body=b"x" * 1001), max_body_bytes=1000)
    assert isinstance(block, Block)
    assert block.status == 413
    assert "1001 bytes" in block.message and "1000 bytes" in block.message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"streamed": True}, "body_streamed"),
        ({"body": None}, "body_streamed"),
        ({"has_trailers": True}, "trailers"),
        ({"headers": [*BASE.headers, (b"Upgrade", b"websocket")]}, "upgrade"),
        ({"headers": [*BASE.headers, (b"upgrade", b"h2c")]}, "upgrade"),
        ({"target": b"*"}, "unsendable_request"),
        ({"target": b"/a b"}, "unsendable_request"),
        ({"method": b"GE T"}, "method_not_allowed"),
        ({"target": b"/a#" + b"AKIAIOSFODNN7EXAMPLE"}, "unsendable_request"),
        ({"headers": [*BASE.headers, (b"Transfer-Encoding", b"gzip, chunked")]}, "transfer_coding"),
        ({"headers": [*BASE.headers, (b"Transfer-Encoding", b"chunked")]}, None),
        ({"headers": [*BASE.headers, (b"X-A", b"1\r\nX-B: 2")]}, "unsendable_request"),
        ({"headers": [*BASE.headers, (b"X A", b"1")]}, "unsendable_request"),
        ({"method": b"M-SEARCH"}, "method_not_allowed"),
        ({"method": b"AKIAIOSFODNN7EXAMPLE"}, "method_not_allowed"),
        ({"method": b"get"}, "method_not_allowed"),
    ],
)
def test_requests_the_scanner_cannot_see_whole_are_blocked(
    change: dict[str, object], expected: str | None
) -> None:
    assert code(dataclasses.replace(BASE, **change)) == expected  # type: ignore[arg-type]


SECRET = "sk-ant-api03-" + "A1b2C3d4" * 4
BINDING = credentials.load(
    '{"bindings": [{"host": "api.example.com", "header": "x-api-key", "value_env": "KEY"}]}',
    {"KEY": SECRET},
)


def with_key(view: RequestView, **change: object) -> Block | Cleared:
    # 8443 allowed too, so that the credential rule is what a request on it meets.
    ports = {"https": Ports.parse("443,8443"), "http": Ports.parse("80")}
    return check(
        dataclasses.replace(view, **change),  # type: ignore[arg-type]
        max_body_bytes=1 << 20,
        bindings=BINDING,
        ports=ports,
    )


def test_the_bound_key_to_its_own_host_is_hidden_from_the_scanner() -> None:
    headers = [*BASE.headers, (b"X-Api-Key", SECRET.encode())]
    result = with_key(BASE, headers=headers)
    assert result == Cleared({2: credentials.REDACTED}, ("x-api-key",))


KEY = SECRET.encode()
EVIL = {"host": "evil.example.net", "sni": "evil.example.net"}


@pytest.mark.parametrize(
    "change",
    [
        {**EVIL, "headers": [(b"Host", b"evil.example.net"), (b"X-Api-Key", KEY)]},
        {"headers": [*BASE.headers, (b"Authorization", b"Bearer " + KEY)]},
        {"headers": [*BASE.headers, (b"X-Api-Key", b"prefix-" + KEY)]},
        {"headers": [*BASE.headers, (b"X-Api-Key", KEY)], "scheme": "http", "port": 80},
        {"headers": [(b"Host", b"api.example.com:8443"), (b"X-Api-Key", KEY)], "port": 8443},
        {"body": b'{"leak": "' + KEY + b'"}'},
        {"target": b"/v1?k=" + KEY},
        {"target": b"/v1?k=" + KEY.replace(b"-", b"%2D")},
        {"body": base64.b64encode(b"xx" + KEY)},
        {"body": KEY.hex().encode()},
    ],
    ids=[
        "other-host",
        "other-header",
        "not-the-exact-value",
        "cleartext",
        "other-port",
        "body",
        "url",
        "url-encoded",
        "base64-body",
        "hex-body",
    ],
)
def test_the_bound_key_anywhere_else_is_blocked(change: dict[str, object]) -> None:
    if change.get("scheme") == "http":
        change["sni"] = None
    result = with_key(BASE, **change)
    assert isinstance(result, Block)
    assert result.code == "credential_misuse"


def bindings_file(**entry: object) -> str:
    return json.dumps({"bindings": [entry]})


def test_authorization_bindings_accept_their_scheme_and_only_it() -> None:
    text = bindings_file(
        host="api.example.com", header="authorization", value=SECRET, scheme="Bearer"
    )
    bindings = credentials.load(text, {})

    def with_authorization(value: bytes) -> Block | Cleared:
        headers = [*BASE.headers, (b"Authorization", value)]
        view = dataclasses.replace(BASE, headers=headers)
        return check(view, max_body_bytes=1 << 20, bindings=bindings)

    for scheme in (b"Bearer", b"bearer"):
        result = with_authorization(scheme + b" " + KEY)
        # Only the secret's bytes are hidden: the scanner still sees the scheme.
        assert result == Cleared({2: scheme + b" " + credentials.REDACTED}, ("authorization",))
    for other in (
        b"Basic " + KEY,
        KEY,
        b"Bearer  " + KEY,
        b"Bearer " + KEY + b" AKIAIOSFODNNAEXAMPLE",
        b"AKIAIOSFODNNAEXAMPLE " + KEY,
    ):
        result = with_authorization(other)
        assert isinstance(result, Block) and result.code == "credential_misuse", other


def test_a_binding_without_a_scheme_is_the_secret_alone() -> None:
    # The attack that hid a second secret in the bound header: `<letters> <bound key>`.
    headers = [*BASE.headers, (b"X-Api-Key", b"AKIAIOSFODNNAEXAMPLE " + KEY)]
    result = with_key(BASE, headers=headers)
    assert isinstance(result, Block) and result.code == "credential_misuse"


@pytest.mark.parametrize("scheme", ["", "Bear er", "Bearer:", 5])
def test_a_scheme_must_be_one_word(scheme: object) -> None:
    text = bindings_file(
        host="api.example.com", header="authorization", value=SECRET, scheme=scheme
    )
    with pytest.raises(credentials.BindingError, match="scheme"):
        credentials.load(text, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "one key"),
        ('{"bindings": {}}', "must be a list"),
        (bindings_file(host="API.x", header="x", value=SECRET), "host"),
        (bindings_file(host="a.b", header="x y", value=SECRET), "header"),
        (bindings_file(host="a.b", header="x", value="short"), "at least"),
        (bindings_file(host="a.b", header="x", value_env="NOPE"), "not set"),
        (bindings_file(host="a.b", header="x"), "exactly one"),
        (bindings_file(host="a.b", header="x", value=SECRET, z=1), "unknown"),
        ("{", "not JSON"),
    ],
)
def test_bad_binding_files_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(credentials.BindingError, match=message):
        credentials.load(text, {})


# --- ports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("443", [443], [53, 80, 444, 8443]),
        ("443, 8443", [443, 8443], [53, 5353, 9999]),
        ("1024-65535,443", [443, 1024, 5353, 65535], [53, 80, 1023]),
    ],
)
def test_ports_parse_lists_and_ranges(text: str, inside: list[int], outside: list[int]) -> None:
    ports = Ports.parse(text)
    assert all(p in ports for p in inside)
    assert not any(p in ports for p in outside)


@pytest.mark.parametrize("text", ["", "0", "65536", "443,", "http", "9-1", "1-", "-5", "4 43"])
def test_ports_refuse_what_is_not_a_port_list(text: str) -> None:
    with pytest.raises(ValueError):
        Ports.parse(text)


@pytest.mark.parametrize(
    ("scheme", "port", "blocked"),
    [
        ("https", 443, False),
        ("https", 8443, True),
        ("https", 9999, True),
        ("http", 80, False),
        ("http", 9999, True),
        ("http", 53, True),
        ("ftp", 21, True),
    ],
)
def test_requests_go_only_to_the_bottles_ports(scheme: str, port: int, blocked: bool) -> None:
    host = "api.example.com" if port in (80, 443) else f"api.example.com:{port}"
    view = dataclasses.replace(
        BASE,
        scheme=scheme,
        port=port,
        sni=None if scheme != "https" else BASE.sni,
        headers=[(b"Host", host.encode())],
    )
    assert (code(view) == "port_not_allowed") is blocked


def test_connect_only_to_the_bottles_ports_and_never_nested() -> None:
    ports = Ports.parse("443")
    assert connect_problem(port=443, in_tls=False, connect_ports=ports) is None
    for port in (53, 5353, 80, 9999):
        problem = connect_problem(port=port, in_tls=False, connect_ports=ports)
        assert problem is not None and problem.code == "port_not_allowed"
    nested = connect_problem(port=443, in_tls=True, connect_ports=ports)
    assert nested is not None and nested.code == "nested_connect"


def test_only_the_standard_methods_and_the_bottles_extra_ones() -> None:
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"):
        assert code(dataclasses.replace(BASE, method=method)) is None, method
    extra = parse_methods("PROPFIND, M-SEARCH")
    view = dataclasses.replace(BASE, method=b"M-SEARCH")
    assert check(view, max_body_bytes=1 << 20, bindings=(), methods=extra) == Cleared()
    for bad in ("get", "CONNECT", "A B", "X:Y"):
        with pytest.raises(ValueError):
            parse_methods(bad)
