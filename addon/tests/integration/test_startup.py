"""The addon refuses to run with an option that opens a way around the verdict."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from itsupport import ChainFactory, Launcher, Pki, Scanner

PARALLEL = 3

# (id, option overrides; None removes an option from the valid base launch, option to be named)
REFUSALS: list[tuple[str, dict[str, str | None], str]] = [
    ("url-missing", {"bottle_pipelock_url": None}, "bottle_pipelock_url"),
    ("url-ftp", {"bottle_pipelock_url": "ftp://x"}, "bottle_pipelock_url"),
    ("url-with-path", {"bottle_pipelock_url": "http://x/path"}, "bottle_pipelock_url"),
    ("url-https", {"bottle_pipelock_url": "https://127.0.0.1:1"}, "bottle_pipelock_url"),
    ("stream_large_bodies", {"stream_large_bodies": "1m"}, "stream_large_bodies"),
    ("rawtcp-default", {"rawtcp": None}, "rawtcp"),
    ("connection_strategy-eager", {"connection_strategy": "eager"}, "connection_strategy"),
    ("ssl_insecure", {"ssl_insecure": "true"}, "ssl_insecure"),
    ("ignore_hosts", {"ignore_hosts": "x"}, "ignore_hosts"),
    ("tcp_hosts", {"tcp_hosts": "x"}, "tcp_hosts"),
    ("allow_hosts", {"allow_hosts": "x"}, "allow_hosts"),
    ("udp_hosts", {"udp_hosts": "x"}, "udp_hosts"),
    ("modify_headers", {"modify_headers": "/~q/X/y"}, "modify_headers"),
    ("map_remote", {"map_remote": "|example.com|127.0.0.1"}, "map_remote"),
    ("map_local", {"map_local": "|example.com|/tmp"}, "map_local"),
    ("mode-socks5", {"mode": "socks5"}, "mode"),
]


@pytest.fixture(scope="module")
def refusals(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, mitm_ca: Path
) -> Iterator[dict[str, tuple[int, str]]]:
    """Every refusal case, one fresh mitmdump each, a few at a time (it saves ~half the time)."""
    scanner = Scanner()
    scanner.start()
    launcher = Launcher(tmp_path_factory.mktemp("refusals"), pki, scanner, mitm_ca)
    cases: list[tuple[str, dict[str, str | None]]] = [(c, o) for c, o, _ in REFUSALS]
    out: dict[str, tuple[int, str]] = {}
    for i in range(0, len(cases), PARALLEL):
        batch = {case: launcher.spawn(o) for case, o in cases[i : i + PARALLEL]}
        for case, m in batch.items():
            if m.wait_ready(["bottle addon ready"], timeout=30):
                out[case] = (0, "started (listening) instead of refusing:\n" + m.output)
            else:
                out[case] = (m.wait_exit(), m.output)
    yield out
    launcher.stop_all()
    scanner.stop()


@pytest.mark.parametrize("option", [n for _, _, n in REFUSALS], ids=[i for i, _, _ in REFUSALS])
def test_refuses_to_start(
    refusals: dict[str, tuple[int, str]], request: pytest.FixtureRequest, option: str
) -> None:
    case = request.node.callspec.id
    rc, output = refusals[case]
    assert rc != 0, output
    assert option in output, output
    assert "bottle addon ready" not in output


def test_refusal_says_what_to_set(refusals: dict[str, tuple[int, str]]) -> None:
    assert "rawtcp=false" in refusals["rawtcp-default"][1]
    assert "connection_strategy=lazy" in refusals["connection_strategy-eager"][1]
    assert "CLAUDE_BOTTLE_PIPELOCK_URL" in refusals["url-missing"][1]


def test_env_fallback_for_the_scanner_url(make_chain: ChainFactory) -> None:
    c = make_chain(
        {"bottle_pipelock_url": None},
        env={"CLAUDE_BOTTLE_PIPELOCK_URL": f"http://127.0.0.1:{make_chain.scanner.port}"},
    )
    r = c.h1("GET", "/via-env")
    assert r.status == 200, r.text
    assert [q.target for q in c.scanner.requests] == [c.url("/via-env")]
    assert [q.target for q in c.upstream.requests] == ["/via-env"]


def test_option_wins_over_env(make_chain: ChainFactory) -> None:
    """The explicit option is used even when the env var points at nothing."""
    c = make_chain(env={"CLAUDE_BOTTLE_PIPELOCK_URL": "http://127.0.0.1:1"})
    r = c.h1("GET", "/opt")
    assert r.status == 200, r.text
    assert len(c.scanner.requests) == 1
