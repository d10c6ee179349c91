//! The mitmproxy addon: its own Python suite on the mitmproxy test image, and the chain's
//! exactly-once property with the pipelock double as the scanner.
//!
//! Exactly once (DESIGN.md P5): pipelock forwards every request it allows, itself. So the scanner
//! is given no route to any upstream: it sits only on the mitmproxy↔scanner network, with a
//! resolver that fails at once, and `internal: []` (no DNS-based SSRF check, which would need
//! names it cannot resolve). Its forward leg fails with 502 `forward proxy fetch failed`, which the
//! addon reads as "allowed"; mitmproxy then connects to the upstream itself, and only it does.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use bollard::Docker;
use bottle_harness::exec::{exec, exec_ok};
use bottle_harness::network::{self, InternalNetwork};
use bottle_harness::{cleanup, copy, fixture_bins, images, run};
use serde_json::Value;
use testcontainers::core::{AccessMode, Mount, WaitFor};
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

/// A resolver that answers nothing, at once (Docker's embedded DNS on an internal network
/// otherwise takes 10 s per unknown name).
const DEAD_RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n";

/// The upstream's real name, which only the egress network resolves.
const UPSTREAM_HOST: &str = "api.anthropic.com";

/// agent → mitmproxy (addon) → verdict from the double, which has no route to any upstream;
/// allowed requests go from mitmproxy to the recording upstream.
struct Chain {
    docker: Docker,
    upstream: ContainerAsync<GenericImage>,
    double: ContainerAsync<GenericImage>,
    mitm: ContainerAsync<GenericImage>,
    agent: ContainerAsync<GenericImage>,
    mitm_name: String,
    mitm_egress_ip: String,
    upstream_egress_ip: String,
    // Dropped after the containers: removing a network removes what is still on it.
    nets: [InternalNetwork; 3],
    _resolv_conf: tempfile::NamedTempFile,
}

/// One agent request through the chain, as curl saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    http_version: String,
    body: String,
}

