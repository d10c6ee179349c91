//! Runs one scenario case against a bottle (leased from the pool, or a fresh one) and says
//! which expectations it did not meet.
//! The conformance test binary (`tests/scenarios.rs`) and the harness's own negative control
//! share it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bottle::plan::{NetworkRole, Role};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::chain::{Chain, ChainOptions};
use crate::host_listener::{self, HostListener};
use crate::pool::Pool;
use crate::probe::{self, ProbeRequest, ProbeResult};
use crate::scenario::{self, Case, Scenario};
use crate::{ca_checks, fault, images, network};

/// The bottle a case needs: the defaults (a pooled bottle), or what its scenario asks for (the
/// Claude Code image for the `claude` client, an agent environment, credential bindings).
pub fn options_for(case: &Case) -> ChainOptions {
    let bottle = case.scenario.bottle.clone().unwrap_or_default();
    ChainOptions {
        claude: case.client == scenario::Client::Claude,
        agent_env: bottle.agent_env,
        credentials: bottle
            .credentials
            .into_iter()
            .map(|c| bottle::plan::CredentialBinding {
                host: c.host,
                header: c.header,
                env: c.env,
                scheme: c.scheme,
            })
            .collect(),
        addon_dir: None,
        verdict_stub_allow: false,
        scanner_fake: bottle.scanner_fake,
        any_host: bottle.any_host,
        upstream_hosts: bottle.upstream_hosts,
        // Faults break a bottle; a load's peak memory must be its own.
        own_bottle: !case.scenario.faults.is_empty()
            || case
                .scenario
                .request
                .as_ref()
                .is_some_and(|r| r.load.is_some()),
    }
}

/// Runs `case` on a bottle the caller brought up (reset first): one bottle for many cases, as
/// a negative control does with a bottle whose options no pooled bottle has. Ok carries the
/// unmet expectations (empty: PASS) and the evidence.
pub async fn execute_on(case: &Case, chain: &mut Chain) -> Result<(Vec<String>, Value)> {
    chain.reset().await?;
    exercise(case, chain).await
}

/// The images by role, and the scanner that ran.
pub type ChainInfo = Option<(std::collections::BTreeMap<String, String>, String)>;

/// Runs the case; Ok carries the unmet expectations (empty: PASS) and the evidence.
pub async fn execute(
    case: &Case,
    options: ChainOptions,
) -> Result<(Vec<String>, Value, ChainInfo)> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let t0 = Instant::now();
    // A pooled bottle when the pool has one with the case's options; the lease is held until
    // the chain is let go.
    let lease = match (Pool::from_env(), options.pool_key()) {
        (Some(pool), Some(key)) => pool.lease_for(&key).await?,
        _ => None,
    };
    let (chain, lease) = match lease {
        Some(lease) => {
            let mut chain = Chain::attach(&docker, &images, &lease.name, &options).await?;
            chain.reset().await?;
            eprintln!(
                "[bottle] pool bottle {} leased and reset in {:.1}s",
                lease.name,
                t0.elapsed().as_secs_f64()
            );
            (chain, Some(lease))
        }
        None => {
            let chain = Chain::up(&docker, &images, options).await?;
            eprintln!("[bottle] chain up in {:.1}s", t0.elapsed().as_secs_f64());
            (chain, None)
        }
    };
    let outcome = exercise(case, &chain).await;
    eprintln!("[bottle] exercised at {:.1}s", t0.elapsed().as_secs_f64());
    let info = Some((
        chain
            .plan
            .containers
            .iter()
            .map(|c| {
                // The Claude Code agent image is a role of its own in the report, not a mix.
                let role = if c.image == images.agent_claude {
                    "agent-claude".to_string()
                } else {
                    format!("{:?}", c.role).to_lowercase()
                };
                (role, c.image.clone())
            })
            .chain([("upstream".to_string(), images.fixtures.clone())])
            .collect(),
        if chain.scanner_fake {
            format!(
                "{} {} misbehaves on purpose)",
                images.fixtures,
                crate::report::SCANNER_FAKE_MARKER
            )
        } else {
            images.graded.scanner_label()
        },
    ));
    if outcome
        .as_ref()
        .map_or(true, |(failures, _)| !failures.is_empty())
    {
        eprintln!("{}", chain.logs().await);
    }
    chain.down().await?;
    drop(lease);
    eprintln!("[bottle] down at {:.1}s", t0.elapsed().as_secs_f64());
    let (failures, evidence) = outcome?;
    Ok((failures, evidence, info))
}

