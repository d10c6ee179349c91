//! Probes: the clients the conformance scenarios run *inside* the agent container, through the
//! bottle's proxy, as the agent user with the container's environment (`HTTPS_PROXY`, the CA
//! variables).
//!
//! Each probe takes the request as one JSON argument and prints one JSON line, whatever happens:
//! a failed request is a [`ProbeResult`] with `error` set, never an `Err` (that is kept for the
//! harness's own failures, such as Docker refusing the exec).
//!
//! - **curl**: `fixtures/images/agent/probes/probe-curl.py` runs curl (`--http1.1`/`--http2`,
//!   `--no-buffer`) and times each read of its stdout.
//! - **node**: `probe.js` opens the CONNECT tunnel itself (Node's `https`/`http2` ignore
//!   `HTTPS_PROXY`), then TLS with ALPN, then `https.request` or `http2.connect` over it.
//! - **python**: `probe.py`, urllib, h1 only.
//! - **httpx**: `probe-httpx.py`, httpx as Python agents use it (the Anthropic SDK), h1 or h2.
//! - **raw**: `probe-raw.py`, what a malicious agent would send instead of an HTTP client: a
//!   CONNECT to the URL's host and port, then TLS with the ALPN it chooses (or none), then the
//!   bytes it chooses (the body, or a DNS query); it reports the CONNECT's answer, or what came
//!   back through the tunnel.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bollard::Docker;
use serde::{Deserialize, Serialize};

use crate::exec;

/// Where the agent image keeps the probe scripts.
pub const PROBE_DIR: &str = "/opt/bottle/probes";

/// The agent user probes run as (the image's `agent`).
pub const AGENT_USER: &str = "1000";

/// Extra time the harness gives a probe beyond the request's own timeout before it gives up on
/// the exec (the probes enforce the timeout themselves; this only catches a hung probe).
const EXEC_GRACE: Duration = Duration::from_secs(15);

/// The HTTP clients the probe runs inside the agent container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    Curl,
    Node,
    /// httpx, the client of Python agents (the Anthropic SDK), HTTP/1.1 and h2.
    Python,
    /// Python's standard library (`http.client`): a second Python HTTP/1.1 implementation.
    #[serde(rename = "python-stdlib")]
    PythonStdlib,
    /// The real Claude Code (`claude -p`), in the Claude agent image.
    Claude,
    /// Raw bytes through a CONNECT tunnel (the request's `raw` options); h1 only.
    Raw,
    /// No request: facts about what the agent's container lets it do (probe-inspect.py).
    Inspect,
    /// Many requests at once, h1 and h2 mixed, each checked as it ends (load.js, LOAD).
    Load,
}

