//! The harness's own bottle: brought up from the launcher's plan, it blocks and passes as it
//! should, and leaves nothing behind — after `down`, a panic, or Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use bottle::plan::Role;
use bottle_harness::chain::{Chain, ChainOptions};
use bottle_harness::exec::exec;
use bottle_harness::{images, run};

/// Containers and networks labelled with this owner pid.
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
    Ok(containers.len() + networks.len())
}

async fn curl(chain: &Chain, args: &[&str]) -> Result<String> {
    let mut cmd = vec!["curl", "-sS", "-o", "-", "-w", "\n%{http_code}"];
    cmd.extend(args);
    let out = exec(chain.docker(), chain.id(Role::Agent), None, &cmd).await?;
    Ok(format!("{}{}", out.stdout, out.stderr))
}

#[tokio::test]
async fn a_bottle_from_the_plan_passes_clean_requests_and_blocks_secrets() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let chain = Chain::up(&docker, &images, ChainOptions::default()).await?;
    let result = async {
        // The agent trusts the bottle's CA through its system store (no --cacert).
        let clean = curl(&chain, &["https://api.anthropic.com/v1/hello"]).await?;
        ensure!(clean.ends_with("\n200"), "{clean}");
        let secret = curl(
            &chain,
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
    }
    .await;
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
