"""Asks pipelock for its verdict: one HTTP/1.1 forward-proxy request per flow, asynchronously.

The request is the decrypted request in absolute form (`POST https://host/path HTTP/1.1`), with
its headers and body, so pipelock runs exactly the checks it would run as the agent's proxy. The
`X-Pipelock-Agent` header carries the flow's id: pipelock logs it as `agent` on every event of the
request, which is how the harness joins mitmproxy's and pipelock's evidence.

Connections are kept alive in a small pool (a new connection per verdict costs up to a third of
the proxy's throughput, notes/mitmproxy.md). Every failure raises `ScannerError`; the caller
blocks.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from dataclasses import dataclass

import h11

from . import canonical
from .verdict import ScannerAnswer

# pipelock's answers are short texts; anything longer is not one of them.
MAX_ANSWER_BYTES = 64 * 1024
# pipelock closes idle connections after 120 s; reuse only well inside that.
MAX_IDLE_SECONDS = 20.0
MAX_POOLED = 16
# The scanner's copy only: the request's header names, as a value pipelock scans.
HEADER_NAMES = b"X-Bottle-Header-Names"


MIB = 1 << 20


@dataclass(frozen=True)
class TimeoutBudget:
    """How long a verdict may take: `base_ms` for an empty body, `ms_per_mib` more per MiB of
    body, never past `cap_ms`. pipelock's scan time grows with the body, so a fixed timeout
    refused large clean bodies (502) that a working scanner would have passed."""

    base_ms: int
    ms_per_mib: int
    cap_ms: int

    def seconds_for(self, body_bytes: int) -> float:
        return min(self.cap_ms, self.base_ms + self.ms_per_mib * body_bytes / MIB) / 1000

    def max_body_bytes(self) -> int:
        """The largest body whose verdict fits under the cap."""
        if self.ms_per_mib == 0:
            return 1 << 62
        return (self.cap_ms - self.base_ms) * MIB // self.ms_per_mib


class ScannerError(Exception):
    """No answer from the scanner; the message says what happened."""


@dataclass(frozen=True)
class ScanRequest:
    method: bytes
    url: bytes
    host_header: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    agent_id: str


def build_request(judged: canonical.Judged, *, agent_id: str) -> ScanRequest:
    """The scanner's copy of the judged request: absolute form, the chain's Host and framing,
    every end-to-end header (a bound credential's secret replaced), and `X-Bottle-Header-Names`
    listing their names, which pipelock would otherwise never scan. A HEAD is asked about as
    GET: the verdict is in the answer's body, and an answer to HEAD has none (pipelock's checks
    do not depend on the method)."""
    headers = judged.scanner_headers()
    names = b", ".join(name for name, _ in headers if name.lower() != b"content-length")
    if names:
        # pipelock scans header values, never names: the names go to it as a value too.
        headers = (*headers, (HEADER_NAMES, names))
    return ScanRequest(
        method=b"GET" if judged.method == b"HEAD" else judged.method,
        url=judged.url,
        host_header=judged.authority,
        headers=headers,
        body=judged.body,
        agent_id=agent_id,
    )


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @staticmethod
    def parse(url: str) -> Endpoint:
        """`http://host:port` (a trailing `/` is fine); ValueError says what is wrong."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"{url!r} must start with http:// (pipelock's listener is plain HTTP)")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"{url!r} must be just http://host:port")
        if parts.path not in ("", "/"):
            raise ValueError(f"{url!r} must have no path: the addon sends absolute-form URLs")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ValueError(f"{url!r} must name a host and a port, e.g. http://pipelock:8888")
        return Endpoint(parts.hostname, port)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.writer.close()


class Scanner:
    def __init__(self, endpoint: Endpoint, timeouts: TimeoutBudget) -> None:
        self.endpoint = endpoint
        self.timeouts = timeouts
        self._idle: list[_Connection] = []

    async def ask(self, request: ScanRequest) -> ScannerAnswer:
        seconds = self.timeouts.seconds_for(len(request.body))
        try:
            async with asyncio.timeout(seconds):
                return await self._ask(request)
        except TimeoutError:
            raise ScannerError(f"no answer within {seconds:.1f} s") from None

    async def _ask(self, request: ScanRequest) -> ScannerAnswer:
        pooled = self._take_idle()
        if pooled is not None:
            try:
                return await self._exchange(pooled, request)
            except _StaleConnection:
                pass  # closed by the scanner while idle: one retry on a fresh connection
        try:
            reader, writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port)
        except OSError as e:
            raise ScannerError(
                f"cannot connect to {self.endpoint.host}:{self.endpoint.port}: {e}"
            ) from None
        try:
            return await self._exchange(_Connection(reader, writer), request)
        except _StaleConnection as e:
            raise ScannerError(str(e)) from None

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < MAX_IDLE_SECONDS and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    async def _exchange(self, connection: _Connection, request: ScanRequest) -> ScannerAnswer:
        done = False
        received_any = False
        try:
            # The judged headers carry the chain's framing (Content-Length) already.
            headers = [(b"Host", request.host_header), *request.headers]
            headers.append((b"X-Pipelock-Agent", request.agent_id.encode("ascii")))
            try:
                data = connection.h11.send(
                    h11.Request(method=request.method, target=request.url, headers=headers)
                )
                data += connection.h11.send(h11.Data(data=request.body)) or b""
                data += connection.h11.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError as e:
                # h11's text quotes the offending bytes: the agent's (addon/README.md, "Logs").
                raise ScannerError(
                    f"the request cannot be put to the scanner ({type(e).__name__})"
                ) from None
            try:
                connection.writer.write(data)
                await connection.writer.drain()
            except OSError as e:
                raise _StaleConnection(f"sending to the scanner failed: {e}") from None

            status = 0
            answer_headers: tuple[tuple[str, str], ...] = ()
            body = bytearray()
            while True:
                event = connection.h11.next_event()
                if event is h11.NEED_DATA:
                    try:
                        chunk = await connection.reader.read(65536)
                    except OSError as e:
                        if not received_any:
                            raise _StaleConnection(f"the scanner cut the connection: {e}") from None
                        raise ScannerError(f"the scanner cut the connection: {e}") from None
                    if not chunk and not received_any:
                        raise _StaleConnection(
                            "the scanner closed the connection without answering"
                        )
                    received_any = True
                    connection.h11.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    answer_headers = tuple(
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in event.headers
                    )
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_ANSWER_BYTES:
                        raise ScannerError("the scanner's answer is larger than any verdict")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.InformationalResponse):
                    continue
                else:
                    raise ScannerError("the scanner closed the connection mid-answer")
            done = True
            self._recycle(connection)
            return ScannerAnswer(status, answer_headers, bytes(body))
        except h11.RemoteProtocolError as e:
            raise ScannerError(
                f"the scanner's answer is not valid HTTP/1.1 ({type(e).__name__})"
            ) from None
        finally:
            if not done:
                connection.close()

    def _recycle(self, connection: _Connection) -> None:
        if connection.h11.our_state is h11.DONE and connection.h11.their_state is h11.DONE:
            connection.h11.start_next_cycle()
            connection.idle_since = time.monotonic()
            if len(self._idle) < MAX_POOLED:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class _StaleConnection(Exception):
    """Failed before any answer byte: on a pooled connection the scanner may just have closed it."""


async def ask(scanner: Scanner, request: ScanRequest) -> ScannerAnswer:
    """The one call the hooks make (module-level, so tests can replace it)."""
    return await scanner.ask(request)
