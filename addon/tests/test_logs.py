"""No byte the agent chose reaches a log line the chain writes (bottle_addon/logs.py)."""

from __future__ import annotations

import io
import logging
import types
from collections.abc import Iterator

import pytest
from mitmproxy import exceptions

from bottle_addon import hooks, logs

SECRET = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """What a handler on the root logger writes while the gate is installed."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    logs.install()
    try:
        yield text
    finally:
        logs.uninstall()
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize(
    "line",
    [
        "client connect",
        "client disconnect",
        "server connect example.com:443 (93.184.216.34:443)",
        "server disconnect example.com:443",
        "HTTP(S) proxy listening at *:8080.",
    ],
)
def test_mitmproxys_fixed_lines_are_kept(line: str, output: io.StringIO) -> None:
    logging.getLogger("mitmproxy.proxy.server").info(line)
    assert output.getvalue() == f"mitmproxy.proxy.server INFO {line}\n"


@pytest.mark.parametrize(
    ("name", "message", "args"),
    [
        # What mitmproxy 12.2.3 writes with the agent's bytes in it.
        (
            "mitmproxy.proxy.server",
            "Client TLS handshake failed. The client does not trust the proxy's certificate "
            "for %s.exfil.example (tlsv1 alert unknown ca)",
            (SECRET,),
        ),
        ("mitmproxy.proxy.server", "HTTP/1 protocol error: bad request line: b'%s / x'", (SECRET,)),
        ("mitmproxy.proxy.server", "server connect %s.exfil.example:443", (SECRET + " x",)),
        ("mitmproxy.addons.dumper", "GET https://example.com/?key=%s", (SECRET,)),
        ("someone.else", "%s", (SECRET,)),
    ],
)
def test_every_other_line_is_withheld(
    name: str, message: str, args: tuple[str, ...], output: io.StringIO
) -> None:
    logging.getLogger(name).warning(message, *args)
    written = output.getvalue()
    assert SECRET not in written
    assert f"[bottle withheld a warning line of {name} (" in written


def test_a_mitmproxy_traceback_is_withheld_whole(output: io.StringIO) -> None:
    try:
        raise ValueError(f"bad bytes {SECRET}")
    except ValueError:
        logging.getLogger("mitmproxy.addonmanager").exception("Addon error")
    written = output.getvalue()
    assert SECRET not in written
    assert "Traceback" not in written


def test_the_addons_tracebacks_keep_their_frames_not_their_message(output: io.StringIO) -> None:
    def fails() -> None:
        raise ValueError(f"bad bytes {SECRET}")

    try:
        fails()
    except ValueError:
        logging.getLogger("bottle").exception("bottle: the verdict failed for %s", "flow-1")
    written = output.getvalue()
    assert SECRET not in written
    assert "bottle: the verdict failed for flow-1" in written
    assert "in fails" in written
    assert "ValueError (message withheld)" in written


def test_uninstall_restores_the_previous_factory() -> None:
    before = logging.getLogRecordFactory()
    logs.install()
    logs.install()  # idempotent: one gate, not two
    assert logging.getLogRecordFactory() is not before
    logs.uninstall()
    assert logging.getLogRecordFactory() is before


def test_mitmdumps_flow_lines_refuse_to_start() -> None:
    keys = {*hooks.REQUIRED_VALUES, "stream_large_bodies", "mode", "flow_detail"}
    options = types.SimpleNamespace(
        connection_strategy="lazy",
        rawtcp=False,
        ssl_insecure=False,
        stream_large_bodies=None,
        mode=["regular"],
        flow_detail=1,
        **{name: [] for name in hooks.MUST_BE_EMPTY},
    )
    problem = hooks.options_problem(options, keys)
    assert problem is not None and "flow_detail=0" in problem
    options.flow_detail = 0
    assert hooks.options_problem(options, keys) is None


@pytest.mark.parametrize(
    ("refusal", "kept"),
    [("bottle: set rawtcp=false (--set rawtcp=false): why", True), (f"other {SECRET}", False)],
)
def test_only_the_addons_own_option_refusal_is_kept(
    refusal: str, kept: bool, output: io.StringIO
) -> None:
    try:
        raise exceptions.OptionsError(refusal)
    except exceptions.OptionsError:
        logging.getLogger("mitmproxy.addons.script").error(
            "error in script /addon/addon.py", exc_info=True
        )
    assert (refusal in output.getvalue()) is kept
    assert SECRET not in output.getvalue()


@pytest.mark.parametrize(
    ("text", "written"),
    [
        # pipelock's own texts, as its answers in the corpus show them
        (
            "blocked: request body contains secret: AWS Access ID",
            "blocked: request body contains secret: AWS Access ID",
        ),
        ("blocked: DLP match: BIP-39 Seed Phrase (critical)", None),
        ("blocked: high entropy path segment (4.85 > 4.50 threshold)", None),
        # what it echoes of the request
        (
            "blocked: domain not in allowlist: akiaiosfodnn7example.example.com",
            "blocked: domain not in allowlist: [redacted]",
        ),
        (
            'blocked: high entropy query param "AKIAIOSFODNN7EXAMPLE" (5.39 > 4.50 threshold)',
            'blocked: high entropy query param "[redacted]" (5.39 > 4.50 threshold)',
        ),
        ("blocked: 4111111111111111", "blocked: [redacted]"),
    ],
)
def test_a_scanners_text_keeps_its_own_words_only(text: str, written: str | None) -> None:
    assert logs.scanner_text(text) == (text if written is None else written)


@pytest.mark.parametrize(
    ("code", "written"),
    [("dlp_match", "dlp_match"), (None, None), ("akia iosfodnn7", "[redacted]")],
)
def test_a_scanners_reason_code_is_a_word(code: str | None, written: str | None) -> None:
    assert logs.scanner_code(code) == written


def test_a_decision_record_has_every_key_and_no_other() -> None:
    from bottle_addon import record

    written = record.decision(id="x", verdict="block")
    assert list(written) == list(record.KEYS)
    assert (written["event"], written["id"], written["host"]) == ("bottle_decision", "x", None)
    with pytest.raises(KeyError):
        record.decision(hostname="a secret's place")