async fn exercise(case: &Case, chain: &Chain) -> Result<(Vec<String>, Value)> {
    let s = &case.scenario;
    let request = s.request.as_ref().context("the scenario has no request")?;
    if let Some(load) = &request.load {
        return crate::load::exercise(case, chain, request, load).await;
    }
    if let Some(upstream) = &s.upstream {
        chain.put_routes(&upstream.routes_json()).await?;
    }
    let listener = match host_listener::wanted(&request.url) {
        true => Some(HostListener::bind().await?),
        false => None,
    };
    let neighbour = match request.url.contains("{neighbour_") {
        true => Some(Neighbour::find(chain).await?),
        false => None,
    };
    let filled = async {
        let url = fill_url(&request.url, chain, listener.as_ref()).await?;
        match &neighbour {
            Some(n) => fill_neighbour(&url, &n.chain).await,
            None => Ok(url),
        }
    };
    let url = filled.await?;
    let mut probe_request = ProbeRequest::new(&request.method, &url);
    probe_request.headers = request
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    probe_request.body = request.body_bytes()?;
    probe_request.body_repeat = request.body_repeat;
    probe_request.no_proxy = request.no_proxy;
    let mut raw = request.raw.clone();
    // The TLS server name may name an address too (a name other than the CONNECT target).
    if let Some(sni) = raw.as_mut().and_then(|raw| raw.sni.as_mut()) {
        *sni = fill_url(sni, chain, listener.as_ref()).await?;
    }
    probe_request.raw = raw.as_ref().map(serde_json::to_value).transpose()?;
    let default_timeout = if case.client == scenario::Client::Claude {
        90_000
    } else {
        15_000
    };
    probe_request.timeout = Duration::from_millis(request.timeout_ms.unwrap_or(default_timeout));
    for fault in s.faults.iter().filter(|f| f.after_ms.is_none()) {
        fault::apply(chain, fault).await?;
    }
    let sent = Instant::now();
    let (result, timed) = tokio::join!(
        probe::run(
            chain.docker(),
            chain.id(Role::Agent),
            case.client,
            case.protocol,
            &probe_request,
        ),
        fault::apply_timed(chain, &s.faults, sent),
    );
    timed?;
    let result = result?;
    fault::heal(chain, &s.faults).await?;

    // The decision record is written when the flow ends, just after the client has its answer;
    // a request that skipped the proxy (a UDP datagram never goes through it) has none.
    let skips_proxy = request.no_proxy || request.raw.as_ref().is_some_and(|raw| raw.udp);
    let mut decisions = Vec::new();
    for _ in 0..20 {
        decisions = chain.decisions().await?;
        if !decisions.is_empty() || skips_proxy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decision = decisions.last().cloned();
    let events = chain.scanner_events().await?;
    let joined: Vec<Value> = match decision.as_ref().and_then(|d| d["id"].as_str()) {
        Some(id) => events
            .iter()
            .filter(|e| e["agent"] == id)
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let records = chain.upstream_records().await?;
    let log_lines = chain.chain_log_lines().await?;
    // A datagram or a connection's first bytes may still be on their way.
    let host_records = match &listener {
        Some(listener) => {
            tokio::time::sleep(HOST_GRACE).await;
            listener.records()
        }
        None => Vec::new(),
    };
    let evidence = json!({
        "probe": probe_evidence(&result),
        "decision": decision,
        "pipelock_events": joined,
        "upstream_receipts": records,
        "host_records": host_records,
        "url": url,
    });
    let mut failures = check(s, &result, decision.as_ref(), &joined, &records);
    failures.extend(secret_in_chain_logs(s, &log_lines));
    failures.extend(heard_on_host(s, &host_records));
    if let Some(ca) = &s.expect.ca {
        failures.extend(ca_checks::check(chain, ca).await?);
    }
    let mut evidence = evidence;
    if !s.expect.replayed_by.is_empty() {
        let (unmet, replays) = replay(chain, &records, &s.expect.replayed_by).await?;
        failures.extend(unmet);
        evidence["replays"] = replays;
    }
    if s.expect.parity {
        let (unmet, parity) =
            crate::parity::check(chain, s, request, &result, decision.as_ref()).await?;
        failures.extend(unmet);
        evidence["parity"] = parity;
    }
    if let Some(neighbour) = neighbour {
        neighbour.let_go().await?;
    }
    Ok((failures, evidence))
}

/// Headers a client writes itself, or that belong to one hop: not replayed.
const NOT_REPLAYED: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
];

/// `replayed_by`: each request the upstream received, sent again by each client over each
/// protocol it speaks; each must reach the upstream once with the same method, path and body.
async fn replay(
    chain: &Chain,
    records: &[Value],
    clients: &[scenario::Client],
) -> Result<(Vec<String>, Value)> {
    use base64::Engine;
    let originals: Vec<Value> = records
        .iter()
        .filter(|r| r["kind"] == "request")
        .cloned()
        .collect();
    let mut failures = Vec::new();
    let mut evidence = Vec::new();
    if originals.is_empty() {
        failures.push("replayed_by: the upstream received no request to replay".to_string());
    }
    for original in &originals {
        let method = original["method"].as_str().unwrap_or("GET");
        let path = original["path"].as_str().unwrap_or("/");
        let body = match (original["body"].as_str(), original["body_base64"].as_str()) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64)?,
            _ if original["body_len"] == 0 => Vec::new(),
            _ => {
                failures.push(format!(
                    "replayed_by: {method} {path} has a body of {} bytes, past what the \
                     upstream records whole",
                    original["body_len"]
                ));
                continue;
            }
        };
        let url = format!(
            "https://{}{path}",
            original["authority"].as_str().unwrap_or_default()
        );
        let mut request = ProbeRequest::new(method, &url);
        request.headers = original["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h[0].as_str()?.to_string(), h[1].as_str()?.to_string())))
            .filter(|(name, _)| {
                !name.starts_with(':')
                    && !NOT_REPLAYED.contains(&name.to_ascii_lowercase().as_str())
            })
            .collect();
        request.body = (!body.is_empty() || method != "GET").then_some(body);
        request.timeout = Duration::from_secs(60);
        for &client in clients {
            for protocol in probe::Protocol::ALL {
                if !client.supports(protocol) {
                    continue;
                }
                let before = chain.upstream_records().await?.len();
                let result = probe::run(
                    chain.docker(),
                    chain.id(Role::Agent),
                    client,
                    protocol,
                    &request,
                )
                .await?;
                let after = chain.upstream_records().await?;
                let received: Vec<&Value> = after
                    .iter()
                    .skip(before)
                    .filter(|r| r["kind"] == "request")
                    .collect();
                let same = |r: &Value| {
                    r["method"] == original["method"]
                        && r["path"] == original["path"]
                        && r["body_sha256"] == original["body_sha256"]
                };
                let ok = matches!(received.as_slice(), [one] if same(one));
                if !ok {
                    failures.push(format!(
                        "{method} {path} replayed by {client} over {protocol}: status {:?} \
                         ({}), {} request(s) reached the upstream, {}",
                        result.status,
                        result.error.as_deref().unwrap_or("no error"),
                        received.len(),
                        match received.first() {
                            Some(r) if !same(r) => "not the same method, path and body",
                            _ => "as sent",
                        }
                    ));
                }
                evidence.push(json!({
                    "request": format!("{method} {path}"),
                    "client": client.as_str(),
                    "protocol": protocol.as_str(),
                    "status": result.status,
                    "upstream_requests": received.len(),
                    "same": ok,
                }));
            }
        }
    }
    Ok((failures, Value::Array(evidence)))
}

