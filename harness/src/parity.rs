//! P10, one case: the scanner's verdict on the case's request sent to it in plaintext, as the
//! addon asks (verdict A), against the chain's on the same request sent by a client inside the
//! agent over HTTPS (verdict B). They agree when the verdict is the same and, when blocked, the
//! client got the scanner's status and block text.

use anyhow::{Context, Result};
use bottle::plan::{Role, SCANNER_PORT};
use pipelock_double::fidelity::{self, Row};
use serde_json::{Value, json};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::chain::Chain;
use crate::corpus::CLIENTS;
use crate::probe::{Client, ProbeResult, Protocol};
use crate::report::{CaseResult, Outcome, cell, one_line};
use crate::scenario::{Request, Scenario};

/// pipelock's answer when every request-side check passed and its own fetch failed (it has no
/// route): the one answer that means "allowed" (addon/bottle_addon/verdict.py).
const ALLOW_BODY: &str = "forward proxy fetch failed";

/// Sends stdin to the scanner and prints its whole answer, base64 (run in mitmproxy's
/// container, the scanner's one neighbour).
const ASK: &str = "import base64, socket, sys
data = sys.stdin.buffer.read()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(data)
out = b''
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    out += chunk
sys.stdout.write(base64.b64encode(out).decode())
";

/// What the chain strips from both the judged and the sent request (canonical.py `STRIPPED`,
/// plus the names `Connection` lists): framing and hop-by-hop headers, which it writes itself.
const STRIPPED: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    "content-length",
    "x-pipelock-agent",
];

/// What a scanner's answer means: `allow`, `block`, or `no verdict`.
pub fn scanner_verdict(status: u16, body: &str) -> &'static str {
    match status {
        502 if body.trim() == ALLOW_BODY => "allow",
        403 => "block",
        _ => "no verdict",
    }
}

/// The request as the addon puts it to the scanner (scanner.py `build_request`): absolute
/// form, Host, the headers, their names in `X-Bottle-Header-Names`, Content-Length; a HEAD asked
/// as GET. `agent` is its `X-Pipelock-Agent`, which joins the scanner's events.
pub fn addon_row(request: &Request, agent: &str) -> Result<Row> {
    let body = request.body_bytes()?.unwrap_or_default();
    let listed: Vec<String> = request
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .collect();
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !STRIPPED.contains(&lower.as_str()) && !listed.contains(&lower)
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
    if !names.is_empty() {
        headers.push(("X-Bottle-Header-Names".into(), names.join(", ")));
    }
    use base64::Engine;
    Ok(Row {
        id: agent.to_string(),
        category: "PARITY".into(),
        detector: None,
        method: match request.method.as_str() {
            "HEAD" => "GET".into(),
            other => other.to_string(),
        },
        url: request.url.clone(),
        headers,
        body: None,
        body_base64: Some(base64::engine::general_purpose::STANDARD.encode(&body)),
        note: None,
    })
}

