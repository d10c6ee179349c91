//! The conformance scenarios as data: `scenarios/*.toml`, each file holding `[[scenario]]` tables.
//!
//! [`load_dir`] reads and checks every file (unknown keys are errors, so a typo names its file and
//! key); [`expand`] turns each scenario into one [`Case`] per client × protocol, named
//! `BLOCK-001::curl::h2` so that `cargo nextest run BLOCK-001` selects it. A combination that
//! cannot run (python-stdlib speaks HTTP/1.1 only) stays in the list as NOT-APPLICABLE with its reason:
//! nothing is dropped silently.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::report::Outcome;

/// The default folder of scenario files: `<workspace>/scenarios`.
pub fn default_dir() -> PathBuf {
    crate::fixture_bins::workspace_root().join("scenarios")
}

/// Every scenario of the run: the files of [`default_dir`], then one PARITY scenario per case
/// of each corpus (`corpus::dirs`: the shared corpus and `BOTTLE_CORPUS`).
pub fn load_all() -> Result<Vec<Scenario>, ScenarioError> {
    let mut scenarios = load_dir(default_dir())?;
    let parity =
        crate::corpus::scenarios(&crate::corpus::dirs()).map_err(|e| ScenarioError::Invalid {
            path: crate::corpus::default_dir(),
            id: "PARITY".into(),
            problem: format!("{e:#}"),
        })?;
    for s in parity {
        if let Some(first) = scenarios.iter().find(|o| o.id == s.id) {
            return Err(ScenarioError::Duplicate {
                id: s.id.clone(),
                first: first.source.clone(),
                second: s.source.clone(),
            });
        }
        scenarios.push(s);
    }
    Ok(scenarios)
}

// --- the vocabulary ------------------------------------------------------------------------------

/// The scenario families: the `FAMILY` of `FAMILY-NNN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Block,
    Pass,
    H2,
    Log,
    Once,
    FailClosed,
    Bypass,
    Ca,
    Trust,
    Parity,
    Launch,
    Claude,
    Stream,
    Reach,
    Harden,
    Isolation,
    Load,
    Traffic,
}

impl Family {
    pub const ALL: [Family; 18] = [
        Family::Block,
        Family::Pass,
        Family::H2,
        Family::Log,
        Family::Once,
        Family::FailClosed,
        Family::Bypass,
        Family::Ca,
        Family::Trust,
        Family::Parity,
        Family::Launch,
        Family::Claude,
        Family::Stream,
        Family::Reach,
        Family::Harden,
        Family::Isolation,
        Family::Load,
        Family::Traffic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Block => "BLOCK",
            Family::Pass => "PASS",
            Family::H2 => "H2",
            Family::Log => "LOG",
            Family::Once => "ONCE",
            Family::FailClosed => "FAILCLOSED",
            Family::Bypass => "BYPASS",
            Family::Ca => "CA",
            Family::Trust => "TRUST",
            Family::Parity => "PARITY",
            Family::Launch => "LAUNCH",
            Family::Claude => "CLAUDE",
            Family::Stream => "STREAM",
            Family::Reach => "REACH",
            Family::Harden => "HARDEN",
            Family::Isolation => "ISOLATION",
            Family::Load => "LOAD",
            Family::Traffic => "TRAFFIC",
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The properties of DESIGN.md ("What the suite proves").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Property {
    P1,
    P2,
    P3,
    P4,
    P5,
    P6,
    P7,
    P8,
    P9,
    P10,
}

impl Property {
    pub fn as_str(self) -> &'static str {
        match self {
            Property::P1 => "P1",
            Property::P2 => "P2",
            Property::P3 => "P3",
            Property::P4 => "P4",
            Property::P5 => "P5",
            Property::P6 => "P6",
            Property::P7 => "P7",
            Property::P8 => "P8",
            Property::P9 => "P9",
            Property::P10 => "P10",
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use crate::probe::{Client, Protocol};

fn all_clients() -> Vec<Client> {
    Client::ALL.to_vec()
}

fn all_protocols() -> Vec<Protocol> {
    Protocol::ALL.to_vec()
}

/// What a scenario needs of the scanner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Needs {
    /// Meaningful with pipelock or its double.
    #[default]
    Any,
    /// Meaningful only with the real pipelock image: NOT-APPLICABLE when the scanner is the double.
    Pipelock,
}

/// A negotiated ALPN protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alpn {
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "http/1.1")]
    Http11,
}

impl Alpn {
    pub fn as_str(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http11 => "http/1.1",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecidedBy {
    Pipelock,
    Addon,
}

// --- the schema ----------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    scenario: Vec<Scenario>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// `FAMILY-NNN`, unique across all files.
    pub id: String,
    pub title: String,
    pub property: Property,
    #[serde(default = "all_clients")]
    pub clients: Vec<Client>,
    #[serde(default = "all_protocols")]
    pub protocols: Vec<Protocol>,
    #[serde(default)]
    pub needs: Needs,
    /// BYPASS: the class of attack (e.g. "h1 framing"), the report's grouping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// BYPASS: the technique, one line, shown in the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technique: Option<String>,
    /// Reported UNIMPLEMENTED with this reason, never run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unimplemented: Option<String>,
    /// Reported NOT-APPLICABLE with this reason, never run (a corpus case that is no HTTP
    /// request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<String>,
    /// PARITY: the corpus case this scenario was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<crate::corpus::CorpusInfo>,
    /// Required unless the scenario is unimplemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    /// What the scenario's bottle needs beyond the defaults (it then gets a bottle of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottle: Option<BottleOptions>,
    /// What is done to the bottle's parts, in order: before the request, or while it runs. A
    /// scenario with faults gets a bottle of its own, used once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub expect: Expect,
    /// The file the scenario came from (set by [`load_dir`] / [`parse_file`]).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[scenario.bottle]`: the agent's environment and its credential bindings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BottleOptions {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialOption>,
    /// A scanner that answers these bytes to every request stands in the scanner's place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanner_fake: Option<ScannerFake>,
    /// No allowlist: the scanner runs without strict mode (`[egress] any_host`), PARITY.
    #[serde(default)]
    pub any_host: bool,
    /// More names the test internet's upstream answers for (a corpus's hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_hosts: Vec<String>,
}

/// `[scenario.bottle.scanner_fake]`: the fixtures' `scanner-fake` in the scanner's place. It reads
/// each request whole, waits `delay_ms`, writes `answer` (or `answer_base64`), then closes the
/// connection or holds it (`then = "hang"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerFake {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_base64: Option<String>,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub then: FakeThen,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FakeThen {
    #[default]
    Close,
    Hang,
}