/// How long the host listener goes on listening once the client is done: a datagram or a
/// connection's first bytes on the same machine arrive within milliseconds.
const HOST_GRACE: Duration = Duration::from_millis(300);

/// The case's URL with its placeholders filled: the bottle's names and addresses, and the host
/// listener's port. Only the addresses the URL names are looked up.
async fn fill_url(url: &str, chain: &Chain, listener: Option<&HostListener>) -> Result<String> {
    let docker = chain.docker();
    let scanner = &chain.plan.container(Role::Scanner).name;
    let network_of = |role: NetworkRole| chain.plan.network(role).name.clone();
    let mut filled = url
        .replace("{scanner}", scanner)
        .replace("{upstream_ip}", &chain.upstream_ip)
        .replace("{mitm_egress_ip}", &chain.mitm_egress_ip);
    if filled.contains("{scanner_ip}") {
        let ip = network::ip(docker, &network_of(NetworkRole::Scan), scanner).await?;
        filled = filled.replace("{scanner_ip}", &ip);
    }
    for (placeholder, network) in [
        ("{scan_gateway}", network_of(NetworkRole::Scan)),
        ("{egress_gateway}", network_of(NetworkRole::Egress)),
        // Docker's default bridge (docker0): the host's address every engine has.
        ("{bridge_gateway}", "bridge".to_string()),
    ] {
        if filled.contains(placeholder) {
            let gateway = network::gateway(docker, &network).await?;
            filled = filled.replace(placeholder, &gateway);
        }
    }
    if filled.contains("{host_ip}") {
        filled = filled.replace("{host_ip}", &network::host_address()?);
    }
    if let Some(listener) = listener {
        filled = filled.replace(host_listener::PORT_PLACEHOLDER, &listener.port.to_string());
    }
    Ok(filled)
}

/// Another bottle up at the same time (ISOLATION): a pool bottle other than the case's, used
/// as it is (only addresses are read from it), or else one brought up for the case.
pub(crate) struct Neighbour {
    pub(crate) chain: Chain,
    owned: bool,
}

impl Neighbour {
    pub(crate) async fn find(mine: &Chain) -> Result<Neighbour> {
        let docker = mine.docker();
        let images = images::ensure(docker).await?;
        if let Some(pool) = Pool::from_env() {
            let names = pool.names()?;
            if let Some(other) = names.iter().find(|name| **name != mine.plan.name) {
                let chain = Chain::attach(docker, &images, other, &ChainOptions::default()).await?;
                return Ok(Neighbour {
                    chain,
                    owned: false,
                });
            }
        }
        let chain = Chain::up(docker, &images, ChainOptions::default()).await?;
        Ok(Neighbour { chain, owned: true })
    }

    pub(crate) async fn let_go(self) -> Result<()> {
        match self.owned {
            true => self.chain.down().await,
            false => Ok(()),
        }
    }
}