/// Verdict A: `request` put to the chain's scanner in plaintext from mitmproxy's container.
async fn ask_scanner(chain: &Chain, request: &Request) -> Result<Value> {
    use base64::Engine;
    let agent = crate::run::unique("parity");
    let row = addon_row(request, &agent)?;
    let scanner = chain.plan.container(Role::Scanner).name.clone();
    let port = SCANNER_PORT.to_string();
    let out = crate::exec::exec_with_input(
        chain.docker(),
        chain.id(Role::Mitm),
        None,
        &["python3", "-c", ASK, &scanner, &port],
        &fidelity::request_bytes(&row),
    )
    .await?;
    anyhow::ensure!(
        out.code == 0,
        "asking the scanner directly failed ({}): {}",
        out.code,
        out.stderr
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(out.stdout.trim())
        .context("the scanner's answer")?;
    let answer = fidelity::parse_response(&agent, &raw);
    // The event is logged as the answer is written: give the log a moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let events: Vec<Value> = chain
        .scanner_events()
        .await?
        .into_iter()
        .filter(|e| e["agent"] == agent.as_str())
        .collect();
    Ok(json!({
        "verdict": scanner_verdict(answer.status, &answer.body),
        "status": answer.status,
        "body": answer.body,
        "events": events,
    }))
}

/// Asks the scanner (A), compares with what the chain did (B); the unmet part (empty: they
/// agree) and the evidence: both answers side by side, and the corpus's expectation.
pub async fn check(
    chain: &Chain,
    s: &Scenario,
    request: &Request,
    result: &ProbeResult,
    decision: Option<&Value>,
) -> Result<(Vec<String>, Value)> {
    let scanner = ask_scanner(chain, request).await?;
    let chain_side = json!({
        "verdict": decision.map_or(Value::Null, |d| d["verdict"].clone()),
        "decided_by": decision.map_or(Value::Null, |d| d["decided_by"].clone()),
        "status": result.status,
        "body": result.text(),
    });
    let unmet = disagreements(&scanner, &chain_side);
    let corpus = s.corpus.as_ref();
    let evidence = json!({
        "scanner": scanner,
        "chain": chain_side,
        "agree": unmet.is_empty(),
        "category": corpus.map(|c| c.category.clone()),
        "expected_verdict": corpus.map(|c| c.expected_verdict.clone()),
    });
    Ok((unmet, evidence))
}

/// Where B is not A: the verdict, then (blocked) the status and the block text.
pub fn disagreements(scanner: &Value, chain: &Value) -> Vec<String> {
    let mut unmet = Vec::new();
    if chain["verdict"] != scanner["verdict"] {
        unmet.push(format!(
            "parity: the scanner in plaintext said {} ({} {:?}), the chain said {} ({} {:?})",
            scanner["verdict"],
            scanner["status"],
            scanner["body"].as_str().unwrap_or_default().trim(),
            chain["verdict"],
            chain["status"],
            chain["body"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        ));
    } else if scanner["verdict"] == "block" {
        if chain["status"] != scanner["status"] {
            unmet.push(format!(
                "parity: blocked with status {} by the chain, {} by the scanner",
                chain["status"], scanner["status"]
            ));
        }
        if chain["body"] != scanner["body"] {
            unmet.push(format!(
                "parity: the chain's block text {:?} is not the scanner's {:?}",
                chain["body"], scanner["body"]
            ));
        }
    }
    unmet
}

/// The report's PARITY section: agreement per corpus category × client × protocol, every
/// disagreement with both answers side by side, and the scanner against the corpus's own
/// expectation (information about the scanner, not the chain).
pub fn report_section(results: &[CaseResult]) -> String {
    let parity: Vec<&CaseResult> = results.iter().filter(|r| r.corpus.is_some()).collect();
    if parity.is_empty() {
        return String::new();
    }
    let columns: Vec<(Client, Protocol)> = CLIENTS
        .into_iter()
        .flat_map(|c| Protocol::ALL.into_iter().map(move |p| (c, p)))
        .collect();
    let ids: BTreeSet<&str> = parity.iter().map(|r| r.id.as_str()).collect();
    let generated: BTreeSet<&str> = parity
        .iter()
        .filter(|r| r.corpus.as_ref().is_some_and(|c| c.category == "generated"))
        .map(|r| r.id.as_str())
        .collect();
    let ran: Vec<&&CaseResult> = parity
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Pass | Outcome::Fail))
        .collect();
    let agree = ran.iter().filter(|r| r.outcome == Outcome::Pass).count();
    let mut out = String::from("## PARITY (P10): the chain decides what the scanner decides\n\n");
    let _ = writeln!(
        out,
        "{} corpus cases and {} generated requests; {} runs over HTTPS through the bottle: \
         {agree} agree with the scanner asked in plaintext, {} do not; {} not run (below, \"Not \
         passing\").\n",
        ids.len() - generated.len(),
        generated.len(),
        ran.len(),
        ran.len() - agree,
        parity.len() - ran.len()
    );
    let _ = write!(out, "| category | cases |");
    for (c, p) in &columns {
        let _ = write!(out, " {c} {p} |");
    }
    let _ = writeln!(out, "\n|---|--:|{}", ":-:|".repeat(columns.len()));
    let mut by_category: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for r in &parity {
        let category = r.corpus.as_ref().map_or("", |c| c.category.as_str());
        by_category.entry(category).or_default().push(r);
    }
    for (name, results) in &by_category {
        let cases: BTreeSet<&str> = results.iter().map(|r| r.id.as_str()).collect();
        let _ = write!(out, "| {} | {} |", cell(name), cases.len());
        for (c, p) in &columns {
            let of: Vec<&&CaseResult> = results
                .iter()
                .filter(|r| r.client == *c && r.protocol == *p)
                .collect();
            let ran = of
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Pass | Outcome::Fail))
                .count();
            let agreed = of.iter().filter(|r| r.outcome == Outcome::Pass).count();
            let text = match (of.len(), ran) {
                (0, _) => String::new(),
                (_, 0) => "n/a".into(),
                _ => format!("{agreed}/{ran}"),
            };
            let _ = write!(out, " {text} |");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "\nA cell: runs that agree / runs; n/a: not run (its reason is below).\n"
    );
    let side = |v: &Value| {
        format!(
            "{} {} {}",
            v["verdict"].as_str().unwrap_or("?"),
            v["status"],
            cell(&one_line(
                v["body"].as_str().unwrap_or_default().trim(),
                120
            ))
        )
    };
    let disagreeing: Vec<&CaseResult> = ran
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .map(|r| **r)
        .collect();
    if !disagreeing.is_empty() {
        let _ = writeln!(
            out,
            "### Disagreements\n\n| case | the scanner, in plaintext | the chain, over HTTPS |\n|---|---|---|"
        );
        for r in disagreeing {
            let p = &r.evidence["parity"];
            let (scanner, chain) = match p.is_null() {
                true => (
                    "(not asked)".to_string(),
                    cell(r.reason.as_deref().unwrap_or_default()),
                ),
                false => (side(&p["scanner"]), side(&p["chain"])),
            };
            let _ = writeln!(out, "| `{}` | {scanner} | {chain} |", r.name);
        }
        let _ = writeln!(out);
    }
    // One line per case: the scanner's verdict is the same whichever client ran it.
    let mut expected: BTreeMap<&str, (&str, String)> = BTreeMap::new();
    for r in &ran {
        let said = r.evidence["parity"]["scanner"]["verdict"].as_str();
        if let (Some(info), Some(said)) = (&r.corpus, said)
            && !info.expected_verdict.is_empty()
        {
            expected
                .entry(r.id.as_str())
                .or_insert((info.expected_verdict.as_str(), said.to_string()));
        }
    }
    let unexpected: Vec<_> = expected.iter().filter(|(_, (e, s))| e != s).collect();
    let _ = writeln!(
        out,
        "The scanner against the corpus's `expected_verdict` (about the scanner, not the chain): \
         {} of {} cases as expected.\n",
        expected.len() - unexpected.len(),
        expected.len()
    );
    if !unexpected.is_empty() {
        let _ = writeln!(out, "| case | expected | the scanner said |\n|---|---|---|");
        for (id, (e, s)) in unexpected {
            let _ = writeln!(out, "| {} | {e} | {s} |", cell(id));
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_failed_fetch_means_allowed() {
        assert_eq!(
            scanner_verdict(502, "forward proxy fetch failed\n"),
            "allow"
        );
        assert_eq!(scanner_verdict(502, "bad gateway"), "no verdict");
        assert_eq!(
            scanner_verdict(403, "blocked: request body contains secret: X\n"),
            "block"
        );
        assert_eq!(scanner_verdict(0, ""), "no verdict");
    }

    #[test]
    fn a_verdict_status_or_block_text_that_differs_is_a_disagreement() {
        let blocked = json!({"verdict": "block", "status": 403, "body": "blocked: x\n"});
        assert!(disagreements(&blocked, &blocked).is_empty());
        let allowed =
            json!({"verdict": "allow", "status": 502, "body": "forward proxy fetch failed\n"});
        let passed = json!({"verdict": "allow", "status": 200, "body": "ok"});
        assert!(disagreements(&allowed, &passed).is_empty());
        assert_eq!(disagreements(&blocked, &passed).len(), 1);
        assert_eq!(disagreements(&allowed, &blocked).len(), 1);
        let other_text = json!({"verdict": "block", "status": 403, "body": "blocked: y\n"});
        assert_eq!(disagreements(&blocked, &other_text).len(), 1);
        let other_status = json!({"verdict": "block", "status": 502, "body": "blocked: x\n"});
        assert_eq!(disagreements(&blocked, &other_status).len(), 1);
    }

    #[test]
    fn the_report_counts_agreement_per_category_and_lists_each_disagreement_with_both_answers() {
        let scenarios = crate::corpus::scenarios(&[crate::corpus::default_dir()]).unwrap();
        let cases = crate::scenario::expand(&scenarios);
        let blocked = json!({"verdict": "block", "status": 403, "body": "blocked: x\n"});
        let allowed = json!({"verdict": "allow", "status": 200, "body": "ok"});
        let results: Vec<CaseResult> = cases
            .iter()
            .filter(|c| c.scenario.id == "PARITY-header-dlp-bearer-001")
            .map(|c| {
                let settled = c.settled(false);
                let agree = c.client != Client::Node;
                let outcome = match (&settled, agree) {
                    (Some((o, _)), _) => *o,
                    (None, true) => Outcome::Pass,
                    (None, false) => Outcome::Fail,
                };
                let mut r = CaseResult::new(c, outcome, settled.map(|s| s.1));
                r.evidence = json!({"parity": {
                    "scanner": blocked,
                    "chain": if agree { &blocked } else { &allowed },
                }});
                r
            })
            .collect();
        let text = report_section(&results);
        assert!(
            text.contains("1 corpus cases and 0 generated requests; 7 runs"),
            "{text}"
        );
        assert!(text.contains("5 agree"), "{text}");
        assert!(
            text.contains("| headers | 1 | 1/1 | 1/1 | 0/1 | 0/1 | 1/1 | 1/1 | 1/1 | n/a |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| `PARITY-header-dlp-bearer-001::node::h1` | block 403 blocked: x | allow 200 ok |"
            ),
            "{text}"
        );
        assert!(text.contains("1 of 1 cases as expected"), "{text}");
        assert_eq!(report_section(&[]), "");
        let index = crate::report::Index::build(results, Vec::new());
        let times = index.time_by_family();
        assert!(times.contains("| PARITY | 7 |"), "{times}");
    }

    #[test]
    fn the_stripped_names_are_the_addon_s() {
        let path = crate::fixture_bins::workspace_root().join("addon/bottle_addon/canonical.py");
        let text = std::fs::read_to_string(path).unwrap();
        let set = text.split("STRIPPED = frozenset(").nth(1).unwrap();
        let set = &set[..set.find(')').unwrap()];
        let mut names: Vec<&str> = set
            .split("b\"")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect();
        names.sort();
        let mut ours = STRIPPED.to_vec();
        ours.sort();
        assert_eq!(names, ours);
    }

    #[test]
    fn the_scanner_is_asked_as_the_addon_asks() {
        let request = Request {
            headers: [
                ("X-Api-Key".to_string(), "k".to_string()),
                ("Transfer-Encoding".to_string(), "chunked".to_string()),
                ("Host".to_string(), "other.example".to_string()),
            ]
            .into(),
            ..Request::new("HEAD", "https://evil.example.com/x")
        };
        let text = String::from_utf8(fidelity::request_bytes(
            &addon_row(&request, "p-1").unwrap(),
        ))
        .unwrap();
        assert!(
            text.starts_with(
                "GET https://evil.example.com/x HTTP/1.1\r\nHost: evil.example.com\r\n"
            )
        );
        assert!(text.contains("X-Api-Key: k\r\nX-Bottle-Header-Names: X-Api-Key\r\n"));
        assert!(text.contains("X-Pipelock-Agent: p-1\r\n"));
        assert!(
            !text.contains("chunked") && !text.contains("other.example"),
            "{text}"
        );
    }
}