impl FakeThen {
    pub fn as_str(self) -> &'static str {
        match self {
            FakeThen::Close => "close",
            FakeThen::Hang => "hang",
        }
    }
}

impl ScannerFake {
    /// The answer's bytes (`answer` as UTF-8, or `answer_base64` decoded).
    pub fn answer_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match (&self.answer, &self.answer_base64) {
            (Some(text), _) => Ok(text.clone().into_bytes()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// `[[scenario.faults]]`: one thing done to one part of the bottle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub target: FaultTarget,
    pub action: FaultAction,
    /// Absent: done before the request, in the order written (a `start` or `restart` waits
    /// until the part is ready again). Set: done this long after the request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
}

/// The parts of a bottle a fault can hit (and the test internet's upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultTarget {
    Scanner,
    Mitm,
    Upstream,
}

/// What Docker does to the part: `disconnect` takes it off every network it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultAction {
    Stop,
    Start,
    Restart,
    Pause,
    Unpause,
    Kill,
    Disconnect,
}

/// One credential binding (addon/README.md): the secret in `env` may go in `header` to `host`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialOption {
    pub host: String,
    pub header: String,
    pub env: String,
    /// `Bearer` for `authorization: Bearer <secret>`; absent: the value is the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

impl Scenario {
    /// The family of a valid id.
    pub fn family(&self) -> Option<Family> {
        parse_id(&self.id).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body sent this many times over (curl, node, python): a megabyte from a short line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_repeat: Option<u32>,
    /// The body is a coding agent's conversation of this size (`traffic.rs`), a secret
    /// planted in it or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_traffic: Option<crate::traffic::Traffic>,
    /// The client bypasses the proxy.
    #[serde(default)]
    pub no_proxy: bool,
    /// How long the client may take (default 15 s); a short one where failing is the point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The raw client's options (`clients = ["raw"]`): what it sends through the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawOptions>,
    /// The load client's options (`clients = ["load"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadOptions>,
}

/// `request.load` (LOAD): `count` requests (`BOTTLE_LOAD_COUNT` overrides it), `concurrency` at
/// a time, every second one h2, half of them carrying `secret`, with bodies cycling through
/// `body_sizes` (the largest once in 20).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadOptions {
    pub count: u32,
    pub concurrency: u32,
    pub secret: String,
    pub body_sizes: Vec<u64>,
}

/// Overrides a LOAD scenario's `count` (the full run: 10000).
pub const LOAD_COUNT_ENV: &str = "BOTTLE_LOAD_COUNT";

/// `request.raw`: a CONNECT to the URL's host and port, then these, then the body's bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptions {
    /// TLS inside the tunnel (default: for https URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// The ALPN offers, any strings (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// The TLS server name (default: the URL's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Send a DNS query (type A, TCP framing) for this name instead of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_query: Option<String>,
    /// No proxy, no tunnel: one UDP datagram (the DNS query without TCP framing, or the body)
    /// straight to the URL's host and port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub udp: bool,
    /// false: no CONNECT; the bytes go to the proxy port itself (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<bool>,
    /// Instead of the body: bytes sent in order, with pauses and reads between them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<RawStep>,
    /// Instead of the body: HTTP/2 frames, after the client preface and an empty SETTINGS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub h2: Vec<H2Frame>,
}

/// One step of `request.raw.steps`: wait, send, and maybe read what comes back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_base64: Option<String>,
    /// Milliseconds to wait before sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
    /// Collect what comes back (until a pause in it) before the next step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read: bool,
}

/// One HTTP/2 frame of `request.raw.h2`, spelled by the scenario (probe-raw.py sends it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct H2Frame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// HEADERS/CONTINUATION: the block's fields, HPACK literals never indexed, no Huffman.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// RST_STREAM and GOAWAY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// WINDOW_UPDATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increment: Option<u32>,
    /// PRIORITY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<u32>,
    /// The same frame this many times (a flood).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
}

/// Frame types and the flags each may carry (RFC 9113); `raw` is `data_base64` as it is.
const H2_FRAMES: [(&str, &[&str]); 10] = [
    (
        "headers",
        &["end_stream", "end_headers", "padded", "priority"],
    ),
    ("continuation", &["end_headers"]),
    ("data", &["end_stream", "padded"]),
    ("rst_stream", &[]),
    ("settings", &["ack"]),
    ("window_update", &[]),
    ("ping", &["ack"]),
    ("priority", &[]),
    ("goaway", &[]),
    ("raw", &[]),
];

fn check_raw(raw: &RawOptions, request: &Request, problems: &mut Vec<String>) {
    let payloads = [
        request.body.is_some() || request.body_base64.is_some(),
        raw.dns_query.is_some(),
        !raw.steps.is_empty(),
        !raw.h2.is_empty(),
    ];
    if payloads.iter().filter(|p| **p).count() > 1 {
        problems.push(
            "request.raw sends one of: the body, dns_query, steps or h2; more than one is set"
                .into(),
        );
    }
    if raw.udp && (raw.connect.is_some() || !raw.steps.is_empty() || !raw.h2.is_empty()) {
        problems
            .push("request.raw.udp sends one datagram: connect, steps and h2 do not apply".into());
    }
    for (i, step) in raw.steps.iter().enumerate() {
        let what = format!("request.raw.steps[{i}].");
        if step.send.is_some() == step.send_base64.is_some() {
            problems.push(format!("{what}: give send or send_base64, exactly one"));
        }
        check_body(
            &what,
            step.send.as_deref(),
            step.send_base64.as_deref(),
            problems,
        );
    }
    if !raw.h2.is_empty() && !raw.alpn.iter().any(|a| a == "h2") {
        problems.push(
            "request.raw.h2 needs alpn = [\"h2\"]: mitmproxy speaks h2 only if offered".into(),
        );
    }
    for (i, frame) in raw.h2.iter().enumerate() {
        let what = format!("request.raw.h2[{i}]");
        let Some((_, flags)) = H2_FRAMES.iter().find(|(kind, _)| *kind == frame.kind) else {
            let known: Vec<&str> = H2_FRAMES.iter().map(|(k, _)| *k).collect();
            problems.push(format!(
                "{what}.type {:?} is not one of {}",
                frame.kind,
                known.join(" ")
            ));
            continue;
        };
        for flag in &frame.flags {
            if !flags.contains(&flag.as_str()) {
                problems.push(format!(
                    "{what}: a {} frame has no flag {flag:?} (its flags: {})",
                    frame.kind,
                    flags.join(" ")
                ));
            }
        }
        if frame.data.is_some() && frame.data_base64.is_some() {
            problems.push(format!(
                "{what}: data and data_base64 are both set; keep one"
            ));
        }
        check_body(
            &format!("{what}."),
            None,
            frame.data_base64.as_deref(),
            problems,
        );
    }
}

