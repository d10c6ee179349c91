"""The request hook end to end with a stand-in scanner call: options, verdicts, fail closed,
SSE streaming and the decision record."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flows import SAFE, context, https_flow, upstream_response
from mitmproxy import connection, exceptions
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow, tutils

from bottle_addon import credentials, hooks, policy, scanner
from bottle_addon.verdict import ScannerAnswer

TEXT = (("Content-Type", "text/plain; charset=utf-8"),)
ALLOW = ScannerAnswer(502, TEXT, b"forward proxy fetch failed\n")
BLOCK = ScannerAnswer(
    403,
    (*TEXT, ("X-Pipelock-Block-Reason", "dlp_match"), ("Date", "today")),
    b"blocked: request body contains secret: AWS Access ID\n",
)


class FakeScanner:
    """Stands in for `scanner.ask`: records what the addon would send, answers as told."""

    def __init__(self) -> None:
        self.asked: list[scanner.ScanRequest] = []
        self.answer: Callable[[], ScannerAnswer] = lambda: ALLOW

    async def ask(self, _: scanner.Scanner, request: scanner.ScanRequest) -> ScannerAnswer:
        self.asked.append(request)
        return self.answer()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeScanner:
    stand_in = FakeScanner()
    monkeypatch.setattr(scanner, "ask", stand_in.ask)
    return stand_in


@pytest.fixture
def addon(tmp_path: Path) -> Iterator[tuple[hooks.BottleAddon, Path]]:
    bottle = hooks.BottleAddon()
    log = tmp_path / "decisions.jsonl"
    with context(bottle) as tctx:
        tctx.configure(
            bottle,
            **SAFE,
            bottle_pipelock_url="http://pipelock:8888",
            bottle_decision_log=str(log),
        )
        yield bottle, log


def refusal(**setting: Any) -> str:
    """The OptionsError a setting gets, on top of an otherwise safe configuration.

    (mitmproxy rolls a failed update back and configures again, so the baseline must be valid
    for the error to be the setting's own.)
    """
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        tctx.configure(bottle, **SAFE, bottle_pipelock_url="http://p:8888")
        with pytest.raises(exceptions.OptionsError) as refused:
            tctx.configure(bottle, **setting)
    return str(refused.value)


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"connection_strategy": "eager"}, "connection_strategy=lazy"),
        ({"rawtcp": True}, "rawtcp=false"),
        ({"ssl_insecure": True}, "ssl_insecure=false"),
        ({"stream_large_bodies": "1m"}, "stream_large_bodies"),
        ({"ignore_hosts": ["x"]}, "ignore_hosts"),
        ({"allow_hosts": ["x"]}, "allow_hosts"),
        ({"tcp_hosts": ["x"]}, "tcp_hosts"),
        ({"mode": ["socks5"]}, "mode=regular"),
    ],
)
def test_options_that_open_a_bypass_refuse_to_start(setting: dict[str, Any], named: str) -> None:
    assert named in refusal(**setting)


@pytest.mark.parametrize(
    "setting",
    [
        {"modify_headers": ["/~q/X-A/b"]},
        {"modify_body": ["/~q/a/b"]},
        {"map_remote": ["|example.com|other.com"]},
        {"map_local": ["|example.com/x|/tmp"]},
        {"udp_hosts": ["x"]},
    ],
)
def test_options_that_change_requests_after_the_verdict_refuse_to_start(
    setting: dict[str, Any],
) -> None:
    assert next(iter(setting)) in refusal(**setting)


def test_a_safe_configuration_starts() -> None:
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        tctx.configure(bottle, **SAFE, bottle_pipelock_url="http://p:8888")
        assert bottle.scanner is not None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "bottle_pipelock_url=http://pipelock:8888"),
        ("ftp://pipelock:21", "http://"),
        ("http://pipelock:8888/scan", "no path"),
        ("http://pipelock", "port"),
        ("http://user:pw@pipelock:8888", "just http://host:port"),
    ],
)
def test_a_missing_or_bad_scanner_url_refuses_to_start(
    url: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(hooks.ENV_PIPELOCK_URL, raising=False)
    assert message in refusal(bottle_pipelock_url=url)


def test_the_prd_env_variable_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hooks.ENV_PIPELOCK_URL, "http://scanner.internal:9999")
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        tctx.configure(bottle, **SAFE, bottle_verdict_timeout_ms=1500)
        assert bottle.scanner is not None
        assert bottle.scanner.endpoint == scanner.Endpoint("scanner.internal", 9999)
        assert bottle.scanner.timeouts.seconds_for(0) == 1.5


@pytest.mark.parametrize("timeout", [0, -1, 60001])
def test_a_bad_timeout_refuses_to_start(timeout: int) -> None:
    assert "bottle_verdict_timeout_ms" in refusal(bottle_verdict_timeout_ms=timeout)


@pytest.mark.parametrize(
    "options",
    [
        {"bottle_verdict_ms_per_mib": -1},
        {"bottle_verdict_timeout_cap_ms": 4999},
        {"bottle_verdict_timeout_cap_ms": 600001},
    ],
)
def test_a_bad_timeout_budget_refuses_to_start(options: dict[str, int]) -> None:
    assert next(iter(options)) in refusal(**options)


def test_the_test_verdict_switch_is_refused_outside_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hooks.ENV_TEST_SWITCHES, raising=False)
    assert "test-only switch" in refusal(bottle_test_verdict="allow")
    monkeypatch.setenv(hooks.ENV_TEST_SWITCHES, "1")
    assert "empty or 'allow'" in refusal(bottle_test_verdict="block")


async def test_the_test_verdict_switch_allows_without_asking_the_scanner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeScanner
) -> None:
    monkeypatch.setenv(hooks.ENV_TEST_SWITCHES, "1")
    fake.answer = lambda: BLOCK
    bottle = hooks.BottleAddon()
    log = tmp_path / "decisions.jsonl"
    with context(bottle) as tctx:
        tctx.configure(
            bottle,
            **SAFE,
            bottle_pipelock_url="http://pipelock:8888",
            bottle_decision_log=str(log),
            bottle_test_verdict="allow",
        )
        flow = https_flow(path=b"/upload?token=secret")
        await bottle.request(flow)
        assert flow.response is None
        assert fake.asked == []
        upstream_response(flow, "application/json")
        bottle.response(flow)
        (line,) = records(log)
        assert (line["verdict"], line["decided_by"]) == ("allow", "test_switch")
        # The addon's own rules still hold: a method outside the set is refused.
        refused = https_flow(method=b"TRACE")
        await bottle.request(refused)
        assert refused.response is not None
        assert refused.response.status_code == 403


def test_a_bad_credentials_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "bindings.json"
    path.write_text('{"bindings": [{"host": "a.b", "header": "x", "value_env": "UNSET_X"}]}')
    assert "UNSET_X" in refusal(bottle_credentials=str(path))


async def test_an_allowed_request_goes_on_and_the_scanner_saw_all_of_it(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, log = addon
    flow = https_flow(
        path=b"/v1/messages?beta=true",
        headers=[(b"Host", b"api.example.com"), (b"Connection", b"keep-alive"), (b"A", b"1")],
    )
    await bottle.request(flow)
    assert flow.response is None
    (asked,) = fake.asked
    assert asked.url == b"https://api.example.com/v1/messages?beta=true"
    assert asked.host_header == b"api.example.com"
    assert asked.headers == (
        (b"A", b"1"),
        (b"content-length", b"18"),
        (b"X-Bottle-Header-Names", b"A"),
    )
    assert asked.body == b'{"hello": "world"}'
    assert asked.agent_id == flow.id
    upstream_response(flow, "application/json")
    bottle.response(flow)
    (line,) = records(log)
    assert line["id"] == flow.id
    assert (line["verdict"], line["decided_by"], line["reason"]) == ("allow", "pipelock", None)
    assert line["url"] == "https://api.example.com/v1/messages?beta=true"
    assert line["http_version"] == {"client": "HTTP/1.1", "upstream": "HTTP/2.0"}
    assert line["scanner"]["status"] == 502


async def test_pipelocks_block_reaches_the_client(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, log = addon
    fake.answer = lambda: BLOCK
    flow = https_flow(path=b"/upload?token=secret")
    await bottle.request(flow)
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert flow.response.content == BLOCK.body
    assert flow.response.headers["X-Pipelock-Block-Reason"] == "dlp_match"
    assert flow.response.headers["X-Bottle-Request-Id"] == flow.id
    assert "Date" not in flow.response.headers
    bottle.response(flow)
    (line,) = records(log)
    assert (line["verdict"], line["decided_by"]) == ("block", "pipelock")
    assert line["reason"] == "blocked: request body contains secret: AWS Access ID"
    # The secret may be anywhere in a blocked request's URL, its host name included.
    assert (line["url"], line["host"]) == ("https://[redacted]", "[redacted]")
    assert "token=" not in json.dumps(line)
    assert line["http_version"]["upstream"] is None


def scanner_fails() -> ScannerAnswer:
    raise scanner.ScannerError("cannot connect to pipelock:8888: refused")


def addon_breaks() -> ScannerAnswer:
    raise KeyError("a bug")


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (scanner_fails, "refused"),
        (addon_breaks, "KeyError"),
        (lambda: ScannerAnswer(200, TEXT, b"upstream says hi"), "forwarded"),
        (
            lambda: ScannerAnswer(403, TEXT, b"blocked: compressed response cannot be scanned\n"),
            "reached an upstream",
        ),
    ],
)
async def test_no_verdict_blocks_with_502(
    addon: tuple[hooks.BottleAddon, Path],
    fake: FakeScanner,
    answer: Callable[[], ScannerAnswer],
    detail: str,
) -> None:
    bottle, log = addon
    fake.answer = answer
    flow = https_flow()
    await bottle.request(flow)
    assert flow.response is not None
    assert flow.response.status_code == 502
    assert flow.response.headers["X-Bottle-Block-Reason"] == "verdict_unavailable"
    assert flow.response.text is not None
    assert flow.response.text.startswith("bottle: blocked: the scanner's verdict could not be")
    assert detail in flow.response.text
    bottle.response(flow)
    assert records(log)[0]["reason"] == "verdict_unavailable"


async def test_an_h2_request_without_host_is_scanned_under_its_authority(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, log = addon
    flow = https_flow(http2=True, method=b"GET", path=b"/v1/models", body=b"")
    await bottle.request(flow)
    assert flow.response is None
    (asked,) = fake.asked
    assert asked.url == b"https://api.example.com/v1/models"
    assert asked.host_header == b"api.example.com"
    bottle.response(flow)
    assert records(log)[0]["http_version"]["client"] == "HTTP/2.0"


async def test_domain_fronting_is_blocked_before_the_scanner_is_asked(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, _ = addon
    flow = https_flow(headers=[(b"Host", b"evil.example.net")])
    await bottle.request(flow)
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert flow.response.headers["X-Bottle-Block-Reason"] == "domain_fronting"
    assert fake.asked == []


async def test_a_streamed_request_body_is_blocked(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, _ = addon
    flow = https_flow()
    flow.request.stream = True
    await bottle.request(flow)
    assert flow.response is not None
    assert flow.response.headers["X-Bottle-Block-Reason"] == "body_streamed"
    assert fake.asked == []


async def test_the_bound_credential_is_hidden_from_the_scanner_only(
    tmp_path: Path, fake: FakeScanner
) -> None:
    secret = "sk-ant-api03-" + "Z9y8X7w6" * 4
    path = tmp_path / "bindings.json"
    path.write_text(
        json.dumps(
            {"bindings": [{"host": "api.example.com", "header": "x-api-key", "value": secret}]}
        )
    )
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        tctx.configure(
            bottle,
            **SAFE,
            bottle_pipelock_url="http://pipelock:8888",
            bottle_credentials=str(path),
            bottle_decision_log=str(tmp_path / "log"),
        )
        key = (b"x-api-key", secret.encode())
        flow = https_flow(headers=[(b"Host", b"api.example.com"), key])
        await bottle.request(flow)
        assert flow.response is None
        assert flow.request.headers["x-api-key"] == secret
        assert key not in fake.asked[0].headers
        assert (b"x-api-key", credentials.REDACTED) in fake.asked[0].headers
        elsewhere = https_flow(host="api.evil.net", headers=[(b"Host", b"api.evil.net"), key])
        await bottle.request(elsewhere)
        assert elsewhere.response is not None
        assert elsewhere.response.headers["X-Bottle-Block-Reason"] == "credential_misuse"
        assert len(fake.asked) == 1


@pytest.mark.parametrize(
    ("content_type", "streamed"),
    [
        ("text/event-stream", True),
        ("text/event-stream; charset=utf-8", True),
        ("application/json", False),
        ("text/plain", False),
    ],
)
async def test_event_streams_stream_and_everything_else_is_buffered(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner, content_type: str, streamed: bool
) -> None:
    bottle, log = addon
    flow = https_flow()
    await bottle.request(flow)
    upstream_response(flow, content_type)
    bottle.responseheaders(flow)
    assert bool(flow.response.stream) is streamed  # type: ignore[union-attr]
    if streamed:
        assert callable(flow.response.stream)  # type: ignore[union-attr]
        flow.response.stream(b"data: 1\n\n")  # type: ignore[union-attr,operator]
        flow.response.stream(b"data: 22\n\n")  # type: ignore[union-attr,operator]
    bottle.response(flow)
    if streamed:
        assert records(log)[0]["bytes"]["response_body"] == 19


async def test_an_upstream_answer_without_a_verdict_is_killed(
    addon: tuple[hooks.BottleAddon, Path],
) -> None:
    bottle, log = addon
    flow = https_flow()  # the request hook never ran for it
    upstream_response(flow, "application/json")
    bottle.responseheaders(flow)
    assert flow.error is not None
    bottle.error(flow)
    (line,) = records(log)
    assert (line["verdict"], line["reason"]) == ("block", "no_verdict")


async def test_one_record_per_flow_even_when_response_and_error_both_fire(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, log = addon
    flows = [https_flow() for _ in range(3)]
    for flow in flows:
        await bottle.request(flow)
        upstream_response(flow, "application/json")
        bottle.response(flow)
        bottle.error(flow)
    lines = records(log)
    assert [line["id"] for line in lines] == [flow.id for flow in flows]


async def test_a_head_request_is_asked_about_as_get(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, _ = addon
    flow = https_flow(method=b"HEAD", body=b"")
    await bottle.request(flow)
    assert flow.response is None
    assert fake.asked[0].method == b"GET"
    assert flow.request.method == "HEAD"


@pytest.mark.parametrize("answer", [lambda: ALLOW, lambda: BLOCK, scanner_fails])
async def test_the_addons_own_answers_are_not_killed(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner, answer: Callable[[], ScannerAnswer]
) -> None:
    # mitmproxy runs `responseheaders` for a response the request hook set, too.
    bottle, log = addon
    fake.answer = answer
    flow = https_flow()
    await bottle.request(flow)
    if flow.response is None:
        upstream_response(flow, "application/json")
    bottle.responseheaders(flow)
    assert flow.error is None
    bottle.response(flow)
    assert records(log)[0]["reason"] != "no_verdict"


def server(host: str, port: int = 443, tls: bool = True) -> connection.Server:
    """A server connection as mitmproxy hands it to `server_connect`: not yet open."""
    return connection.Server(address=(host, port), tls=tls)


def connect_hook(conn: connection.Server, allowed_by: hooks.BottleAddon | None = None) -> Any:
    """The hook data; `allowed_by` records that a verdict allowed a request to the server's
    address on this client connection, as an allowed request does."""
    client = tflow.tclient_conn()
    if allowed_by is not None:
        host, port = conn.address
        target = (policy.normalise_host(host), port)
        allowed_by._allowed_targets.setdefault(client.id, set()).add(target)
    return server_hooks.ServerConnectionHookData(server=conn, client=client)


async def test_a_private_upstream_address_is_refused_at_connect(
    addon: tuple[hooks.BottleAddon, Path],
) -> None:
    bottle, _ = addon
    for host in ("10.0.0.7", "localhost"):
        conn = server(host)
        await bottle.server_connect(connect_hook(conn, bottle))
        assert conn.error is not None
        assert "private or internal address" in conn.error
        assert conn.address == (host, 443)


@pytest.fixture
async def loopback_allowed() -> AsyncIterator[hooks.BottleAddon]:
    """An addon that allows 127.0.0.0/8, with `localhost` resolving to 127.0.0.1 only."""
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        tctx.configure(
            bottle, **SAFE, bottle_pipelock_url="http://p:8888", bottle_ssrf_allow=["127.0.0.0/8"]
        )
        loop = asyncio.get_running_loop()
        original = loop.getaddrinfo

        async def only_v4(host: str, port: int, **kwargs: Any) -> Any:
            return [info for info in await original(host, port, **kwargs) if ":" not in info[4][0]]

        loop.getaddrinfo = only_v4  # type: ignore[method-assign]
        try:
            yield bottle
        finally:
            loop.getaddrinfo = original  # type: ignore[method-assign]


async def test_the_connection_is_pinned_to_the_checked_address_then_named_again(
    loopback_allowed: hooks.BottleAddon,
) -> None:
    bottle = loopback_allowed
    conn = server("localhost", 8443)
    await bottle.server_connect(connect_hook(conn, bottle))
    assert conn.error is None
    # mitmproxy opens the socket to `address`: the checked IP, with the host name as SNI.
    assert (conn.address, conn.sni) == (("127.0.0.1", 8443), "localhost")
    # ... and then marks the connection open, as mitmproxy's server does before
    # `server_connected`; from then on mitmproxy refuses a plain assignment to `address`.
    conn.state = connection.ConnectionState.OPEN
    conn.peername = ("127.0.0.1", 8443)
    with pytest.raises(RuntimeError, match="open connection"):
        conn.address = ("localhost", 8443)
    bottle.server_connected(connect_hook(conn))
    # The name again, so later requests to it match this connection; the socket is unchanged.
    assert (conn.address, conn.peername, conn.sni) == (
        ("localhost", 8443),
        ("127.0.0.1", 8443),
        "localhost",
    )
    assert conn.state is connection.ConnectionState.OPEN
    assert bottle._pinned == {}


async def test_a_pinned_connection_that_fails_is_named_again(
    loopback_allowed: hooks.BottleAddon,
) -> None:
    bottle = loopback_allowed
    conn = server("localhost", 8443)
    await bottle.server_connect(connect_hook(conn, bottle))
    assert conn.address == ("127.0.0.1", 8443)
    conn.error = "Connection refused"  # as mitmproxy's server sets it; the socket never opened
    bottle.server_connect_error(connect_hook(conn))
    assert conn.address == ("localhost", 8443)
    assert bottle._pinned == {}


async def test_an_ip_literal_is_not_pinned(loopback_allowed: hooks.BottleAddon) -> None:
    bottle = loopback_allowed
    conn = server("127.0.0.1", 8443)
    await bottle.server_connect(connect_hook(conn, bottle))
    assert (conn.error, conn.address, bottle._pinned) == (None, ("127.0.0.1", 8443), {})
    conn.state = connection.ConnectionState.OPEN
    bottle.server_connected(connect_hook(conn))
    assert conn.address == ("127.0.0.1", 8443)


# --- no server connection, and no name looked up, without an allowed request --------------------


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every name the addon asks the resolver about."""
    asked: list[str] = []
    original = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def recording(self: Any, host: str, port: int, **kwargs: Any) -> Any:
        asked.append(host)
        return await original(self, host, port, **kwargs)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", recording)
    return asked


async def test_a_server_connection_no_verdict_allowed_is_refused_before_any_lookup(
    addon: tuple[hooks.BottleAddon, Path], lookups: list[str]
) -> None:
    bottle, _ = addon
    # e.g. mitmproxy's DNS layer relaying a query to a CONNECT target, or an eager connect.
    conn = server("AKIAIOSFODNN7EXAMPLE.exfil.example", 53, tls=False)
    await bottle.server_connect(connect_hook(conn))
    assert conn.error is not None and "no request to that host and port was allowed" in conn.error
    assert lookups == []


async def test_an_allowed_request_opens_only_its_own_host_and_port(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner, lookups: list[str]
) -> None:
    bottle, _ = addon
    flow = https_flow(host="Api.Example.com")
    await bottle.request(flow)
    assert flow.response is None  # allowed
    for host, port in (("other.example", 443), ("api.example.com", 8443)):
        conn = server(host, port)
        data = server_hooks.ServerConnectionHookData(server=conn, client=flow.client_conn)
        await bottle.server_connect(data)
        assert conn.error is not None, (host, port)
        assert "no request to that host and port was allowed" in conn.error, (host, port)
    assert lookups == []
    conn = server("api.example.com", 443)
    data = server_hooks.ServerConnectionHookData(server=conn, client=flow.client_conn)
    await bottle.server_connect(data)
    # Past the verdict rule: the name is looked up (and refused here only because it does not
    # resolve on this machine, or resolves to a private address).
    assert lookups == ["api.example.com"]
    bottle.client_disconnected(flow.client_conn)
    assert bottle._allowed_targets == {}


async def test_a_blocked_request_allows_no_server_connection(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner, lookups: list[str]
) -> None:
    bottle, _ = addon
    fake.answer = lambda: BLOCK
    flow = https_flow()
    await bottle.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    conn = server("api.example.com", 443)
    data = server_hooks.ServerConnectionHookData(server=conn, client=flow.client_conn)
    await bottle.server_connect(data)
    assert conn.error is not None and lookups == []


# --- CONNECT: the bottle's ports, from the proxy port only ---------------------------------------


def connect_flow(authority: str, in_tls: bool = False) -> Any:
    host, _, port = authority.rpartition(":")
    request = tutils.treq(
        method=b"CONNECT", scheme=b"", host=host, port=int(port), path=b"", authority=b""
    )
    flow = tflow.tflow(req=request)
    # The CONNECT arrives on the plain proxy connection, or inside a decrypted tunnel.
    flow.client_conn.tls = in_tls
    flow.client_conn.timestamp_tls_setup = 1.0 if in_tls else None
    return flow


@pytest.mark.parametrize(
    ("authority", "code"),
    [
        ("example.com:53", "port_not_allowed"),
        ("example.com:5353", "port_not_allowed"),
        ("example.com:9999", "port_not_allowed"),
        ("example.com:80", "port_not_allowed"),
        ("example.com:22", "port_not_allowed"),
    ],
)
def test_connect_to_a_port_the_bottle_does_not_allow_is_refused(
    addon: tuple[hooks.BottleAddon, Path], authority: str, code: str
) -> None:
    bottle, log = addon
    flow = connect_flow(authority)
    bottle.http_connect(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["x-bottle-block-reason"] == code
    bottle.http_connect_error(flow)
    (rec,) = records(log)
    assert (rec["verdict"], rec["decided_by"], rec["reason"]) == ("block", "addon", code)


def test_connect_to_443_goes_on(addon: tuple[hooks.BottleAddon, Path]) -> None:
    bottle, _ = addon
    flow = connect_flow("example.com:443")
    bottle.http_connect(flow)
    assert flow.response is None


def test_a_connect_inside_a_decrypted_tunnel_is_refused(
    addon: tuple[hooks.BottleAddon, Path],
) -> None:
    bottle, _ = addon
    flow = connect_flow("example.com:443", in_tls=True)
    bottle.http_connect(flow)
    assert flow.response is not None
    assert flow.response.headers["x-bottle-block-reason"] == "nested_connect"


def test_the_connect_ports_are_the_bottles_to_choose(tmp_path: Path) -> None:
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        tctx.configure(
            bottle, **SAFE, bottle_pipelock_url="http://p:8888", bottle_connect_ports="443,8443"
        )
        flow = connect_flow("example.com:8443")
        bottle.http_connect(flow)
        assert flow.response is None
    assert "bottle_connect_ports" in refusal(bottle_connect_ports="443,http")
    assert "bottle_http_ports" in refusal(bottle_http_ports="0")


async def test_plain_http_to_a_port_the_bottle_does_not_allow_is_refused(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, _ = addon
    request = tutils.treq(host="example.com", port=9999, scheme=b"http", method=b"GET")
    request.headers["host"] = "example.com:9999"
    flow = tflow.tflow(req=request)
    await bottle.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["x-bottle-block-reason"] == "port_not_allowed"
    assert fake.asked == []


async def test_an_upstream_switching_protocols_is_killed(
    addon: tuple[hooks.BottleAddon, Path], fake: FakeScanner
) -> None:
    bottle, log = addon
    flow = https_flow(method=b"GET", body=b"")
    await bottle.request(flow)
    assert flow.response is None
    upstream_response(flow, "text/plain")
    assert flow.response is not None
    flow.response.status_code = 101
    bottle.responseheaders(flow)
    assert flow.error is not None  # killed: the connection never becomes a raw relay
    bottle.error(flow)
    assert records(log)[0]["reason"] == "upgrade"


# --- the TLS name and the ALPN offers upstream are the chain's ----------------------------------


async def test_the_upstream_tls_name_is_the_judged_host_spelled_by_the_chain(
    loopback_allowed: hooks.BottleAddon,
) -> None:
    bottle = loopback_allowed
    conn = server("LocalHost", 8443)
    conn.sni = "LocalHost"  # as mitmproxy would copy the client's spelling
    await bottle.server_connect(connect_hook(conn, bottle))
    assert conn.error is None
    assert conn.sni == "localhost"


@pytest.mark.parametrize(
    ("client_alpn", "offers"),
    [
        (b"h2", (b"h2", b"http/1.1")),
        (b"http/1.1", (b"http/1.1",)),
        (None, (b"http/1.1",)),
    ],
)
def test_the_upstream_alpn_offers_are_a_fixed_list_never_the_agents(
    addon: tuple[hooks.BottleAddon, Path], client_alpn: bytes | None, offers: tuple[bytes, ...]
) -> None:
    from mitmproxy import tls as mtls
    from mitmproxy.proxy import context as mcontext

    bottle, _ = addon
    client = tflow.tclient_conn()
    client.alpn = client_alpn
    client.alpn_offers = [b"http/1.1", b"AKIAIOSFODNN7EXAMPLE", b"h2"]
    upstream = server("example.com")
    ctx = mcontext.Context(client, bottle_options())
    data = mtls.TlsData(conn=upstream, context=ctx)
    bottle.tls_start_server(data)
    assert upstream.alpn_offers == offers


def bottle_options() -> Any:
    from mitmproxy import options

    return options.Options()


@pytest.mark.parametrize(
    ("offers", "http2", "chosen"),
    [
        # httpx lists http/1.1 first: the agent still gets h2, as from the API's servers.
        ([b"http/1.1", b"h2"], True, b"h2"),
        ([b"h2", b"http/1.1"], True, b"h2"),
        # mitmproxy's own choice otherwise: no h2 offered, or h2 turned off.
        ([b"http/1.1"], True, None),
        ([b"http/1.1", b"h2"], False, None),
        ([], True, None),
    ],
)
def test_the_agent_gets_h2_whenever_it_offers_it(
    addon: tuple[hooks.BottleAddon, Path], offers: list[bytes], http2: bool, chosen: bytes | None
) -> None:
    from mitmproxy import tls as mtls
    from mitmproxy.proxy import context as mcontext

    bottle, _ = addon
    client = tflow.tclient_conn()
    client.alpn = None
    client.alpn_offers = offers
    opts = bottle_options()
    opts.http2 = http2
    data = mtls.TlsData(conn=client, context=mcontext.Context(client, opts))
    bottle.tls_start_client(data)
    assert client.alpn == chosen
