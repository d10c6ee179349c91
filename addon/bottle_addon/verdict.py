"""Reads pipelock's answer to a forward-proxy request as a verdict on the request.

pipelock has no route to any upstream (addon/README.md, "Exactly once"), so for a request that
passes every request-side check its forward leg fails with 502 `forward proxy fetch failed`: that
answer, and only that one, means "allowed". Its request-side blocks are relayed to the client.
Everything else, including its response-side blocks (which mean it reached an upstream), is a
verdict we could not obtain, and blocks.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from . import logs

ALLOW_BODY = "forward proxy fetch failed"

# Block reasons pipelock can only produce after it received an upstream response.
RESPONSE_SIDE_PREFIXES = (
    "blocked: compressed response cannot be scanned",
    "blocked: response contains injection",
    "blocked: media_policy:",
    "blocked: redirect blocked:",
)
RESPONSE_SIDE_REASONS = frozenset(
    {"compressed_response", "prompt_injection", "redirect_scan_denied", "media_policy"}
)

# Headers of pipelock's block answer that the client gets too.
RELAYED_HEADERS = ("content-type", "x-content-type-options")
RELAYED_PREFIX = "x-pipelock-"


class Kind(enum.Enum):
    ALLOW = "allow"
    BLOCK = "block"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class ScannerAnswer:
    """pipelock's HTTP answer as received: status, header fields in order, body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    # Human-readable: pipelock's block text, or why no verdict could be obtained.
    reason: str
    # pipelock's X-Pipelock-Block-Reason when it sent one.
    block_reason: str | None = None
    # For BLOCK: the answer the client gets (pipelock's own status, headers and body).
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    body: bytes = b""


def unavailable(why: str) -> Verdict:
    return Verdict(Kind.UNAVAILABLE, why)


def read_answer(answer: ScannerAnswer) -> Verdict:
    """The verdict pipelock's answer carries (a pure function: no I/O, no state)."""
    try:
        text = answer.body.decode("utf-8")
    except UnicodeDecodeError:
        return unavailable(f"the scanner answered {answer.status} with a body that is not UTF-8")
    content_type = (answer.header("content-type") or "").split(";")[0].strip().lower()
    first_line = text.rstrip("\n")
    block_reason = answer.header("x-pipelock-block-reason")

    if answer.status == 502 and content_type == "text/plain" and first_line == ALLOW_BODY:
        if block_reason is not None:
            return unavailable("the scanner's 502 carried a block reason")
        return Verdict(Kind.ALLOW, "no request-side check of the scanner blocked it")

    if answer.status == 403 and content_type == "text/plain" and text.startswith("blocked: "):
        if first_line.startswith(RESPONSE_SIDE_PREFIXES) or block_reason in RESPONSE_SIDE_REASONS:
            return unavailable(
                f"the scanner blocked on an upstream response ({logs.scanner_text(first_line)}): "
                "it reached an "
                "upstream, which it must never do (see addon/README.md, 'Exactly once')"
            )
        return _block(answer, logs.scanner_text(first_line), block_reason)

    if (
        answer.status == 429
        and content_type == "text/plain"
        and text.startswith("blocked: rate limit exceeded for ")
    ):
        return _block(answer, logs.scanner_text(first_line), block_reason)

    if answer.status == 503 and content_type == "application/json":
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.get("error") == "kill_switch_active":
            message = payload.get("message")
            # The operator's configured text, not the request's.
            reason = f"kill switch active: {message}" if isinstance(message, str) else "kill switch"
            return _block(answer, reason, block_reason or "kill_switch_active")

    return unavailable(_describe_unexpected(answer.status, content_type, first_line))


def _block(answer: ScannerAnswer, reason: str, block_reason: str | None) -> Verdict:
    relayed = tuple(
        (key, value)
        for key, value in answer.headers
        if key.lower() in RELAYED_HEADERS or key.lower().startswith(RELAYED_PREFIX)
    )
    return Verdict(
        Kind.BLOCK,
        reason,
        block_reason=block_reason,
        status=answer.status,
        headers=relayed,
        body=answer.body,
    )


def _describe_unexpected(status: int, content_type: str, first_line: str) -> str:
    snippet = logs.scanner_text(first_line[:120])
    if status == 405 and "forward proxy not enabled" in first_line:
        return "the scanner's forward proxy is off: set forward_proxy.enabled: true in its config"
    if 200 <= status < 400:
        return (
            f"the scanner answered {status}: it forwarded the request to an upstream, which it "
            "must never be able to do (see addon/README.md, 'Exactly once')"
        )
    return f"the scanner answered {status} {content_type or 'without a content type'}: {snippet!r}"