fn default_method() -> String {
    "GET".into()
}

impl Request {
    /// `method url`, no header, no body, every option at its default.
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: BTreeMap::new(),
            body: None,
            body_base64: None,
            body_repeat: None,
            agent_traffic: None,
            no_proxy: false,
            timeout_ms: None,
            raw: None,
            load: None,
        }
    }

    /// The body to send: `body` as UTF-8 bytes, `body_base64` decoded, or the conversation
    /// `agent_traffic` asks for; `None` for no body.
    pub fn body_bytes(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        if let Some(traffic) = &self.agent_traffic {
            return Ok(Some(crate::traffic::conversation(traffic)));
        }
        match (&self.body, &self.body_base64) {
            (Some(text), _) => Ok(Some(text.clone().into_bytes())),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Routes the upstream fixture serves for this scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub routes: Vec<UpstreamRoute>,
}

impl Upstream {
    /// The document for the upstream fixture's `PUT /routes` (its schema: headers as pairs).
    pub fn routes_json(&self) -> serde_json::Value {
        let routes = self
            .routes
            .iter()
            .map(|r| {
                let mut route = serde_json::Map::new();
                if let Some(host) = &r.host {
                    route.insert("host".into(), host.clone().into());
                }
                route.insert("path".into(), r.path.clone().into());
                if let Some(method) = &r.method {
                    route.insert("method".into(), method.clone().into());
                }
                route.insert("status".into(), r.status.into());
                let headers: Vec<serde_json::Value> = r
                    .headers
                    .iter()
                    .map(|(n, v)| serde_json::json!([n, v]))
                    .collect();
                route.insert("headers".into(), headers.into());
                if let Some(body) = &r.body {
                    route.insert("body".into(), body.clone().into());
                }
                if let Some(b64) = &r.body_base64 {
                    route.insert("body_base64".into(), b64.clone().into());
                }
                if let Some(sse) = &r.sse {
                    route.insert(
                        "sse".into(),
                        serde_json::json!({"events": sse.events, "interval_ms": sse.interval_ms}),
                    );
                }
                if let Some(cut) = r.cut_after_bytes {
                    route.insert("cut_after_bytes".into(), cut.into());
                }
                if let Some(delay) = r.delay_ms {
                    route.insert("delay_ms".into(), delay.into());
                }
                serde_json::Value::Object(route)
            })
            .collect::<Vec<_>>();
        serde_json::json!({ "routes": routes })
    }
}

/// One route, as the upstream fixture's `RouteSpec` (first match wins; a path ending in `*` is a
/// prefix).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default = "default_route_status")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<Sse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Announce the whole body, send this many bytes of it, then break off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_after_bytes: Option<u64>,
}

fn default_route_status() -> u16 {
    200
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sse {
    pub events: Vec<String>,
    #[serde(default)]
    pub interval_ms: u64,
}

/// What must hold after the request. Every field is optional; absent means "not asserted".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The client must fail (no HTTP response at all).
    #[serde(default)]
    pub error: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body_contains: Vec<String>,
    /// Body and headers byte for byte as the upstream sent them.
    #[serde(default)]
    pub body_equals_upstream: bool,
    /// The upstream received the request as the client sent it: method, path and body.
    #[serde(default)]
    pub upstream_receives_request: bool,
    /// Every request the upstream received in this case (say, Claude Code's own) is sent again
    /// by each of these clients over each protocol it speaks, through the same bottle: each
    /// must reach the upstream once with the same method, path and body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replayed_by: Vec<Client>,
    /// Subset match, names case-insensitive.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// This string must appear at no upstream, on no port: no request, no ClientHello, no byte
    /// the sink heard on any TCP or UDP port of the test internet (the upstream records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Exact number of upstream receipts for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_requests: Option<u32>,
    /// Exact number of upstream records of any kind: requests, failed TLS handshakes, and the
    /// sink's bytes on any other port (`upstream_records = 0`: nothing reached the test internet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_records: Option<u32>,
    /// The authority every upstream receipt carries (h1 Host, h2 `:authority`): the chain's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_authority: Option<String>,
    /// The address gave the client no answer at all: it failed, and not by a refusal or a reset
    /// (an address that refuses a connection has answered: it is reachable).
    #[serde(default)]
    pub no_answer: bool,
    /// Exact number of connections and datagrams the test's listener on the host got (the URL
    /// names its port, `{host_port}`; `host_records = 0`: nothing reached the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_records: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<AlpnExpect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionExpect>,
    /// Subset of the fields of the scanner's event joined by agent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelock_event: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamExpect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaExpect>,
    /// P10: the chain's verdict (the decision record; the client's status and body when
    /// blocked) equals the scanner's on the same request sent to it in plaintext, as the addon
    /// asks (`runner::parity`).
    #[serde(default)]
    pub parity: bool,
}

/// `[scenario.expect.ca]` (P8): what must hold of the bottle's mitmproxy CA key and certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaExpect {
    /// No file of the agent's container holds the key, searched as its user and as root.
    #[serde(default)]
    pub key_absent_from_agent: bool,
    /// No part of the bottle logged it (every line of the scanner, mitmproxy, the relay and the
    /// agent since the bottle started, and the decision log).
    #[serde(default)]
    pub key_in_no_log: bool,
    /// No file the suite or the launcher staged on the host (`bottle-*` in the temp directory)
    /// and no file of the report holds it.
    #[serde(default)]
    pub key_not_on_host: bool,
    /// Another bottle's CA is another (fingerprint), and this agent trusts its own.
    #[serde(default)]
    pub differs_from_another_bottle: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlpnExpect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Alpn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Alpn>,
}

/// Fields of the addon's decision record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionExpect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<DecidedBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_contains: Option<String>,
}

/// SSE timing as the client sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamExpect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_at_least: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

// --- loading -------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{}: no [[scenario]] tables; add some or remove the file", path.display())]
    EmptyFile { path: PathBuf },
    #[error("no scenario files (*.toml) in {}", path.display())]
    NoFiles { path: PathBuf },
    #[error("{}: scenario {id:?}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        id: String,
        problem: String,
    },
    #[error("scenario {id} is defined twice: in {} and in {}; give one of them a new id", first.display(), second.display())]
    Duplicate {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
    /// More than one of the above, all found in one pass (in file order).
    #[error("{} problems in the scenarios:\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ScenarioError>),
}