/// The neighbour's addresses: its mitmproxy on its two networks, its scanner, and the gateways
/// of its networks (the host's side, where it has one). Its agent has none: no network.
async fn fill_neighbour(url: &str, neighbour: &Chain) -> Result<String> {
    let docker = neighbour.docker();
    let plan = &neighbour.plan;
    let mut filled = url.to_string();
    for (placeholder, network, role) in [
        ("{neighbour_mitm_ip}", NetworkRole::Scan, Role::Mitm),
        (
            "{neighbour_mitm_egress_ip}",
            NetworkRole::Egress,
            Role::Mitm,
        ),
        ("{neighbour_scanner_ip}", NetworkRole::Scan, Role::Scanner),
    ] {
        if filled.contains(placeholder) {
            let network = &plan.network(network).name;
            let ip = network::ip(docker, network, &plan.container(role).name).await?;
            filled = filled.replace(placeholder, &ip);
        }
    }
    for (placeholder, network) in [
        ("{neighbour_scan_gateway}", NetworkRole::Scan),
        ("{neighbour_egress_gateway}", NetworkRole::Egress),
    ] {
        if filled.contains(placeholder) {
            let gateway = network::gateway(docker, &plan.network(network).name).await?;
            filled = filled.replace(placeholder, &gateway);
        }
    }
    Ok(filled)
}

/// What the host listener heard, against `host_records` and the case's secret.
fn heard_on_host(s: &Scenario, heard: &[Value]) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(expected) = s.expect.host_records
        && heard.len() != expected as usize
    {
        failures.push(format!(
            "the host's listener expected {expected} connections or datagrams, got {}: {heard:?}",
            heard.len()
        ));
    }
    if let Some(secret) = &s.expect.secret {
        let secret = secret.to_ascii_lowercase();
        for record in heard {
            if record["bytes"]
                .as_str()
                .is_some_and(|bytes| bytes.to_ascii_lowercase().contains(&secret))
            {
                failures.push(format!("the secret reached the host: {record}"));
            }
        }
    }
    failures
}

fn probe_evidence(result: &ProbeResult) -> Value {
    let body = String::from_utf8_lossy(&result.body);
    let shown: String = body.chars().take(2000).collect();
    json!({
        "client": result.client, "protocol": result.protocol, "status": result.status,
        "headers": result.headers, "body": shown, "alpn": result.alpn, "error": result.error,
        "elapsed_ms": result.elapsed_ms, "chunks": result.chunks,
    })
}