impl Client {
    /// The HTTP clients: what a scenario runs when it names none.
    pub const ALL: [Client; 4] = [
        Client::Curl,
        Client::Node,
        Client::Python,
        Client::PythonStdlib,
    ];
    /// Every client, Claude Code included (scenarios name it explicitly).
    pub const EVERY: [Client; 8] = [
        Client::Curl,
        Client::Node,
        Client::Python,
        Client::PythonStdlib,
        Client::Claude,
        Client::Raw,
        Client::Inspect,
        Client::Load,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Client::Curl => "curl",
            Client::Node => "node",
            Client::Python => "python",
            Client::PythonStdlib => "python-stdlib",
            Client::Claude => "claude",
            Client::Raw => "raw",
            Client::Inspect => "inspect",
            Client::Load => "load",
        }
    }

    /// Why this client cannot run a case over `protocol`, if it cannot.
    pub fn cannot_speak(self, protocol: Protocol) -> Option<&'static str> {
        match (self, protocol) {
            (Client::PythonStdlib, Protocol::H2) => Some(
                "python-stdlib (Python's http.client) speaks HTTP/1.1 only; python (httpx) speaks h2",
            ),
            (Client::Claude, Protocol::H2) => {
                Some("Claude Code picks its own protocol; its cases run once, listed as h1")
            }
            (Client::Raw, Protocol::H2) => {
                Some("the raw client sends the scenario's bytes; its ALPN is in its options")
            }
            (Client::Inspect, Protocol::H2) => {
                Some("the inspect probe makes no request; its cases run once, listed as h1")
            }
            (Client::Load, Protocol::H2) => {
                Some("the load probe mixes h1 and h2 itself; its cases run once, listed as h1")
            }
            _ => None,
        }
    }

    pub fn supports(self, protocol: Protocol) -> bool {
        self.cannot_speak(protocol).is_none()
    }

    /// Every (client, protocol) pair a probe can run.
    pub fn combinations() -> Vec<(Client, Protocol)> {
        Client::ALL
            .into_iter()
            .flat_map(|c| Protocol::ALL.into_iter().map(move |p| (c, p)))
            .filter(|(c, p)| c.supports(*p))
            .collect()
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP version the client offers (h2: ALPN `h2` first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    H1,
    H2,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::H1, Protocol::H2];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2",
        }
    }

    /// The ALPN id a client asking for this protocol expects to negotiate.
    pub fn alpn(self) -> &'static str {
        match self {
            Protocol::H1 => "http/1.1",
            Protocol::H2 => "h2",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bodies longer than this go to curl, node and python on stdin, not in the spec.
pub const STDIN_BODY_ABOVE: usize = 64 * 1024;

/// One request for a probe to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    pub method: String,
    pub url: String,
    /// Sent in this order; names as given (h2 lowercases them).
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// The body is sent this many times over (curl, node, python): a spec on the command line
    /// cannot carry a megabyte.
    pub body_repeat: Option<u32>,
    /// The load probe's options (count, concurrency, secret, body sizes).
    pub load: Option<serde_json::Value>,
    /// The whole exchange, body included; past it the result carries a timeout error.
    pub timeout: Duration,
    /// Bypass the proxy: curl `--noproxy '*'`, node and python ignore `*_PROXY`.
    pub no_proxy: bool,
    /// Environment changes for this probe only, on top of the container's: `Some` sets, `None`
    /// unsets (e.g. `("NODE_EXTRA_CA_CERTS", None)` to see a trust error).
    pub env: Vec<(String, Option<String>)>,
    /// The raw client's options (scenario `request.raw`), passed through as JSON.
    pub raw: Option<serde_json::Value>,
}

impl ProbeRequest {
    pub fn new(method: &str, url: &str) -> Self {
        ProbeRequest {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: None,
            body_repeat: None,
            load: None,
            timeout: Duration::from_secs(20),
            no_proxy: false,
            env: Vec::new(),
            raw: None,
        }
    }

    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", url).body(body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn no_proxy(mut self) -> Self {
        self.no_proxy = true;
        self
    }

    pub fn env(mut self, name: &str, value: Option<&str>) -> Self {
        self.env.push((name.to_string(), value.map(str::to_string)));
        self
    }

    /// The body when `client` reads it from stdin: a body past [`STDIN_BODY_ABOVE`] cannot go
    /// on the command line (one argument holds at most 128 KiB), for the clients that send
    /// realistic bodies.
    fn stdin_body(&self, client: Client) -> Option<&[u8]> {
        let body = self.body.as_deref()?;
        let reads_stdin = matches!(
            client,
            Client::Curl | Client::Node | Client::Python | Client::PythonStdlib
        );
        (reads_stdin && body.len() > STDIN_BODY_ABOVE).then_some(body)
    }

    /// The JSON argument every probe takes; a body read from stdin is given by its length.
    fn spec(&self, protocol: Protocol, stdin_body: Option<&[u8]>) -> serde_json::Value {
        let inline_body = self.body.as_ref().filter(|_| stdin_body.is_none());
        serde_json::json!({
            "method": self.method,
            "url": self.url,
            "headers": self.headers,
            "body_base64": inline_body.map(|b| BASE64.encode(b)),
            "body_stdin": stdin_body.map(<[u8]>::len),
            "body_repeat": self.body_repeat,
            "load": self.load,
            "timeout_ms": self.timeout.as_millis() as u64,
            "no_proxy": self.no_proxy,
            "protocol": protocol,
            "raw": self.raw,
        })
    }
}

/// One read of the response body, `at_ms` after the request started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub at_ms: f64,
    pub len: usize,
}

/// What a client saw. `status` is None when no response arrived; `error` may be set with a
/// status too (e.g. a body cut off after the headers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub client: Client,
    pub protocol: Protocol,
    pub status: Option<u16>,
    /// Names lowercase, in the order received (curl: grouped by name).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The ALPN negotiated with mitmproxy (curl: from the HTTP version it used).
    pub alpn: Option<String>,
    pub error: Option<String>,
    pub elapsed_ms: f64,
    /// Arrival of each body read (curl: reads of its `--no-buffer` output).
    pub chunks: Vec<Chunk>,
}