impl ScenarioError {
    /// The individual problems (one, or the members of [`ScenarioError::Several`]).
    pub fn problems(&self) -> Vec<&ScenarioError> {
        match self {
            ScenarioError::Several(all) => all.iter().collect(),
            one => vec![one],
        }
    }
}

/// Reads every `*.toml` in `dir` (sorted by name), checks each scenario and that ids are unique
/// across files. Scenarios come back in file order, then in their order within each file. Every
/// problem found is reported, not just the first.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<Scenario>, ScenarioError> {
    let dir = dir.as_ref();
    let io = |source| ScenarioError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ScenarioError::NoFiles {
            path: dir.to_path_buf(),
        });
    }
    let mut problems = Vec::new();
    let mut scenarios = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for file in &files {
        match parse_file(file) {
            Ok(found) => {
                for s in found {
                    if let Some(first) = seen.get(&s.id) {
                        problems.push(ScenarioError::Duplicate {
                            id: s.id.clone(),
                            first: first.clone(),
                            second: file.clone(),
                        });
                    } else {
                        seen.insert(s.id.clone(), file.clone());
                        scenarios.push(s);
                    }
                }
            }
            Err(e) => problems.extend(e.into_problems()),
        }
    }
    match problems.len() {
        0 => Ok(scenarios),
        1 => Err(problems.pop().expect("one problem")),
        _ => Err(ScenarioError::Several(problems)),
    }
}

/// Reads and checks one file (ids unique within it).
pub fn parse_file(path: impl AsRef<Path>) -> Result<Vec<Scenario>, ScenarioError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path)
}

