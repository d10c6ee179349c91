"""No byte the agent chose reaches a log line the chain writes (addon/README.md, "Logs").

mitmproxy writes the agent's bytes into its lines: mitmdump's flow lines (method and URL), TLS
errors (the client's server name), protocol errors (the raw request line), exception texts. A
blocked request is exactly one whose bytes hold a secret, so none of that may be written. The
rule has three parts, each closing a class:

- mitmdump's flow lines are off (`flow_detail=0`, forced by the addon);
- every log record of mitmproxy passes one gate (`screen`, installed as the record factory):
  a record is kept only when its whole text is one of mitmproxy's fixed lines in `KEPT`, else its
  text is replaced by a fixed notice and its traceback dropped (one exception: the addon's own
  refusal of an option at startup, whose text is the addon's);
- the addon's own records carry only the chain's words: flow ids, reason codes, the agent's
  address, exception *types* (never their text), and tracebacks as frames without the message.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from typing import Any

from mitmproxy import exceptions

# mitmproxy's lines that hold only its own words, the agent's address (the `client` field the
# formatter adds) or an upstream address a verdict allowed (the addon refuses every other server
# connection before it is made).
KEPT = re.compile(
    r"client connect|client disconnect|client kill connection|closing transports\.\.\."
    r"|transports closed!|server (?:connect|disconnect) [\w.\-\[\]:]+(?: \([\w.:\[\]]+\))?"
    r"|HTTP\(S\) proxy listening at \S+\.|Loading script \S+|Proxy server listening at \S+"
    r"|stopping server|shutting down|mitmproxy has shut down"
)

OWN_LOGGER = "bottle"


def withheld(record: logging.LogRecord, text: str) -> str:
    return (
        f"[bottle withheld a {record.levelname.lower()} line of {record.name} "
        f"({len(text)} characters): it may carry the agent's bytes]"
    )


def frames_only(exc_info: Any) -> str:
    """A traceback as its frames (file, line, function) and the exception's type, never its
    message."""
    _, error, tb = exc_info
    frames = "".join(
        f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n'
        for frame in traceback.extract_tb(tb)
    )
    return f"Traceback (most recent call last):\n{frames}{type(error).__name__} (message withheld)"


def own_refusal(record: logging.LogRecord) -> str | None:
    """The addon's refusal of an option, as mitmproxy logs it when loading the script: its text
    is the addon's (option names and values, never traffic)."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, exceptions.OptionsError) and str(error).startswith("bottle: "):
        return f"{type(error).__name__}: {error}"
    return None


def screen(record: logging.LogRecord) -> logging.LogRecord:
    try:
        text = record.getMessage()
    except Exception:
        text = str(record.msg)
    if record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + "."):
        if record.exc_info and record.exc_info[1] is not None:
            # Into the text: mitmproxy's formatter renders `exc_info` itself, never `exc_text`.
            _replace(record, f"{text}\n{frames_only(record.exc_info)}")
        return record
    refusal = own_refusal(record)
    if refusal is not None and re.fullmatch(r"error in script \S+", text):
        _replace(record, f"{text}: {refusal}")
        return record
    if record.exc_info is None and record.exc_text is None and KEPT.fullmatch(text):
        return record
    _replace(record, withheld(record, text))
    return record


def _replace(record: logging.LogRecord, text: str) -> None:
    record.msg, record.args = text, ()
    record.exc_info, record.exc_text, record.stack_info = None, None, None


_installed: tuple[Callable[..., logging.LogRecord], Callable[..., logging.LogRecord]] | None = None


def install() -> None:
    """Every log record made from now on passes `screen`. Idempotent."""
    global _installed
    if _installed is not None:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return screen(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed = (previous, factory)


def uninstall() -> None:
    global _installed
    if _installed is None:
        return
    previous, factory = _installed
    if logging.getLogRecordFactory() is factory:
        logging.setLogRecordFactory(previous)
    _installed = None


# The words pipelock's block texts are made of (its reasons and its DLP pattern names, read from
# its answers in ../shared/corpus/pipelock-answers and the double). Anything else in a scanner's
# text (the host it names, a quoted parameter name, an echoed value) may be the agent's bytes.
SCANNER_WORDS = frozenset(
    """
    blocked domain not in allowlist matches core SSRF DLP match is a private internal IP
    address check failed DNS resolution error for resolves decodes to request body header
    contains secret high entropy query param path segment subdomain label threshold critical
    medium low URL rate limit exceeded kill switch active response AI API AWS Access Account
    Anthropic App Auth BIP-39 Bitcoin Bot Card Client Credential Credit Databricks DigitalOcean
    Discord Environment Ethereum Extended Face Fine-Grained Fireworks GCP GitHub GitLab Google
    Groq HashiCorp Header Hugging IBAN ID JWT Key Linear Mailgun New Notion Number OAuth OpenAI
    PAT Phrase Pinecone Private PyPI Relic Replicate Secret Security Seed SendGrid Sentry
    Service Slack Social Stripe Supabase Together Token Twilio Variable Vault Vercel WIF
    Webhook npm xAI
    """.split()  # noqa: SIM905
)
_SCANNER_TOKEN = re.compile(r'"[^"]*"|[A-Za-z0-9](?:[A-Za-z0-9_\-.]*[A-Za-z0-9])?')
_SMALL_NUMBER = re.compile(r"\d{1,3}(?:\.\d{1,3})?")


def scanner_text(text: str) -> str:
    """A scanner's text as the chain may write it: its own words and small numbers (entropy
    figures) kept, every other token (and every quoted string) `[redacted]`."""

    def keep(token: re.Match[str]) -> str:
        word = token.group()
        if word in SCANNER_WORDS or _SMALL_NUMBER.fullmatch(word):
            return word
        return '"[redacted]"' if word.startswith('"') else "[redacted]"

    return _SCANNER_TOKEN.sub(keep, text)


def scanner_code(code: str | None) -> str | None:
    """A scanner's reason code (`dlp_match`) as the chain may write it: a snake_case word."""
    if code is None or re.fullmatch(r"[a-z][a-z_]{0,39}", code):
        return code
    return "[redacted]"


def error_type(e: BaseException) -> str:
    """What a log line or a record may say of an exception: its type, never its text."""
    return type(e).__name__
