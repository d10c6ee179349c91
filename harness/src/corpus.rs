//! PARITY's cases (P10): the agent-egress-bench corpus (`../shared/corpus/agent-egress-bench`)
//! and any directory of files in its schema (`BOTTLE_CORPUS`, `bottle-conformance --corpus
//! DIR`), each case made into one scenario `PARITY-<case id>` that every HTTP client runs over h1
//! and h2. The chain passes a case when it decides what the scanner decides on the same request
//! sent to it in plaintext (`runner::parity`); the corpus's own `expected_verdict` is about the
//! scanner and is reported beside it, never as the chain's result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scenario::{BottleOptions, Client, Expect, Property, Protocol, Request, Scenario};

/// More corpus directories, separated as `PATH` is (`bottle-conformance --corpus DIR` sets it).
pub const CORPUS_ENV: &str = "BOTTLE_CORPUS";

/// The shared corpus, beside the project's checkout.
pub fn default_dir() -> PathBuf {
    crate::fixture_bins::workspace_root().join("../shared/corpus/agent-egress-bench")
}

/// The corpora of this run: the shared one, then each of [`CORPUS_ENV`].
pub fn dirs() -> Vec<PathBuf> {
    let mut dirs = vec![default_dir()];
    if let Some(more) = std::env::var_os(CORPUS_ENV) {
        dirs.extend(std::env::split_paths(&more).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

/// What a PARITY scenario keeps of its corpus case, for the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusInfo {
    /// The case's file.
    pub file: String,
    pub category: String,
    /// What the corpus expects the scanner to decide (`block`, `allow`): information about the
    /// scanner, never the chain's result.
    pub expected_verdict: String,
}

/// The clients of a PARITY case: every HTTP client, h1 and h2.
pub const CLIENTS: [Client; 4] = [
    Client::Curl,
    Client::Node,
    Client::Python,
    Client::PythonStdlib,
];

/// One scenario per case of every directory; a directory that does not exist is an error but
/// for the shared corpus, which is then one UNIMPLEMENTED scenario saying where it was looked
/// for (a clone without `../shared`).
pub fn scenarios(dirs: &[PathBuf]) -> Result<Vec<Scenario>> {
    let mut cases = Vec::new();
    for (n, dir) in dirs.iter().enumerate() {
        if n == 0 && !dir.is_dir() {
            cases.push(missing(dir));
            continue;
        }
        for file in case_files(dir)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let case: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON case", file.display()))?;
            cases.push(scenario(&case, &file)?);
        }
    }
    // Every PARITY bottle answers for every host of the run: one bottle serves them all.
    let hosts: BTreeSet<String> = cases
        .iter()
        .filter(|s| s.not_applicable.is_none())
        .filter_map(|s| s.request.as_ref().and_then(|r| dns_host(&r.url)))
        .collect();
    for s in &mut cases {
        if let Some(bottle) = &mut s.bottle {
            bottle.upstream_hosts = hosts.iter().cloned().collect();
        }
    }
    let mut seen = BTreeMap::new();
    for s in &cases {
        if let Some(first) = seen.insert(s.id.clone(), s.source.clone()) {
            bail!(
                "two corpus cases are both {}: {} and {}",
                s.id,
                first.display(),
                s.source.display()
            );
        }
    }
    Ok(cases)
}

/// The `.json` files under `dir/cases` (or `dir` itself), sorted: the case files.
fn case_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!(
            "corpus {} is not a directory (give a directory of case files, as \
             agent-egress-bench/cases)",
            dir.display()
        );
    }
    let root = match dir.join("cases").is_dir() {
        true => dir.join("cases"),
        false => dir.to_path_buf(),
    };
    let mut files = Vec::new();
    let mut todo = vec![root];
    while let Some(dir) = todo.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn missing(dir: &Path) -> Scenario {
    let mut s = base("PARITY-corpus", "The shared corpus", dir);
    s.unimplemented = Some(format!(
        "the shared corpus is not at {}: clone the project beside `shared/`, or give a corpus \
         with --corpus DIR",
        dir.display()
    ));
    s
}

fn base(id: &str, title: &str, file: &Path) -> Scenario {
    Scenario {
        id: id.to_string(),
        title: title.to_string(),
        property: Property::P10,
        clients: CLIENTS.to_vec(),
        protocols: Protocol::ALL.to_vec(),
        needs: Default::default(),
        class: None,
        technique: None,
        unimplemented: None,
        not_applicable: None,
        corpus: None,
        request: None,
        upstream: None,
        bottle: None,
        faults: Vec::new(),
        expect: Expect::default(),
        source: file.to_path_buf(),
    }
}

