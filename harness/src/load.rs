//! LOAD cases: the load probe (`load.js`) sends many requests through one bottle at once and
//! checks each as it ends; here, what the bottle let out is counted at the upstream (every clean
//! request exactly once, the secret nowhere), and mitmproxy's and the scanner's peak memory is
//! read. The case's evidence carries the figures; the report shows them.

use std::time::Duration;

use anyhow::{Context, Result};
use bottle::plan::Role;
use serde_json::{Value, json};

use crate::chain::Chain;
use crate::probe::{self, ProbeRequest};
use crate::scenario::{Case, LOAD_COUNT_ENV, LoadOptions, Request};

/// How many requests of `load` are clean (the probe's rule: the secret in requests 2 and 3 of
/// every 4).
fn clean_count(count: u32) -> u32 {
    (0..count).filter(|i| i % 4 < 2).count() as u32
}

pub async fn exercise(
    case: &Case,
    chain: &Chain,
    request: &Request,
    load: &LoadOptions,
) -> Result<(Vec<String>, Value)> {
    let count = match std::env::var(LOAD_COUNT_ENV) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{LOAD_COUNT_ENV}={text:?} is not a count"))?,
        Err(_) => load.count,
    };
    let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(600_000));
    let mut probe_request = ProbeRequest::new("POST", &request.url);
    probe_request.timeout = timeout;
    probe_request.load = Some(json!({
        "count": count,
        "concurrency": load.concurrency,
        "secret": load.secret,
        "body_sizes": load.body_sizes,
        "timeout_ms": timeout.as_millis() as u64,
        "url": request.url,
    }));
    eprintln!(
        "[bottle] load: {count} requests, {} at a time",
        load.concurrency
    );
    let result = probe::run(
        chain.docker(),
        chain.id(Role::Agent),
        case.client,
        case.protocol,
        &probe_request,
    )
    .await?;
    let mut failures = Vec::new();
    if let Some(error) = &result.error {
        failures.push(format!("the load probe failed: {error}"));
    }
    let figures: Value = serde_json::from_slice(&result.body).unwrap_or(Value::Null);
    let clean = clean_count(count);
    let number = |key: &str| figures[key].as_u64().unwrap_or(0);
    if number("failed") > 0 {
        failures.push(format!(
            "{} of {count} requests failed, first ones: {}",
            number("failed"),
            figures["failures"]
        ));
    }
    if number("clean_passed") != u64::from(clean) {
        failures.push(format!(
            "{} of {clean} clean requests got the upstream's echo of their bytes",
            number("clean_passed")
        ));
    }
    if number("secrets_blocked") != u64::from(count - clean) {
        failures.push(format!(
            "{} of {} requests with the secret got pipelock's 403",
            number("secrets_blocked"),
            count - clean
        ));
    }
    let upstream = chain.upstream_summary(&load.secret).await?;
    if upstream["requests"] != json!(clean) || upstream["records"] != json!(clean) {
        failures.push(format!(
            "the upstream should hold exactly the {clean} clean requests, once each: {upstream}"
        ));
    }
    if upstream["mentioning"] != json!(0) {
        failures.push(format!(
            "the secret reached an upstream in {} records",
            upstream["mentioning"]
        ));
    }
    let rss = json!({
        "mitm_kib": chain.peak_rss_kib(Role::Mitm).await,
        "scanner_kib": chain.peak_rss_kib(Role::Scanner).await,
    });
    eprintln!("[bottle] load: {figures} peak RSS {rss}");
    let evidence = json!({
        "load": {
            "requests": count,
            "concurrency": load.concurrency,
            "figures": figures,
            "peak_rss": rss,
            "upstream": upstream,
        },
    });
    Ok((failures, evidence))
}

#[cfg(test)]
mod tests {
    #[test]
    fn half_the_requests_are_clean() {
        assert_eq!(super::clean_count(4), 2);
        assert_eq!(super::clean_count(10), 6);
        assert_eq!(super::clean_count(10_000), 5_000);
    }
}
