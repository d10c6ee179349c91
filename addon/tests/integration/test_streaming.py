"""Verdicts do not serialise flows, and SSE answers stream through."""

from __future__ import annotations

import threading
import time

import pytest
from itsupport import (
    ALLOW_BODY,
    SSE_EVENTS,
    SSE_INTERVAL_S,
    Chain,
    H2Req,
    Respond,
    Response,
)

N = 8
SCANNER_DELAY_S = 1.0
BUDGET_S = 2.5


@pytest.fixture
def slow_chain(chain: Chain) -> Chain:
    chain.scanner.set(Respond(502, ALLOW_BODY, delay_s=SCANNER_DELAY_S))
    return chain


def test_concurrent_h1_flows_wait_for_verdicts_in_parallel(slow_chain: Chain) -> None:
    c = slow_chain
    results: list[Response | BaseException] = [RuntimeError("not run")] * N

    def one(i: int) -> None:
        try:
            results[i] = c.h1("GET", f"/h1-{i}")
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    elapsed = time.monotonic() - t0
    statuses = [r.status if isinstance(r, Response) else repr(r) for r in results]
    assert statuses == [200] * N
    assert elapsed < BUDGET_S, f"{N} h1 flows with a {SCANNER_DELAY_S}s verdict took {elapsed:.2f}s"
    assert sorted(q.target for q in c.upstream.requests) == sorted(f"/h1-{i}" for i in range(N))
    assert len(c.scanner.requests) == N


def test_concurrent_h2_streams_wait_for_verdicts_in_parallel(slow_chain: Chain) -> None:
    c = slow_chain
    t0 = time.monotonic()
    results = c.h2([H2Req("GET", f"/h2-{i}") for i in range(N)])
    elapsed = time.monotonic() - t0
    assert [r.status for r in results] == [200] * N
    assert elapsed < BUDGET_S, (
        f"{N} h2 streams with a {SCANNER_DELAY_S}s verdict took {elapsed:.2f}s"
    )
    assert sorted(q.target for q in c.upstream.requests) == sorted(f"/h2-{i}" for i in range(N))
    assert len(c.scanner.requests) == N


def test_a_hanging_verdict_does_not_stall_other_flows(chain: Chain) -> None:
    """One flow waits on a scanner that never answers; another is served meanwhile."""
    c = chain
    c.scanner.behaviour = lambda r: (
        Respond(502, ALLOW_BODY, delay_s=3.0) if "/stuck" in r.target else Respond(502, ALLOW_BODY)
    )
    stuck: list[Response | BaseException] = []

    def go() -> None:
        try:
            stuck.append(c.h1("GET", "/stuck"))
        except BaseException as e:
            stuck.append(e)

    t = threading.Thread(target=go)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    r = c.h1("GET", "/quick")
    assert r.status == 200
    assert time.monotonic() - t0 < 1.0
    t.join(timeout=10)
    assert isinstance(stuck[0], Response) and stuck[0].status == 200


def _event_times(r: Response) -> list[float]:
    """Arrival time of each SSE event (the chunk that completed it)."""
    times: list[float] = []
    seen = b""
    for at, chunk in r.chunks:
        seen += chunk
        while len(times) < seen.count(b"\n\n"):
            times.append(at)
    return times


def _assert_streamed(r: Response) -> None:
    assert r.status == 200, r.text
    assert r.header("content-type") == "text/event-stream"
    times = _event_times(r)
    assert len(times) == SSE_EVENTS, r.body
    first = times[0] - r.started
    spread = times[-1] - times[0]
    assert first < 1.0, f"the first event arrived {first:.2f}s after the request"
    expected = (SSE_EVENTS - 1) * SSE_INTERVAL_S
    assert spread >= expected - 0.4, f"events arrived {spread:.2f}s apart (buffered?)"


def test_sse_streams_through_h1(chain: Chain) -> None:
    c = chain
    r = c.h1("GET", "/sse", headers=[("Accept", "text/event-stream")])
    _assert_streamed(r)
    [rec] = c.mitm.wait_decisions(1)
    assert rec["verdict"] == "allow"
    assert rec["bytes"]["response_body"] == len(r.body)


def test_sse_streams_through_h2(chain: Chain) -> None:
    c = chain
    [r] = c.h2([H2Req("GET", "/sse", headers=[("accept", "text/event-stream")])])
    _assert_streamed(r)
