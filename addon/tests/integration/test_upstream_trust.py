"""`bottle_upstream_ca`: upstream TLS trusts a corporate proxy's CA as well as the system roots.

The stub upstream's certificate chains to the suite's own root (`Pki.ca_pem`), which no system
bundle holds. The other modules trust it through mitmproxy's `ssl_verify_upstream_trusted_ca`;
these launches remove that, so the root is trusted through `bottle_upstream_ca` or not at all.
"""

from __future__ import annotations

import re
from pathlib import Path

import certifi
from itsupport import ChainFactory, Launcher, Pki

WITHOUT_MITMPROXYS_OWN = {"ssl_verify_upstream_trusted_ca": None}
BUNDLE_NAME = "bottle-upstream-trust.pem"


def certificate_blocks(pem: bytes) -> set[bytes]:
    found = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    return {b"".join(block.split()) for block in found}


def test_an_upstream_chaining_to_an_untrusted_root_is_refused(make_chain: ChainFactory) -> None:
    c = make_chain(WITHOUT_MITMPROXYS_OWN)
    r = c.h1("GET", "/untrusted")
    assert r.status == 502, (r.status, r.text)
    assert "certificate verify failed" in r.text.lower(), r.text
    assert len(c.scanner.requests) == 1  # pipelock allowed it; the upstream's TLS failed
    assert c.upstream.requests == []
    assert [conn.tls_ok for conn in c.upstream.connections] == [False]


def test_the_option_adds_the_root_to_the_system_roots(make_chain: ChainFactory, pki: Pki) -> None:
    c = make_chain({**WITHOUT_MITMPROXYS_OWN, "bottle_upstream_ca": str(pki.ca_pem)})
    r = c.h1("GET", "/trusted")
    assert r.status == 200, (r.status, r.text)
    assert [q.target for q in c.upstream.requests] == ["/trusted"]
    # mitmproxy verifies against the bundle in its confdir: certifi's roots and the extra one.
    bundle = (c.mitm.confdir / BUNDLE_NAME).read_bytes()
    system_roots = Path(certifi.where()).read_bytes()
    assert certificate_blocks(bundle) == (
        certificate_blocks(system_roots) | certificate_blocks(pki.ca_pem.read_bytes())
    )
    [record] = c.mitm.wait_decisions(1)
    assert (record["verdict"], record["status"]) == ("allow", 200)


def test_a_bad_file_refuses_to_start(launcher: Launcher, tmp_path: Path, pki: Pki) -> None:
    key_too = tmp_path / "with-key.pem"
    key_too.write_bytes(pki.ca_pem.read_bytes() + pki.key_pem.read_bytes())
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    cases = {
        str(tmp_path / "missing.pem"): "cannot be read",
        str(not_pem): "holds no PEM certificate",
        str(key_too): "holds a private key",
    }
    for path, reason in cases.items():
        code, output = launcher.refused({**WITHOUT_MITMPROXYS_OWN, "bottle_upstream_ca": path})
        assert code != 0, output
        assert f"bottle: bottle_upstream_ca: {path}" in output, output
        assert reason in output, output


def test_mitmproxys_own_trust_option_beside_it_refuses_to_start(
    launcher: Launcher, pki: Pki
) -> None:
    # The base launch sets ssl_verify_upstream_trusted_ca: which trust was meant is unclear.
    code, output = launcher.refused({"bottle_upstream_ca": str(pki.ca_pem)})
    assert code != 0, output
    assert "unset ssl_verify_upstream_trusted_ca" in output, output
