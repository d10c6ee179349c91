"""`bottle_upstream_ca`: the combined trust bundle (a pure function), and the option's wiring."""

import base64
import datetime
import os
import re
import stat
from pathlib import Path
from typing import Any

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flows import SAFE, context
from mitmproxy import exceptions

from bottle_addon import hooks, trust


def make_ca(name: str = "Corp Proxy Root") -> tuple[bytes, bytes]:
    """A self-signed CA certificate and its private key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


CA_PEM, CA_KEY = make_ca()
OTHER_CA_PEM, _ = make_ca("Second Proxy Root")
SYSTEM_ROOTS = Path(certifi.where()).read_bytes()


def ders(pem: bytes) -> set[bytes]:
    """The certificates of a PEM text, compared by their bytes. (Not parsed: a certifi root has
    a serial number cryptography warns about, and may one day refuse.)"""
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    return {base64.b64decode(b"".join(block.split())) for block in blocks}


def broken(pem: bytes) -> bytes:
    """The same PEM block with its base64 body damaged (still a well-formed block)."""
    lines = pem.splitlines(keepends=True)
    lines[3] = b"A" * (len(lines[3]) - 1) + b"\n"
    return b"".join(lines)


# --- the bundle (pure) ---------------------------------------------------------------------


def test_the_bundle_is_every_system_root_plus_the_extra_ca() -> None:
    bundle = trust.build_bundle(SYSTEM_ROOTS, CA_PEM)
    assert bundle.pem.startswith(SYSTEM_ROOTS), "the system roots must be there unchanged"
    assert ders(bundle.pem) == ders(SYSTEM_ROOTS) | ders(CA_PEM)
    assert len(ders(SYSTEM_ROOTS)) > 100  # certifi's roots, not an empty stand-in
    assert [c.subject.rfc4514_string() for c in bundle.added] == ["CN=Corp Proxy Root"]


def test_several_extra_cas_with_crlf_and_text_around_them_are_all_added() -> None:
    extra = b"corporate roots\r\n" + (CA_PEM + b"\n" + OTHER_CA_PEM).replace(b"\n", b"\r\n")
    bundle = trust.build_bundle(b"", extra)
    assert ders(bundle.pem) == ders(CA_PEM) | ders(OTHER_CA_PEM)
    assert len(bundle.added) == 2


def test_system_roots_without_a_final_newline_stay_separate_from_the_extra_ca() -> None:
    roots = OTHER_CA_PEM.rstrip(b"\n")
    bundle = trust.build_bundle(roots, CA_PEM)
    assert ders(bundle.pem) == ders(OTHER_CA_PEM) | ders(CA_PEM)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (b"", "no PEM certificate"),
        (b"just some text\n", "no PEM certificate"),
        (x509.load_pem_x509_certificate(CA_PEM).public_bytes(serialization.Encoding.DER), "DER"),
        (broken(CA_PEM), "certificate 1 of 1 does not parse"),
        (CA_PEM + broken(OTHER_CA_PEM), "certificate 2 of 2 does not parse"),
        (CA_PEM + CA_KEY, "private key"),
        (CA_KEY, "private key"),
        (
            CA_PEM + b"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
            "private key",
        ),
        (CA_PEM + b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n", "private key"),
        (CA_PEM[: len(CA_PEM) // 2], "no matching END"),
        (CA_PEM.replace(b"CERTIFICATE", b"TRUSTED CERTIFICATE"), "TRUSTED CERTIFICATE"),
        (CA_PEM + b"-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n", "X509 CRL"),
    ],
    ids=[
        "empty",
        "text",
        "der",
        "bad-base64",
        "second-bad",
        "cert-and-key",
        "key-only",
        "rsa-key",
        "encrypted-key-cut-short",
        "cut-short",
        "trusted-certificate",
        "crl",
    ],
)
def test_a_file_that_cannot_be_trusted_as_it_is_is_refused(extra: bytes, message: str) -> None:
    with pytest.raises(trust.TrustError, match=message):
        trust.build_bundle(SYSTEM_ROOTS, extra)


def test_the_bundle_file_is_written_readable_by_all_and_replaced_whole(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        path = trust.write_bundle(str(tmp_path / "confdir"), b"first")
        assert path == str(tmp_path / "confdir" / trust.BUNDLE_NAME)
        assert trust.write_bundle(str(tmp_path / "confdir"), b"second") == path
    finally:
        os.umask(old_umask)
    assert Path(path).read_bytes() == b"second"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path / "confdir") == [trust.BUNDLE_NAME]  # no staged leftovers


# --- the option ----------------------------------------------------------------------------


def start(tctx: Any, bottle: hooks.BottleAddon, confdir: Path, **setting: Any) -> None:
    tctx.configure(
        bottle, **SAFE, bottle_pipelock_url="http://p:8888", confdir=str(confdir), **setting
    )


def refusal(tmp_path: Path, **setting: Any) -> str:
    """The OptionsError a setting gets, on top of an otherwise safe configuration."""
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        start(tctx, bottle, tmp_path / "confdir")
        with pytest.raises(exceptions.OptionsError) as refused:
            tctx.configure(bottle, **setting)
    return str(refused.value)


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_the_option_points_mitmproxy_at_the_combined_bundle(tmp_path: Path) -> None:
    ca = write(tmp_path, "corp.pem", CA_PEM)
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        start(tctx, bottle, tmp_path / "confdir", bottle_upstream_ca=ca)
        bundle = tmp_path / "confdir" / trust.BUNDLE_NAME
        assert tctx.options.ssl_verify_upstream_trusted_ca == str(bundle)
        assert ders(bundle.read_bytes()) == ders(SYSTEM_ROOTS) | ders(CA_PEM)
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o644

        # Changed at run time: the bundle is rebuilt; unset: mitmproxy's default trust again.
        tctx.configure(bottle, bottle_upstream_ca=write(tmp_path, "other.pem", OTHER_CA_PEM))
        assert ders(bundle.read_bytes()) == ders(SYSTEM_ROOTS) | ders(OTHER_CA_PEM)
        tctx.configure(bottle, bottle_upstream_ca="")
        assert tctx.options.ssl_verify_upstream_trusted_ca is None


def test_the_confdir_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ca = write(tmp_path, "corp.pem", CA_PEM)
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        tctx.configure(
            bottle,
            **SAFE,
            bottle_pipelock_url="http://p:8888",
            confdir="~/.mitmproxy",
            bottle_upstream_ca=ca,
        )
        expected = tmp_path / ".mitmproxy" / trust.BUNDLE_NAME
        assert tctx.options.ssl_verify_upstream_trusted_ca == str(expected)
        assert expected.is_file()


def test_without_the_option_mitmproxy_keeps_its_default_trust(tmp_path: Path) -> None:
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        start(tctx, bottle, tmp_path / "confdir")
        assert tctx.options.ssl_verify_upstream_trusted_ca is None
        assert not (tmp_path / "confdir" / trust.BUNDLE_NAME).exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no PEM certificate"),
        (broken(CA_PEM), "does not parse"),
        (CA_PEM + CA_KEY, "holds a private key"),
    ],
    ids=["no-certificate", "bad-certificate", "private-key"],
)
def test_a_bad_file_refuses_to_start(tmp_path: Path, content: bytes, message: str) -> None:
    ca = write(tmp_path, "corp.pem", content)
    refused = refusal(tmp_path, bottle_upstream_ca=ca)
    assert refused.startswith(f"bottle: bottle_upstream_ca: {ca}: "), refused
    assert message in refused


def test_an_unreadable_file_refuses_to_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pem")
    assert refusal(tmp_path, bottle_upstream_ca=missing) == (
        f"bottle: bottle_upstream_ca: {missing} cannot be read: No such file or directory"
    )
    assert "cannot be read" in refusal(tmp_path, bottle_upstream_ca=str(tmp_path))


@pytest.mark.parametrize(
    "setting",
    [
        {"ssl_verify_upstream_trusted_ca": "/etc/ssl/certs/ca-certificates.crt"},
        {"ssl_verify_upstream_trusted_confdir": "/etc/ssl/certs"},
    ],
    ids=["trusted_ca", "trusted_confdir"],
)
def test_mitmproxys_own_trust_options_beside_it_refuse_to_start(
    tmp_path: Path, setting: dict[str, str]
) -> None:
    ca = write(tmp_path, "corp.pem", CA_PEM)
    refused = refusal(tmp_path, bottle_upstream_ca=ca, **setting)
    name = next(iter(setting))
    assert f"bottle: bottle_upstream_ca: unset {name}" in refused, refused
    assert "ambiguous" in refused


def test_mitmproxys_trust_options_alone_are_left_alone(tmp_path: Path) -> None:
    bottle = hooks.BottleAddon()
    with context(bottle) as tctx:
        start(tctx, bottle, tmp_path, ssl_verify_upstream_trusted_ca="/some/ca.pem")
        assert tctx.options.ssl_verify_upstream_trusted_ca == "/some/ca.pem"


def test_ssl_insecure_stays_refused_with_the_option(tmp_path: Path) -> None:
    ca = write(tmp_path, "corp.pem", CA_PEM)
    assert "ssl_insecure=false" in refusal(tmp_path, bottle_upstream_ca=ca, ssl_insecure=True)