/// Parses and checks the text of one file; `path` names it in errors.
pub fn parse_str(text: &str, path: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let file: ScenarioFile = toml::from_str(text).map_err(|source| ScenarioError::Parse {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    if file.scenario.is_empty() {
        return Err(ScenarioError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let mut problems = Vec::new();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for mut s in file.scenario {
        s.source = path.to_path_buf();
        let invalid = |problem: String| ScenarioError::Invalid {
            path: path.to_path_buf(),
            id: s.id.clone(),
            problem,
        };
        let found = validate(&s);
        if !found.is_empty() {
            problems.extend(found.into_iter().map(invalid));
        } else if scenarios.iter().any(|o| o.id == s.id) {
            problems.push(ScenarioError::Duplicate {
                id: s.id.clone(),
                first: path.to_path_buf(),
                second: path.to_path_buf(),
            });
        } else {
            scenarios.push(s);
        }
    }
    match problems.len() {
        0 => Ok(scenarios),
        1 => Err(problems.pop().expect("one problem")),
        _ => Err(ScenarioError::Several(problems)),
    }
}

impl ScenarioError {
    fn into_problems(self) -> Vec<ScenarioError> {
        match self {
            ScenarioError::Several(all) => all,
            one => vec![one],
        }
    }
}

/// `FAMILY-NNN` → the family, or why the id is not one. PARITY ids name their corpus case:
/// `PARITY-<case id>` (letters, digits, `-`, `_`, `.`).
fn parse_id(id: &str) -> Result<Family, String> {
    if let Some(case) = id.strip_prefix("PARITY-") {
        let slug = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
        return match !case.is_empty() && case.bytes().all(slug) {
            true => Ok(Family::Parity),
            false => Err(format!(
                "id {id:?}: a PARITY id is PARITY-<case id>, the case id of letters, digits, \
                 '-', '_' and '.'"
            )),
        };
    }
    let families = || {
        Family::ALL
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let Some((family, number)) = id.rsplit_once('-') else {
        return Err(format!(
            "id must look like FAMILY-NNN (e.g. BLOCK-001), not {id:?}"
        ));
    };
    if number.len() != 3 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "id must look like FAMILY-NNN with three digits (e.g. BLOCK-001), not {id:?}"
        ));
    }
    Family::parse(family).ok_or_else(|| {
        format!(
            "id {id:?}: unknown family {family:?}; known: {}",
            families()
        )
    })
}

/// Every problem with one scenario (empty: valid).
pub(crate) fn validate(s: &Scenario) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = parse_id(&s.id) {
        problems.push(e);
    }
    if s.title.trim().is_empty() {
        problems.push("title is empty; say what a user would notice".into());
    }
    check_list("clients", &s.clients, &mut problems);
    check_list("protocols", &s.protocols, &mut problems);
    if let Some(reason) = &s.unimplemented
        && reason.trim().is_empty()
    {
        problems.push("unimplemented needs a reason".into());
    }
    match &s.request {
        None if s.unimplemented.is_none() => problems.push(
            "no [scenario.request]: give one, or mark the scenario unimplemented with a reason"
                .into(),
        ),
        None => {}
        Some(r) => check_request(r, &mut problems),
    }
    let raw_client = s.clients.contains(&Client::Raw);
    let raw_options = s.request.as_ref().is_some_and(|r| r.raw.is_some());
    if raw_client && (s.clients.len() != 1 || !raw_options) {
        problems
            .push("the raw client runs alone (clients = [\"raw\"]) and needs request.raw".into());
    }
    let load_options = s.request.as_ref().is_some_and(|r| r.load.is_some());
    if s.clients.contains(&Client::Load) != load_options || (load_options && s.clients.len() != 1) {
        problems.push("the load client runs alone (clients = [\"load\"]) with request.load".into());
    }
    if let Some(load) = s.request.as_ref().and_then(|r| r.load.as_ref())
        && (load.count == 0 || load.concurrency == 0 || load.body_sizes.len() < 2)
    {
        problems
            .push("request.load needs a count, a concurrency and two body sizes or more".into());
    }
    if s.clients.contains(&Client::Inspect) && s.clients.len() != 1 {
        problems.push("the inspect probe runs alone (clients = [\"inspect\"])".into());
    }
    if raw_options && !raw_client {
        problems.push("request.raw is for the raw client: set clients = [\"raw\"]".into());
    }
    if let Some(request) = &s.request
        && let Some(raw) = &request.raw
    {
        check_raw(raw, request, &mut problems);
    }
    check_faults(s, &mut problems);
    if let Some(request) = &s.request
        && request.body_repeat.is_some()
    {
        if request.body.is_none() && request.body_base64.is_none() {
            problems.push("request.body_repeat repeats a body: give one".into());
        }
        let repeating = [
            Client::Curl,
            Client::Node,
            Client::Python,
            Client::PythonStdlib,
        ];
        if let Some(client) = s.clients.iter().find(|c| !repeating.contains(c)) {
            problems.push(format!(
                "request.body_repeat: the {client} client cannot repeat a body"
            ));
        }
    }
    if let Some(request) = &s.request
        && let Some(traffic) = &request.agent_traffic
    {
        if request.body.is_some() || request.body_base64.is_some() || request.body_repeat.is_some()
        {
            problems.push(
                "request.agent_traffic is the body: remove body, body_base64 and body_repeat"
                    .into(),
            );
        }
        if traffic.secret.is_some() != traffic.plant_in.is_some() {
            problems.push("request.agent_traffic: give secret and plant_in together".into());
        }
        let senders = [
            Client::Curl,
            Client::Node,
            Client::Python,
            Client::PythonStdlib,
        ];
        if let Some(client) = s.clients.iter().find(|c| !senders.contains(c)) {
            problems.push(format!(
                "request.agent_traffic: the {client} client cannot send a conversation"
            ));
        }
    }
    let senders = [
        Client::Curl,
        Client::Node,
        Client::Python,
        Client::PythonStdlib,
    ];
    if let Some(client) = s.expect.replayed_by.iter().find(|c| !senders.contains(c)) {
        problems.push(format!(
            "expect.replayed_by: the {client} client cannot replay a request"
        ));
    }
    if let Some(up) = &s.upstream {
        if up.routes.is_empty() {
            problems.push("upstream.routes is empty; remove [scenario.upstream] or add one".into());
        }
        for (i, route) in up.routes.iter().enumerate() {
            if !route.path.starts_with('/') {
                problems.push(format!(
                    "upstream.routes[{i}].path must start with '/', not {:?}",
                    route.path
                ));
            }
            if !(100..=599).contains(&route.status) {
                problems.push(format!(
                    "upstream.routes[{i}].status {} is not an HTTP status",
                    route.status
                ));
            }
            check_body(
                &format!("upstream.routes[{i}]."),
                route.body.as_deref(),
                route.body_base64.as_deref(),
                &mut problems,
            );
            if route.sse.is_some() && (route.body.is_some() || route.body_base64.is_some()) {
                problems.push(format!(
                    "upstream.routes[{i}]: give sse or a body, not both"
                ));
            }
        }
    }
    let e = &s.expect;
    match (e.status, e.error) {
        (Some(_), true) => problems.push(
            "expect.status and expect.error = true contradict each other: a failed client has no \
             status; keep one"
                .into(),
        ),
        // Claude Code and the inspect probe have no status to expect: what they print
        // (body_contains) is their outcome. PARITY's outcome is the scanner's own answer.
        (None, false)
            if s.request.is_some()
                && s.unimplemented.is_none()
                && !e.parity
                && (!matches!(s.clients.as_slice(), [Client::Claude | Client::Inspect])
                    || e.body_contains.is_empty()) =>
        {
            problems.push(
                "expect says nothing about the client's outcome: set expect.status or \
                 expect.error = true"
                    .into(),
            )
        }
        (Some(status), false) if !(100..=599).contains(&status) => {
            problems.push(format!("expect.status {status} is not an HTTP status"))
        }
        _ => {}
    }
    if e.error && (e.body_equals_upstream || !e.body_contains.is_empty() || !e.headers.is_empty()) {
        problems.push(
            "expect.error = true means no response, so body_contains, body_equals_upstream and \
             headers cannot hold"
                .into(),
        );
    }
    if e.no_answer && !e.error {
        problems.push("expect.no_answer needs expect.error = true: no answer is a failure".into());
    }
    let names_host_port = s
        .request
        .as_ref()
        .is_some_and(|r| r.url.contains("{host_port}"));
    if e.host_records.is_some() != names_host_port {
        problems.push(
            "expect.host_records and a URL on {host_port} go together: the listener on the host \
             hears only its own port"
                .into(),
        );
    }
    // A bypass is a secret that gets out: each case names the one it tries to get out, and the
    // sink and every upstream record are searched for it. Only a case that must pass (a twin
    // of a technique, a request that reaches the upstream) may have none.
    if parse_id(&s.id) == Ok(Family::Bypass)
        && s.unimplemented.is_none()
        && e.secret.is_none()
        && e.upstream_requests.unwrap_or(0) == 0
    {
        problems.push(
            "a BYPASS case names the secret it tries to get out (expect.secret); only one that \
             must reach the upstream (expect.upstream_requests >= 1) may have none"
                .into(),
        );
    }
    // The report groups the lane by class and names each technique.
    let blank = |field: &Option<String>| field.as_deref().is_none_or(|v| v.trim().is_empty());
    if parse_id(&s.id) == Ok(Family::Bypass) && (blank(&s.class) || blank(&s.technique)) {
        problems.push(
            "a BYPASS case names its class (e.g. \"h1 framing\") and its technique, one line \
             each: the report groups the lane by class"
                .into(),
        );
    }
    if [&s.class, &s.technique]
        .iter()
        .any(|f| f.as_deref().is_some_and(|v| v.contains('\n')))
    {
        problems.push("class and technique are one line each".into());
    }
    if e.secret.as_deref().is_some_and(|s| s.is_empty()) {
        problems.push("expect.secret is empty: every upstream would \"contain\" it".into());
    }
    if e.body_contains.iter().any(|s| s.is_empty()) {
        problems.push("expect.body_contains has an empty string".into());
    }
    check_header_names("expect.headers", e.headers.keys(), &mut problems);
    if let Some(stream) = &e.stream
        && stream.chunks_at_least.is_none()
        && stream.max_lag_ms.is_none()
        && stream.interval_ms.is_none()
    {
        problems.push("expect.stream is empty; remove it or set a field".into());
    }
    problems
}

/// Faults and fakes are for FAILCLOSED, where each case must show what reached the upstream;
/// a fault while the request runs needs a request that runs.
fn check_faults(s: &Scenario, problems: &mut Vec<String>) {
    let fake = s.bottle.as_ref().and_then(|b| b.scanner_fake.as_ref());
    let failclosed = s.family() == Some(Family::FailClosed);
    if failclosed && s.unimplemented.is_none() && s.expect.upstream_requests.is_none() {
        problems.push(
            "a FAILCLOSED scenario must say what reaches the upstream (expect.upstream_requests)"
                .into(),
        );
    }
    if !failclosed && (!s.faults.is_empty() || fake.is_some()) {
        problems.push("faults and scanner_fake belong to FAILCLOSED scenarios".into());
    }
    if let Some(fake) = fake {
        if fake.answer.is_some() && fake.answer_base64.is_some() {
            problems.push("scanner_fake: give answer or answer_base64, not both".into());
        }
        if let Err(e) = fake.answer_bytes() {
            problems.push(format!("scanner_fake.answer_base64 is not base64: {e}"));
        }
    }
    let mut last_timed = 0;
    for (i, fault) in s.faults.iter().enumerate() {
        if let Some(after) = fault.after_ms {
            if after < last_timed {
                problems.push(format!(
                    "faults[{i}]: after_ms must not go back in time ({after} < {last_timed})"
                ));
            }
            last_timed = after;
        } else if last_timed > 0 {
            problems.push(format!(
                "faults[{i}]: a fault before the request comes before the timed ones"
            ));
        }
        // The upstream's records are in its memory: a fault that ends it would lose them.
        if fault.target == FaultTarget::Upstream
            && !matches!(fault.action, FaultAction::Pause | FaultAction::Unpause)
        {
            problems.push(format!(
                "faults[{i}]: the upstream can only be paused and unpaused (its records are the evidence)"
            ));
        }
    }
}

fn check_list<T: PartialEq + fmt::Display>(what: &str, list: &[T], problems: &mut Vec<String>) {
    if list.is_empty() {
        problems.push(format!("{what} is empty; leave it out to mean all"));
    }
    for (i, item) in list.iter().enumerate() {
        if list[..i].contains(item) {
            problems.push(format!("{what} lists {item} twice"));
        }
    }
}

fn check_request(r: &Request, problems: &mut Vec<String>) {
    // Any token (RFC 9110), so that a scenario can send a method no server knows.
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if r.method.is_empty() || !r.method.bytes().all(tchar) {
        problems.push(format!(
            "request.method {:?} is not an HTTP method",
            r.method
        ));
    }
    if !(r.url.starts_with("https://") || r.url.starts_with("http://")) {
        problems.push(format!(
            "request.url must start with https:// or http://, not {:?}",
            r.url
        ));
    }
    check_body(
        "request.",
        r.body.as_deref(),
        r.body_base64.as_deref(),
        problems,
    );
    check_header_names("request.headers", r.headers.keys(), problems);
}

fn check_body(prefix: &str, body: Option<&str>, b64: Option<&str>, problems: &mut Vec<String>) {
    match (body, b64) {
        (Some(_), Some(_)) => problems.push(format!(
            "{prefix}body and {prefix}body_base64 are both set; keep one"
        )),
        (None, Some(b64)) => {
            if let Err(e) = base64::engine::general_purpose::STANDARD.decode(b64) {
                problems.push(format!("{prefix}body_base64 is not base64: {e}"));
            }
        }
        _ => {}
    }
}

fn check_header_names<'a>(
    what: &str,
    names: impl Iterator<Item = &'a String>,
    problems: &mut Vec<String>,
) {
    let mut seen: Vec<String> = Vec::new();
    for name in names {
        let lower = name.to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            problems.push(format!("{what}: {name:?} is not a header name"));
        }
        if seen.contains(&lower) {
            problems.push(format!(
                "{what}: {name:?} is given twice (header names ignore case)"
            ));
        }
        seen.push(lower);
    }
}

