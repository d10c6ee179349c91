"""The upstream trust bundle: the system roots plus extra CAs (`bottle_upstream_ca`).

Where egress passes a TLS-intercepting corporate proxy, mitmproxy must trust that proxy's CA for
upstream connections as well as the system roots. mitmproxy's own option for it,
`ssl_verify_upstream_trusted_ca`, *replaces* its default trust (certifi), so the addon gives it
one file holding both. Building that file is a pure function of the two PEM texts.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

BUNDLE_NAME = "bottle-upstream-trust.pem"

_BLOCK = re.compile(rb"-----BEGIN ([^\r\n-]+)-----(.*?)-----END \1-----", re.DOTALL)
_BEGIN = re.compile(rb"-----BEGIN ([^\r\n-]+)-----")


class TrustError(ValueError):
    """Why a file cannot be added to the upstream trust."""


@dataclass(frozen=True)
class Bundle:
    pem: bytes  # the system roots, unchanged, then the extra certificates
    added: tuple[x509.Certificate, ...]


def extra_certificates(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM file meant to be trusted; refuses anything else in it."""
    labels = [m.group(1).decode("ascii", "replace") for m in _BEGIN.finditer(pem)]
    if any(label.endswith("PRIVATE KEY") for label in labels):
        raise TrustError("it holds a private key: give only the CA's certificate")
    blocks = list(_BLOCK.finditer(pem))
    if len(blocks) != len(labels):
        raise TrustError("a PEM block has no matching END line (is the file cut short?)")
    others = sorted({label for label in labels if label != "CERTIFICATE"})
    if others:
        # OpenSSL would read some of these (TRUSTED CERTIFICATE, X509 CRL); skipping them
        # silently would trust less than the file says.
        raise TrustError(f"it holds {', '.join(others)}; only CERTIFICATE blocks are accepted")
    if not blocks:
        raise TrustError(
            "it holds no PEM certificate (for a DER file: openssl x509 -inform der -in FILE)"
        )
    certificates: list[x509.Certificate] = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.extend(x509.load_pem_x509_certificates(block.group(0)))
        except ValueError as e:
            raise TrustError(f"certificate {number} of {len(blocks)} does not parse: {e}") from None
    return tuple(certificates)


def build_bundle(system_roots: bytes, extra_pem: bytes) -> Bundle:
    """The system roots, byte for byte, followed by the extra file's certificates."""
    added = extra_certificates(extra_pem)
    parts = [system_roots]
    if system_roots and not system_roots.endswith(b"\n"):
        parts.append(b"\n")
    for cert in added:
        subject = "".join(c if c.isprintable() else "?" for c in cert.subject.rfc4514_string())
        parts.append(f"\n# bottle_upstream_ca: {subject}\n".encode("ascii", "replace"))
        parts.append(cert.public_bytes(serialization.Encoding.PEM))
    return Bundle(b"".join(parts), added)


def write_bundle(directory: str, pem: bytes) -> str:
    """Writes the bundle as `directory/BUNDLE_NAME` (mode 0644), atomically; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, BUNDLE_NAME)
    fd, staged = tempfile.mkstemp(prefix=f".{BUNDLE_NAME}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise
    return path
