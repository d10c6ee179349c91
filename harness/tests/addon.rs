//! The mitmproxy addon: its own Python suite on the mitmproxy test image, and the chain's
//! exactly-once property with the pipelock double as the scanner.
//!
//! Exactly once (DESIGN.md P5): pipelock forwards every request it allows, itself. So the
//! launcher's plan gives the scanner no route to any upstream: it sits only on the
//! mitmproxy↔scanner network, with a resolver that fails at once, and `internal: []`. Its forward
//! leg fails with 502 `forward proxy fetch failed`, which the addon reads as "allowed"; mitmproxy
//! then connects to the upstream itself, and only it does.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use bottle::plan::Role;
use bottle_harness::chain::{Chain, ChainOptions};
use bottle_harness::exec::{exec, exec_ok};
use bottle_harness::{cleanup, copy, fixture_bins, images, run};
use serde_json::Value;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

fn image(tag: &str) -> GenericImage {
    let (repo, version) = tag.split_once(':').expect("tags are repo:hash");
    GenericImage::new(repo, version)
}

fn addon_dir() -> PathBuf {
    fixture_bins::workspace_root().join("addon")
}

async fn start(
    request: impl Into<ContainerRequest<GenericImage>>,
    network: &str,
    role: &str,
    cmd: &[&str],
) -> Result<(ContainerAsync<GenericImage>, String)> {
    let name = run::unique(&format!("bottle-addon-{role}"));
    eprintln!("starting {role} as {name}");
    let container = request
        .into()
        .with_cmd(cmd.iter().copied())
        .with_network(network)
        .with_container_name(&name)
        .with_labels(run::labels())
        .start()
        .await
        .with_context(|| format!("starting {role}"))?;
    Ok((container, name))
}

/// Counts from a pytest summary line such as `41 passed, 2 skipped, 1 warning in 0.52s`.
#[derive(Debug, Default, PartialEq)]
struct PytestSummary {
    line: String,
    passed: u64,
    failed: u64,
    errors: u64,
    skipped: u64,
}

fn pytest_summary(stdout: &str) -> Option<PytestSummary> {
    let line = stdout
        .lines()
        .rev()
        .map(|l| l.trim().trim_matches('=').trim())
        .find(|l| {
            l.contains(" in ")
                && (l.contains("passed")
                    || l.contains("failed")
                    || l.contains("error")
                    || l.contains("skipped")
                    || l.starts_with("no tests ran"))
        })?;
    let mut summary = PytestSummary {
        line: line.to_string(),
        ..Default::default()
    };
    let counts = line.rsplit_once(" in ").map_or(line, |(counts, _)| counts);
    for part in counts.split(", ") {
        let Some((n, word)) = part.trim().split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match word {
            "passed" => summary.passed = n,
            "failed" => summary.failed = n,
            "error" | "errors" => summary.errors = n,
            "skipped" => summary.skipped = n,
            _ => {}
        }
    }
    Some(summary)
}

#[test]
fn pytest_summary_lines_parse() {
    let s = pytest_summary("..\n41 passed, 2 skipped, 1 warning in 0.52s\n").unwrap();
    assert_eq!((s.passed, s.skipped, s.failed, s.errors), (41, 2, 0, 0));
    let s = pytest_summary("F.\n=== 1 failed, 3 passed, 2 errors in 1.00s ===\n").unwrap();
    assert_eq!((s.passed, s.failed, s.errors), (3, 1, 2));
    let s = pytest_summary("\nno tests ran in 0.01s\n").unwrap();
    assert_eq!(s.passed, 0);
    assert!(pytest_summary("ImportError: no module\n").is_none());
}

/// The addon's pytest suite, `ruff check` and `ruff format --check`, on the mitmproxy test image
/// (mitmproxy 12.2.3's Python), with no network at all.
#[tokio::test]
async fn addon_python_suite_passes() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    cleanup::sweep(&docker, None).await?;
    let tags = images::ensure(&docker).await?;

    let (tester_request, _staged) = copy::with_dir(
        image(&tags.mitmproxy_test).with_working_dir("/addon"),
        &addon_dir(),
        "/addon",
    )?;
    let (tester, _) = start(tester_request, "none", "pytest", &["sleep", "infinity"]).await?;

    let checks: [(&str, &[&str]); 3] = [
        (
            "pytest",
            &[
                "python",
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                "/addon",
            ],
        ),
        ("ruff check", &["ruff", "check", "--no-cache", "/addon"]),
        (
            "ruff format",
            &["ruff", "format", "--no-cache", "--check", "/addon"],
        ),
    ];
    let mut failures = Vec::new();
    let mut summary = None;
    for (what, cmd) in checks {
        let started = std::time::Instant::now();
        let out = exec(&docker, tester.id(), None, cmd).await?;
        eprintln!(
            "{what}: exit {} ({:.1}s)",
            out.code,
            started.elapsed().as_secs_f64()
        );
        if what == "pytest" {
            summary = pytest_summary(&out.stdout);
            match &summary {
                Some(s) => eprintln!("pytest summary: {}", s.line),
                None => eprintln!("pytest printed no summary line"),
            }
        }
        if out.code != 0 {
            failures.push(format!(
                "{what} {cmd:?} exited {}:\n--- stdout\n{}\n--- stderr\n{}",
                out.code, out.stdout, out.stderr
            ));
        }
    }
    tester.rm().await?;
    let left = cleanup::sweep(&docker, Some(std::process::id())).await?;

    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    let summary = summary.context("pytest printed no summary line")?;
    ensure!(
        summary.passed >= 20 && summary.failed == 0 && summary.errors == 0,
        "pytest must run at least 20 passing tests and none failing: {}",
        summary.line
    );
    ensure!(left == 0, "{left} containers or networks were left behind");
    Ok(())
}

