"""Per-host credential bindings: the agent's own API key may go to its own API, nowhere else.

pipelock's header DLP blocks real API keys in `Authorization`/`X-Api-Key` for every destination,
including the agent's own key on its way to its own API. A binding names one secret, the one
header it may travel in, in one exact form (the secret itself, or `<scheme> <secret>` when the
binding names a scheme), and the one https host it may go to. On that exact use only the secret's
bytes are replaced in the copy the scanner sees (`REDACTED`; the rest of the header is judged, the
upstream still gets the secret); the secret anywhere else (another host or header, another form of
the bound header, the URL, the body, also base64- or hex-encoded) blocks the request outright.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MIN_SECRET_LEN = 16
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
SCHEME = re.compile(r"^[A-Za-z0-9]+$")
# What the scanner's copy carries instead of a bound secret's bytes.
REDACTED = b"bottle-bound-credential"
HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


class BindingError(ValueError):
    """A bindings file that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Binding:
    host: str
    header: str
    secret: bytes
    # The forms the secret is searched for outside its bound header.
    needles: tuple[bytes, ...]
    # `Bearer` for `authorization: Bearer <secret>`; None: the value is the secret itself.
    scheme: bytes | None = None

    def allows(self, header_value: bytes) -> bool:
        """The bound header's value is exactly the documented form: the secret, or the binding's
        scheme (any case), one space, the secret. Nothing else rides along."""
        if self.scheme is None:
            return header_value == self.secret
        scheme, space, rest = header_value.partition(b" ")
        return bool(space) and scheme.lower() == self.scheme.lower() and rest == self.secret


def load(text: str, env: Mapping[str, str]) -> tuple[Binding, ...]:
    """Parses a bindings file:
    `{"bindings": [{"host", "header", "value" | "value_env", "scheme"?}]}`."""
    try:
        document = json.loads(text)
    except ValueError as e:
        raise BindingError(f"not JSON: {e}") from None
    if not isinstance(document, dict) or set(document) != {"bindings"}:
        raise BindingError('expected an object with one key, "bindings"')
    entries = document["bindings"]
    if not isinstance(entries, list):
        raise BindingError('"bindings" must be a list')
    bindings = []
    for index, entry in enumerate(entries):
        where = f"bindings[{index}]"
        if not isinstance(entry, dict):
            raise BindingError(f"{where} must be an object")
        unknown = set(entry) - {"host", "header", "value", "value_env", "scheme"}
        if unknown:
            raise BindingError(f"{where} has unknown keys {sorted(unknown)}")
        host = entry.get("host")
        header = entry.get("header")
        if not isinstance(host, str) or not HOST_NAME.match(host):
            raise BindingError(f"{where}.host must be a lower-case host name, got {host!r}")
        if not isinstance(header, str) or not HEADER_NAME.match(header):
            raise BindingError(f"{where}.header must be a header name, got {header!r}")
        secret = _secret(entry, where, env)
        scheme = entry.get("scheme")
        if scheme is not None and (not isinstance(scheme, str) or not SCHEME.match(scheme)):
            raise BindingError(f"{where}.scheme must be a word like Bearer, got {scheme!r}")
        bindings.append(
            Binding(
                host,
                header.lower(),
                secret,
                needles(secret),
                scheme.encode("ascii") if scheme is not None else None,
            )
        )
    return tuple(bindings)


def _secret(entry: Mapping[str, object], where: str, env: Mapping[str, str]) -> bytes:
    if ("value" in entry) == ("value_env" in entry):
        raise BindingError(f'{where} needs exactly one of "value" and "value_env"')
    if "value_env" in entry:
        name = entry["value_env"]
        if not isinstance(name, str) or name not in env:
            raise BindingError(f"{where}.value_env names {name!r}, which is not set")
        value: object = env[name]
    else:
        value = entry["value"]
    if not isinstance(value, str) or len(value) < MIN_SECRET_LEN:
        raise BindingError(
            f"{where}: the secret must be a string of at least {MIN_SECRET_LEN} characters"
        )
    if any(ch.isspace() for ch in value) or not value.isascii():
        raise BindingError(f"{where}: the secret must be printable ASCII without spaces")
    return value.encode("ascii")


def needles(secret: bytes) -> tuple[bytes, ...]:
    """The secret, percent-encoded, hex, and base64 at each of the three byte alignments."""
    forms = {secret, urllib.parse.quote(secret, safe="").encode(), secret.hex().encode()}
    forms.add(secret.hex().upper().encode())
    for offset in range(3):
        chunk = secret[offset:]
        chunk = chunk[: len(chunk) - len(chunk) % 3]
        if len(chunk) >= 9:
            forms.add(base64.b64encode(chunk))
            forms.add(base64.urlsafe_b64encode(chunk))
    return tuple(sorted(forms))


@dataclass(frozen=True)
class Use:
    """Where the bound secrets appear in one request."""

    # Header fields that are a permitted use: index -> the value the scanner's copy carries
    # (the secret's bytes replaced by REDACTED).
    hidden_headers: Mapping[int, bytes]
    # Header names of the permitted uses, for the decision record.
    hidden_names: tuple[str, ...]
    # Set when a secret appears anywhere it is not bound to: the request is blocked.
    misuse: str | None


def inspect(
    bindings: Sequence[Binding],
    *,
    scheme: str,
    host: str,
    port: int,
    headers: Sequence[tuple[bytes, bytes]],
    target: bytes,
    body: bytes,
) -> Use:
    hidden: dict[int, bytes] = {}
    names: list[str] = []
    for binding in bindings:
        bound_destination = scheme == "https" and host == binding.host and port == 443
        for index, (name, value) in enumerate(headers):
            if not _contains(value, binding.needles):
                continue
            header = name.decode("latin-1").lower()
            if bound_destination and header == binding.header and binding.allows(value):
                hidden[index] = value.replace(binding.secret, REDACTED)
                names.append(header)
                continue
            where = "a header where it is not bound, or not in its exact form"
            return Use({}, (), _misuse(binding, where))
        decoded_target = urllib.parse.unquote_to_bytes(target)
        if _contains(target, binding.needles) or _contains(decoded_target, binding.needles):
            return Use({}, (), _misuse(binding, "the URL of a request"))
        if _contains(body, binding.needles):
            return Use({}, (), _misuse(binding, "the body of a request"))
    return Use(hidden, tuple(names), None)


def _contains(haystack: bytes, forms: tuple[bytes, ...]) -> bool:
    return any(form in haystack for form in forms)


def _misuse(binding: Binding, where: str) -> str:
    return f"the credential bound to {binding.header} for https://{binding.host} appears in {where}"
