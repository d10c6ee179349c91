"""Test infrastructure for the addon's integration suite.

A real `mitmdump -s addon.py` runs as a subprocess; everything it talks to is stubbed here and
reached over loopback sockets:

- `Pki`: a throwaway root CA and a leaf for `localhost` / `127.0.0.1` (the stub upstream's cert).
- `Upstream`: a TLS HTTP/1.1 server (optionally h2 too, by ALPN) recording every accepted TCP
  connection (with its SNI and ALPN) and every request; `/sse` streams five events 0.4 s apart
  (HTTP/1.1), anything else answers 200 JSON.
- `Scanner`: a plain HTTP/1.1 server standing in for pipelock's forward proxy, programmable per
  test (`Respond`, `Hang`, `Reset`, `Close`, `Garbage`) and recording every request.
- `Mitm`: one mitmdump process, its output and its decision log.
- Clients: `h1_request` (CONNECT + TLS + h11, any Host header), `h1_session` (several requests on
  one kept-alive connection) and `h2_requests` (CONNECT + TLS with ALPN h2, many streams on one
  connection, concurrent or one after another), all timestamping what they read.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADDON_DIR = Path(__file__).resolve().parents[2]
ADDON_SCRIPT = ADDON_DIR / "addon.py"
READY_MARKER = "bottle addon ready"
LISTEN_RE = re.compile(r"proxy listening at (\S+):(\d+)")

# Pipelock's answers (Go's http.Error shape: text/plain, nosniff, message + "\n").
ALLOW_BODY = b"forward proxy fetch failed\n"
GO_ERROR_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/plain; charset=utf-8"),
    ("X-Content-Type-Options", "nosniff"),
)


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_pki(directory: Path) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bottle test root")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.pem", directory / "leaf.pem", directory / "leaf-key.pem")
    pki.ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_pem.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    pki.key_pem.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


# ------------------------------------------------------------------------- threaded servers


Headers = list[tuple[str, str]]


def _decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """First value of `name` (case-insensitive), or None."""
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


class _Server(abc.ABC):
    """Accept loop on 127.0.0.1:<random>, one thread per connection; subclasses answer."""

    def __init__(self, port: int = 0) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(("127.0.0.1", port))
        except OSError:
            self._listener.close()
            raise
        self._listener.listen(128)
        self.port: int = int(self._listener.getsockname()[1])
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            with self.lock:
                self._open.add(sock)
            t = threading.Thread(target=self._run_conn, args=(sock, peer), daemon=True)
            self._threads.append(t)
            t.start()

    def _run_conn(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        try:
            self.handle(sock, peer)
        except (OSError, h11.ProtocolError, ssl.SSLError):
            pass
        finally:
            with self.lock:
                self._open.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    @abc.abstractmethod
    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        """Serves one accepted connection."""

    def stop(self) -> None:
        self.stopped.set()
        # shutdown() wakes the thread blocked in accept(); close() alone would leave the port
        # listening until that accept() returned.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        self._acceptor.join(timeout=2)
        with self.lock:
            socks = list(self._open)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=2)


def _h11_read_request(
    conn: h11.Connection, sock: socket.socket
) -> tuple[h11.Request, bytes, Headers] | None:
    """One full request (head, body, trailers), or None when the peer closed."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body), _decode_headers(event.headers)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


# ---------------------------------------------------------------------------------- upstream


@dataclass
class UpstreamConnection:
    peer: tuple[str, int]
    accepted_at: float
    sni: str | None = None
    tls_ok: bool = False
    alpn: str | None = None


@dataclass
class UpstreamRequest:
    method: str
    target: str
    headers: Headers
    body: bytes
    sni: str | None
    at: float


SSE_EVENTS = 5
SSE_INTERVAL_S = 0.4