/// The upstream's real name, which only the egress network resolves.
const UPSTREAM_HOST: &str = "api.anthropic.com";

/// P5, exactly once, on a bottle from the launcher's plan: an allowed request (h1 and h2) gets
/// the upstream's real answer and reaches it exactly once, over TLS on 443, from mitmproxy's
/// address, and nothing reaches any other port; the scanner saw it (one event, joined to the
/// decision record by the request id) and has no route to the upstream by name or address.
#[tokio::test]
async fn allowed_request_reaches_upstream_exactly_once() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let chain = Chain::up(&docker, &images, ChainOptions::default()).await?;
    let result = exactly_once(&chain).await;
    if result.is_err() {
        eprintln!("{}", chain.logs().await);
    }
    chain.down().await?;
    result
}

async fn exactly_once(chain: &Chain) -> Result<()> {
    let cases = [
        ("/v1/echo-once-h1", "--http1.1", "1.1"),
        ("/v1/echo-once-h2", "--http2", "2"),
    ];
    for (n, (path, flag, version)) in cases.iter().enumerate() {
        let url = format!("https://{UPSTREAM_HOST}{path}");
        // The agent's own environment: HTTPS_PROXY to mitmproxy, its CA in the system store.
        let out = exec_ok(
            chain.docker(),
            chain.id(Role::Agent),
            None,
            &[
                "curl",
                "-sS",
                "-m",
                "30",
                flag,
                "-w",
                "\n%{http_code} %{http_version}",
                &url,
            ],
        )
        .await?;
        let (body, status_line) = out.rsplit_once('\n').context("no status line")?;
        ensure!(status_line == format!("200 {version}"), "{path}: {out}");
        let echo: Value = serde_json::from_str(body)
            .with_context(|| format!("{path}: not the upstream's echo: {body}"))?;
        ensure!(
            echo["fixture"] == "bottle-upstream" && echo["path"] == *path,
            "{echo}"
        );

        let records = chain.upstream_records().await?;
        let mine: Vec<&Value> = records.iter().filter(|r| r["path"] == *path).collect();
        let [record] = mine[..] else {
            bail!(
                "{path} reached the upstream {} times: {records:#?}",
                mine.len()
            );
        };
        let peer_ip = record["peer"]
            .as_str()
            .and_then(|p| p.rsplit_once(':'))
            .map(|(ip, _)| ip.trim_matches(['[', ']']));
        ensure!(
            record["kind"] == "request"
                && record["tls"] == true
                && record["port"] == 443
                && peer_ip == Some(chain.mitm_egress_ip.as_str()),
            "{path}: not one TLS request from mitmproxy ({}) on 443: {record}",
            chain.mitm_egress_ip
        );

        // One decision record per request, and the scanner's one event under the same id.
        let decisions = chain.decisions().await?;
        let decision = decisions
            .get(n)
            .with_context(|| format!("no record: {decisions:?}"))?;
        ensure!(decision["verdict"] == "allow", "{path}: {decision}");
        let id = decision["id"].as_str().context("a record without an id")?;
        let events = chain.scanner_events().await?;
        let joined: Vec<&Value> = events.iter().filter(|e| e["agent"] == id).collect();
        // The scanner's forward leg has nowhere to go: its only event is the failed fetch.
        ensure!(
            joined.len() == 1 && joined[0]["event"] == "error",
            "{path}: scanner events for {id}: {joined:?}"
        );
    }

    // Nothing else reached the upstream: one request per case, all on 443 from mitmproxy.
    let records = chain.upstream_records().await?;
    ensure!(
        records.len() == cases.len() && records.iter().all(|r| r["port"] == 443),
        "unexpected upstream records: {records:#?}"
    );

    // The scanner has no route to the upstream, by name or by address.
    for target in [UPSTREAM_HOST, chain.upstream_ip.as_str()] {
        let url = format!("https://{target}/from-the-scanner");
        let out = exec(
            chain.docker(),
            chain.id(Role::Scanner),
            None,
            &["curl", "-sS", "-m", "3", "-k", &url],
        )
        .await?;
        ensure!(
            out.code != 0,
            "the scanner reached {url}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    let after = chain.upstream_records().await?;
    ensure!(
        after.len() == records.len(),
        "the scanner's attempts reached the upstream"
    );
    Ok(())
}
