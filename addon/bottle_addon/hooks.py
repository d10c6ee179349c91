"""The mitmproxy glue: options, the fail-closed request hook, SSE streaming, decision records."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import certifi
from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.connection import Client
from mitmproxy.net import tls as net_tls
from mitmproxy.proxy import layer, server_hooks

from . import (
    canonical,
    credentials,
    layers,
    logs,
    policy,
    record,
    relay,
    scanner,
    ssrf,
    trust,
    verdict,
)

logger = logging.getLogger("bottle")

ENV_PIPELOCK_URL = "CLAUDE_BOTTLE_PIPELOCK_URL"
# Set by the launcher only for the test harness: allows the test-only switches below.
ENV_TEST_SWITCHES = "BOTTLE_TEST_SWITCHES"
# Where mitmproxy may listen when the agent comes in through bottle_agent_socket.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PROXY_PORT = 8080
STREAMED_CONTENT_TYPES = frozenset({"text/event-stream"})
# What mitmproxy offers upstream in its ClientHello: never the agent's own list.
UPSTREAM_ALPN_H2 = (b"h2", b"http/1.1")
UPSTREAM_ALPN_H1 = (b"http/1.1",)

# mitmproxy options that open a way around the request hook, or change a request after it.
REQUIRED_VALUES = {
    "connection_strategy": (
        "lazy",
        "eager connects open TCP and TLS to the upstream before the verdict",
    ),
    "rawtcp": (False, "non-HTTP bytes inside a CONNECT tunnel would go upstream unscanned"),
    "ssl_insecure": (False, "upstream certificates must be verified"),
}
MUST_BE_EMPTY = {
    "ignore_hosts": "matching hosts would be tunnelled without decryption",
    "allow_hosts": "other hosts would be tunnelled without decryption",
    "tcp_hosts": "matching hosts would be relayed as raw TCP",
    "udp_hosts": "matching hosts would be relayed as raw UDP",
    "modify_headers": "it changes requests after the verdict",
    "modify_body": "it changes requests after the verdict",
    "map_remote": "it changes requests after the verdict",
    "map_local": "it answers requests the scanner did not see",
}


def options_problem(options: Any, keys: set[str]) -> str | None:
    """Why these mitmproxy options would let a request bypass the verdict, if they would."""
    missing = sorted({*REQUIRED_VALUES, "stream_large_bodies", "mode"} - keys)
    if missing:
        # A renamed option would silently stop being checked: refuse instead.
        return f"bottle: mitmproxy has no option {', '.join(missing)}; this addon needs 12.2.x"
    for name, (wanted, why) in REQUIRED_VALUES.items():
        if getattr(options, name) != wanted:
            shown = str(wanted).lower() if isinstance(wanted, bool) else wanted
            return f"bottle: set {name}={shown} (--set {name}={shown}): {why}"
    if "flow_detail" in keys and options.flow_detail != 0:
        # mitmdump's own option (no Dumper, no flow lines elsewhere).
        return (
            "bottle: set flow_detail=0 (--set flow_detail=0): mitmdump's flow lines write the "
            "agent's method, URL and headers, secrets included, to its output"
        )
    if options.stream_large_bodies:
        return (
            "bottle: unset stream_large_bodies: streamed request bodies reach the upstream "
            "before the verdict"
        )
    for name, why in MUST_BE_EMPTY.items():
        if name in keys and getattr(options, name):
            return f"bottle: {name} must be empty: {why}"
    for mode in options.mode:
        if mode.split("@", 1)[0] != "regular":
            return f"bottle: only mode=regular is supported, got {mode!r}"
    return None


class BottleAddon:
    def __init__(self) -> None:
        self.scanner: scanner.Scanner | None = None
        self.bindings: tuple[credentials.Binding, ...] = ()
        self.log: record.DecisionLog | None = None
        self.ssrf_allowed: tuple[ssrf.IPNetwork, ...] = ()
        # Server connection id -> the (name, port) it was pinned away from while connecting.
        self._pinned: dict[str, tuple[str, int]] = {}
        # The combined trust bundle this addon wrote and gave mitmproxy, if any.
        self.trust_bundle: str | None = None
        # The agent's way in (bottle_agent_socket), once running.
        self.agent_socket: asyncio.AbstractServer | None = None
        self.connect_ports: policy.Ports = policy.Ports.parse(policy.DEFAULT_CONNECT_PORTS)
        self.http_ports: policy.Ports = policy.Ports.parse(policy.DEFAULT_HTTP_PORTS)
        self.methods: frozenset[bytes] = policy.STANDARD_METHODS
        # Client connection id -> the (host, port)s a verdict allowed a request to on it: the
        # only server connections it may open (and the only names looked up for it).
        self._allowed_targets: dict[str, set[tuple[str, int]]] = {}
        # bottle_test_verdict=allow: the suite's negative control only (refused outside tests).
        self.test_verdict_allows = False

    def load(self, loader: Any) -> None:
        # From here on, no log line carries the agent's bytes (logs.py).
        logs.install()
        loader.add_option(
            "bottle_pipelock_url",
            str,
            "",
            f"pipelock's forward-proxy address, http://host:port (default: ${ENV_PIPELOCK_URL}).",
        )
        loader.add_option(
            "bottle_verdict_timeout_ms",
            int,
            5000,
            "How long to wait for pipelock's verdict on a request without a body, in "
            "milliseconds; past it the request is blocked (502 verdict_unavailable).",
        )
        loader.add_option(
            "bottle_verdict_ms_per_mib",
            int,
            5000,
            "Added to the verdict timeout per MiB of request body: pipelock's scan time grows "
            "with the body (about 2.4 s per MiB of text, measured).",
        )
        loader.add_option(
            "bottle_verdict_timeout_cap_ms",
            int,
            30000,
            "The longest verdict timeout; a body that would need longer is refused "
            "(413 body_too_large) without asking the scanner.",
        )
        loader.add_option(
            "bottle_max_body_bytes",
            int,
            5242880,
            "Larger request bodies are blocked (pipelock's max_body_bytes default).",
        )
        loader.add_option(
            "bottle_decision_log",
            str,
            "",
            "File the JSON-lines decision record is appended to (default: stdout).",
        )
        loader.add_option(
            "bottle_ssrf_allow",
            Sequence[str],
            [],
            "Private networks mitmproxy may connect to (CIDRs, comma-separated): test networks.",
        )
        loader.add_option(
            "bottle_credentials",
            str,
            "",
            "JSON file of per-host credential bindings (see addon/README.md).",
        )
        loader.add_option(
            "bottle_connect_ports",
            str,
            policy.DEFAULT_CONNECT_PORTS,
            "Ports a CONNECT may name (comma-separated ports or ranges, e.g. 443,8443).",
        )
        loader.add_option(
            "bottle_http_ports",
            str,
            policy.DEFAULT_HTTP_PORTS,
            "Ports a plain http:// request may name (comma-separated ports or ranges).",
        )
        loader.add_option(
            "bottle_extra_methods",
            str,
            "",
            "Methods allowed besides GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS "
            "(comma-separated tokens, e.g. PROPFIND,REPORT).",
        )
        loader.add_option(
            "bottle_agent_socket",
            str,
            "",
            "Unix socket the agent's relay connects to (README.md, \"The agent's way in\"): "
            "each connection is carried to mitmproxy's proxy port on its own loopback.",
        )
        loader.add_option(
            "bottle_test_verdict",
            str,
            "",
            "TESTS ONLY: 'allow' skips the scanner and allows every request the addon's own "
            f"rules pass (the suite's negative control); refused unless {ENV_TEST_SWITCHES}=1.",
        )
        loader.add_option(
            "bottle_upstream_ca",
            str,
            "",
            "PEM file of CA certificates to trust for upstream TLS in addition to the system "
            "roots (a TLS-intercepting corporate proxy's CA).",
        )

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        problem = options_problem(options, set(options.keys()))
        if problem:
            raise exceptions.OptionsError(problem)
        if options.bottle_verdict_timeout_ms <= 0 or options.bottle_verdict_timeout_ms > 60000:
            raise exceptions.OptionsError(
                "bottle: bottle_verdict_timeout_ms must be between 1 and 60000"
            )
        if options.bottle_verdict_ms_per_mib < 0:
            raise exceptions.OptionsError("bottle: bottle_verdict_ms_per_mib must not be negative")
        if not (
            options.bottle_verdict_timeout_ms <= options.bottle_verdict_timeout_cap_ms <= 600000
        ):
            raise exceptions.OptionsError(
                "bottle: bottle_verdict_timeout_cap_ms must be between bottle_verdict_timeout_ms "
                "and 600000"
            )
        if options.bottle_max_body_bytes <= 0:
            raise exceptions.OptionsError("bottle: bottle_max_body_bytes must be positive")
        if options.bottle_agent_socket and options.listen_host not in LOOPBACK_HOSTS:
            raise exceptions.OptionsError(
                "bottle: with bottle_agent_socket, set listen_host=127.0.0.1: the agent comes "
                "in through the socket, and the proxy port must not be open on mitmproxy's "
                "networks (the scanner's, the egress)"
            )
        self.test_verdict_allows = self._test_verdict(options.bottle_test_verdict)
        url = options.bottle_pipelock_url or os.environ.get(ENV_PIPELOCK_URL, "")
        if not url:
            raise exceptions.OptionsError(
                "bottle: no scanner: set --set bottle_pipelock_url=http://pipelock:8888 "
                f"or the {ENV_PIPELOCK_URL} environment variable"
            )
        try:
            endpoint = scanner.Endpoint.parse(url)
        except ValueError as e:
            raise exceptions.OptionsError(f"bottle: bottle_pipelock_url: {e}") from None
        if self.scanner is not None:
            self.scanner.close()
        self.scanner = scanner.Scanner(
            endpoint,
            scanner.TimeoutBudget(
                base_ms=options.bottle_verdict_timeout_ms,
                ms_per_mib=options.bottle_verdict_ms_per_mib,
                cap_ms=options.bottle_verdict_timeout_cap_ms,
            ),
        )
        self.bindings = self._load_bindings(options.bottle_credentials)
        for name in ("bottle_connect_ports", "bottle_http_ports"):
            try:
                ports = policy.Ports.parse(getattr(options, name))
            except ValueError as e:
                raise exceptions.OptionsError(f"bottle: {name}: {e}") from None
            setattr(self, name.removeprefix("bottle_"), ports)
        try:
            self.methods = policy.parse_methods(options.bottle_extra_methods)
        except ValueError as e:
            raise exceptions.OptionsError(f"bottle: bottle_extra_methods: {e}") from None
        try:
            self.ssrf_allowed = ssrf.parse_allowlist(options.bottle_ssrf_allow)
        except ValueError as e:
            raise exceptions.OptionsError(f"bottle: bottle_ssrf_allow: {e}") from None
        if self.log is None or self.log.path != options.bottle_decision_log:
            try:
                log = record.DecisionLog(options.bottle_decision_log)
            except OSError as e:
                raise exceptions.OptionsError(f"bottle: bottle_decision_log: {e}") from None
            if self.log is not None:
                self.log.close()
            self.log = log
        self._configure_upstream_trust(options, updated)

    def _test_verdict(self, value: str) -> bool:
        """Whether the test-only switch that stubs the verdict to allow is on (refused unless
        the environment says this is a test)."""
        if not value:
            return False
        if value != "allow":
            raise exceptions.OptionsError(
                f"bottle: bottle_test_verdict must be empty or 'allow', not {value!r}"
            )
        if os.environ.get(ENV_TEST_SWITCHES) != "1":
            raise exceptions.OptionsError(
                "bottle: bottle_test_verdict is a test-only switch (every request allowed "
                f"without the scanner); it is refused unless {ENV_TEST_SWITCHES}=1"
            )
        logger.warning(
            "bottle: TEST SWITCH ON: bottle_test_verdict=allow: the scanner is not asked and "
            "every request the addon's own rules pass is allowed. Never use this bottle."
        )
        return True

    def _configure_upstream_trust(self, options: Any, updated: set[str]) -> None:
        """Points mitmproxy's upstream trust at the system roots plus `bottle_upstream_ca`."""
        ca_file = options.bottle_upstream_ca
        if not ca_file:
            if self.trust_bundle is not None:
                # Unset at run time: back to mitmproxy's default trust, if still ours.
                ours, self.trust_bundle = self.trust_bundle, None
                if options.ssl_verify_upstream_trusted_ca == ours:
                    options.update(ssl_verify_upstream_trusted_ca=None)
            return
        missing = sorted(
            {"ssl_verify_upstream_trusted_ca", "ssl_verify_upstream_trusted_confdir"}
            - set(options.keys())
        )
        if missing:
            raise exceptions.OptionsError(
                f"bottle: mitmproxy has no option {', '.join(missing)}; this addon needs 12.2.x"
            )
        path = os.path.join(os.path.expanduser(options.confdir), trust.BUNDLE_NAME)
        if options.ssl_verify_upstream_trusted_confdir is not None:
            raise exceptions.OptionsError(
                "bottle: bottle_upstream_ca: unset ssl_verify_upstream_trusted_confdir "
                f"(it is {options.ssl_verify_upstream_trusted_confdir!r}): with both, the "
                "upstream trust would be ambiguous; bottle_upstream_ca adds to the system roots"
            )
        if options.ssl_verify_upstream_trusted_ca not in (None, path, self.trust_bundle):
            raise exceptions.OptionsError(
                "bottle: bottle_upstream_ca: unset ssl_verify_upstream_trusted_ca "
                f"(it is {options.ssl_verify_upstream_trusted_ca!r}): with both, the upstream "
                "trust would be ambiguous; bottle_upstream_ca adds to the system roots"
            )
        if "bottle_upstream_ca" in updated or self.trust_bundle != path:
            bundle = self._write_trust_bundle(ca_file, os.path.dirname(path))
            self.trust_bundle = path
            # mitmproxy caches its upstream TLS contexts by file name: a bundle rewritten under
            # the same name must not leave the old trust in use.
            cache_clear = getattr(net_tls.create_proxy_server_context, "cache_clear", None)
            if cache_clear is not None:
                cache_clear()
            logger.info(
                "bottle: upstream TLS trusts the system roots and %d certificate(s) from %s: %s",
                len(bundle.added),
                ca_file,
                "; ".join(cert.subject.rfc4514_string() for cert in bundle.added),
            )
        if options.ssl_verify_upstream_trusted_ca != path:
            options.update(ssl_verify_upstream_trusted_ca=path)

    @staticmethod
    def _write_trust_bundle(ca_file: str, directory: str) -> trust.Bundle:
        try:
            with open(ca_file, "rb") as f:
                extra = f.read()
        except OSError as e:
            raise exceptions.OptionsError(
                f"bottle: bottle_upstream_ca: {ca_file} cannot be read: {e.strerror or e}"
            ) from None
        try:
            with open(certifi.where(), "rb") as f:
                system_roots = f.read()
        except OSError as e:
            raise exceptions.OptionsError(
                f"bottle: bottle_upstream_ca: the system roots ({certifi.where()}) cannot be "
                f"read: {e.strerror or e}"
            ) from None
        try:
            bundle = trust.build_bundle(system_roots, extra)
        except trust.TrustError as e:
            raise exceptions.OptionsError(f"bottle: bottle_upstream_ca: {ca_file}: {e}") from None
        try:
            trust.write_bundle(directory, bundle.pem)
        except OSError as e:
            raise exceptions.OptionsError(
                f"bottle: bottle_upstream_ca: the combined bundle cannot be written to "
                f"{directory}: {e.strerror or e}"
            ) from None
        return bundle

    @staticmethod
    def _load_bindings(path: str) -> tuple[credentials.Binding, ...]:
        if not path:
            return ()
        try:
            with open(path, encoding="utf-8") as f:
                return credentials.load(f.read(), os.environ)
        except (OSError, credentials.BindingError) as e:
            raise exceptions.OptionsError(f"bottle: bottle_credentials {path}: {e}") from None

    async def running(self) -> None:
        assert self.scanner is not None
        path = ctx.options.bottle_agent_socket
        if path and self.agent_socket is None:
            try:
                self.agent_socket = await relay.unix_to_tcp(
                    path, "127.0.0.1", ctx.options.listen_port or DEFAULT_PROXY_PORT
                )
            except OSError as e:
                logger.error(
                    "bottle: the agent's socket %s cannot be opened (%s); shutting down",
                    path,
                    e.strerror or type(e).__name__,
                )
                ctx.master.shutdown()
                return
        endpoint = self.scanner.endpoint
        logger.info(
            "bottle addon ready: scanner http://%s:%d, verdict timeout %g s + %g s per MiB "
            "(at most %g s), %d credential binding(s)",
            endpoint.host,
            endpoint.port,
            self.scanner.timeouts.base_ms / 1000,
            self.scanner.timeouts.ms_per_mib / 1000,
            self.scanner.timeouts.cap_ms / 1000,
            len(self.bindings),
        )

    def done(self) -> None:
        master = getattr(ctx, "master", None)
        if master is not None and not master.should_exit.is_set():
            # mitmproxy unloads a script whose file changed or vanished and goes on proxying
            # without it: stop instead, so nothing passes unscanned.
            logger.error("bottle: the addon was unloaded while mitmproxy runs; shutting down")
            master.shutdown()
        if self.scanner is not None:
            self.scanner.close()
        if self.log is not None:
            self.log.close()
        if self.agent_socket is not None:
            self.agent_socket.close()
        logs.uninstall()

    # --- the verdict -------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        state = _state(flow)
        try:
            await self._decide(flow, state)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any fault on the verdict path blocks
            logger.exception("bottle: the verdict failed for %s", flow.id)
            try:
                self._answer_unavailable(flow, state, f"the addon failed: {logs.error_type(e)}")
            except Exception:
                flow.kill()

    async def _decide(self, flow: http.HTTPFlow, state: dict[str, Any]) -> None:
        assert self.scanner is not None
        view = request_view(flow)
        cleared = policy.check(
            view,
            max_body_bytes=min(
                ctx.options.bottle_max_body_bytes, self.scanner.timeouts.max_body_bytes()
            ),
            bindings=self.bindings,
            ports={"https": self.connect_ports, "http": self.http_ports},
            methods=self.methods,
        )
        if isinstance(cleared, policy.Block):
            _answer_block(flow, state, cleared)
            return
        state["credential"] = list(cleared.credential_headers) or None
        try:
            judged = canonical.judge(view, cleared.hidden_headers)
        except ValueError as e:
            why = f"the request cannot be written ({logs.error_type(e)})"
            _answer_block(flow, state, policy.Block("unsendable_request", why))
            return
        scan_request = scanner.build_request(judged, agent_id=flow.id)
        started = time.monotonic()
        if self.test_verdict_allows:
            # The test-only switch (bottle_test_verdict): no scanner, every request allowed.
            state["verdict_ms"] = 0.0
            decision = verdict.Verdict(verdict.Kind.ALLOW, "test switch")
        else:
            try:
                answer = await scanner.ask(self.scanner, scan_request)
            except scanner.ScannerError as e:
                state["verdict_ms"] = _ms_since(started)
                self._answer_unavailable(flow, state, str(e))
                return
            state["verdict_ms"] = _ms_since(started)
            decision = verdict.read_answer(answer)
            state["scanner"] = {
                "status": answer.status,
                "block_reason": logs.scanner_code(answer.header("x-pipelock-block-reason")),
                "ms": state["verdict_ms"],
            }
        if decision.kind is verdict.Kind.ALLOW:
            # What goes upstream is what was judged, written by the chain (canonical.py).
            canonical.apply(flow.request, judged)
            decided_by = "test_switch" if self.test_verdict_allows else "pipelock"
            state.update(decided_by=decided_by, verdict="allow", reason=None)
            state["judged"] = judged.summary()
            self._allowed_targets.setdefault(flow.client_conn.id, set()).add(
                (policy.normalise_host(view.host), view.port)
            )
        elif decision.kind is verdict.Kind.BLOCK:
            state.update(decided_by="pipelock", reason=decision.reason, answered=True)
            assert decision.status is not None
            relayed = [*decision.headers, ("X-Bottle-Request-Id", flow.id)]
            flow.response = http.Response.make(
                decision.status,
                decision.body,
                [(k.encode("latin-1"), v.encode("latin-1")) for k, v in relayed],
            )
        else:
            self._answer_unavailable(flow, state, decision.reason)

    @staticmethod
    def _answer_unavailable(flow: http.HTTPFlow, state: dict[str, Any], why: str) -> None:
        state.update(decided_by="addon", verdict="block", reason="verdict_unavailable", detail=why)
        state["answered"] = True
        logger.warning("bottle: blocked %s: no verdict: %s", flow.id, why)
        flow.response = _bottle_response(
            502,
            "verdict_unavailable",
            f"the scanner's verdict could not be obtained: {why}",
            flow.id,
        )

    # --- what a connection may carry (addon/README.md, "Only judged HTTP leaves") ----------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        try:
            if nextlayer.layer is not None:
                # Only this addon chooses; a choice made elsewhere was never checked.
                why = f"another addon chose a layer ({type(nextlayer.layer).__name__})"
                chosen, problem = layers.Refused(nextlayer.context, why), why
            else:
                chosen, problem = layers.decide(nextlayer.context, nextlayer.data_client())
        except Exception as e:  # any doubt refuses the connection
            logger.exception("bottle: choosing a layer failed")
            why = f"choosing a layer failed ({logs.error_type(e)})"
            chosen, problem = layers.Refused(nextlayer.context, why), why
        nextlayer.layer = chosen
        if problem is not None:
            self._record_refused_connection(nextlayer.context, problem)

    def _record_refused_connection(self, context: Any, problem: str) -> None:
        # Where it was going and its TLS server name are the agent's bytes, never judged.
        logger.warning(
            "bottle: refused a connection from %s: %s", _address(context.client.peername), problem
        )
        if self.log is None:
            return
        try:
            self.log.write(
                record.decision(
                    id=str(uuid.uuid4()),
                    time=record.timestamp(time.time()),
                    client=_address(context.client.peername),
                    host=record.REDACTED,
                    sni=record.REDACTED if context.client.sni else None,
                    verdict="block",
                    decided_by="addon",
                    reason="layer_refused",
                    detail=problem,
                )
            )
        except Exception:
            logger.exception("bottle: writing the decision record of a refused connection failed")

    def http_connect(self, flow: http.HTTPFlow) -> None:
        state = _state(flow)
        try:
            problem = policy.connect_problem(
                port=flow.request.port,
                in_tls=flow.client_conn.tls_established,
                connect_ports=self.connect_ports,
            )
        except Exception as e:
            problem = policy.Block(
                "verdict_unavailable", f"the CONNECT check failed ({logs.error_type(e)})"
            )
        if problem is None:
            return
        state["verdict"] = "block"
        _answer_block(flow, state, problem)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def client_disconnected(self, client: Client) -> None:
        self._allowed_targets.pop(client.id, None)

    # --- where mitmproxy connects -------------------------------------------------------------

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        try:
            await self._check_and_pin(server, data.client)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            server.error = (
                f"bottle: blocked: the upstream address could not be checked ({logs.error_type(e)})"
            )
        if server.error:
            # The address is the agent's choice when no verdict allowed it: not written.
            logger.warning(
                "bottle: refused a server connection for %s: %s",
                _address(data.client.peername),
                server.error,
            )

    async def _check_and_pin(self, server: Any, client: Any) -> None:
        if not server.address:
            server.error = "bottle: blocked: a server connection without an address"
            return
        host, port = server.address
        # Before any name is looked up: a server connection exists only for a request a verdict
        # allowed, to that request's host and port. Anything else mitmproxy would open (a DNS
        # relay, an eager or TLS-first connect, a layer this addon did not choose) is refused.
        allowed = self._allowed_targets.get(client.id, set())
        if (policy.normalise_host(host), port) not in allowed:
            server.error = "bottle: blocked: no request to that host and port was allowed"
            return
        if ssrf.is_ip_literal(host):
            addresses = [host]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if server.tls:
            # The TLS server name is the judged host, spelled by the chain (the client's own
            # spelling of its SNI was only checked against it).
            server.sni = canonical.authority("https", host, 443).decode("ascii").strip("[]")
        problem = ssrf.check(host, addresses, self.ssrf_allowed)
        if problem:
            server.error = f"bottle: blocked: {problem}"
            return
        if addresses[0] != host:
            # Connect to the address just checked, not to whatever a second lookup returns;
            # the TLS name stays the host name (set above).
            self._pinned[server.id] = server.address
            server.address = (addresses[0], port)

    def tls_start_client(self, data: tls.TlsData) -> None:
        # The agent's ALPN, chosen as the API's servers choose it: h2 whenever offered. With no
        # upstream connection yet (connection_strategy=lazy), mitmproxy would take the agent's
        # first offer, and httpx (the Anthropic SDK's client) lists http/1.1 before h2: it would
        # never get h2 through a bottle. A client ALPN set here is what mitmproxy's own choice
        # (tlsconfig, which runs after this script) selects.
        client = data.conn
        if (
            client is data.context.client
            and client.alpn is None
            and data.context.options.http2
            and b"h2" in client.alpn_offers
        ):
            client.alpn = b"h2"

    def tls_start_server(self, data: tls.TlsData) -> None:
        # The ALPN offers are the chain's, from a fixed list: mitmproxy would copy the agent's
        # offers (any strings) into its own ClientHello. h2 is offered only to an agent that
        # speaks h2 with mitmproxy (mitmproxy translates either way).
        client_alpn = data.context.client.alpn
        data.conn.alpn_offers = UPSTREAM_ALPN_H2 if client_alpn == b"h2" else UPSTREAM_ALPN_H1

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        # Back to the name, so that later requests to it on this client connection reuse this
        # connection: mitmproxy matches connections by `address`, and without this every request
        # opens (and checks) a new one, and the sixth waits for one of the first five to close
        # (mitmproxy allows 5 open connections per address and client connection).
        original = self._pinned.pop(data.server.id, None)
        if original is not None:
            # mitmproxy refuses `server.address = ...` on an open connection, because the
            # assignment does not move the socket. That is exactly what is wanted here: the socket
            # stays connected to the address that was checked. mitmproxy connects to `address`
            # only in `open_connection`, right after `server_connect` (which checks and pins
            # again); TLS uses `sni`. On an open connection `address` only matches later requests
            # to it and names it in logs. So the guard is bypassed for this one attribute of this
            # one connection, restoring the value mitmproxy itself gave it.
            object.__setattr__(data.server, "address", original)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        # The connection never opened: back to the name, so mitmproxy answers later requests to
        # it with this error, as it does without the addon.
        original = self._pinned.pop(data.server.id, None)
        if original is not None:
            data.server.address = original

    # --- responses and the record ------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = _state(flow)
        if state.get("answered"):
            return  # the addon's own answer (mitmproxy runs this hook for it too)
        if state.get("verdict") != "allow":
            # An upstream answered a request this addon never allowed: refuse to pass it on.
            logger.error("bottle: %s reached an upstream without a verdict; killing it", flow.id)
            state.update(decided_by="addon", reason="no_verdict")
            flow.kill()
            return
        assert flow.response is not None
        if flow.response.status_code == 101:
            # A switch of protocols hands the connection to a raw or WebSocket layer whose bytes
            # no verdict sees: refused, whether or not the request asked for an upgrade.
            logger.warning("bottle: %s: the upstream switched protocols; killing it", flow.id)
            state.update(verdict="block", decided_by="addon", reason="upgrade")
            state["detail"] = "the upstream answered 101 Switching Protocols"
            flow.kill()
            return
        content_type = flow.response.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() in STREAMED_CONTENT_TYPES:
            state["response_bytes"] = 0

            def count(chunk: bytes) -> bytes:
                state["response_bytes"] += len(chunk)
                return chunk

            flow.response.stream = count

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        state = _state(flow)
        if state.get("written") or self.log is None:
            return
        state["written"] = True
        if flow.error and "bottle: blocked:" in flow.error.msg:
            # Allowed by pipelock, then refused at connect (server_connect, above).
            state.update(verdict="block", decided_by="addon", reason="upstream_address")
            state["detail"] = flow.error.msg
        try:
            self.log.write(decision_record(flow, state))
        except Exception:
            logger.exception("bottle: writing the decision record for %s failed", flow.id)


