"""Where mitmproxy connects: private addresses are refused at connect, even after pipelock
allowed the request, unless the bottle allowlists them (as these tests do for 127.0.0.0/8)."""

from __future__ import annotations

from itsupport import Chain, ChainFactory, Launcher

NO_ALLOWLIST = {"bottle_ssrf_allow": None}


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


def test_an_allowlisted_network_is_reached_and_connections_are_reused(chain: Chain) -> None:
    for _ in range(3):
        assert chain.h1("GET", "/ok", host="localhost").status == 200
    assert len(chain.upstream.requests) == 3


def test_an_allowlist_of_everything_refuses_to_start(launcher: Launcher) -> None:
    code, output = launcher.refused(sets={"bottle_ssrf_allow": "0.0.0.0/0"})
    assert code != 0
    assert "bottle_ssrf_allow" in output