// --- cases ---------------------------------------------------------------------------------------

/// One scenario run by one client over one protocol: one named test.
#[derive(Clone, Debug)]
pub struct Case {
    pub scenario: Arc<Scenario>,
    pub client: Client,
    pub protocol: Protocol,
    /// Set when this combination cannot run at all (e.g. python × h2).
    pub not_applicable: Option<String>,
}

impl Case {
    /// `BLOCK-001::curl::h2`: stable, and filterable with `cargo nextest run BLOCK-001`.
    pub fn name(&self) -> String {
        format!("{}::{}::{}", self.scenario.id, self.client, self.protocol)
    }

    /// The outcome this case has without running it, and why: NOT-APPLICABLE when the client
    /// cannot speak the protocol, UNIMPLEMENTED when the scenario says so, NOT-APPLICABLE when it
    /// needs the real pipelock and the scanner is the double. `None`: run it.
    pub fn settled(&self, scanner_is_double: bool) -> Option<(Outcome, String)> {
        if let Some(reason) = &self.not_applicable {
            return Some((Outcome::NotApplicable, reason.clone()));
        }
        if let Some(reason) = &self.scenario.unimplemented {
            return Some((Outcome::Unimplemented, reason.clone()));
        }
        if scanner_is_double && self.scenario.needs == Needs::Pipelock {
            return Some((
                Outcome::NotApplicable,
                "needs the real pipelock image; the scanner was the pipelock double".into(),
            ));
        }
        None
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One case per scenario × client × protocol, in scenario order, then client and protocol in
/// their canonical order (curl, node, python; h1, h2) whatever order the file lists them in.
pub fn expand(scenarios: &[Scenario]) -> Vec<Case> {
    let mut cases = Vec::new();
    for s in scenarios {
        let scenario = Arc::new(s.clone());
        for client in Client::EVERY.into_iter().filter(|c| s.clients.contains(c)) {
            for protocol in Protocol::ALL
                .into_iter()
                .filter(|p| s.protocols.contains(p))
            {
                cases.push(Case {
                    scenario: scenario.clone(),
                    client,
                    protocol,
                    not_applicable: s
                        .not_applicable
                        .clone()
                        .or_else(|| client.cannot_speak(protocol).map(String::from)),
                });
            }
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
[[scenario]]
id = "BLOCK-001"
title = "A credential in an HTTPS POST body gets pipelock's 403 and reaches no upstream"
property = "P1"
[scenario.request]
method = "POST"
url = "https://api.anthropic.com/v1/messages"
headers = { "content-type" = "application/json" }
body = '{"note": "AKIAIOSFODNN7EXAMPLE"}'
[scenario.expect]
status = 403
body_contains = ["blocked"]
headers = { "x-pipelock-block-reason" = "dlp_match" }
secret = "AKIAIOSFODNN7EXAMPLE"
upstream_requests = 0
decision = { verdict = "block", decided_by = "pipelock", reason_contains = "dlp" }
pipelock_event = { event = "body_dlp", action = "block" }

[[scenario]]
id = "STREAM-001"
title = "Server-sent events arrive one by one"
property = "P2"
clients = ["node", "curl"]
protocols = ["h2"]
needs = "pipelock"
[scenario.request]
url = "https://api.anthropic.com/sse"
[scenario.upstream]
routes = [ { host = "api.anthropic.com", path = "/sse", status = 200, headers = { "content-type" = "text/event-stream" }, sse = { events = ["a","b"], interval_ms = 1000 } } ]
[scenario.expect]
status = 200
alpn = { client = "h2", upstream = "http/1.1" }
stream = { chunks_at_least = 2, max_lag_ms = 200, interval_ms = 1000 }

[[scenario]]
id = "CA-001"
title = "The CA key is not readable from the agent"
property = "P8"
unimplemented = "needs an exec probe"
"#;

    fn parse(text: &str) -> Result<Vec<Scenario>, ScenarioError> {
        parse_str(text, Path::new("scenarios/test.toml"))
    }

    /// The problems of one invalid scenario, as text.
    fn problem(text: &str) -> String {
        let err = parse(text).expect_err("should be invalid");
        let message = err.to_string();
        assert!(message.contains("scenarios/test.toml"), "{message}");
        message
    }

    fn minimal(extra_top: &str, request: &str, expect: &str) -> String {
        format!(
            "[[scenario]]\nid = \"PASS-001\"\ntitle = \"t\"\nproperty = \"P2\"\n{extra_top}\n\
             [scenario.request]\nurl = \"https://example.com/\"\n{request}\n\
             [scenario.expect]\n{expect}\n"
        )
    }

    #[test]
    fn valid_file_parses() {
        let all = parse(VALID).unwrap();
        assert_eq!(all.len(), 3);
        let block = &all[0];
        assert_eq!(block.family(), Some(Family::Block));
        assert_eq!(block.property, Property::P1);
        assert_eq!(block.clients, Client::ALL);
        assert_eq!(block.protocols, Protocol::ALL);
        assert_eq!(block.needs, Needs::Any);
        let req = block.request.as_ref().unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(
            req.body_bytes().unwrap().unwrap(),
            br#"{"note": "AKIAIOSFODNN7EXAMPLE"}"#
        );
        assert_eq!(block.expect.status, Some(403));
        assert_eq!(block.expect.upstream_requests, Some(0));
        let decision = block.expect.decision.as_ref().unwrap();
        assert_eq!(decision.verdict, Some(Verdict::Block));
        assert_eq!(decision.decided_by, Some(DecidedBy::Pipelock));
        assert_eq!(
            block.expect.pipelock_event.as_ref().unwrap()["event"],
            serde_json::json!("body_dlp")
        );
        assert_eq!(block.source, Path::new("scenarios/test.toml"));

        let stream = &all[1];
        assert_eq!(stream.needs, Needs::Pipelock);
        assert_eq!(stream.request.as_ref().unwrap().method, "GET");
        let alpn = stream.expect.alpn.as_ref().unwrap();
        assert_eq!(
            (alpn.client, alpn.upstream),
            (Some(Alpn::H2), Some(Alpn::Http11))
        );
        assert_eq!(
            stream.upstream.as_ref().unwrap().routes_json(),
            serde_json::json!({"routes": [{
                "host": "api.anthropic.com", "path": "/sse", "status": 200,
                "headers": [["content-type", "text/event-stream"]],
                "sse": {"events": ["a", "b"], "interval_ms": 1000},
            }]})
        );
        assert_eq!(all[2].unimplemented.as_deref(), Some("needs an exec probe"));
        assert!(all[2].request.is_none());
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let text = minimal("", "", "status = 200\nstatsu = 201");
        let message = problem(&text);
        assert!(message.contains("statsu"), "{message}");
        let message = problem(&minimal("colour = \"red\"", "", "status = 200"));
        assert!(message.contains("colour"), "{message}");
    }

    #[test]
    fn bad_ids_are_rejected() {
        for (id, says) in [
            ("BLOCK-1", "three digits"),
            ("BLOCK001", "FAMILY-NNN"),
            ("BLOK-001", "unknown family \"BLOK\""),
            ("block-001", "unknown family"),
        ] {
            let text = minimal("", "", "status = 200").replace("PASS-001", id);
            let message = problem(&text);
            assert!(message.contains(says), "{id}: {message}");
        }
        let ok = minimal("", "", "status = 200\nupstream_requests = 0")
            .replace("PASS-001", "FAILCLOSED-010");
        assert_eq!(parse(&ok).unwrap()[0].family(), Some(Family::FailClosed));
    }

    #[test]
    fn faults_are_failclosed_data_checked_at_load() {
        let fault = "[[scenario.faults]]\ntarget = \"scanner\"\naction = \"stop\"\n";
        let failclosed = |extra: &str, expect: &str| {
            minimal("", "", expect)
                .replace("PASS-001", "FAILCLOSED-001")
                .replace("[scenario.request]", &format!("{extra}[scenario.request]"))
        };
        let ok = parse(&failclosed(fault, "status = 502\nupstream_requests = 0")).unwrap();
        assert_eq!(ok[0].faults[0].action, FaultAction::Stop);
        let message = problem(&failclosed(fault, "status = 502"));
        assert!(message.contains("expect.upstream_requests"), "{message}");
        let message = problem(&failclosed(
            &fault.replace("stop", "explode"),
            "upstream_requests = 0",
        ));
        assert!(message.contains("explode"), "{message}");
        let message = problem(&failclosed(
            &fault.replace("scanner", "upstream"),
            "upstream_requests = 0",
        ));
        assert!(message.contains("paused and unpaused"), "{message}");
        let back_in_time = format!("{fault}after_ms = 500\n{fault}");
        let message = problem(&failclosed(&back_in_time, "upstream_requests = 0"));
        assert!(message.contains("before the timed ones"), "{message}");
        // Faults belong to FAILCLOSED.
        let message = problem(
            &minimal("", "", "status = 200")
                .replace("[scenario.request]", &format!("{fault}[scenario.request]")),
        );
        assert!(message.contains("belong to FAILCLOSED"), "{message}");
    }

    #[test]
    fn unknown_property_client_protocol_are_rejected() {
        let text = minimal("", "", "status = 200").replace("\"P2\"", "\"P11\"");
        assert!(problem(&text).contains("P11"));
        let message = problem(&minimal("clients = [\"wget\"]", "", "status = 200"));
        assert!(message.contains("wget"), "{message}");
        let message = problem(&minimal("protocols = [\"h3\"]", "", "status = 200"));
        assert!(message.contains("h3"), "{message}");
        let message = problem(&minimal("clients = []", "", "status = 200"));
        assert!(message.contains("clients is empty"), "{message}");
        let message = problem(&minimal("protocols = [\"h1\", \"h1\"]", "", "status = 200"));
        assert!(message.contains("protocols lists h1 twice"), "{message}");
    }

    #[test]
    fn body_and_body_base64_exclude_each_other() {
        let message = problem(&minimal(
            "",
            "body = \"a\"\nbody_base64 = \"YQ==\"",
            "status = 200",
        ));
        assert!(message.contains("both set"), "{message}");
        let message = problem(&minimal("", "body_base64 = \"***\"", "status = 200"));
        assert!(message.contains("not base64"), "{message}");
        let ok = parse(&minimal("", "body_base64 = \"AAEC\"", "status = 200")).unwrap();
        assert_eq!(
            ok[0].request.as_ref().unwrap().body_bytes().unwrap(),
            Some(vec![0, 1, 2])
        );
    }

    #[test]
    fn status_and_error_exclude_each_other() {
        let message = problem(&minimal("", "", "status = 403\nerror = true"));
        assert!(message.contains("contradict"), "{message}");
        let message = problem(&minimal("", "", "upstream_requests = 0"));
        assert!(message.contains("says nothing"), "{message}");
        let ok = parse(&minimal("", "", "error = true\nupstream_requests = 0")).unwrap();
        assert!(ok[0].expect.error);
    }

    #[test]
    fn title_must_not_be_empty() {
        let text = minimal("", "", "status = 200").replace("title = \"t\"", "title = \" \"");
        assert!(problem(&text).contains("title is empty"));
    }

    #[test]
    fn a_request_is_needed_unless_unimplemented() {
        let text = "[[scenario]]\nid = \"CA-002\"\ntitle = \"t\"\nproperty = \"P8\"\n";
        assert!(problem(text).contains("no [scenario.request]"));
        let text = format!("{text}unimplemented = \"\"\n");
        assert!(problem(&text).contains("needs a reason"));
    }

    #[test]
    fn a_bypass_case_names_its_secret_unless_it_must_pass() {
        let bypass = |expect: &str| {
            minimal("class = \"c\"\ntechnique = \"t\"", "", expect)
                .replace("PASS-001", "BYPASS-001")
        };
        assert!(problem(&bypass("status = 403")).contains("names the secret"));
        let unnamed = bypass("status = 403\nsecret = \"AKIA\"").replace("technique = \"t\"", "");
        assert!(problem(&unnamed).contains("names its class"));
        parse(&bypass("status = 403\nsecret = \"AKIA\"")).unwrap();
        parse(&bypass("status = 200\nupstream_requests = 1")).unwrap();
        // Other families need not.
        parse(&minimal("", "", "status = 403")).unwrap();
    }

    #[test]
    fn every_problem_is_reported() {
        let text = minimal("clients = []", "body = \"a\"\nbody_base64 = \"YQ==\"", "")
            .replace("PASS-001", "NOPE-1");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.problems().len(), 4, "{err}");
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn load_dir_reads_sorted_files_and_rejects_duplicate_ids() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.toml", VALID);
        write(
            dir.path(),
            "a.toml",
            &minimal("", "", "status = 200").replace("PASS-001", "PASS-002"),
        );
        write(dir.path(), "notes.md", "not a scenario file");
        let all = load_dir(dir.path()).unwrap();
        let ids: Vec<_> = all.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["PASS-002", "BLOCK-001", "STREAM-001", "CA-001"]);
        assert_eq!(all[1].source, dir.path().join("b.toml"));

        write(
            dir.path(),
            "c.toml",
            &minimal("", "", "status = 200").replace("PASS-001", "BLOCK-001"),
        );
        let err = load_dir(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, ScenarioError::Duplicate { ref id, .. } if id == "BLOCK-001"),
            "{message}"
        );
        assert!(
            message.contains("b.toml") && message.contains("c.toml"),
            "{message}"
        );
    }

    #[test]
    fn load_dir_names_the_file_with_a_syntax_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", VALID);
        write(dir.path(), "broken.toml", "[[scenario]\nid = 1");
        let message = load_dir(dir.path()).unwrap_err().to_string();
        assert!(message.contains("broken.toml"), "{message}");
    }