impl ProbeResult {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "{} {}: body is not JSON: {:?}",
                self.client,
                self.protocol,
                self.text()
            )
        })
    }

    /// Milliseconds between the first and the last body chunk (0 with fewer than two).
    pub fn chunk_spread_ms(&self) -> f64 {
        match (self.chunks.first(), self.chunks.last()) {
            (Some(first), Some(last)) => last.at_ms - first.at_ms,
            _ => 0.0,
        }
    }

    fn failed(client: Client, protocol: Protocol, error: String) -> Self {
        ProbeResult {
            client,
            protocol,
            status: None,
            headers: Vec::new(),
            body: Vec::new(),
            alpn: None,
            error: Some(error),
            elapsed_ms: 0.0,
            chunks: Vec::new(),
        }
    }
}

/// The line a probe prints (body in base64).
#[derive(Deserialize)]
struct Wire {
    status: Option<u16>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body_base64: String,
    alpn: Option<String>,
    error: Option<String>,
    #[serde(default)]
    elapsed_ms: f64,
    #[serde(default)]
    chunks: Vec<Chunk>,
}

/// Reads a probe's output: the last line that parses as a result. Anything else (no line, a
/// crash) becomes a result whose error says what the probe printed.
pub fn parse_output(
    client: Client,
    protocol: Protocol,
    code: i64,
    stdout: &str,
    stderr: &str,
) -> ProbeResult {
    let parsed = stdout
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .find_map(|l| serde_json::from_str::<Wire>(l).ok());
    let Some(wire) = parsed else {
        return ProbeResult::failed(
            client,
            protocol,
            format!(
                "probe: no result line (exit {code}); stdout: {:?}; stderr: {:?}",
                truncate(stdout),
                truncate(stderr)
            ),
        );
    };
    let (body, body_error) = match BASE64.decode(wire.body_base64.trim()) {
        Ok(body) => (body, None),
        Err(e) => (Vec::new(), Some(format!("probe: body is not base64: {e}"))),
    };
    ProbeResult {
        client,
        protocol,
        status: wire.status,
        headers: wire.headers,
        body,
        alpn: wire.alpn.filter(|a| !a.is_empty()),
        error: wire.error.or(body_error),
        elapsed_ms: wire.elapsed_ms,
        chunks: wire.chunks,
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(2000) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The command that runs `client` with `spec` (as JSON), environment changes first.
fn command(client: Client, spec: &str, env: &[(String, Option<String>)]) -> Vec<String> {
    let mut cmd = Vec::new();
    if !env.is_empty() {
        cmd.push("env".to_string());
        for (name, value) in env {
            match value {
                Some(v) => cmd.push(format!("{name}={v}")),
                None => cmd.extend(["-u".to_string(), name.clone()]),
            }
        }
    }
    match client {
        Client::Curl => cmd.extend(["python3".into(), format!("{PROBE_DIR}/probe-curl.py")]),
        Client::Node => cmd.extend(["node".into(), format!("{PROBE_DIR}/probe.js")]),
        Client::Python => cmd.extend(["python3".into(), format!("{PROBE_DIR}/probe-httpx.py")]),
        Client::PythonStdlib => cmd.extend(["python3".into(), format!("{PROBE_DIR}/probe.py")]),
        Client::Claude => cmd.extend(["python3".into(), format!("{PROBE_DIR}/probe-claude.py")]),
        Client::Raw => cmd.extend(["python3".into(), format!("{PROBE_DIR}/probe-raw.py")]),
        Client::Inspect => cmd.extend(["python3".into(), format!("{PROBE_DIR}/probe-inspect.py")]),
        Client::Load => cmd.extend(["node".into(), format!("{PROBE_DIR}/load.js")]),
    }
    cmd.push(spec.to_string());
    cmd
}

/// Runs `request` with `client` over `protocol` inside the agent container, as the agent user
/// with the container's environment. A failed request is an `Ok` result with `error` set.
pub async fn run(
    docker: &Docker,
    agent_container_id: &str,
    client: Client,
    protocol: Protocol,
    request: &ProbeRequest,
) -> Result<ProbeResult> {
    if !client.supports(protocol) {
        bail!("{client} cannot speak {protocol}");
    }
    let stdin_body = request.stdin_body(client);
    let spec = request.spec(protocol, stdin_body).to_string();
    let cmd = command(client, &spec, &request.env);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let limit = request.timeout + EXEC_GRACE;
    let out = match tokio::time::timeout(
        limit,
        exec::exec_with_input(
            docker,
            agent_container_id,
            Some(AGENT_USER),
            &cmd,
            stdin_body.unwrap_or_default(),
        ),
    )
    .await
    {
        Ok(out) => {
            out.with_context(|| format!("running the {client} probe in {agent_container_id}"))?
        }
        Err(_) => {
            return Ok(ProbeResult::failed(
                client,
                protocol,
                format!("probe: no result within {} s", limit.as_secs()),
            ));
        }
    };
    Ok(parse_output(
        client,
        protocol,
        out.code,
        &out.stdout,
        &out.stderr,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_support() {
        assert_eq!(Client::Python.to_string(), "python");
        assert_eq!(Protocol::H2.to_string(), "h2");
        assert_eq!(serde_json::to_string(&Client::Curl).unwrap(), "\"curl\"");
        assert_eq!(serde_json::to_string(&Protocol::H1).unwrap(), "\"h1\"");
        assert!(Client::Python.supports(Protocol::H2));
        assert!(!Client::PythonStdlib.supports(Protocol::H2));
        assert_eq!(Client::PythonStdlib.to_string(), "python-stdlib");
        assert_eq!(Client::combinations().len(), 7);
    }

    #[test]
    fn spec_carries_the_body_in_base64() {
        let req = ProbeRequest::post("https://h/p", vec![0xff, 0x00])
            .header("a", "b")
            .no_proxy();
        let spec = req.spec(Protocol::H2, req.stdin_body(Client::Curl));
        assert_eq!(spec["body_base64"], "/wA=");
        assert_eq!(spec["body_stdin"], serde_json::Value::Null);
        assert_eq!(spec["headers"], serde_json::json!([["a", "b"]]));
        assert_eq!(spec["protocol"], "h2");
        assert_eq!(spec["no_proxy"], true);
        assert_eq!(spec["timeout_ms"], 20000);
    }

    #[test]
    fn a_large_body_goes_on_stdin_for_the_clients_that_read_it() {
        let req = ProbeRequest::post("https://h/p", vec![b'a'; STDIN_BODY_ABOVE + 1]);
        for client in [Client::Curl, Client::Node, Client::Python] {
            let stdin = req.stdin_body(client);
            assert_eq!(stdin.map(<[u8]>::len), Some(STDIN_BODY_ABOVE + 1));
            let spec = req.spec(Protocol::H1, stdin);
            assert_eq!(spec["body_base64"], serde_json::Value::Null);
            assert_eq!(spec["body_stdin"], STDIN_BODY_ABOVE + 1);
        }
        assert!(req.stdin_body(Client::Raw).is_none());
        let small = ProbeRequest::post("https://h/p", vec![b'a'; STDIN_BODY_ABOVE]);
        assert!(small.stdin_body(Client::Curl).is_none());
    }

    #[test]
    fn output_parses_the_last_result_line() {
        let line = r#"{"client":"node","protocol":"h2","status":200,"headers":[["content-type","x"]],"body_base64":"/wA=","alpn":"h2","error":null,"elapsed_ms":12.5,"chunks":[{"at_ms":10.0,"len":2}]}"#;
        let r = parse_output(
            Client::Node,
            Protocol::H2,
            0,
            &format!("noise\n{line}\n"),
            "",
        );
        assert_eq!(r.status, Some(200));
        assert_eq!(r.body, vec![0xff, 0x00]);
        assert_eq!(r.header("Content-Type"), Some("x"));
        assert_eq!(r.alpn.as_deref(), Some("h2"));
        assert_eq!(
            r.chunks,
            vec![Chunk {
                at_ms: 10.0,
                len: 2
            }]
        );
        assert!(r.error.is_none());
    }

    #[test]
    fn garbage_output_is_an_error_result() {
        let r = parse_output(Client::Curl, Protocol::H1, 137, "", "Killed");
        assert_eq!(r.status, None);
        assert!(r.error.unwrap().contains("exit 137"));
    }

    #[test]
    fn env_changes_go_first() {
        let env = vec![
            ("A".to_string(), Some("1".to_string())),
            ("B".to_string(), None),
        ];
        let cmd = command(Client::Node, "{}", &env);
        assert_eq!(
            cmd,
            [
                "env",
                "A=1",
                "-u",
                "B",
                "node",
                "/opt/bottle/probes/probe.js",
                "{}"
            ]
        );
    }
}
