"""The scanner's verdict, as the client, the upstream and the scanner see it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from itsupport import (
    ADDON_DIR,
    ALLOW_BODY,
    Action,
    Chain,
    ChainFactory,
    Close,
    Garbage,
    Hang,
    Reset,
    Respond,
    Response,
    allow,
    block,
    free_port,
    header,
)

RECORD_KEYS = {
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
    "scanner",
    "status",
    "duration_ms",
    "bytes",
    "credential",
    "error",
}


def only_record(c: Chain) -> dict:
    records = c.mitm.wait_decisions(1)
    assert len(records) == 1, records
    assert records[0].keys() >= RECORD_KEYS, sorted(RECORD_KEYS - records[0].keys())
    assert records[0]["event"] == "bottle_decision"
    return records[0]


def assert_verdict_unavailable(r: Response, c: Chain) -> dict:
    assert r.status == 502, (r.status, r.text)
    assert r.header("x-bottle-block-reason") == "verdict_unavailable"
    assert r.text.startswith("bottle: blocked:"), r.text
    assert "verdict" in r.text
    assert c.upstream.connections == [], "the upstream was contacted without a verdict"
    assert c.upstream.requests == []
    rec = only_record(c)
    assert (rec["verdict"], rec["decided_by"], rec["reason"]) == (
        "block",
        "addon",
        "verdict_unavailable",
    )
    assert rec["status"] == 502
    return rec


def test_allowed_get_reaches_upstream_once_and_scanner_sees_absolute_url(chain: Chain) -> None:
    c = chain
    r = c.h1("GET", "/hello?x=1", headers=[("X-Test", "yes"), ("Accept", "*/*")])
    assert r.status == 200, r.text
    assert json.loads(r.body) == {"ok": True, "method": "GET", "target": "/hello?x=1"}

    [up] = c.upstream.requests
    assert (up.method, up.target) == ("GET", "/hello?x=1")
    assert header(up.headers, "x-test") == "yes"
    assert up.sni == "localhost"
    assert header(up.headers, "x-pipelock-agent") is None
    assert len(c.upstream.connections) == 1

    [sc] = c.scanner.requests
    assert sc.method == "GET"
    assert sc.target == c.url("/hello?x=1")
    assert sc.header("host") == f"localhost:{c.upstream.port}"
    assert sc.header("x-test") == "yes"
    agent = sc.header("x-pipelock-agent")
    assert agent

    rec = only_record(c)
    assert rec["id"] == agent
    assert (rec["verdict"], rec["decided_by"]) == ("allow", "pipelock")
    assert rec["reason"] is None
    assert rec["status"] == 200
    assert rec["method"] == "GET"
    assert rec["url"] == c.url("/hello?x=1")
    assert rec["host"] == "localhost"
    assert rec["sni"] == "localhost"
    assert rec["http_version"] == {"client": "HTTP/1.1", "upstream": "HTTP/1.1"}
    assert rec["scanner"]["status"] == 502
    assert rec["error"] is None


def test_allowed_post_body_reaches_scanner_and_upstream_unchanged(chain: Chain) -> None:
    c = chain
    body = json.dumps({"prompt": "hello", "n": list(range(50))}).encode()
    r = c.h1("POST", "/v1/messages", headers=[("Content-Type", "application/json")], body=body)
    assert r.status == 200, r.text
    [up] = c.upstream.requests
    assert up.body == body
    [sc] = c.scanner.requests
    assert (sc.method, sc.target, sc.body) == ("POST", c.url("/v1/messages"), body)
    assert sc.header("content-length") == str(len(body))
    assert sc.header("content-type") == "application/json"
    rec = only_record(c)
    assert rec["bytes"]["request_body"] == len(body)
    assert rec["verdict"] == "allow"


KILL_SWITCH_BODY = b'{"error":"kill_switch_active","message":"kill switch is active"}\n'


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(block(), id="403-dlp"),
        pytest.param(
            block(
                b"blocked: rate limit exceeded for localhost\n",
                429,
                (("X-Pipelock-Block-Reason", "rate_limit"), ("X-Pipelock-Block-Version", "1")),
            ),
            id="429-rate-limit",
        ),
        pytest.param(
            Respond(
                503,
                KILL_SWITCH_BODY,
                (("Content-Type", "application/json"), ("X-Pipelock-Block-Version", "1")),
            ),
            id="503-kill-switch",
        ),
    ],
)
def test_blocked_post_relays_the_scanner_answer_and_never_touches_upstream(
    chain: Chain, answer: Respond
) -> None:
    c = chain
    c.scanner.set(answer)
    secret_body = b'{"aws": "AKIAIOSFODNN7EXAMPLE"}'
    r = c.h1("POST", "/upload", body=secret_body, headers=[("Content-Type", "application/json")])
    assert r.status == answer.status, r.text
    assert r.body == answer.body
    for name, value in answer.headers:
        if name.lower().startswith("x-pipelock-"):
            assert r.header(name) == value, name
    assert c.upstream.connections == [], "a blocked request opened a connection to the upstream"
    [sc] = c.scanner.requests
    assert sc.body == secret_body
    agent = sc.header("x-pipelock-agent")
    assert r.header("x-bottle-request-id") == agent
    rec = only_record(c)
    assert rec["id"] == agent
    assert (rec["verdict"], rec["decided_by"]) == ("block", "pipelock")
    assert rec["status"] == answer.status
    assert rec["scanner"]["status"] == answer.status


FAIL_CLOSED: list[tuple[str, Action | None]] = [
    ("scanner-port-closed", None),
    ("reset", Reset()),
    ("close-without-answer", Close()),
    ("garbage", Garbage()),
    ("hang", Hang()),
    ("slower-than-timeout", Respond(502, ALLOW_BODY, delay_s=2.0)),
    ("200", Respond(200, b"ok\n")),
    ("301", Respond(301, b"", (("Location", "https://elsewhere.test/"),))),
    ("500", Respond(500, b"internal error\n")),
    ("502-other-body", Respond(502, b"bad gateway\n")),
    ("403-not-blocked-prefix", Respond(403, b"forbidden\n")),
    (
        "403-response-side",
        block(
            b"blocked: compressed response cannot be scanned\n",
            extra=(("X-Pipelock-Block-Reason", "response_scan"),),
        ),
    ),
    ("404", Respond(404, b"404 page not found\n")),
]


@pytest.mark.parametrize(("case", "action"), FAIL_CLOSED, ids=[c for c, _ in FAIL_CLOSED])
def test_fail_closed_when_no_verdict(
    make_chain: ChainFactory, case: str, action: Action | None
) -> None:
    sets: dict[str, str | None] = {"bottle_verdict_timeout_ms": "500"}
    if action is None:
        sets["bottle_pipelock_url"] = f"http://127.0.0.1:{free_port()}"
    # One process for all cases (the closed-port one has its own URL, so its own process): a
    # case that left the scanner pool in a bad state would show up in the cases after it.
    c = make_chain(sets)
    if action is not None:
        c.scanner.set(action)
    t0 = time.monotonic()
    r = c.h1("POST", "/v1/data", body=b'{"x": 1}', timeout=10)
    elapsed = time.monotonic() - t0
    rec = assert_verdict_unavailable(r, c)
    assert elapsed < 1.5, f"{case}: the 502 took {elapsed:.2f}s"
    if action is None:
        assert c.scanner.requests == []
    else:
        assert c.scanner.requests, "the scanner was never asked"
        assert rec["id"] == c.scanner.requests[0].header("x-pipelock-agent")


FAULT_SCRIPT = """\
import sys
from typing import NoReturn

