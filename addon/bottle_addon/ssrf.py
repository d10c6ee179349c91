"""Where mitmproxy may connect: never to a private or internal address, unless allowed.

pipelock's DNS-based SSRF check cannot run in this chain (it has no names to resolve: README,
"Exactly once"), and mitmproxy is what connects, so the check sits at mitmproxy's connect: every
address a name resolves to is checked (one private address is enough to refuse, as pipelock does),
and the connection is pinned to an address that was checked, so a second lookup (DNS rebinding)
cannot send it elsewhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# pipelock's default `internal` list (notes/pipelock.md, §5).
INTERNAL = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "224.0.0.0/4",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)


def parse_allowlist(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs exempt from the check (each entry may hold several, comma-separated); ValueError
    says which one is wrong."""
    networks = []
    for cidr in (part.strip() for entry in cidrs for part in entry.split(",")):
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            raise ValueError(f"{cidr!r} is not a CIDR without host bits: {e}") from None
        if network.prefixlen == 0:
            raise ValueError(f"{cidr!r} would allow every address")
        networks.append(network)
    return tuple(networks)


def _plain(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forbidden(address: str, allowed: Sequence[IPNetwork]) -> bool:
    """True for an internal address that no allowlisted network covers."""
    ip = _plain(ipaddress.ip_address(address.split("%", 1)[0]))
    if any(ip in network for network in allowed if network.version == ip.version):
        return False
    return any(ip in network for network in INTERNAL if network.version == ip.version)


def check(host: str, addresses: Sequence[str], allowed: Sequence[IPNetwork]) -> str | None:
    """Why connecting to host at these resolved addresses is refused, if it is."""
    if not addresses:
        return f"{host} resolves to no address"
    for address in addresses:
        if forbidden(address, allowed):
            shown = "is" if address == host else f"resolves to {address}, which is"
            return f"{host} {shown} a private or internal address (SSRF)"
    return None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