/// The scenario of one case: its request when it is one an agent sends over HTTP, else
/// NOT-APPLICABLE with the reason.
fn scenario(case: &Value, file: &Path) -> Result<Scenario> {
    let text = |key: &str| case[key].as_str().map(str::to_string);
    let id = text("id").with_context(|| format!("{}: the case has no id", file.display()))?;
    let slug: String = id
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "-_.".contains(c) {
            true => c,
            false => '_',
        })
        .collect();
    let title = text("title").unwrap_or_else(|| id.clone());
    let mut s = base(&format!("PARITY-{slug}"), &title, file);
    s.corpus = Some(CorpusInfo {
        file: file.display().to_string(),
        category: text("category").unwrap_or_default(),
        expected_verdict: text("expected_verdict").unwrap_or_default(),
    });
    s.expect.parity = true;
    s.bottle = Some(BottleOptions {
        any_host: true,
        ..BottleOptions::default()
    });
    match request(case) {
        Ok(request) => s.request = Some(request),
        Err(reason) => {
            s.not_applicable = Some(reason);
            return Ok(s);
        }
    }
    let problems = crate::scenario::validate(&s);
    if !problems.is_empty() {
        s.not_applicable = Some(format!(
            "no HTTP client can send this request: {}",
            problems.join("; ")
        ));
    }
    Ok(s)
}

/// The request a case describes, or why it describes none the chain sees.
fn request(case: &Value) -> std::result::Result<Request, String> {
    let input_type = case["input_type"].as_str().unwrap_or("?");
    let payload = &case["payload"];
    let url = payload["url"].as_str().unwrap_or_default();
    let http = url.starts_with("https://") || url.starts_with("http://");
    if !http || !["url", "request_body", "header"].contains(&input_type) {
        return Err(format!(
            "not a request an agent sends over HTTP (input_type {input_type}, transport {}): \
             the chain asks the scanner about HTTP requests only",
            case["transport"].as_str().unwrap_or("?")
        ));
    }
    let mut headers = BTreeMap::new();
    if let Some(map) = payload["headers"].as_object() {
        for (name, value) in map {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.insert(name.clone(), value);
        }
    }
    if let Some(content_type) = payload["content_type"].as_str()
        && !headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
    {
        headers.insert("Content-Type".into(), content_type.to_string());
    }
    let body = match &payload["body"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let method = payload["method"].as_str().unwrap_or("GET");
    Ok(Request {
        headers,
        body,
        body_base64: payload["body_base64"].as_str().map(str::to_string),
        ..Request::new(&method.to_ascii_uppercase(), url)
    })
}

/// The URL's host when it is a DNS name (an address needs no name on the test internet).
pub fn dns_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.to_ascii_lowercase();
    let label = |l: &str| {
        !l.is_empty() && l.len() < 64 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let is_name = host.contains('.')
        && host.split('.').all(label)
        && !host.rsplit('.').next()?.bytes().all(|b| b.is_ascii_digit());
    is_name.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_corpus_makes_one_runnable_scenario_per_case() {
        let scenarios = scenarios(&[default_dir()]).unwrap();
        assert_eq!(
            scenarios.len(),
            19,
            "agent-egress-bench's request-body and headers cases"
        );
        for s in &scenarios {
            assert!(s.id.starts_with("PARITY-"), "{}", s.id);
            assert_eq!(s.not_applicable, None, "{}", s.id);
            assert!(crate::scenario::validate(s).is_empty(), "{}", s.id);
            let bottle = s.bottle.as_ref().unwrap();
            assert!(bottle.any_host);
            assert_eq!(
                bottle.upstream_hosts,
                ["api.github.com", "evil.example.com", "httpbin.org"]
            );
        }
        let multipart = scenarios
            .iter()
            .find(|s| s.id == "PARITY-body-dlp-multipart-002")
            .unwrap();
        let request = multipart.request.as_ref().unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.headers["Content-Type"],
            "multipart/form-data; boundary=----FormBoundary"
        );
        assert!(request.body.as_deref().unwrap().contains("ghp_"));
        assert_eq!(multipart.corpus.as_ref().unwrap().expected_verdict, "block");
    }

    #[test]
    fn a_case_that_is_no_http_request_is_not_applicable_with_its_reason() {
        let case = serde_json::json!({
            "id": "mcp-x-001", "category": "mcp_input", "input_type": "mcp_tool_call",
            "transport": "mcp_stdio", "payload": {"tool": "x"}, "expected_verdict": "block"
        });
        let s = scenario(&case, Path::new("x.json")).unwrap();
        assert!(s.not_applicable.unwrap().contains("mcp_tool_call"));
        let odd = serde_json::json!({
            "id": "odd id/1", "input_type": "header",
            "payload": {"url": "https://a.example/", "headers": {"bad name": "v"}}
        });
        let s = scenario(&odd, Path::new("x.json")).unwrap();
        assert_eq!(s.id, "PARITY-odd_id_1");
        assert!(s.not_applicable.unwrap().contains("no HTTP client"));
    }

    #[test]
    fn only_dns_names_become_upstream_names() {
        assert_eq!(
            dns_host("https://Evil.Example.com:8443/x").as_deref(),
            Some("evil.example.com")
        );
        assert_eq!(dns_host("http://169.254.169.254/latest"), None);
        assert_eq!(dns_host("https://[::1]/"), None);
        assert_eq!(dns_host("https://localhost/"), None);
    }

    #[test]
    fn a_missing_shared_corpus_is_reported_not_skipped() {
        let s = scenarios(&[PathBuf::from("/nonexistent/corpus")]).unwrap();
        assert_eq!(s.len(), 1);
        assert!(
            s[0].unimplemented
                .as_ref()
                .unwrap()
                .contains("--corpus DIR")
        );
        assert!(scenarios(&[default_dir(), PathBuf::from("/nonexistent")]).is_err());
    }
}
