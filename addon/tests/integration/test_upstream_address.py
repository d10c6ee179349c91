"""Where mitmproxy connects: private addresses are refused at connect, even after pipelock
allowed the request, unless the bottle allowlists them (as these tests do for 127.0.0.0/8); a
connection goes to the address that was checked, and is reused for later requests to its name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from itsupport import Chain, ChainFactory, H2Req, Launcher, Pki, Upstream, h1_session

NO_ALLOWLIST = {"bottle_ssrf_allow": None}
N = 5


@pytest.fixture(scope="module")
def h2_upstream(pki: Pki) -> Iterator[Upstream]:
    up = Upstream(pki, h2=True)
    up.start()
    yield up
    up.stop()


def assert_no_addon_error(c: Chain) -> None:
    errors = [line for line in c.mitm.output.splitlines() if "Addon error" in line]
    assert errors == [], "\n".join(errors)


def assert_refused_at_connect(c: Chain, host: str) -> None:
    r = c.h1("GET", "/private", host=host)
    assert r.status == 502, (r.status, r.text)
    assert "private or internal address" in r.text, r.text
    # pipelock was asked (and allowed); the connection itself was refused.
    assert len(c.scanner.requests) == 1
    assert c.upstream.connections == [], "mitmproxy connected to a private address"
    [record] = c.mitm.wait_decisions(1)
    assert (record["verdict"], record["decided_by"], record["reason"]) == (
        "block",
        "addon",
        "upstream_address",
    )


def test_a_name_that_resolves_to_a_private_address_is_refused(make_chain: ChainFactory) -> None:
    assert_refused_at_connect(make_chain(sets=NO_ALLOWLIST), "localhost")


def test_a_private_ip_literal_is_refused(make_chain: ChainFactory) -> None:
    assert_refused_at_connect(make_chain(sets=NO_ALLOWLIST), "127.0.0.1")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_requests_on_one_kept_alive_h1_connection_share_one_upstream_connection(
    chain: Chain, host: str
) -> None:
    # A name is pinned to its checked address while connecting, then named again so later
    # requests match the connection (without that: one connection per request, and the sixth
    # waits for one of the first five to close: mitmproxy opens 5 per address and client).
    rs = h1_session(
        chain.mitm.port,
        chain.mitm.ca_pem,
        host,
        chain.upstream.port,
        [("GET", f"/ok{i}", b"") for i in range(N)],
    )
    assert [r.status for r in rs] == [200] * N
    assert [q.target for q in chain.upstream.requests] == [f"/ok{i}" for i in range(N)]
    assert len(chain.upstream.connections) == 1, chain.upstream.connections
    assert chain.upstream.connections[0].sni == (host if host == "localhost" else None)
    assert len(chain.mitm.wait_decisions(N)) == N
    assert_no_addon_error(chain)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_streams_on_one_h2_connection_share_one_h2_upstream_connection(
    make_chain: ChainFactory, h2_upstream: Upstream, host: str
) -> None:
    c = make_chain(upstream=h2_upstream)
    rs = c.h2([H2Req("GET", f"/ok{i}") for i in range(N)], host=host, sequential=True)
    assert [r.status for r in rs] == [200] * N
    assert [q.target for q in h2_upstream.requests] == [f"/ok{i}" for i in range(N)]
    assert [conn.alpn for conn in h2_upstream.connections] == ["h2"]
    assert len(c.mitm.wait_decisions(N)) == N
    assert_no_addon_error(c)


# Loaded before the addon: `localhost` resolves to 127.0.0.1 on the first lookup, to 127.0.0.2
# (not allowlisted below; nothing listens there) on every later one, like a rebinding DNS name.
REBINDING_SCRIPT = """\
import asyncio
import logging
import socket


def running():
    loop = asyncio.get_running_loop()
    original = loop.getaddrinfo
    lookups = []

    async def rebinding(host, port, *args, **kwargs):
        if host != "localhost":
            return await original(host, port, *args, **kwargs)
        lookups.append(host)
        ip = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        # The addon's own logger: the chain withholds every other line (bottle_addon/logs.py).
        logging.getLogger("bottle.test").warning(
            "rebinding-test: lookup %d of localhost -> %s", len(lookups), ip
        )
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port))]

    loop.getaddrinfo = rebinding
"""


def test_a_reused_connection_stays_on_the_checked_address(
    make_chain: ChainFactory, tmp_path: Path
) -> None:
    script = tmp_path / "rebinding.py"
    script.write_text(REBINDING_SCRIPT)
    c = make_chain(sets={"bottle_ssrf_allow": "127.0.0.1/32"}, scripts_before=[script], fresh=True)
    rs = h1_session(
        c.mitm.port,
        c.mitm.ca_pem,
        "localhost",
        c.upstream.port,
        [("GET", f"/ok{i}", b"") for i in range(N)],
    )
    # One lookup (the addon's), one connection, to the address it checked, used N times.
    assert [r.status for r in rs] == [200] * N, [r.text for r in rs]
    assert len(c.upstream.connections) == 1
    assert c.upstream.connections[0].sni == "localhost"
    output = c.mitm.wait_output(f"server connect 127.0.0.1:{c.upstream.port}")
    assert output.count("rebinding-test: lookup") == 1, output
    assert f"server connect 127.0.0.1:{c.upstream.port}" in output
    # A new client connection opens a new upstream connection: checked again, and the name now
    # resolves to an address that is not allowed.
    r = c.h1("GET", "/rebound")
    assert r.status == 502, r.text
    assert "private or internal address" in r.text, r.text
    assert len(c.upstream.connections) == 1
    records = c.mitm.wait_decisions(N + 1)
    output = c.mitm.wait_output("lookup 2 of localhost -> 127.0.0.2")
    assert "lookup 2 of localhost -> 127.0.0.2" in output
    assert "server connect 127.0.0.2" not in output
    assert [rec["reason"] for rec in records] == [None] * N + ["upstream_address"]
    assert_no_addon_error(c)


def test_an_allowlist_of_everything_refuses_to_start(launcher: Launcher) -> None:
    code, output = launcher.refused(sets={"bottle_ssrf_allow": "0.0.0.0/0"})
    assert code != 0
    assert "bottle_ssrf_allow" in output