/// Every expectation of the scenario that the evidence does not meet.
pub fn check(
    s: &Scenario,
    result: &ProbeResult,
    decision: Option<&Value>,
    events: &[Value],
    records: &[Value],
) -> Vec<String> {
    let e = &s.expect;
    let mut failures = Vec::new();
    let mut fail = |text: String| failures.push(text);
    let body = String::from_utf8_lossy(&result.body).into_owned();
    let answer = || {
        format!(
            "status {:?}, error {:?}, body {:?}",
            result.status,
            result.error,
            body.chars().take(300).collect::<String>()
        )
    };

    if let Some(status) = e.status
        && result.status != Some(status)
    {
        fail(format!("expected status {status}, got {}", answer()));
    }
    if e.error && (result.status.is_some() || result.error.is_none()) {
        fail(format!("expected the client to fail, got {}", answer()));
    }
    if let Some(error) = result.error.as_deref().filter(|e| e.starts_with("probe:")) {
        // The probe itself broke: no client outcome, so no expectation can count as met.
        fail(format!("the probe did not run: {error}"));
    }
    if e.no_answer {
        let error = result
            .error
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if result.status.is_some() || ["refused", "reset"].iter().any(|w| error.contains(w)) {
            fail(format!(
                "expected no answer from the address, got {}",
                answer()
            ));
        }
    }
    if !e.error && e.status.is_none() && result.error.is_some() {
        fail(format!("the client failed: {}", answer()));
    }
    for needle in &e.body_contains {
        if !body.contains(needle.as_str()) {
            fail(format!("the body lacks {needle:?}: {}", answer()));
        }
    }
    for (name, value) in &e.headers {
        if result.header(name) != Some(value.as_str()) {
            fail(format!(
                "header {name}: expected {value:?}, got {:?}",
                result.header(name)
            ));
        }
    }
    if e.body_equals_upstream {
        match upstream_route_for(s) {
            Some(route) => {
                if result.status != Some(route.status) {
                    fail(format!(
                        "the upstream sent {}, the client got {}",
                        route.status,
                        answer()
                    ));
                }
                let sent = route.body.clone().unwrap_or_default();
                if body != sent {
                    fail(format!(
                        "the body differs from the upstream's {sent:?}: {body:?}"
                    ));
                }
                for (name, value) in &route.headers {
                    if result.header(name) != Some(value.as_str()) {
                        fail(format!(
                            "the upstream's header {name}: {value:?} arrived as {:?}",
                            result.header(name)
                        ));
                    }
                }
            }
            None => fail("body_equals_upstream needs an upstream route for the URL".into()),
        }
    }

    let requests: Vec<&Value> = records.iter().filter(|r| r["kind"] == "request").collect();
    if let Some(count) = e.upstream_requests
        && requests.len() != count as usize
    {
        fail(format!(
            "expected {count} upstream receipts, got {}: {:?}",
            requests.len(),
            requests
                .iter()
                .map(|r| format!("{} {} port {}", r["method"], r["path"], r["port"]))
                .collect::<Vec<_>>()
        ));
    }
    if let Some(count) = e.upstream_records
        && records.len() != count as usize
    {
        fail(format!(
            "expected {count} upstream records of any kind, got {}: {:?}",
            records.len(),
            records.iter().map(describe_record).collect::<Vec<_>>()
        ));
    }
    // On every case: what left is what was judged (below), whatever the scenario expects.
    if let Some(d) = decision {
        for mismatch in judged_vs_sent(d, &requests) {
            fail(format!(
                "what left differs from what was judged: {mismatch}"
            ));
        }
    }
    if let Some(authority) = &e.upstream_authority {
        let seen: Vec<&Value> = requests.iter().map(|r| &r["authority"]).collect();
        if seen.is_empty() || seen.iter().any(|a| a.as_str() != Some(authority.as_str())) {
            fail(format!(
                "expected every upstream receipt for {authority:?}, got {seen:?}"
            ));
        }
    }
    if e.upstream_receives_request {
        let sent = s
            .request
            .as_ref()
            .and_then(|r| r.body_bytes().ok().flatten())
            .unwrap_or_default();
        let url = s
            .request
            .as_ref()
            .map(|r| r.url.as_str())
            .unwrap_or_default();
        let path = url
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
        match requests.as_slice() {
            [one] => {
                let method = s
                    .request
                    .as_ref()
                    .map(|r| r.method.as_str())
                    .unwrap_or("GET");
                if one["method"] != method || one["path"] != path.as_str() {
                    fail(format!(
                        "the upstream got {} {}, not {method} {path}",
                        one["method"], one["path"]
                    ));
                }
                // The record keeps a large body's length and hash only.
                let sent_sha256 = hex::encode(Sha256::digest(&sent));
                if one["body_len"] != sent.len() || one["body_sha256"] != sent_sha256.as_str() {
                    fail(format!(
                        "the upstream got a body of {} bytes that differs from the {} sent",
                        one["body_len"],
                        sent.len()
                    ));
                }
            }
            other => fail(format!(
                "expected one upstream receipt to compare, got {}",
                other.len()
            )),
        }
    }
    if let Some(secret) = &e.secret
        && let Some(record) = records.iter().find(|r| mentions(r, secret))
    {
        fail(format!(
            "the secret reached an upstream (port {}): {record}",
            record["port"]
        ));
    }
    if let Some(alpn) = &e.alpn {
        if let Some(client) = alpn.client {
            let wanted = alpn_name(client);
            if result.alpn.as_deref() != Some(wanted) {
                fail(format!(
                    "ALPN agent↔mitmproxy: expected {wanted}, got {:?}",
                    result.alpn
                ));
            }
        }
        if let Some(upstream) = alpn.upstream {
            let wanted = alpn_name(upstream);
            let seen: Vec<&str> = requests.iter().filter_map(|r| r["alpn"].as_str()).collect();
            if seen.is_empty() || seen.iter().any(|a| *a != wanted) {
                fail(format!(
                    "ALPN mitmproxy↔upstream: expected {wanted}, the upstream recorded {seen:?}"
                ));
            }
            let version = if wanted == "h2" {
                "HTTP/2.0"
            } else {
                "HTTP/1.1"
            };
            let recorded = decision.map(|d| &d["http_version"]["upstream"]);
            if recorded.and_then(Value::as_str) != Some(version) {
                fail(format!(
                    "the decision record says upstream {recorded:?}, expected {version}"
                ));
            }
        }
    }
    if let Some(expected) = &e.decision {
        match decision {
            None => fail("no decision record".into()),
            Some(d) => {
                if let Some(verdict) = expected.verdict {
                    let wanted = serde_json::to_value(verdict).unwrap_or_default();
                    if d["verdict"] != wanted {
                        fail(format!(
                            "decision verdict {} (expected {wanted})",
                            d["verdict"]
                        ));
                    }
                }
                if let Some(by) = expected.decided_by {
                    let wanted = serde_json::to_value(by).unwrap_or_default();
                    if d["decided_by"] != wanted {
                        fail(format!(
                            "decided_by {} (expected {wanted})",
                            d["decided_by"]
                        ));
                    }
                }
                if let Some(needle) = &expected.reason_contains
                    && !d["reason"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(needle.as_str())
                {
                    fail(format!("decision reason {} lacks {needle:?}", d["reason"]));
                }
            }
        }
    }
    if let Some(fields) = &e.pipelock_event {
        let matches = |event: &Value| fields.iter().all(|(k, v)| &event[k] == v);
        if !events.iter().any(matches) {
            fail(format!(
                "no scanner event joined on the request id has {fields:?}; joined: {events:?}"
            ));
        }
    }
    if let Some(stream) = &e.stream {
        let chunks: Vec<f64> = result
            .chunks
            .iter()
            .filter(|c| c.len > 0)
            .map(|c| c.at_ms)
            .collect();
        let wanted = stream.chunks_at_least.unwrap_or(0) as usize;
        if chunks.len() < wanted {
            fail(format!(
                "expected at least {wanted} body chunks as they were sent, got {}: {chunks:?}",
                chunks.len()
            ));
        } else if let (Some(lag), Some(interval)) = (stream.max_lag_ms, stream.interval_ms) {
            for (k, at) in chunks.iter().take(wanted).enumerate() {
                let due = chunks[0] + (k as u64 * interval) as f64;
                if (at - due).abs() > lag as f64 {
                    fail(format!(
                        "event {k} arrived at {at:.0} ms, {:.0} ms from when it was sent \
                         (allowed {lag} ms): {chunks:?}",
                        at - due
                    ));
                    break;
                }
            }
        }
    }
    failures
}

/// The bytes judged are the bytes that leave (addon/README.md, "one builder"): for an allowed
/// request that reached the upstream once, its receipt matches, field by field, the request the
/// decision record says was judged: method, target, authority, TLS server name, every header
/// (names lowercased, repeats grouped as the upstream fixture records them; a hidden bound
/// credential's value is not logged, so only its name is compared) and the body's sha256.
pub fn judged_vs_sent(decision: &Value, requests: &[&Value]) -> Vec<String> {
    let judged = &decision["judged"];
    let ([one], false) = (requests, judged.is_null()) else {
        return Vec::new();
    };
    if decision["verdict"] != "allow" {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut differs = |field: &str, judged: &Value, sent: &Value| {
        if judged != sent {
            out.push(format!("{field}: judged {judged}, sent {sent}"));
        }
    };
    differs("method", &judged["method"], &one["method"]);
    differs("target", &judged["target"], &one["path"]);
    differs("authority", &judged["authority"], &one["authority"]);
    differs("body sha256", &judged["body_sha256"], &one["body_sha256"]);
    if one["tls"] == true {
        let host = judged["authority"].as_str().map(|a| {
            a.rsplit_once(':')
                .map_or(a, |(h, p)| if p.parse::<u16>().is_ok() { h } else { a })
        });
        differs("TLS server name", &json!(host), &one["sni"]);
        // The ALPN offers are the chain's fixed list, never the agent's (addon/README.md).
        let offers = &one["alpn_offers"];
        if !offers.is_null()
            && *offers != json!(["h2", "http/1.1"])
            && *offers != json!(["http/1.1"])
        {
            out.push(format!(
                "ALPN offers: sent {offers}, not the chain's own list"
            ));
        }
    }
    let grouped = |pairs: Vec<(String, Value)>| {
        let mut order: Vec<String> = Vec::new();
        for (name, _) in &pairs {
            if !order.contains(name) {
                order.push(name.clone());
            }
        }
        order
            .iter()
            .flat_map(|n| pairs.iter().filter(move |(m, _)| m == n).cloned())
            .collect::<Vec<_>>()
    };
    let pairs = |v: &Value| -> Vec<(String, Value)> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap_or_default().to_lowercase(),
                            p[1].clone(),
                        )
                    })
                    .filter(|(name, _)| name != "host")
                    .collect()
            })
            .unwrap_or_default()
    };
    out.extend(judged_vs_wire(judged, &one["wire"]));
    let judged_headers = grouped(pairs(&judged["headers"]));
    let sent_headers = grouped(pairs(&one["headers"]));
    let same = judged_headers.len() == sent_headers.len()
        && judged_headers
            .iter()
            .zip(&sent_headers)
            .all(|((jn, jv), (sn, sv))| jn == sn && (jv.is_null() || jv == sv));
    if !same {
        out.push(format!(
            "headers: judged {judged_headers:?}, sent {sent_headers:?}"
        ));
    }
    out
}