    #[test]
    fn load_dir_rejects_an_empty_folder_and_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_dir(dir.path()),
            Err(ScenarioError::NoFiles { .. })
        ));
        write(dir.path(), "empty.toml", "# nothing yet\n");
        assert!(matches!(
            load_dir(dir.path()),
            Err(ScenarioError::EmptyFile { .. })
        ));
    }

    #[test]
    fn expansion_gives_one_named_case_per_client_and_protocol() {
        let all = parse(VALID).unwrap();
        let cases = expand(&all);
        // BLOCK-001: 4 × 2; STREAM-001: [node, curl] × [h2]; CA-001: 4 × 2.
        assert_eq!(cases.len(), 8 + 2 + 8);
        let names: Vec<_> = cases.iter().map(Case::name).collect();
        assert_eq!(
            names[..10],
            [
                "BLOCK-001::curl::h1",
                "BLOCK-001::curl::h2",
                "BLOCK-001::node::h1",
                "BLOCK-001::node::h2",
                "BLOCK-001::python::h1",
                "BLOCK-001::python::h2",
                "BLOCK-001::python-stdlib::h1",
                "BLOCK-001::python-stdlib::h2",
                "STREAM-001::curl::h2",
                "STREAM-001::node::h2",
            ]
        );
        assert!(Arc::ptr_eq(&cases[0].scenario, &cases[5].scenario));
    }

    #[test]
    fn python_stdlib_over_h2_is_not_applicable_not_dropped_and_python_speaks_h2() {
        let cases = expand(&parse(VALID).unwrap());
        let stdlib_h2 = cases
            .iter()
            .find(|c| c.name() == "BLOCK-001::python-stdlib::h2")
            .unwrap();
        let (outcome, reason) = stdlib_h2.settled(false).unwrap();
        assert_eq!(outcome, Outcome::NotApplicable);
        assert!(reason.contains("HTTP/1.1 only"), "{reason}");
        for name in ["BLOCK-001::python::h1", "BLOCK-001::python::h2"] {
            let py = cases.iter().find(|c| c.name() == name).unwrap();
            assert_eq!(py.settled(true), None, "{name}");
        }
        let applicable = cases.iter().filter(|c| c.not_applicable.is_none()).count();
        assert_eq!(applicable, 18 - 2);
    }

    #[test]
    fn settled_covers_unimplemented_and_the_double() {
        let cases = expand(&parse(VALID).unwrap());
        let ca = cases
            .iter()
            .find(|c| c.name() == "CA-001::curl::h1")
            .unwrap();
        assert_eq!(
            ca.settled(false),
            Some((Outcome::Unimplemented, "needs an exec probe".into()))
        );
        let stream = cases
            .iter()
            .find(|c| c.name() == "STREAM-001::curl::h2")
            .unwrap();
        assert_eq!(stream.settled(false), None);
        assert_eq!(stream.settled(true).unwrap().0, Outcome::NotApplicable);
    }
}