def request_view(flow: http.HTTPFlow) -> policy.RequestView:
    request = flow.request
    client_tls = flow.client_conn.tls_established
    return policy.RequestView(
        scheme=request.scheme,
        host=request.host,
        port=request.port,
        sni=flow.client_conn.sni if client_tls else None,
        authority=request.authority or None if request.is_http2 or request.is_http3 else None,
        method=request.data.method,
        target=request.data.path,
        headers=list(request.headers.fields),
        body=request.raw_content,
        streamed=bool(request.stream),
        has_trailers=request.trailers is not None,
    )


def decision_record(flow: http.HTTPFlow, state: dict[str, Any]) -> dict[str, Any]:
    request = flow.request
    response = flow.response
    allowed = state.get("verdict") == "allow" and state.get("reason") is None
    url = request.url
    now = time.time()
    server = flow.server_conn
    upstream_version = None
    if allowed and server is not None and server.timestamp_tcp_setup is not None:
        upstream_version = "HTTP/2.0" if server.alpn == b"h2" else "HTTP/1.1"
    peer = flow.client_conn.peername
    if "response_bytes" in state:
        response_bytes = state["response_bytes"]
    elif response is not None and response.raw_content is not None:
        response_bytes = len(response.raw_content)
    else:
        response_bytes = None
    return record.decision(
        id=flow.id,
        time=record.timestamp(request.timestamp_start),
        client=f"{peer[0]}:{peer[1]}" if peer else None,
        # A refused method is agent-chosen bytes that no one judged: never written out.
        method="[refused]" if state.get("reason") == "method_not_allowed" else request.method,
        # A blocked request's URL, host and TLS server name may be where its secret is.
        url=url if allowed else record.redacted_url(url),
        host=request.host if allowed else record.REDACTED,
        sni=flow.client_conn.sni if allowed or not flow.client_conn.sni else record.REDACTED,
        http_version={"client": request.http_version, "upstream": upstream_version},
        verdict="allow" if allowed else "block",
        decided_by=state.get("decided_by", "addon"),
        reason=state.get("reason"),
        detail=state.get("detail"),
        scanner=state.get("scanner"),
        status=response.status_code if response is not None else None,
        duration_ms={
            "verdict": state.get("verdict_ms"),
            "total": round((now - request.timestamp_start) * 1000, 3),
        },
        bytes={
            "request_body": len(request.raw_content) if request.raw_content is not None else None,
            "response_body": response_bytes,
        },
        credential=state.get("credential"),
        # What was judged and sent, for allowed requests (canonical.py).
        judged=state.get("judged") if allowed else None,
        # mitmproxy's error text may quote the agent's bytes; an allowed request's were judged.
        error=(flow.error.msg if allowed else record.REDACTED) if flow.error else None,
    )


def _answer_block(flow: http.HTTPFlow, state: dict[str, Any], block: policy.Block) -> None:
    """The addon's own 403, or 413 for a body too large (the scanner is not asked)."""
    state.update(decided_by="addon", reason=block.code, detail=block.message, answered=True)
    flow.response = _bottle_response(block.status, block.code, block.message, flow.id)


def _address(address: Any) -> str | None:
    return f"{address[0]}:{address[1]}" if address else None


def _state(flow: http.HTTPFlow) -> dict[str, Any]:
    return flow.metadata.setdefault("bottle", {})


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _bottle_response(status: int, code: str, message: str, flow_id: str) -> http.Response:
    return http.Response.make(
        status,
        f"bottle: blocked: {message}\n".encode(),
        {
            "Content-Type": "text/plain; charset=utf-8",
            "X-Bottle-Block-Reason": code,
            "X-Bottle-Request-Id": flow_id,
        },
    )