/// The head as it arrived on the wire is exactly the one the chain writes from what was judged.
/// HTTP/1: `METHOD target HTTP/1.1`, `Host` first, then the judged headers in their order and
/// spelling (a bound credential's value aside), framed by Content-Length or nothing. h2: the
/// four pseudo-headers with the judged values, first, then the judged headers in order,
/// lowercase.
fn judged_vs_wire(judged: &Value, wire: &Value) -> Vec<String> {
    if wire.is_null() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let judged_headers = judged["headers"].as_array().cloned().unwrap_or_default();
    let mut sent = wire["headers"].as_array().cloned().unwrap_or_default();
    let mut expected = Vec::new();
    if wire["request_line"].is_null() {
        let pseudo = sent
            .iter()
            .take_while(|h| h[0].as_str().is_some_and(|n| n.starts_with(':')))
            .count();
        let mut sent_pseudo: Vec<Value> = sent.drain(..pseudo).collect();
        sent_pseudo.sort_by_key(|h| h[0].to_string());
        let mut judged_pseudo = vec![
            json!([":authority", judged["authority"]]),
            json!([":method", judged["method"]]),
            json!([":path", judged["target"]]),
            json!([":scheme", "https"]),
        ];
        judged_pseudo.sort_by_key(|h| h[0].to_string());
        if sent_pseudo != judged_pseudo {
            out.push(format!(
                "pseudo-headers on the wire: {}, judged {}",
                json!(sent_pseudo),
                json!(judged_pseudo)
            ));
        }
        expected.extend(
            judged_headers
                .iter()
                .map(|h| json!([h[0].as_str().unwrap_or_default().to_lowercase(), h[1]])),
        );
    } else {
        let line = format!(
            "{} {} HTTP/1.1",
            judged["method"].as_str().unwrap_or_default(),
            judged["target"].as_str().unwrap_or_default()
        );
        if wire["request_line"] != json!(line) {
            out.push(format!(
                "request line on the wire: {}, judged {line:?}",
                wire["request_line"]
            ));
        }
        expected.push(json!(["Host", judged["authority"]]));
        expected.extend(judged_headers);
    }
    let same = expected.len() == sent.len()
        && expected
            .iter()
            .zip(&sent)
            .all(|(j, s)| j[0] == s[0] && (j[1].is_null() || j[1] == s[1]));
    if !same {
        out.push(format!(
            "headers on the wire: {}, judged {}",
            json!(sent),
            json!(expected)
        ));
    }
    let has_length = expected.iter().any(|h| {
        h[0].as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case("content-length"))
    });
    let framing = if has_length { "content-length" } else { "none" };
    if wire["framing"] != json!(framing) {
        out.push(format!(
            "framing on the wire: {}, the chain's is {framing}",
            wire["framing"]
        ));
    }
    out
}

