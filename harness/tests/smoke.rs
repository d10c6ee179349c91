//! Smoke test of the foundation: every image exists (built if missing) and one container of each
//! starts on an internal network and does its job; the fixtures talk to each other there.

use anyhow::{Result, ensure};
use bottle_harness::exec::exec_ok;
use bottle_harness::{cleanup, images, network::InternalNetwork, run};
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

const DOUBLE_CONFIG: &str = "version: 1
mode: balanced
forward_proxy:
  enabled: true
request_body_scanning:
  enabled: true
  action: block
logging:
  format: json
  output: stdout
sentry:
  enabled: false
";

fn image(tag: &str) -> GenericImage {
    let (repo, version) = tag.split_once(':').expect("tags are repo:hash");
    GenericImage::new(repo, version)
}

async fn start(
    image: impl Into<ContainerRequest<GenericImage>>,
    net: &InternalNetwork,
    role: &str,
    cmd: &[&str],
) -> Result<(ContainerAsync<GenericImage>, String)> {
    let name = run::unique(&format!("bottle-smoke-{role}"));
    eprintln!("starting {role} as {name}");
    let container = image
        .into()
        .with_cmd(cmd.iter().copied())
        .with_network(&net.name)
        .with_container_name(&name)
        .with_labels(run::labels())
        .start()
        .await?;
    Ok((container, name))
}

#[tokio::test]
async fn every_image_starts_on_an_internal_network() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    cleanup::sweep(&docker, None).await?;
    let tags = images::ensure(&docker).await?;
    let net = InternalNetwork::create(&docker, "bottle-smoke").await?;

    // The recording upstream answers for a real name with a leaf from its stand-in root.
    let (upstream, upstream_name) = start(
        image(&tags.fixtures)
            .with_entrypoint("bottle-upstream")
            .with_wait_for(WaitFor::message_on_stdout("bottle-upstream ready")),
        &net,
        "upstream",
        &["serve", "--host", "api.anthropic.com"],
    )
    .await?;
    let root_pem = exec_ok(
        &docker,
        upstream.id(),
        None,
        &["cat", "/var/lib/bottle-upstream/root-ca.pem"],
    )
    .await?;
    ensure!(
        root_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{root_pem}"
    );

    // The pipelock double reads a pipelock config and reports itself healthy.
    let (double, double_name) = start(
        image(&tags.fixtures)
            .with_entrypoint("pipelock-double")
            .with_wait_for(WaitFor::message_on_stdout("\"event\":\"startup\""))
            .with_copy_to(
                "/etc/pipelock/pipelock.yaml",
                DOUBLE_CONFIG.as_bytes().to_vec(),
            ),
        &net,
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
    let health = exec_ok(
        &docker,
        double.id(),
        None,
        &["curl", "-sS", "http://127.0.0.1:8888/health"],
    )
    .await?;
    ensure!(health.contains("pipelock-double"), "{health}");

    // mitmproxy 12.2.3 starts and writes its CA.
    let (mitm, _) = start(
        image(&tags.mitmproxy).with_wait_for(WaitFor::message_on_stdout("HTTP(S) proxy listening")),
        &net,
        "mitm",
        &["mitmdump", "--set", "confdir=/home/mitmproxy/.mitmproxy"],
    )
    .await?;
    let version = exec_ok(&docker, mitm.id(), None, &["mitmdump", "--version"]).await?;
    ensure!(version.contains("Mitmproxy: 12.2.3"), "{version}");
    exec_ok(
        &docker,
        mitm.id(),
        None,
        &[
            "test",
            "-s",
            "/home/mitmproxy/.mitmproxy/mitmproxy-ca-cert.pem",
        ],
    )
    .await?;

    // The test image runs pytest and ruff on the same Python, with mitmproxy's test helpers.
    let (tester, _) = start(
        image(&tags.mitmproxy_test),
        &net,
        "mitm-test",
        &["sleep", "infinity"],
    )
    .await?;
    exec_ok(
        &docker,
        tester.id(),
        None,
        &[
            "python",
            "-c",
            "import pytest, pytest_asyncio, mitmproxy.test.taddons",
        ],
    )
    .await?;
    exec_ok(&docker, tester.id(), None, &["ruff", "--version"]).await?;

    // The agent: non-root, curl with HTTP/2, Node 20, Python 3.13, the probes.
    let (agent, _) = start(image(&tags.agent), &net, "agent", &["sleep", "infinity"]).await?;
    let uid = exec_ok(&docker, agent.id(), None, &["id", "-u"]).await?;
    ensure!(uid.trim() == "1000", "agent runs as uid {uid}");
    let curl = exec_ok(&docker, agent.id(), None, &["curl", "--version"]).await?;
    ensure!(curl.contains("HTTP2"), "{curl}");
    let node = exec_ok(&docker, agent.id(), None, &["node", "--version"]).await?;
    ensure!(node.starts_with("v20."), "{node}");
    let python = exec_ok(&docker, agent.id(), None, &["python3", "--version"]).await?;
    ensure!(python.starts_with("Python 3.13"), "{python}");

    // From the agent, the upstream answers over TLS with h2 under its real name, and records it.
    exec_ok(
        &docker,
        agent.id(),
        None,
        &[
            "sh",
            "-c",
            &format!("printf '%s' '{root_pem}' > /tmp/root.pem"),
        ],
    )
    .await?;
    let answer = exec_ok(
        &docker,
        agent.id(),
        None,
        &[
            "curl",
            "-sS",
            "--cacert",
            "/tmp/root.pem",
            "--connect-to",
            &format!("api.anthropic.com:443:{upstream_name}:443"),
            "https://api.anthropic.com/smoke",
        ],
    )
    .await?;
    ensure!(
        answer.contains("\"fixture\":\"bottle-upstream\""),
        "{answer}"
    );
    let records = exec_ok(
        &docker,
        upstream.id(),
        None,
        &["curl", "-sS", "http://127.0.0.1:9999/records"],
    )
    .await?;
    let records: serde_json::Value = serde_json::from_str(&records)?;
    let smoke = records
        .as_array()
        .and_then(|r| r.iter().find(|r| r["path"] == "/smoke"))
        .ok_or_else(|| anyhow::anyhow!("no record of /smoke in {records}"))?;
    ensure!(
        smoke["tls"] == true && smoke["alpn"] == "h2" && smoke["sni"] == "api.anthropic.com",
        "{smoke}"
    );

    // The double, asked to forward to the upstream's private address, blocks it as SSRF, as
    // pipelock does with its default `internal` ranges.
    let blocked = exec_ok(
        &docker,
        agent.id(),
        None,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &format!("http://{double_name}:8888"),
            &format!("http://{upstream_name}/ssrf"),
        ],
    )
    .await?;
    ensure!(blocked == "403", "the double answered {blocked}");

    // The real Claude Code CLI runs in its agent image.
    let (claude, _) = start(
        image(&tags.agent_claude),
        &net,
        "claude",
        &["sleep", "infinity"],
    )
    .await?;
    let version = exec_ok(&docker, claude.id(), None, &["claude", "--version"]).await?;
    ensure!(version.contains("(Claude Code)"), "{version}");

    // Teardown: dropping the containers and the network leaves nothing of this process behind.
    for container in [upstream, double, mitm, tester, agent, claude] {
        container.rm().await?;
    }
    drop(net);
    let left = cleanup::sweep(&docker, Some(std::process::id())).await?;
    ensure!(left == 0, "{left} containers or networks were left behind");
    Ok(())
}
