"""One decision record per flow, joinable with the scanner's log by id."""

from __future__ import annotations

import gzip
import json
import time
import urllib.parse
import uuid

from itsupport import Chain, ChainFactory, H2Req, Respond, ScannerRequest, allow, block

REQUIRED = {
    "event": str,
    "id": str,
    "time": str,
    "client": str,
    "method": str,
    "url": str,
    "host": str,
    "sni": (str, type(None)),
    "http_version": dict,
    "verdict": str,
    "decided_by": str,
    "reason": (str, type(None)),
    "scanner": (dict, type(None)),
    "status": (int, type(None)),
    "duration_ms": dict,
    "bytes": dict,
    "credential": (str, list, type(None)),
    "error": (str, type(None)),
}


def by_path(r: ScannerRequest) -> Respond:
    if "/blocked" in r.target:
        return block()
    if "/fail" in r.target:
        return Respond(500, b"internal\n")
    return allow()


def test_one_record_per_flow_with_unique_ids(chain: Chain) -> None:
    c = chain
    c.scanner.behaviour = by_path
    responses = {
        "allow-h1": c.h1("GET", "/ok?x=1"),
        "blocked": c.h1("POST", "/blocked", body=b"AKIAIOSFODNN7EXAMPLE"),
        "fail": c.h1("GET", "/fail"),
        "local": c.h1(
            "POST", "/gz", headers=[("Content-Encoding", "gzip")], body=gzip.compress(b"x")
        ),
    }
    [responses["allow-h2"]] = c.h2([H2Req("GET", "/h2ok")])
    assert {k: r.status for k, r in responses.items()} == {
        "allow-h1": 200,
        "blocked": 403,
        "fail": 502,
        "local": 403,
        "allow-h2": 200,
    }

    records = c.mitm.wait_decisions(len(responses), settle=0.5)
    assert len(records) == len(responses), records
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    for rec in records:
        for key, kind in REQUIRED.items():
            assert key in rec, (key, rec)
            assert isinstance(rec[key], kind), (key, rec[key])
        assert rec["event"] == "bottle_decision"
        uuid.UUID(rec["id"])
        assert set(rec["http_version"]) == {"client", "upstream"}
        assert set(rec["duration_ms"]) == {"verdict", "total"}
        assert set(rec["bytes"]) == {"request_body", "response_body"}
        assert rec["client"].startswith("127.0.0.1:")

    # Join: record id == X-Pipelock-Agent the scanner saw == X-Bottle-Request-Id on blocks.
    agents: dict[str, str | None] = {}
    for q in c.scanner.requests:
        u = urllib.parse.urlsplit(q.target)
        agents[u.path.lstrip("/") + (f"?{u.query}" if u.query else "")] = q.header(
            "x-pipelock-agent"
        )
    rec_by_id = {r["id"]: r for r in records}
    assert set(agents) == {"ok?x=1", "blocked", "fail", "h2ok"}, agents
    assert all(a in rec_by_id for a in agents.values())

    ok = rec_by_id[agents["ok?x=1"]]
    assert (ok["verdict"], ok["decided_by"], ok["status"]) == ("allow", "pipelock", 200)
    assert ok["http_version"] == {"client": "HTTP/1.1", "upstream": "HTTP/1.1"}
    assert ok["scanner"]["status"] == 502
    assert ok["duration_ms"]["verdict"] is not None

    blocked = rec_by_id[agents["blocked"]]
    assert (blocked["verdict"], blocked["decided_by"], blocked["status"]) == (
        "block",
        "pipelock",
        403,
    )
    assert blocked["scanner"]["block_reason"] == "dlp_match"
    assert blocked["bytes"]["request_body"] == len(b"AKIAIOSFODNN7EXAMPLE")
    assert responses["blocked"].header("x-bottle-request-id") == blocked["id"]

    fail = rec_by_id[agents["fail"]]
    assert (fail["verdict"], fail["decided_by"], fail["reason"], fail["status"]) == (
        "block",
        "addon",
        "verdict_unavailable",
        502,
    )
    assert responses["fail"].header("x-bottle-request-id") in (None, fail["id"])

    h2 = rec_by_id[agents["h2ok"]]
    assert h2["http_version"]["client"] == "HTTP/2.0"
    assert h2["verdict"] == "allow"

    [local] = [r for r in records if r["id"] not in agents.values()]
    assert (local["verdict"], local["decided_by"], local["reason"], local["scanner"]) == (
        "block",
        "addon",
        "body_encoded",
        None,
    )


def test_decision_log_defaults_to_stdout(make_chain: ChainFactory) -> None:
    c = make_chain({"bottle_decision_log": ""})
    assert c.h1("GET", "/to-stdout").status == 200
    agent = c.scanner.requests[0].header("x-pipelock-agent")
    deadline = time.monotonic() + 3
    found: list[dict[str, object]] = []
    while time.monotonic() < deadline and not found:
        found = [
            json.loads(line)
            for line in c.mitm.output.splitlines()
            if line.startswith("{") and '"bottle_decision"' in line
        ]
        time.sleep(0.05)
    assert [r["id"] for r in found] == [agent]
