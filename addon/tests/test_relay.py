"""The agent's way in (relay.py): both ends carry bytes unchanged, both ways, half-close
included; with no mitmproxy behind the socket, the agent's connection closes with nothing."""

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

from bottle_addon import relay


async def _shouting_server() -> tuple[asyncio.AbstractServer, int]:
    """Reads to the client's end of writing, answers it uppercased, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # closed with our bytes unread: nothing came back either
        return b""
    finally:
        writer.close()


async def test_bytes_cross_both_ends_unchanged_both_ways(tmp_path: Path) -> None:
    upstream, upstream_port = await _shouting_server()
    path = str(tmp_path / "proxy.sock")
    mitm_end = await relay.unix_to_tcp(path, "127.0.0.1", upstream_port)
    agent_end = await relay.tcp_to_unix("127.0.0.1", 0, path)
    agent_port = agent_end.sockets[0].getsockname()[1]
    payload = bytes(range(256)) * 1000  # every byte value, past one read's size
    assert await _exchange(agent_port, payload) == payload.upper()
    # The socket is open to the relay's user (only it and mitmproxy mount its volume).
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    for server in (agent_end, mitm_end, upstream):
        server.close()


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    upstream, upstream_port = await _shouting_server()
    path = tmp_path / "proxy.sock"
    path.write_text("left by an earlier mitmproxy")
    mitm_end = await relay.unix_to_tcp(str(path), "127.0.0.1", upstream_port)
    agent_end = await relay.tcp_to_unix("127.0.0.1", 0, str(path))
    assert await _exchange(agent_end.sockets[0].getsockname()[1], b"x") == b"X"
    for server in (agent_end, mitm_end, upstream):
        server.close()


async def test_with_nothing_behind_the_socket_the_agent_gets_nothing(tmp_path: Path) -> None:
    agent_end = await relay.tcp_to_unix("127.0.0.1", 0, str(tmp_path / "absent.sock"))
    assert await _exchange(agent_end.sockets[0].getsockname()[1], b"secret") == b""
    agent_end.close()


def test_the_sidecar_says_how_to_run_it_when_misused() -> None:
    script = Path(relay.__file__)
    done = subprocess.run(
        [sys.executable, str(script), "127.0.0.1"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "usage:" in done.stderr