fn alpn_name(alpn: scenario::Alpn) -> &'static str {
    match alpn {
        scenario::Alpn::H2 => "h2",
        scenario::Alpn::Http11 => "http/1.1",
    }
}

/// The scenario's upstream route that serves its request URL.
fn upstream_route_for(s: &Scenario) -> Option<&scenario::UpstreamRoute> {
    let url = &s.request.as_ref()?.url;
    let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}"))?;
    s.upstream
        .as_ref()?
        .routes
        .iter()
        .find(|r| path.split('?').next() == Some(r.path.as_str()))
}

/// One upstream record as a failure shows it: where it arrived and exactly what (the sink's
/// bytes as text when they are, else base64), cut at 400 characters.
fn describe_record(r: &Value) -> String {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let cut = |s: String| crate::report::cut_chars(&s, 400);
    match r["kind"].as_str() {
        Some("request") => format!(
            "request {} {} {} on port {} ({} body bytes{})",
            r["method"].as_str().unwrap_or("?"),
            r["authority"].as_str().unwrap_or("?"),
            cut(text(&r["path"]).unwrap_or_default()),
            r["port"],
            r["body_len"],
            text(&r["body"]).map_or(String::new(), |b| format!(": {:?}", cut(b)))
        ),
        Some("raw") => format!(
            "{} bytes by {} to {} (port {}){}: {}",
            r["body_len"],
            r["transport"].as_str().unwrap_or("?"),
            r["dst"].as_str().unwrap_or("a raw port"),
            r["port"],
            text(&r["sni"]).map_or(String::new(), |sni| format!(", TLS server name {sni:?}")),
            text(&r["body"]).map_or_else(
                || format!(
                    "base64 {}",
                    cut(text(&r["body_base64"]).unwrap_or_default())
                ),
                |b| format!("{:?}", cut(b))
            )
        ),
        _ => format!(
            "{} on port {}: {}",
            r["kind"],
            r["port"],
            cut(r.to_string())
        ),
    }
}

