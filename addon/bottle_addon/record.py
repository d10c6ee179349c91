"""The decision record: one JSON line per flow, written when the flow ends.

It is the mitmproxy half of the evidence for each request; its `id` is the value pipelock logs as
`agent`, so the two join on it.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any, TextIO


def timestamp(epoch_seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


REDACTED = "[redacted]"

# Every key of a decision record, in the order written: one list, so a record of any kind (a
# flow, a refused connection) has them all and a new key is added once.
KEYS = (
    "event",
    "id",
    "time",
    "client",
    "method",
    "url",
    "host",
    "sni",
    "http_version",
    "verdict",
    "decided_by",
    "reason",
    "detail",
    "scanner",
    "status",
    "duration_ms",
    "bytes",
    "credential",
    "judged",
    "error",
)


def decision(**fields: Any) -> dict[str, Any]:
    """A decision record: the keys not given are null; a key not in `KEYS` is a bug."""
    unknown = set(fields) - set(KEYS)
    if unknown:
        raise KeyError(f"not decision record keys: {sorted(unknown)}")
    return {key: fields.get(key) for key in KEYS} | {"event": "bottle_decision"}


def redacted_url(url: str) -> str:
    """`scheme://[redacted]`: a blocked request may carry its secret anywhere in its URL, the
    host name included; a CONNECT's `host:port` too."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://{REDACTED}" if sep else REDACTED


class DecisionLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO = open(path, "a", encoding="utf-8") if path else sys.stdout  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()
