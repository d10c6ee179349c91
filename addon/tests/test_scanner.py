"""The verdict call over real sockets: what goes on the wire, keep-alive, and every way the
scanner can fail to answer (each a ScannerError, which the hooks turn into a block)."""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bottle_addon import canonical, scanner

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ALLOW = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 27\r\n\r\nforward proxy fetch failed\n"  # noqa: E501


class Stub:
    """A one-port TCP server whose behaviour each test sets; counts connections, keeps requests."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.handler: Handler = self.answer_with(ALLOW)
        self.port = 0

    def answer_with(self, raw: bytes, keep_open: bool = True) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                writer.write(raw)
                await writer.drain()
                if not keep_open:
                    writer.close()
                    return

        return handle

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    server_stub = Stub()
    server = await asyncio.start_server(server_stub.serve, "127.0.0.1", 0)
    server_stub.port = server.sockets[0].getsockname()[1]
    async with server:
        yield server_stub


def request(agent: str = "flow-1") -> scanner.ScanRequest:
    judged = canonical.Judged(
        method=b"POST",
        scheme="https",
        authority=b"api.example.com",
        target=b"/v1/messages?beta=true",
        headers=(
            (b"Content-Type", b"application/json"),
            (b"X-Api-Key", b"k"),
            (b"content-length", b"8"),
        ),
        hidden={1: b"bottle-bound-credential"},
        body=b'{"a": 1}',
    )
    return scanner.build_request(judged, agent_id=agent)


def budget(seconds: float) -> scanner.TimeoutBudget:
    """A fixed timeout, whatever the body."""
    ms = int(seconds * 1000)
    return scanner.TimeoutBudget(base_ms=ms, ms_per_mib=0, cap_ms=ms)


def client(stub: Stub, timeout: float = 2.0) -> scanner.Scanner:
    return scanner.Scanner(scanner.Endpoint("127.0.0.1", stub.port), budget(timeout))


def test_the_timeout_grows_with_the_body_up_to_the_cap() -> None:
    timeouts = scanner.TimeoutBudget(base_ms=5000, ms_per_mib=5000, cap_ms=30000)
    assert timeouts.seconds_for(0) == 5.0
    assert timeouts.seconds_for(scanner.MIB) == 10.0
    assert timeouts.seconds_for(5 * scanner.MIB) == 30.0
    assert timeouts.seconds_for(50 * scanner.MIB) == 30.0
    # The largest body that fits: pipelock's own max_body_bytes with the defaults.
    assert timeouts.max_body_bytes() == 5 * scanner.MIB


async def test_the_scanner_gets_the_request_in_absolute_form_with_the_flow_id(stub: Stub) -> None:
    answer = await client(stub).ask(request("flow-42"))
    assert answer.status == 502
    (sent,) = stub.requests
    head, body = sent.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST https://api.example.com/v1/messages?beta=true HTTP/1.1"
    fields = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    assert fields == [
        (b"Host", b"api.example.com"),
        (b"Content-Type", b"application/json"),
        (b"X-Api-Key", b"bottle-bound-credential"),
        (b"content-length", b"8"),
        (b"X-Bottle-Header-Names", b"Content-Type, X-Api-Key"),
        (b"X-Pipelock-Agent", b"flow-42"),
    ]
    assert body == b'{"a": 1}'


def test_non_default_ports_and_ipv6_hosts_keep_their_authority() -> None:
    assert canonical.authority("https", "::1", 8443) == b"[::1]:8443"
    assert canonical.authority("https", "API.Example.com.", 443) == b"api.example.com"
    assert canonical.authority("http", "example.com", 8080) == b"example.com:8080"


async def test_connections_are_reused(stub: Stub) -> None:
    scan = client(stub)
    for n in range(5):
        await scan.ask(request(f"flow-{n}"))
    assert (stub.connections, len(stub.requests)) == (1, 5)


async def test_a_connection_the_scanner_closed_while_idle_is_replaced(stub: Stub) -> None:
    stub.handler = stub.answer_with(ALLOW.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    scan = client(stub)
    await scan.ask(request())
    await scan.ask(request())
    assert (stub.connections, len(stub.requests)) == (2, 2)


async def test_concurrent_asks_do_not_wait_for_each_other(stub: Stub) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        await stub.answer_with(ALLOW)(reader, writer)

    stub.handler = slow
    scan = client(stub)
    started = time.monotonic()
    await asyncio.gather(*(scan.ask(request(f"f{n}")) for n in range(8)))
    assert time.monotonic() - started < 1.2


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(1.5)  # longer than the timeout; short so teardown is quick


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"\x16\x03\x01 this is not http\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(1)


async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(ALLOW[:-10])
    await writer.drain()
    writer.close()


async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = b"x" * (1 << 20)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (silent, "no answer within 0.3 s"),
        (hang_up, "closed the connection without answering"),
        (reset, "the scanner"),
        (garbage, "not valid HTTP/1.1"),
        (half_answer, "the scanner"),
        (huge, "larger than any verdict"),
    ],
)
async def test_every_failure_to_answer_is_an_error(
    stub: Stub, handler: Handler, message: str
) -> None:
    stub.handler = handler
    started = time.monotonic()
    with pytest.raises(scanner.ScannerError, match=message):
        await client(stub, timeout=0.3).ask(request())
    assert time.monotonic() - started < 1.0


async def test_a_larger_body_gets_a_longer_timeout(stub: Stub) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        await stub.answer_with(ALLOW)(reader, writer)

    stub.handler = slow
    timeouts = scanner.TimeoutBudget(base_ms=200, ms_per_mib=1000, cap_ms=5000)
    scan = scanner.Scanner(scanner.Endpoint("127.0.0.1", stub.port), timeouts)
    with pytest.raises(scanner.ScannerError, match=r"no answer within 0\.2 s"):
        await scan.ask(request())
    big = b"x" * scanner.MIB
    small = request()
    headers = tuple(
        (name, str(len(big)).encode() if name.lower() == b"content-length" else value)
        for name, value in small.headers
    )
    answer = await scan.ask(dataclasses.replace(small, headers=headers, body=big))
    assert answer.status == 502


async def test_a_closed_port_is_an_error() -> None:
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(scanner.ScannerError, match="cannot connect"):
        await scanner.Scanner(scanner.Endpoint("127.0.0.1", port), budget(1.0)).ask(request())
