//! The harness's own bottle: brought up from the launcher's plan, it blocks and passes as it
//! should, and leaves nothing behind — after `down`, a panic, or Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use bottle::plan::Role;
use bottle_harness::chain::{Chain, ChainOptions};
use bottle_harness::exec::{exec, exec_ok};
use bottle_harness::{images, run};

/// Containers, networks and volumes labelled with this owner pid.
async fn left_by(docker: &Docker, pid: u32) -> Result<usize> {
    let filter = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("{}={pid}", run::OWNER_LABEL)],
    )]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await?;
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filter).build(),
        ))
        .await?;
    let volumes = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(filter.clone()),
        }))
        .await?;
    Ok(containers.len() + networks.len() + volumes.volumes.unwrap_or_default().len())
}

async fn curl(chain: &Chain, args: &[&str]) -> Result<String> {
    let mut cmd = vec!["curl", "-sS", "-o", "-", "-w", "\n%{http_code}"];
    cmd.extend(args);
    let out = exec(chain.docker(), chain.id(Role::Agent), None, &cmd).await?;
    Ok(format!("{}{}", out.stdout, out.stderr))
}

/// Brings a default bottle up, runs `test` on it, prints the bottle's logs when it failed, and
/// takes the bottle down, checking that nothing of it is left.
async fn with_chain(
    test: impl for<'a> FnOnce(&'a Chain) -> futures_util::future::BoxFuture<'a, Result<()>>,
) -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let chain = Chain::up(&docker, &images, ChainOptions::default()).await?;
    let result = test(&chain).await;
    if result.is_err() {
        eprintln!("{}", chain.logs().await);
    }
    chain.down().await?;
    ensure!(
        left_by(&docker, std::process::id()).await? == 0,
        "left behind after down"
    );
    result
}

#[tokio::test]
async fn a_bottle_from_the_plan_passes_clean_requests_and_blocks_secrets() -> Result<()> {
    with_chain(|chain| {
        Box::pin(async move {
            // The agent trusts the bottle's CA through its system store (no --cacert).
            let clean = curl(chain, &["https://api.anthropic.com/v1/hello"]).await?;
            ensure!(clean.ends_with("\n200"), "{clean}");
            let secret = curl(
                chain,
                &[
                    "-d",
                    "key=AKIAIOSFODNN7EXAMPLE",
                    "https://api.anthropic.com/v1/upload",
                ],
            )
            .await?;
            ensure!(secret.ends_with("\n403"), "{secret}");
            ensure!(
                secret.contains("blocked: request body contains secret"),
                "{secret}"
            );
            let records = chain.upstream_records().await?;
            ensure!(records.len() == 1, "{records:?}");
            ensure!(chain.plan.egress.mitm.ca_fingerprint.is_some());
            Ok(())
        })
    })
    .await
}

/// A scanner that crashes or is restarted starts again (its resolver file is the bottle's, not
/// a host file gone after the first start), the addon finds it again, and while it is away
/// every request is refused.
#[tokio::test]
async fn a_restarted_scanner_starts_again_and_the_bottle_recovers() -> Result<()> {
    with_chain(|chain| {
        Box::pin(async move {
            let docker = chain.docker();
            let url = "https://api.anthropic.com/v1/hello";
            ensure!(curl(chain, &[url]).await?.ends_with("\n200"));
            let scanner = chain.id(Role::Scanner).to_string();
            docker
                .stop_container(
                    &scanner,
                    None::<bollard::query_parameters::StopContainerOptions>,
                )
                .await?;
            let away = curl(chain, &[url]).await?;
            ensure!(away.ends_with("\n502"), "scanner stopped: {away}");
            docker
                .start_container(
                    &scanner,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .context("starting the stopped scanner again")?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut last = String::new();
            while std::time::Instant::now() < deadline {
                last = curl(chain, &[url]).await?;
                if last.ends_with("\n200") {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            ensure!(last.ends_with("\n200"), "after the restart: {last}");
            let secret = curl(chain, &["-d", "key=AKIAIOSFODNN7EXAMPLE", url]).await?;
            ensure!(secret.ends_with("\n403"), "after the restart: {secret}");
            let records = chain.upstream_records().await?;
            ensure!(records.len() == 2, "{records:?}");
            Ok(())
        })
    })
    .await
}

/// Starts the hold binary, waits until its bottle is up, signals it, and checks it cleaned up.
async fn interrupted_by(signal: i32) -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bottle-test-hold"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting bottle-test-hold")?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    ensure!(first.starts_with("chain up"), "hold said {first:?}");
    ensure!(
        left_by(&docker, pid).await? > 0,
        "the bottle is not labelled with its owner"
    );
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid as i32, signal) };
    let status = child.wait()?;
    ensure!(status.code() == Some(130), "exited with {status}");
    let left = left_by(&docker, pid).await?;
    ensure!(
        left == 0,
        "{left} containers or networks left after signal {signal}"
    );
    // Nor the files it staged for its containers (exit() runs no destructors).
    let prefix = format!("bottle-{pid}-");
    let files: Vec<String> = std::fs::read_dir(std::env::temp_dir())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    ensure!(
        files.is_empty(),
        "temporary files left after signal {signal}: {files:?}"
    );
    Ok(())
}

