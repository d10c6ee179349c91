"""Per-host credential bindings: the agent's own API key may go to its own API, nowhere else.

pipelock's header DLP blocks real API keys in `Authorization`/`X-Api-Key` for every destination,
including the agent's own key on its way to its own API. A binding names one secret, the one
header it may travel in and the one https host it may go to. On that exact use the header is left
out of the copy the scanner sees (the upstream still gets it); the secret anywhere else (another
host or header, the URL, the body, also base64- or hex-encoded) blocks the request outright.
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

    def allows(self, header_value: bytes) -> bool:
        """The bound header's value is the secret itself or `<Scheme> <secret>`."""
        if header_value == self.secret:
            return True
        scheme, _, rest = header_value.partition(b" ")
        return rest == self.secret and scheme.isalpha()


def load(text: str, env: Mapping[str, str]) -> tuple[Binding, ...]:
    """Parses a bindings file: `{"bindings": [{"host", "header", "value" | "value_env"}]}`."""
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
        unknown = set(entry) - {"host", "header", "value", "value_env"}
        if unknown:
            raise BindingError(f"{where} has unknown keys {sorted(unknown)}")
        host = entry.get("host")
        header = entry.get("header")
        if not isinstance(host, str) or not HOST_NAME.match(host):
            raise BindingError(f"{where}.host must be a lower-case host name, got {host!r}")
        if not isinstance(header, str) or not HEADER_NAME.match(header):
            raise BindingError(f"{where}.header must be a header name, got {header!r}")
        secret = _secret(entry, where, env)
        bindings.append(Binding(host, header.lower(), secret, needles(secret)))
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

    # Indexes of header fields that are a permitted use: kept from the scanner's copy.
    hidden_headers: frozenset[int]
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
    hidden: set[int] = set()
    names: list[str] = []
    for binding in bindings:
        bound_destination = scheme == "https" and host == binding.host and port == 443
        for index, (name, value) in enumerate(headers):
            if not _contains(value, binding.needles):
                continue
            header = name.decode("latin-1").lower()
            if bound_destination and header == binding.header and binding.allows(value):
                hidden.add(index)
                names.append(header)
                continue
            return Use(frozenset(), (), _misuse(binding, f"header {header} to {host}"))
        decoded_target = urllib.parse.unquote_to_bytes(target)
        if _contains(target, binding.needles) or _contains(decoded_target, binding.needles):
            return Use(frozenset(), (), _misuse(binding, f"the URL to {host}"))
        if _contains(body, binding.needles):
            return Use(frozenset(), (), _misuse(binding, f"the body to {host}"))
    return Use(frozenset(hidden), tuple(names), None)


def _contains(haystack: bytes, forms: tuple[bytes, ...]) -> bool:
    return any(form in haystack for form in forms)


def _misuse(binding: Binding, where: str) -> str:
    return f"the credential bound to {binding.header} for https://{binding.host} appears in {where}"