class Upstream(_Server):
    """TLS origin, HTTP/1.1 only unless `h2` (then h2 when the client offers it). Records
    connections at accept time, before any handshake."""

    def __init__(self, pki: Pki, port: int = 0, *, tls: bool = True, h2: bool = False) -> None:
        super().__init__(port)
        self.tls = tls
        self.connections: list[UpstreamConnection] = []
        self.requests: list[UpstreamRequest] = []
        self.raw_after_switch = b""
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.cert_pem, pki.key_pem)
        self.ctx.set_alpn_protocols(["h2", "http/1.1"] if h2 else ["http/1.1"])
        self.ctx.sni_callback = self._on_sni

    def reset(self) -> None:
        with self.lock:
            self.connections.clear()
            self.requests.clear()
            self.raw_after_switch = b""

    @staticmethod
    def _on_sni(sslsock: ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        # Kept on the socket itself: a table keyed by id() gave a handshake without SNI the name
        # of an earlier, collected socket whose id was reused (a flaky test).
        sslsock.bottle_sni = name  # type: ignore[attr-defined]

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        record = UpstreamConnection(peer=peer, accepted_at=time.monotonic())
        with self.lock:
            self.connections.append(record)
        sock.settimeout(10)
        if self.tls:
            tls: socket.socket = self.ctx.wrap_socket(sock, server_side=True)
            record.sni = getattr(tls, "bottle_sni", None)
            record.tls_ok = True
            record.alpn = tls.selected_alpn_protocol()
        else:
            tls = sock
        with self.lock:
            self._open.add(tls)
        try:
            if record.alpn == "h2":
                self._serve_h2(tls, record)
                return
            conn = h11.Connection(h11.SERVER)
            while True:
                got = _h11_read_request(conn, tls)
                if got is None:
                    return
                req, body, _trailers = got
                ureq = UpstreamRequest(
                    method=req.method.decode(),
                    target=req.target.decode(),
                    headers=_decode_headers(req.headers),
                    body=body,
                    sni=record.sni,
                    at=time.monotonic(),
                )
                with self.lock:
                    self.requests.append(ureq)
                if ureq.target.startswith("/sse"):
                    self._serve_sse(conn, tls)
                elif ureq.target.startswith("/switch"):
                    self._serve_switch(tls)
                    return
                else:
                    payload = json.dumps(
                        {"ok": True, "method": ureq.method, "target": ureq.target}
                    ).encode()
                    out = conn.send(
                        h11.Response(
                            status_code=200,
                            headers=[
                                ("Content-Type", "application/json"),
                                ("Content-Length", str(len(payload))),
                            ],
                        )
                    )
                    if ureq.method != "HEAD":
                        out += conn.send(h11.Data(data=payload))
                    tls.sendall(out + conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        finally:
            with self.lock:
                self._open.discard(tls)
            with contextlib.suppress(OSError):
                tls.close()

    def _serve_switch(self, tls: socket.socket) -> None:
        """Answers 101 Switching Protocols (asked for or not), then records every byte that
        arrives on the switched connection in `raw_after_switch`."""
        tls.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: bottle-raw\r\n"
            b"Connection: upgrade\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            while data := tls.recv(65536):
                with self.lock:
                    self.raw_after_switch += data

    def _serve_h2(self, tls: socket.socket, record: UpstreamConnection) -> None:
        """Answers every h2 stream 200 JSON once it ended (no SSE, no trailers)."""
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        heads: dict[int, Headers] = {}
        bodies: dict[int, bytearray] = {}
        while True:
            data = tls.recv(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    heads[ev.stream_id] = [(str(k), str(v)) for k, v in ev.headers]
                    bodies[ev.stream_id] = bytearray()
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    hs = heads.pop(ev.stream_id)
                    ureq = UpstreamRequest(
                        method=header(hs, ":method") or "",
                        target=header(hs, ":path") or "",
                        headers=[(k, v) for k, v in hs if not k.startswith(":")],
                        body=bytes(bodies.pop(ev.stream_id)),
                        sni=record.sni,
                        at=time.monotonic(),
                    )
                    with self.lock:
                        self.requests.append(ureq)
                    payload = json.dumps(
                        {"ok": True, "method": ureq.method, "target": ureq.target}
                    ).encode()
                    conn.send_headers(
                        ev.stream_id,
                        [
                            (":status", "200"),
                            ("content-type", "application/json"),
                            ("content-length", str(len(payload))),
                        ],
                    )
                    conn.send_data(ev.stream_id, payload, end_stream=True)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return
            out = conn.data_to_send()
            if out:
                tls.sendall(out)

    def _serve_sse(self, conn: h11.Connection, tls: socket.socket) -> None:
        tls.sendall(
            conn.send(
                h11.Response(
                    status_code=200,
                    headers=[("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")],
                )
            )
        )
        for i in range(SSE_EVENTS):
            if i:
                time.sleep(SSE_INTERVAL_S)
            tls.sendall(conn.send(h11.Data(data=f"id: {i}\ndata: event {i}\n\n".encode())))
        tls.sendall(conn.send(h11.EndOfMessage()))


# ----------------------------------------------------------------------------------- scanner


@dataclass
class ScannerRequest:
    method: str
    target: str
    headers: Headers
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        return header(self.headers, name)


@dataclass(frozen=True)
class Respond:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = GO_ERROR_HEADERS
    delay_s: float = 0.0
    # Close the (kept-alive) connection this long after answering, like an idle timeout.
    close_after_s: float | None = None


@dataclass(frozen=True)
class Hang:
    """Read the request, never answer (until the peer or the test goes away)."""


@dataclass(frozen=True)
class Reset:
    """Read the request, then close with RST (SO_LINGER 0)."""


@dataclass(frozen=True)
class Close:
    """Read the request, then close cleanly without a byte of answer."""


@dataclass(frozen=True)
class Garbage:
    data: bytes = b"\x00\x17\xffnot http at all\r\n\r\n"


Action = Respond | Hang | Reset | Close | Garbage


def allow() -> Respond:
    """Pipelock's answer when every request-side check passed and its forward leg failed."""
    return Respond(502, ALLOW_BODY)


def block(
    body: bytes = b"blocked: request body contains secret: AWS Access ID\n",
    status: int = 403,
    extra: Sequence[tuple[str, str]] = (
        ("X-Pipelock-Block-Reason", "dlp_match"),
        ("X-Pipelock-Block-Version", "1"),
        ("X-Pipelock-Block-Severity", "critical"),
        ("X-Pipelock-Block-Retry", "none"),
        ("X-Pipelock-Block-Layer", "body_dlp"),
    ),
) -> Respond:
    return Respond(status, body, GO_ERROR_HEADERS + tuple(extra))


class Scanner(_Server):
    """Plain HTTP/1.1 stand-in for pipelock's forward proxy. `behaviour` picks each answer."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ScannerRequest] = []
        self.connections = 0
        self.behaviour: Callable[[ScannerRequest], Action] = lambda _r: allow()

    def set(self, action: Action) -> None:
        self.behaviour = lambda _r: action

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.connections = 0
        self.behaviour = lambda _r: allow()

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        with self.lock:
            self.connections += 1
        conn = h11.Connection(h11.SERVER)
        while True:
            got = _h11_read_request(conn, sock)
            if got is None:
                return
            req, body, _trailers = got
            sreq = ScannerRequest(
                method=req.method.decode(),
                target=req.target.decode(),
                headers=_decode_headers(req.headers),
                body=body,
                at=time.monotonic(),
            )
            with self.lock:
                self.requests.append(sreq)
            action = self.behaviour(sreq)
            match action:
                case Respond(status=status, body=rbody, headers=rheaders, delay_s=delay):
                    if delay and self.stopped.wait(delay):
                        return
                    hs = [*rheaders, ("Content-Length", str(len(rbody)))]
                    out = conn.send(h11.Response(status_code=status, headers=hs))
                    if sreq.method != "HEAD":  # like Go's server: no body on HEAD, length kept
                        out += conn.send(h11.Data(data=rbody))
                    sock.sendall(out + conn.send(h11.EndOfMessage()))
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    if action.close_after_s is not None:
                        self.stopped.wait(action.close_after_s)
                        return
                    conn.start_next_cycle()
                case Hang():
                    sock.settimeout(0.2)
                    while not self.stopped.is_set():
                        try:
                            if not sock.recv(65536):
                                return
                        except TimeoutError:
                            continue
                    return
                case Reset():
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    return
                case Close():
                    sock.shutdown(socket.SHUT_RDWR)
                    return
                case Garbage(data=data):
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_RDWR)
                    return


# ---------------------------------------------------------------------------------- mitmdump


class Mitm:
    """One mitmdump process; stdout+stderr collected line by line."""

    def __init__(self, argv: list[str], env: Mapping[str, str], workdir: Path) -> None:
        self.argv = argv
        self.workdir = workdir
        self.confdir = workdir / "confdir"
        self.decision_log = workdir / "decisions.jsonl"
        self.port = 0
        self.lines: list[str] = []
        self._line_mark = 0
        self._log_mark = 0
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=workdir,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def ca_pem(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        """Output since the last `mark()`."""
        with self._cond:
            return "\n".join(self.lines[self._line_mark :])

    def wait_output(self, text: str, timeout: float = 5.0) -> str:
        """`output` once it holds `text` (mitmproxy's lines reach the reader thread a moment
        after the client has its answer), or as it is when the time is up."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while text not in "\n".join(self.lines[self._line_mark :]) and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return "\n".join(self.lines[self._line_mark :])

    def mark(self) -> None:
        """Start of a test on a shared process: `output` and `decisions()` begin here."""
        with self._cond:
            self._line_mark = len(self.lines)
        self._log_mark = self.decision_log.stat().st_size if self.decision_log.exists() else 0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, markers: Sequence[str], timeout: float = 15.0) -> bool:
        """True once every marker appeared and the port is known; False if the process ended."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = "\n".join(self.lines)
                m = LISTEN_RE.search(text)
                if m:
                    self.port = int(m.group(2))
                if m and all(mk in text for mk in markers) and self.ca_pem.exists():
                    return True
                if self._eof:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"mitmdump not ready after {timeout}s:\n{text}")
                self._cond.wait(min(left, 0.05))

    def wait_exit(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)

    # decision record
    def decisions(self) -> list[dict[str, object]]:
        if not self.decision_log.exists():
            return []
        out: list[dict[str, object]] = []
        with self.decision_log.open("rb") as f:
            f.seek(self._log_mark)
            text = f.read().decode()
        for line in text.splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def wait_decisions(self, n: int, timeout: float = 5.0, settle: float = 0.3) -> list[dict]:
        """Wait until at least n records exist, then `settle` s more, and return them all."""
        deadline = time.monotonic() + timeout
        while len(self.decisions()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(settle)
        return self.decisions()


def mitm_argv(
    workdir: Path,
    *,
    scripts: Sequence[Path],
    sets: Mapping[str, str | None],
) -> list[str]:
    argv = ["mitmdump", "--listen-host", "127.0.0.1", "--listen-port", "0"]
    for s in scripts:
        argv += ["-s", str(s)]
    for k, v in sets.items():
        if v is not None:
            argv += ["--set", f"{k}={v}"]
    return argv


# ----------------------------------------------------------------------------------- clients


def open_tunnel(
    proxy_port: int, authority: str, timeout: float = 10.0
) -> tuple[socket.socket, int]:
    """TCP to the proxy, `CONNECT authority`; returns the socket and the CONNECT status."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    status_line = buf.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return sock, status


def client_tls(
    sock: socket.socket, ca_pem: Path, server_hostname: str, alpn: Sequence[str]
) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    ctx.set_alpn_protocols(list(alpn))
    return ctx.wrap_socket(sock, server_hostname=server_hostname)


@dataclass
class Response:
    status: int
    headers: Headers
    body: bytes
    started: float
    got_headers: float = 0.0
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    trailers: Headers = field(default_factory=list)
    http_version: str = ""

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def h1_request(
    proxy_port: int,
    ca_pem: Path,
    method: str,
    host: str,
    port: int,
    path: str = "/",
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    host_header: str | None = None,
    sni: str | None = None,
    timeout: float = 10.0,
) -> Response:
    """One HTTP/1.1 request through a CONNECT tunnel to host:port."""
    authority = f"{host}:{port}"
    started = time.monotonic()
    raw, status = open_tunnel(proxy_port, authority, timeout)
    if status != 200:
        raw.close()
        raise AssertionError(f"CONNECT {authority} answered {status}")
    tls = client_tls(raw, ca_pem, sni or host, ["http/1.1"])
    try:
        conn = h11.Connection(h11.CLIENT)
        hs: list[tuple[str, str]] = [("Host", host_header or authority)]
        hs += list(headers)
        names = {k.lower() for k, _ in hs}
        if body and "content-length" not in names and "transfer-encoding" not in names:
            hs.append(("Content-Length", str(len(body))))
        out = conn.send(h11.Request(method=method, target=path, headers=hs))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        tls.sendall(out)
        return _h11_read_response(conn, tls, started)
    finally:
        with contextlib.suppress(OSError):
            tls.close()


def h1_session(
    proxy_port: int,
    ca_pem: Path,
    host: str,
    port: int,
    requests: Sequence[tuple[str, str, bytes]],
    timeout: float = 10.0,
) -> list[Response]:
    """Several (method, path, body) requests, one after another, on one kept-alive connection."""
    authority = f"{host}:{port}"
    raw, status = open_tunnel(proxy_port, authority, timeout)
    if status != 200:
        raw.close()
        raise AssertionError(f"CONNECT {authority} answered {status}")
    tls = client_tls(raw, ca_pem, host, ["http/1.1"])
    out: list[Response] = []
    try:
        conn = h11.Connection(h11.CLIENT)
        for method, path, body in requests:
            started = time.monotonic()
            hs = [("Host", authority), ("Content-Length", str(len(body)))]
            data = conn.send(h11.Request(method=method, target=path, headers=hs))
            data += conn.send(h11.Data(data=body)) if body else b""
            data += conn.send(h11.EndOfMessage())
            tls.sendall(data)
            out.append(_h11_read_response(conn, tls, started))
            conn.start_next_cycle()
        return out
    finally:
        with contextlib.suppress(OSError):
            tls.close()


def h1_plain_request(
    proxy_port: int,
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 10.0,
) -> Response:
    """A plain-HTTP request to the proxy in absolute form (no CONNECT)."""
    authority = url.split("/")[2]
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        conn = h11.Connection(h11.CLIENT)
        hs = [("Host", authority), *headers, ("Content-Length", str(len(body)))]
        data = conn.send(h11.Request(method=method, target=url, headers=hs))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        sock.sendall(data)
        return _h11_read_response(conn, sock, started)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _h11_read_response(conn: h11.Connection, sock: socket.socket, started: float) -> Response:
    resp: Response | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            raise ConnectionError(f"proxy broke the HTTP/1.1 exchange: {e}") from e
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            resp = Response(
                status=event.status_code,
                headers=_decode_headers(event.headers),
                body=b"",
                started=started,
                got_headers=time.monotonic(),
                http_version="HTTP/" + event.http_version.decode(),
            )
        elif isinstance(event, h11.Data):
            assert resp is not None
            resp.chunks.append((time.monotonic(), bytes(event.data)))
            resp.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert resp is not None
            resp.trailers = _decode_headers(event.headers)
            return resp
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("proxy closed the connection before a full response")


@dataclass
class H2Req:
    method: str = "GET"
    path: str = "/"
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    authority: str | None = None
    trailers: Sequence[tuple[str, str]] = ()


def h2_requests(
    proxy_port: int,
    ca_pem: Path,
    host: str,
    port: int,
    reqs: Sequence[H2Req],
    *,
    sni: str | None = None,
    timeout: float = 10.0,
    sequential: bool = False,
) -> list[Response]:
    """All `reqs` as streams on one h2 connection through one CONNECT tunnel: concurrent, or
    with `sequential` each one sent only after the one before it ended."""
    authority = f"{host}:{port}"
    started = time.monotonic()
    raw, status = open_tunnel(proxy_port, authority, timeout)
    if status != 200:
        raw.close()
        raise AssertionError(f"CONNECT {authority} answered {status}")
    tls = client_tls(raw, ca_pem, sni or host, ["h2"])
    try:
        if tls.selected_alpn_protocol() != "h2":
            raise AssertionError(f"proxy negotiated {tls.selected_alpn_protocol()!r}, not h2")
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(1 << 24)
        by_stream: dict[int, Response] = {}
        order: list[int] = []
        pending: set[int] = set()

        def send(r: H2Req) -> None:
            sid = conn.get_next_available_stream_id()
            hs = [
                (":method", r.method),
                (":scheme", "https"),
                (":authority", r.authority or authority),
                (":path", r.path),
                *r.headers,
            ]
            if r.body:
                hs.append(("content-length", str(len(r.body))))
            end_after_headers = not r.body and not r.trailers
            conn.send_headers(sid, hs, end_stream=end_after_headers)
            if r.body:
                conn.send_data(sid, r.body, end_stream=not r.trailers)
            if r.trailers:
                conn.send_headers(sid, list(r.trailers), end_stream=True)
            by_stream[sid] = Response(
                status=0,
                headers=[],
                body=b"",
                started=time.monotonic() if sequential else started,
                http_version="HTTP/2.0",
            )
            order.append(sid)
            pending.add(sid)

        def receive_until_done() -> None:
            tls.sendall(conn.data_to_send())
            while pending:
                data = tls.recv(65536)
                if not data:
                    raise ConnectionError(f"proxy closed the h2 connection; open streams {pending}")
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        resp = by_stream[ev.stream_id]
                        hdrs = [(str(k), str(v)) for k, v in ev.headers]
                        resp.status = int(header(hdrs, ":status") or 0)
                        resp.headers = [(k, v) for k, v in hdrs if not k.startswith(":")]
                        resp.got_headers = time.monotonic()
                    elif isinstance(ev, h2.events.DataReceived):
                        resp = by_stream[ev.stream_id]
                        resp.chunks.append((time.monotonic(), bytes(ev.data)))
                        resp.body += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        trailers = [(str(k), str(v)) for k, v in ev.headers]
                        by_stream[ev.stream_id].trailers = trailers
                    elif isinstance(ev, h2.events.StreamEnded):
                        pending.discard(ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        pending.discard(ev.stream_id)
                        by_stream[ev.stream_id].status = -1
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        raise ConnectionError(f"h2 GOAWAY {ev.error_code}; open streams {pending}")
                out = conn.data_to_send()
                if out:
                    tls.sendall(out)

        for r in reqs:
            send(r)
            if sequential:
                receive_until_done()
        receive_until_done()
        return [by_stream[s] for s in order]
    finally:
        with contextlib.suppress(OSError):
            tls.close()


def wait_until(pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def make_mitm_ca(directory: Path) -> Path:
    """A mitmproxy CA store (as mitmproxy writes it) to copy into each process's confdir."""
    from mitmproxy.certs import CertStore

    directory.mkdir(parents=True, exist_ok=True)
    CertStore.create_store(directory, "mitmproxy", 2048)
    return directory


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_BOTTLE_")}
    env.update(extra or {})
    return env


# ------------------------------------------------------------------------------- launching

# Options every launch adds after the base ones: the SSRF allowlist for loopback (the
# stubs' address); `BOTTLE_IT_EXTRA_SETS="name=value,name=value"` adds more.
BASE_EXTRA_SETS: dict[str, str] = {"bottle_ssrf_allow": "127.0.0.0/8,::1/128"}


def extra_sets() -> dict[str, str]:
    out = dict(BASE_EXTRA_SETS)
    for item in filter(None, os.environ.get("BOTTLE_IT_EXTRA_SETS", "").split(",")):
        name, _, value = item.partition("=")
        out[name.strip()] = value.strip()
    return out


@dataclass
class Launcher:
    """Starts mitmdump processes for one test and stops them all at teardown."""

    tmp_path: Path
    pki: Pki
    scanner: Scanner
    ca_template: Path | None = None
    started: list[Mitm] = field(default_factory=list)

    def base_sets(self, workdir: Path) -> dict[str, str | None]:
        return {
            "confdir": str(workdir / "confdir"),
            "connection_strategy": "lazy",
            "rawtcp": "false",
            "flow_detail": "0",
            "ssl_verify_upstream_trusted_ca": str(self.pki.ca_pem),
            "bottle_pipelock_url": f"http://127.0.0.1:{self.scanner.port}",
            "bottle_decision_log": str(workdir / "decisions.jsonl"),
            # The stubs listen on ephemeral ports; the port rules get their own tests.
            "bottle_connect_ports": "443,1024-65535",
            "bottle_http_ports": "80,1024-65535",
            **extra_sets(),
        }

    def spawn(
        self,
        sets: Mapping[str, str | None] | None = None,
        env: Mapping[str, str] | None = None,
        scripts_before: Sequence[Path] = (),
        addon: bool = True,
    ) -> Mitm:
        """A process with the base options overridden by `sets` (None removes an option)."""
        if addon and not ADDON_SCRIPT.exists():
            pytest.skip(f"{ADDON_SCRIPT} not present")
        workdir = self.tmp_path / f"mitm{len(self.started)}"
        workdir.mkdir()
        if self.ca_template is not None:
            # mitmproxy generates a CA (RSA keygen, ~0.7 s) only into an empty confdir.
            shutil.copytree(self.ca_template, workdir / "confdir")
        merged = self.base_sets(workdir)
        merged.update(sets or {})
        scripts = [*scripts_before] + ([ADDON_SCRIPT] if addon else [])
        argv = mitm_argv(workdir, scripts=scripts, sets=merged)
        m = Mitm(argv, clean_env(env), workdir)
        self.started.append(m)
        return m

    def start(
        self,
        sets: Mapping[str, str | None] | None = None,
        env: Mapping[str, str] | None = None,
        scripts_before: Sequence[Path] = (),
        addon: bool = True,
    ) -> Mitm:
        m = self.spawn(sets, env, scripts_before, addon)
        markers = [READY_MARKER] if addon else []
        if not m.wait_ready(markers):
            rc = m.wait_exit()
            pytest.fail(f"mitmdump exited ({rc}) instead of starting; argv {m.argv}:\n{m.output}")
        return m

    def refused(
        self, sets: Mapping[str, str | None] | None = None, env: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        """Start a process expected to refuse; return (exit code, output)."""
        m = self.spawn(sets, env)
        markers = [READY_MARKER]
        try:
            ready = m.wait_ready(markers, timeout=15)
        except TimeoutError:
            ready = True
        if ready:
            m.stop()
            return 0, "started (listening) instead of refusing:\n" + m.output
        return m.wait_exit(), m.output

    def stop_all(self) -> None:
        for m in self.started:
            if m.alive:
                m.proc.send_signal(signal.SIGTERM)
        for m in self.started:
            m.stop()


@dataclass
class Chain:
    """client -> mitmdump(+addon) -> stub upstream, with the stub scanner on the side."""

    mitm: Mitm
    upstream: Upstream
    scanner: Scanner

    def h1(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        host: str = "localhost",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        host_header: str | None = None,
        sni: str | None = None,
        timeout: float = 10.0,
        port: int | None = None,
    ) -> Response:
        return h1_request(
            self.mitm.port,
            self.mitm.ca_pem,
            method,
            host,
            port or self.upstream.port,
            path,
            headers=headers,
            body=body,
            host_header=host_header,
            sni=sni,
            timeout=timeout,
        )

    def h2(
        self,
        reqs: Sequence[H2Req],
        *,
        host: str = "localhost",
        sni: str | None = None,
        timeout: float = 10.0,
        port: int | None = None,
        sequential: bool = False,
    ) -> list[Response]:
        return h2_requests(
            self.mitm.port,
            self.mitm.ca_pem,
            host,
            port or self.upstream.port,
            reqs,
            sni=sni,
            timeout=timeout,
            sequential=sequential,
        )

    def url(self, path: str, host: str = "localhost") -> str:
        port = self.upstream.port
        return f"https://{host}{path}" if port == 443 else f"https://{host}:{port}{path}"


ProcessKey = tuple[object, ...]


class ChainFactory:
    """Chains for one test. mitmdump processes are shared within a test module per distinct
    launch (options, env, scripts) unless `fresh=True`; the stubs are reset and the process's
    output and decision log are marked at every call, so each test sees only its own flows."""

    def __init__(
        self,
        launcher: Launcher,
        upstream: Upstream,
        scanner: Scanner,
        shared: dict[ProcessKey, Mitm],
    ) -> None:
        self.launcher = launcher
        self.upstream = upstream
        self.scanner = scanner
        self.shared = shared
        self.handed: list[Mitm] = []
        self.fresh: list[Mitm] = []

    def __call__(
        self,
        sets: Mapping[str, str | None] | None = None,
        env: Mapping[str, str] | None = None,
        scripts_before: Sequence[Path] = (),
        addon: bool = True,
        *,
        fresh: bool = False,
        upstream: Upstream | None = None,
    ) -> Chain:
        key: ProcessKey = (
            tuple(sorted((sets or {}).items())),
            tuple(sorted((env or {}).items())),
            tuple(str(p) for p in scripts_before),
            addon,
        )
        m = None if fresh else self.shared.get(key)
        if m is None or not m.alive:
            m = self.launcher.start(sets, env, scripts_before, addon)
            if fresh:
                self.fresh.append(m)
            else:
                self.shared[key] = m
        self.upstream.reset()
        if upstream is not None:
            upstream.reset()
        self.scanner.reset()
        m.mark()
        self.handed.append(m)
        return Chain(m, upstream or self.upstream, self.scanner)

    def finish(self) -> None:
        """Stops this test's fresh processes; prints what each process did during the test
        (pytest shows it only for failures)."""
        for m in self.fresh:
            m.stop()
        for m in self.handed:
            print(f"----- mitmdump {' '.join(m.argv)}\n{m.output}\n----- decisions")
            for rec in m.decisions():
                print(json.dumps(rec))

    def addon_errors(self) -> list[str]:
        """mitmproxy's `Addon error` lines (a hook raised) in this test's output."""
        return [
            line
            for m in dict.fromkeys(self.handed)
            for line in m.output.splitlines()
            if "Addon error" in line
        ]