/// Whether an upstream record carries the secret anywhere: path, headers or body (also base64).
fn mentions(record: &Value, secret: &str) -> bool {
    use base64::Engine;
    if contains_secret(&record.to_string(), secret) {
        return true;
    }
    record["body_base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|bytes| contains_secret(&String::from_utf8_lossy(&bytes), secret))
}

/// ASCII case is ignored: a secret in a host name comes back lowercased.
fn contains_secret(text: &str, secret: &str) -> bool {
    text.to_ascii_lowercase()
        .contains(&secret.to_ascii_lowercase())
}

/// The chain writes no secret of a request into any line of its logs (addon/README.md): checked
/// on every case that names its secret, whatever the verdict.
pub fn secret_in_chain_logs(s: &Scenario, lines: &[String]) -> Vec<String> {
    let Some(secret) = &s.expect.secret else {
        return Vec::new();
    };
    lines
        .iter()
        .filter(|line| contains_secret(line, secret))
        .take(3)
        .map(|line| format!("the secret is in a line the chain logged: {line}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_the_sink_shows_where_its_bytes_went_and_what_they_were() {
        let text = describe_record(&json!({"kind": "raw", "port": 22, "transport": "tcp",
            "dst": "10.0.0.2:22", "body_len": 6, "body": "leak\r\n", "body_base64": null}));
        assert_eq!(
            text,
            r#"6 bytes by tcp to 10.0.0.2:22 (port 22): "leak\r\n""#
        );
        let hello = describe_record(&json!({"kind": "raw", "port": 8443, "transport": "tcp",
            "dst": "10.0.0.2:8443", "sni": "x.example", "body_len": 2, "body": null,
            "body_base64": "FgM="}));
        assert!(
            hello.contains(r#"TLS server name "x.example": base64 FgM="#),
            "{hello}"
        );
        let long = describe_record(&json!({"kind": "raw", "port": 1, "transport": "udp",
            "body_len": 1000, "body": "a".repeat(1000)}));
        assert!(long.ends_with("…\""), "{long}");
        assert!(long.contains("to a raw port"), "{long}");
    }

    fn allowed(headers: Value) -> Value {
        json!({"verdict": "allow", "judged": {
            "method": "POST", "target": "/v1?q=1", "authority": "example.com",
            "headers": headers, "body_sha256": "ab", "body_len": 2}})
    }

    fn receipt(headers: Value) -> Value {
        json!({"kind": "request", "method": "POST", "path": "/v1?q=1", "authority": "example.com",
               "tls": true, "sni": "example.com", "headers": headers, "body_sha256": "ab"})
    }

    #[test]
    fn an_equal_receipt_has_no_mismatch_and_repeats_group_as_the_fixture_records_them() {
        let judged = allowed(json!([
            ["X-A", "1"],
            ["x-b", "2"],
            ["X-A", "3"],
            ["x-key", null]
        ]));
        let sent = receipt(json!([
            ["host", "example.com"],
            ["x-a", "1"],
            ["x-a", "3"],
            ["x-b", "2"],
            ["x-key", "secret"]
        ]));
        assert_eq!(judged_vs_sent(&judged, &[&sent]), Vec::<String>::new());
    }

    #[test]
    fn every_field_that_differs_is_named() {
        let judged = allowed(json!([["x-a", "1"]]));
        let mut sent = receipt(json!([["x-a", "1"], ["x-pipelock-agent", "AKIA"]]));
        assert!(judged_vs_sent(&judged, &[&sent])[0].starts_with("headers"));
        sent["headers"] = json!([["x-a", "1"]]);
        sent["authority"] = json!("ExAmPlE.com.");
        sent["method"] = json!("AKIA");
        sent["sni"] = json!("other.example");
        sent["alpn_offers"] = json!(["http/1.1", "AKIA"]);
        let found = judged_vs_sent(&judged, &[&sent]);
        for field in ["method", "authority", "TLS server name", "ALPN offers"] {
            assert!(
                found.iter().any(|f| f.starts_with(field)),
                "{field}: {found:?}"
            );
        }
    }

    #[test]
    fn the_wire_head_must_be_the_judged_one_in_order_and_spelling() {
        let judged = allowed(json!([
            ["X-A", "1"],
            ["x-key", null],
            ["content-length", "2"]
        ]));
        let mut sent = receipt(json!([
            ["x-a", "1"],
            ["x-key", "k"],
            ["content-length", "2"]
        ]));
        sent["wire"] = json!({
            "request_line": "POST /v1?q=1 HTTP/1.1",
            "headers": [["Host", "example.com"], ["X-A", "1"], ["x-key", "k"], ["content-length", "2"]],
            "framing": "content-length"});
        assert_eq!(judged_vs_sent(&judged, &[&sent]), Vec::<String>::new());
        let mut bent = sent.clone();
        bent["wire"]["request_line"] = json!("POST http://example.com/v1?q=1 HTTP/1.1");
        bent["wire"]["headers"][1][0] = json!("x-a");
        bent["wire"]["framing"] = json!("chunked");
        let found = judged_vs_sent(&judged, &[&bent]);
        for field in ["request line", "headers on the wire", "framing"] {
            assert!(
                found.iter().any(|f| f.starts_with(field)),
                "{field}: {found:?}"
            );
        }
    }

    #[test]
    fn an_h2_wire_head_is_the_judged_pseudo_headers_then_the_judged_headers() {
        let judged = allowed(json!([["X-A", "1"], ["content-length", "2"]]));
        let mut sent = receipt(json!([["x-a", "1"], ["content-length", "2"]]));
        sent["wire"] = json!({"request_line": null, "framing": "content-length", "headers": [
            [":method", "POST"], [":scheme", "https"], [":path", "/v1?q=1"],
            [":authority", "example.com"], ["x-a", "1"], ["content-length", "2"]]});
        assert_eq!(judged_vs_sent(&judged, &[&sent]), Vec::<String>::new());
        let mut bent = sent.clone();
        bent["wire"]["headers"][1][1] = json!("AKIA");
        bent["wire"]["headers"][4][0] = json!("x-b");
        let found = judged_vs_sent(&judged, &[&bent]);
        for field in ["pseudo-headers", "headers on the wire"] {
            assert!(
                found.iter().any(|f| f.starts_with(field)),
                "{field}: {found:?}"
            );
        }
    }

    #[test]
    fn blocked_or_unrecorded_requests_are_not_compared() {
        let mut judged = allowed(json!([]));
        let sent = receipt(json!([["x-a", "1"]]));
        judged["verdict"] = json!("block");
        assert!(judged_vs_sent(&judged, &[&sent]).is_empty());
        assert!(judged_vs_sent(&json!({"verdict": "allow"}), &[&sent]).is_empty());
    }
}