#[tokio::test]
async fn ctrl_c_removes_everything() -> Result<()> {
    interrupted_by(libc::SIGINT).await
}

#[tokio::test]
async fn sigterm_removes_everything() -> Result<()> {
    interrupted_by(libc::SIGTERM).await
}

#[tokio::test]
async fn a_panicking_test_leaves_nothing() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let task = tokio::spawn(async move {
        let docker = bottle::docker::connect().await.expect("docker");
        let _chain = Chain::up(&docker, &images, ChainOptions::default())
            .await
            .expect("chain up");
        panic!("a test failing with its bottle up");
    });
    ensure!(
        task.await.is_err_and(|e| e.is_panic()),
        "the task did not panic"
    );
    let left = left_by(&docker, std::process::id()).await?;
    ensure!(
        left == 0,
        "{left} containers or networks left after a panic"
    );
    Ok(())
}

/// Sent from mitmproxy's container (the one the agent's bytes leave by): a TCP stream to a port
/// nothing serves, one inside TLS on another, a UDP datagram, and bytes for the control port.
const SINK_PROBE: &str = r#"
import socket, ssl, sys, time
ip = sys.argv[1]
def tcp(port, *parts):
    s = socket.create_connection((ip, port), 3)
    for part in parts:
        s.sendall(part)
        time.sleep(0.2)
    s.close()
tcp(22, b"sink-probe-tcp-22")
# Starts like a TLS record, then (in a later segment) is no hello: every byte is heard.
tcp(2222, b"\x16\x03\x01 not", b" a hello: sink-probe-not-hello")
tcp(9999, b"GET /records HTTP/1.1\r\nHost: sink-probe-control\r\n\r\n")
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"sink-probe-udp-443", (ip, 443))
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["sink-probe-alpn"])
t = ctx.wrap_socket(socket.create_connection((ip, 8443), 3), server_hostname="sink-probe.example")
t.sendall(b"sink-probe-inside-tls")
t.close()
"#;

#[tokio::test]
async fn the_test_internet_hears_every_port_the_upstream_does_not_serve() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let chain = Chain::up(&docker, &images, ChainOptions::default()).await?;
    let result = async {
        exec_ok(
            chain.docker(),
            chain.id(Role::Mitm),
            None,
            &["python3", "-c", SINK_PROBE, &chain.upstream_ip],
        )
        .await?;
        let heard = |records: &[serde_json::Value],
                     (_, port, transport, bytes): &(&str, u16, &str, &str)| {
            records.iter().any(|r| {
                r["kind"] == "raw"
                    && r["port"] == *port
                    && r["transport"] == *transport
                    && r["body"].as_str().is_some_and(|b| b.contains(bytes))
            })
        };
        let hello = |records: &[serde_json::Value]| {
            records.iter().any(|r| {
                r["port"] == 8443
                    && r["sni"] == "sink-probe.example"
                    && r["alpn_offers"][0] == "sink-probe-alpn"
            })
        };
        let sent = [
            ("TCP to 22", 22, "tcp", "sink-probe-tcp-22"),
            (
                "a TLS record header that is no hello",
                2222,
                "tcp",
                "sink-probe-not-hello",
            ),
            (
                "TCP to the control port from outside",
                9999,
                "tcp",
                "sink-probe-control",
            ),
            ("UDP to 443", 443, "udp", "sink-probe-udp-443"),
            (
                "what was sent inside TLS on 8443",
                8443,
                "tls",
                "sink-probe-inside-tls",
            ),
        ];
        // The sink records as bytes arrive; give the last ones a moment.
        let mut records = Vec::new();
        for _ in 0..20 {
            records = chain.upstream_records().await?;
            if hello(&records) && sent.iter().all(|one| heard(&records, one)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for one in &sent {
            ensure!(
                heard(&records, one),
                "the sink did not hear {}: {records:#?}",
                one.0
            );
        }
        ensure!(
            hello(&records),
            "the sink did not record the ClientHello on 8443: {records:#?}"
        );
        let dst = format!("{}:22", chain.upstream_ip);
        ensure!(
            records.iter().any(|r| r["dst"] == dst.as_str()),
            "no record names its destination {dst}: {records:#?}"
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", chain.logs().await);
    }
    chain.down().await?;
    result
}