impl Chain {
    async fn up(docker: &Docker) -> Result<Chain> {
        cleanup::sweep(docker, None).await?;
        let tags = images::ensure(docker).await?;
        let agent_net = InternalNetwork::create(docker, "bottle-addon-agent").await?;
        let scan_net = InternalNetwork::create(docker, "bottle-addon-scan").await?;
        let egress_net = InternalNetwork::create(docker, "bottle-addon-egress").await?;

        // The recording upstream, on the egress network only, under its real name.
        let (upstream, upstream_name) = start(
            image(&tags.fixtures)
                .with_entrypoint("bottle-upstream")
                .with_wait_for(WaitFor::message_on_stdout("bottle-upstream ready")),
            &egress_net.name,
            "upstream",
            &["serve", "--host", UPSTREAM_HOST],
        )
        .await?;
        network::connect(docker, &egress_net.name, &upstream_name, &[UPSTREAM_HOST]).await?;
        let upstream_egress_ip = network::ip(docker, &egress_net.name, &upstream_name).await?;
        let root_pem = exec_ok(
            docker,
            upstream.id(),
            None,
            &["cat", "/var/lib/bottle-upstream/root-ca.pem"],
        )
        .await?;

        // The double: on the scanner network only, resolving nothing.
        let mut resolv_conf = tempfile::Builder::new()
            .prefix("bottle-addon-resolv-")
            .tempfile()?;
        resolv_conf.write_all(DEAD_RESOLV_CONF.as_bytes())?;
        resolv_conf.flush()?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(resolv_conf.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        let (double, double_name) = start(
            image(&tags.fixtures)
                .with_entrypoint("pipelock-double")
                .with_wait_for(WaitFor::message_on_stdout("\"event\":\"startup\""))
                .with_mount(
                    Mount::bind_mount(
                        resolv_conf.path().to_string_lossy().into_owned(),
                        "/etc/resolv.conf",
                    )
                    .with_access_mode(AccessMode::ReadOnly),
                )
                .with_copy_to(
                    "/etc/pipelock/pipelock.yaml",
                    bottle::plan::pipelock_config().into_bytes(),
                ),
            &scan_net.name,
            "double",
            &[
                "run",
                "--config",
                "/etc/pipelock/pipelock.yaml",
                "--listen",
                "0.0.0.0:8888",
            ],
        )
        .await?;

        // mitmproxy with the addon: started on the scanner network, then joined to the agent's
        // and the egress network.
        let (mitm_request, _staged) = copy::with_dir(
            image(&tags.mitmproxy)
                .with_wait_for(WaitFor::message_on_stdout("bottle addon ready"))
                .with_copy_to(
                    "/home/mitmproxy/upstream-root.pem",
                    root_pem.clone().into_bytes(),
                ),
            &addon_dir(),
            "/addon",
        )?;
        let pipelock_url = format!("bottle_pipelock_url=http://{double_name}:8888");
        // The test "internet" is a private Docker network: allow exactly the upstream on it.
        let ssrf_allow = format!("bottle_ssrf_allow={upstream_egress_ip}/32");
        let (mitm, mitm_name) = start(
            mitm_request,
            &scan_net.name,
            "mitm",
            &[
                "mitmdump",
                "-s",
                "/addon/addon.py",
                "--set",
                "confdir=/home/mitmproxy/.mitmproxy",
                "--set",
                "connection_strategy=lazy",
                "--set",
                "rawtcp=false",
                "--set",
                "ssl_verify_upstream_trusted_ca=/home/mitmproxy/upstream-root.pem",
                "--set",
                &pipelock_url,
                "--set",
                "bottle_decision_log=/home/mitmproxy/decisions.jsonl",
                "--set",
                &ssrf_allow,
            ],
        )
        .await?;
        network::connect(docker, &agent_net.name, &mitm_name, &[]).await?;
        network::connect(docker, &egress_net.name, &mitm_name, &[]).await?;
        let mitm_egress_ip = network::ip(docker, &egress_net.name, &mitm_name).await?;
        let mitm_ca = exec_ok(
            docker,
            mitm.id(),
            None,
            &["cat", "/home/mitmproxy/.mitmproxy/mitmproxy-ca-cert.pem"],
        )
        .await?;

        // The agent: on its own network with mitmproxy, trusting mitmproxy's CA.
        let (agent, _) = start(
            image(&tags.agent).with_copy_to("/tmp/mitm.pem", mitm_ca.into_bytes()),
            &agent_net.name,
            "agent",
            &["sleep", "infinity"],
        )
        .await?;

        Ok(Chain {
            docker: docker.clone(),
            upstream,
            double,
            mitm,
            agent,
            mitm_name,
            mitm_egress_ip,
            upstream_egress_ip,
            nets: [agent_net, scan_net, egress_net],
            _resolv_conf: resolv_conf,
        })
    }

    /// `curl` in the agent through mitmproxy; `extra` adds flags (`--http2`, `--data`, ...).
    async fn curl(&self, url: &str, extra: &[&str]) -> Result<Answer> {
        let proxy = format!("http://{}:8080", self.mitm_name);
        let mut cmd = vec![
            "curl",
            "-sS",
            "-m",
            "30",
            "--proxy",
            &proxy,
            "--cacert",
            "/tmp/mitm.pem",
            "-w",
            "\n%{http_code} %{http_version}",
        ];
        cmd.extend_from_slice(extra);
        cmd.push(url);
        let out = exec_ok(&self.docker, self.agent.id(), None, &cmd).await?;
        let (body, status_line) = out
            .rsplit_once('\n')
            .with_context(|| format!("curl printed no status line: {out}"))?;
        let (status, http_version) = status_line
            .split_once(' ')
            .with_context(|| format!("odd curl status line {status_line:?}"))?;
        Ok(Answer {
            status: status.parse()?,
            http_version: http_version.to_string(),
            body: body.to_string(),
        })
    }

    /// Every record the upstream made (requests and failed handshakes), oldest first.
    async fn upstream_records(&self) -> Result<Vec<Value>> {
        let records = exec_ok(
            &self.docker,
            self.upstream.id(),
            None,
            &["curl", "-sS", "http://127.0.0.1:9999/records"],
        )
        .await?;
        match serde_json::from_str(&records)? {
            Value::Array(records) => Ok(records),
            other => bail!("upstream records are not an array: {other}"),
        }
    }

    /// The double's JSON event lines (its stdout).
    async fn double_events(&self) -> Result<Vec<Value>> {
        let stdout = self.double.stdout_to_vec().await?;
        Ok(String::from_utf8_lossy(&stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// mitmproxy's decision records (the addon's log, created on the first record), one JSON
    /// object a line.
    async fn decisions(&self) -> Result<Vec<Value>> {
        let out = exec_ok(
            &self.docker,
            self.mitm.id(),
            None,
            &[
                "sh",
                "-c",
                "cat /home/mitmproxy/decisions.jsonl 2>/dev/null || true",
            ],
        )
        .await?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("decision record {l:?}")))
            .collect()
    }

    /// One request from the agent, with its evidence: the one decision record mitmproxy wrote
    /// for it (requests go one at a time, so it is the one record that appears) and the one
    /// double event that carries the record's id as `agent`.
    async fn request(&self, url: &str, extra: &[&str]) -> Result<(Answer, Value, Value)> {
        let before = self.decisions().await?.len();
        let answer = self.curl(url, extra).await?;
        // The record is written when the flow ends; give mitmproxy a moment after the client.
        let mut decisions = self.decisions().await?;
        for _ in 0..50 {
            if decisions.len() > before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            decisions = self.decisions().await?;
        }
        let [decision] = &decisions[before..] else {
            bail!(
                "expected one new decision record for {url}, got {}:\n{decisions:#?}",
                decisions.len() - before
            );
        };
        let id = decision["id"]
            .as_str()
            .with_context(|| format!("decision record without a string id: {decision}"))?;
        let events = self.double_events().await?;
        let joined: Vec<&Value> = events.iter().filter(|e| e["agent"] == id).collect();
        let [event] = joined[..] else {
            bail!(
                "expected one double event with agent {id}, got {}:\n{events:#?}",
                joined.len()
            );
        };
        Ok((answer, decision.clone(), event.clone()))
    }

    /// The logs of every container, for a failure message.
    async fn logs(&self) -> String {
        let mut all = String::new();
        for (role, c) in [
            ("mitmproxy", &self.mitm),
            ("double", &self.double),
            ("upstream", &self.upstream),
        ] {
            let out = c.stdout_to_vec().await.unwrap_or_default();
            let err = c.stderr_to_vec().await.unwrap_or_default();
            all.push_str(&format!(
                "--- {role} stdout\n{}\n--- {role} stderr\n{}\n",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            ));
        }
        all
    }

    /// Removes every container and network and checks that nothing of this process is left.
    async fn down(self) -> Result<()> {
        let Chain {
            docker,
            upstream,
            double,
            mitm,
            agent,
            nets,
            _resolv_conf,
            ..
        } = self;
        for container in [agent, mitm, double, upstream] {
            container.rm().await?;
        }
        drop(nets);
        let left = cleanup::sweep(&docker, Some(std::process::id())).await?;
        ensure!(left == 0, "{left} containers or networks were left behind");
        Ok(())
    }
}

/// Runs `check` on a chain that is up; on failure the error carries every container's logs.
/// The chain is torn down either way.
async fn with_chain<F>(check: F) -> Result<()>
where
    F: AsyncFnOnce(&Chain) -> Result<()>,
{
    let docker = bottle::docker::connect().await?;
    let started = std::time::Instant::now();
    let chain = Chain::up(&docker).await?;
    eprintln!("chain up in {:.1}s", started.elapsed().as_secs_f64());
    let result = check(&chain).await;
    let result = match result {
        Ok(()) => Ok(()),
        Err(e) => Err(e.context(chain.logs().await)),
    };
    let down = chain.down().await;
    result.and(down)
}

/// P5: an allowed request (h1 and h2) gets the upstream's real answer and reaches it exactly
/// once, over TLS, from mitmproxy; the scanner saw it (one event, joined to mitmproxy's decision
/// by the agent id) and could not have forwarded it anywhere.
#[tokio::test]
async fn allowed_request_reaches_upstream_exactly_once() -> Result<()> {
    with_chain(async |chain| {
        let cases = [
            ("/v1/echo-once-h1", "--http1.1", "1.1"),
            ("/v1/echo-once-h2", "--http2", "2"),
        ];
        for (path, flag, version) in cases {
            let (answer, decision, event) = chain
                .request(&format!("https://{UPSTREAM_HOST}{path}"), &[flag])
                .await?;
            eprintln!(
                "{path}: {} over HTTP/{}",
                answer.status, answer.http_version
            );
            ensure!(answer.status == 200, "{path}: {answer:?}");
            ensure!(answer.http_version == version, "{path}: {answer:?}");
            let echo: Value = serde_json::from_str(&answer.body)
                .with_context(|| format!("{path}: not the upstream's echo: {answer:?}"))?;
            ensure!(
                echo["fixture"] == "bottle-upstream" && echo["path"] == path && echo["tls"] == true,
                "{path}: {echo}"
            );

            let records = chain.upstream_records().await?;
            let mine: Vec<&Value> = records.iter().filter(|r| r["path"] == path).collect();
            let [record] = mine[..] else {
                bail!(
                    "{path} reached the upstream {} times:\n{records:#?}",
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
                    && record["method"] == "GET"
                    && peer_ip == Some(chain.mitm_egress_ip.as_str()),
                "{path}: not one TLS request from mitmproxy ({}) on 443: {record}",
                chain.mitm_egress_ip
            );

            ensure!(
                decision["verdict"] == "allow"
                    && decision["url"].as_str().is_some_and(|u| u.ends_with(path)),
                "{path}: {decision}"
            );
            // The double's forward leg has nowhere to go: its only event is the failed fetch.
            ensure!(event["event"] == "error", "{path}: {event}");
            eprintln!("{path}: decision {decision}\n{path}: double event {event}");
        }

        // Nothing else reached the upstream: one request per case, all on 443 from mitmproxy.
        let records = chain.upstream_records().await?;
        ensure!(
            records.len() == cases.len() && records.iter().all(|r| r["port"] == 443),
            "unexpected upstream records:\n{records:#?}"
        );

        // The scanner has no route to the upstream, by name or by address.
        for target in [UPSTREAM_HOST, chain.upstream_egress_ip.as_str()] {
            let url = format!("https://{target}/from-the-scanner");
            let out = exec(
                &chain.docker,
                chain.double.id(),
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
            "the scanner's attempts reached the upstream:\n{after:#?}"
        );
        Ok(())
    })
    .await
}

/// P1 with the double: a request whose body carries an AWS access key id gets the scanner's 403
/// (h1 and h2), and no byte of it reaches the upstream.
#[tokio::test]
async fn blocked_request_reaches_no_upstream() -> Result<()> {
    with_chain(async |chain| {
        let body = r#"{"note":"deploy with AKIAQ3EGRVLN5XKZ7P2M please"}"#;
        for (path, flag) in [
            ("/v1/blocked-once-h1", "--http1.1"),
            ("/v1/blocked-once-h2", "--http2"),
        ] {
            let result = chain
                .request(
                    &format!("https://{UPSTREAM_HOST}{path}"),
                    &[
                        flag,
                        "-H",
                        "content-type: application/json",
                        "--data-binary",
                        body,
                    ],
                )
                .await;
            // Fail closed first: whatever the client got, nothing may have reached the upstream.
            let records = chain.upstream_records().await?;
            ensure!(
                records.is_empty(),
                "{path}: a blocked request reached the upstream:\n{records:#?}"
            );
            let (answer, decision, event) = result?;
            eprintln!("{path}: {} {:?}", answer.status, answer.body);
            ensure!(
                answer.status == 403
                    && answer
                        .body
                        .starts_with("blocked: request body contains secret: "),
                "{path}: {answer:?}"
            );
            ensure!(
                decision["verdict"] == "block"
                    && decision["decided_by"] == "pipelock"
                    && decision["method"] == "POST",
                "{path}: {decision}"
            );
            ensure!(event["event"] == "body_dlp", "{path}: {event}");
            eprintln!("{path}: decision {decision}\n{path}: double event {event}");
        }
        Ok(())
    })
    .await
}
