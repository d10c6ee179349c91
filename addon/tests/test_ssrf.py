"""The connect-time SSRF check: pipelock's internal ranges, the allowlist, v4-mapped v6."""

import pytest

from bottle_addon import ssrf

NONE: tuple[ssrf.IPNetwork, ...] = ()


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("93.184.216.34", False),
        ("2606:2800:220:1:248:1893:25c8:1946", False),
        ("10.1.2.3", True),
        ("172.20.0.5", True),
        ("192.168.1.1", True),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("fd00::1", True),
        ("fe80::1%eth0", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
    ],
)
def test_internal_addresses_are_refused(address: str, refused: bool) -> None:
    assert ssrf.forbidden(address, NONE) is refused


def test_the_allowlist_exempts_exactly_its_networks() -> None:
    allowed = ssrf.parse_allowlist(["172.20.0.0/16, ::1/128"])
    assert not ssrf.forbidden("::1", allowed)
    assert not ssrf.forbidden("172.20.9.9", allowed)
    assert ssrf.forbidden("172.21.0.1", allowed)


def test_one_private_address_among_many_is_enough_to_refuse() -> None:
    reason = ssrf.check("rebind.example", ["93.184.216.34", "10.0.0.7"], NONE)
    assert (
        reason
        == "rebind.example resolves to 10.0.0.7, which is a private or internal address (SSRF)"
    )
    assert ssrf.check("example.com", ["93.184.216.34"], NONE) is None
    assert ssrf.check("nowhere.example", [], NONE) == "nowhere.example resolves to no address"


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "10.0.0.1/8", "banana", "10.0.0.0/33"])
def test_bad_allowlist_entries_are_rejected(cidr: str) -> None:
    with pytest.raises(ValueError):
        ssrf.parse_allowlist([cidr])