sys.path.insert(0, {addon_dir!r})

from bottle_addon import scanner


async def _boom(*args: object, **kwargs: object) -> NoReturn:
    raise RuntimeError("injected by the integration test")


scanner.ask = _boom
"""


def test_exception_inside_the_addon_fails_closed(make_chain: ChainFactory, tmp_path: Path) -> None:
    fault = tmp_path / "bottle_fault.py"
    fault.write_text(FAULT_SCRIPT.format(addon_dir=str(ADDON_DIR)))
    c = make_chain(scripts_before=[fault])
    r = c.h1("GET", "/anything")
    assert_verdict_unavailable(r, c)
    assert c.scanner.requests == []
    # The exception's type and frames are logged; its text (which may quote the agent's bytes)
    # is not (bottle_addon/logs.py).
    assert "the addon failed: RuntimeError" in c.mitm.output
    assert "in _boom" in c.mitm.output
    assert "injected by the integration test" not in c.mitm.output


def test_scanner_keeps_working_after_a_failure(chain: Chain) -> None:
    """One bad answer does not poison later verdicts (no stuck pooled connection)."""
    c = chain
    c.scanner.set(Respond(500, b"oops\n"))
    assert c.h1("GET", "/one").status == 502
    c.scanner.set(allow())
    for i in range(3):
        r = c.h1("GET", f"/ok{i}")
        assert r.status == 200, r.text
    assert [q.target for q in c.upstream.requests] == ["/ok0", "/ok1", "/ok2"]
    assert len(c.scanner.requests) == 4
