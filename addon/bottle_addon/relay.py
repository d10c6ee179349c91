"""The agent's only way out, both of its ends (README.md, "The agent's only route").

The agent's container has no network at all, only its loopback. A sidecar that shares the
agent's network namespace (and nothing else) listens on the agent's 127.0.0.1:8080 and carries
each connection over a Unix socket, on a volume only the sidecar and mitmproxy mount. Inside
mitmproxy, the addon listens on that socket and carries each connection on to mitmproxy's proxy
port on mitmproxy's own loopback. No byte is read or changed here: mitmproxy and the scanner
judge what passes. Nothing is logged but readiness: the bytes are the agent's.

As the sidecar: python3 relay.py <listen host> <listen port> <unix socket path>
This file is standalone (the sidecar has nothing else of the addon).
"""

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

CHUNK = 65536
READY = "bottle relay ready"

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until the reader's end, then half-closes the writer: the other way may go on."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    open_peer: Callable[[], Awaitable[Streams]],
) -> None:
    """Carries one connection to a peer opened for it, both ways, until both ends are done."""
    try:
        peer_reader, peer_writer = await open_peer()
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, peer_writer), _pipe(peer_reader, writer))
    finally:
        for end in (peer_writer, writer):
            end.close()


async def unix_to_tcp(path: str, host: str, port: int) -> asyncio.AbstractServer:
    """mitmproxy's end: the socket at `path`, each connection carried to host:port."""
    if os.path.lexists(path):
        os.unlink(path)  # left by an earlier mitmproxy in this volume

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await splice(reader, writer, lambda: asyncio.open_connection(host, port))

    server = await asyncio.start_unix_server(handle, path=path)
    # The sidecar runs as another user; only it and mitmproxy mount this volume.
    os.chmod(path, 0o666)
    return server


async def tcp_to_unix(host: str, port: int, path: str) -> asyncio.AbstractServer:
    """The agent's end: host:port in the agent's namespace, each connection carried to `path`
    (opened per connection: mitmproxy may come up after the relay)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await splice(reader, writer, lambda: asyncio.open_unix_connection(path))

    return await asyncio.start_server(handle, host, port)


async def serve(host: str, port: int, path: str) -> None:
    server = await tcp_to_unix(host, port, path)
    print(READY, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not argv[2].isdigit():
        print(f"usage: {argv[0]} <listen host> <listen port> <unix socket path>", file=sys.stderr)
        return 2
    asyncio.run(serve(argv[1], int(argv[2]), argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
