//! The launcher on a real Docker engine: its executor (every start that fails, at any step and
//! for any reason, leaves nothing), and the real `bottle` binary end to end (start, a probe
//! through the chain, ps, logs, stop; and its errors on bad input, with their exit codes).
//!
//! Nothing here routes off the machine: mitmproxy's egress is an internal network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::io::AsyncBufReadExt;

use anyhow::{Context, Result, ensure};
use bollard::Docker;
use bottle::executor::{self, StartError, StartOptions, Step};
use bottle::launch::{LaunchError, exit};
use bottle::plan::{
    self, AgentSpec, BottlePlan, BottleSpec, EgressSpec, Role, ScannerKind, ScannerSpec,
};
use bottle_harness::images::{self, TestImages};
use bottle_harness::network::InternalNetwork;
use bottle_harness::probe::{self, Client, ProbeRequest, Protocol};
use bottle_harness::{fixture_bins, run};

/// A bottle of the probe agent and the double, its egress an internal network of the test.
fn test_plan(images: &TestImages, name: &str, egress: &str) -> BottlePlan {
    plan::plan(&BottleSpec {
        name: name.into(),
        agent: AgentSpec {
            image: images.agent.clone(),
            command: vec!["sleep".into(), "infinity".into()],
            env: BTreeMap::new(),
            secret_env: BTreeSet::new(),
            limits: Default::default(),
        },
        scanner: ScannerSpec {
            kind: ScannerKind::Double,
            image: images.fixtures.clone(),
            entrypoint: Some(vec!["pipelock-double".into()]),
        },
        mitm_image: images.mitmproxy.clone(),
        addon_dir: None,
        egress: EgressSpec {
            network: Some(egress.into()),
            allowlist: vec!["example.com".into()],
            any_host: false,
            upstream_ca: None,
            ssrf_allow: vec![],
        },
        credentials: vec![],
        test_verdict_allow: false,
    })
    .expect("a valid plan")
}

fn options() -> StartOptions {
    StartOptions {
        extra_labels: run::labels().into_iter().collect(),
        ..StartOptions::default()
    }
}

/// This process's (or `pid`'s) staged temporary files.
fn temp_files_of(pid: u32) -> Vec<String> {
    let prefix = format!("bottle-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

async fn assert_nothing_left(docker: &Docker, name: &str, pid: u32) -> Result<()> {
    ensure!(
        !executor::exists(docker, name).await?,
        "bottle {name} left containers, networks or volumes behind"
    );
    let files = temp_files_of(pid);
    ensure!(files.is_empty(), "temporary files left: {files:?}");
    Ok(())
}

#[tokio::test]
async fn a_start_that_fails_at_any_step_removes_all_it_made() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let egress = InternalNetwork::create(&docker, "launcher-egress").await?;
    for step in Step::ALL {
        let name = run::unique("rollback");
        let plan = test_plan(&images, &name, &egress.name);
        let options = StartOptions {
            fail_at: Some(step),
            ..options()
        };
        let err = executor::start(&docker, &plan, &options)
            .await
            .expect_err("the injected failure");
        ensure!(
            matches!(err, StartError::Injected(s) if s == step),
            "{step:?}: {err}"
        );
        assert_nothing_left(&docker, &name, std::process::id())
            .await
            .with_context(|| format!("after a failure at {step:?}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_ca_that_never_appears_or_a_component_that_dies_is_a_clear_error() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let egress = InternalNetwork::create(&docker, "launcher-egress").await?;

    let name = run::unique("noca");
    let mut plan = test_plan(&images, &name, &egress.name);
    plan.ca.mitm_cert = "/home/mitmproxy/.mitmproxy/never-written.pem".into();
    let short_wait = StartOptions {
        ca_timeout: std::time::Duration::from_secs(2),
        ..options()
    };
    let err = executor::start(&docker, &plan, &short_wait)
        .await
        .expect_err("no CA");
    let text = err.to_string();
    ensure!(
        matches!(err, StartError::CaNeverAppeared { .. }) && text.contains("never-written.pem"),
        "{text}"
    );
    ensure!(LaunchError::from(err).exit_code() == exit::START_FAILED);
    assert_nothing_left(&docker, &name, std::process::id()).await?;

    let name = run::unique("dies");
    let mut plan = test_plan(&images, &name, &egress.name);
    let scanner = plan
        .containers
        .iter_mut()
        .find(|c| c.role == Role::Scanner)
        .unwrap();
    scanner.command = vec!["run".into(), "--config".into(), "/nonexistent.yaml".into()];
    let err = executor::start(&docker, &plan, &options())
        .await
        .expect_err("the scanner exits");
    let text = err.to_string();
    ensure!(
        matches!(err, StartError::ComponentExited { .. }) && text.contains("nonexistent.yaml"),
        "the error shows the scanner's own output: {text}"
    );
    assert_nothing_left(&docker, &name, std::process::id()).await
}

#[tokio::test]
async fn a_missing_image_or_a_name_in_use_fails_before_anything_is_made() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let egress = InternalNetwork::create(&docker, "launcher-egress").await?;

    let name = run::unique("noimage");
    let mut plan = test_plan(&images, &name, &egress.name);
    plan.containers[2].image = "bottle-agent:no-such-tag".into();
    let err = executor::start(&docker, &plan, &options())
        .await
        .expect_err("no image");
    ensure!(
        err.to_string().contains("bottle-agent:no-such-tag"),
        "{err}"
    );
    ensure!(LaunchError::from(err).exit_code() == exit::IMAGE_UNAVAILABLE);
    assert_nothing_left(&docker, &name, std::process::id()).await?;

    // The addon's test-only switch (the verdict stubbed to allow) starts only for the suite.
    let name = run::unique("switched");
    let mut plan = test_plan(&images, &name, &egress.name);
    let mitm = plan.containers.iter_mut().find(|c| c.role == Role::Mitm);
    mitm.context("no mitm")?
        .env
        .insert(bottle::plan::TEST_SWITCHES_ENV.into(), "1".into());
    let err = executor::start(&docker, &plan, &options())
        .await
        .expect_err("a test switch outside the suite");
    ensure!(matches!(err, StartError::TestSwitches), "{err}");
    ensure!(
        err.to_string().contains("only the conformance suite"),
        "{err}"
    );
    assert_nothing_left(&docker, &name, std::process::id()).await?;

    let name = run::unique("twice");
    let plan = test_plan(&images, &name, &egress.name);
    let running = executor::start(&docker, &plan, &options()).await?;
    let second = executor::start(&docker, &plan, &options()).await;
    let result = async {
        let err = second.expect_err("the name is taken");
        ensure!(matches!(err, StartError::NameInUse(_)), "{err}");
        ensure!(err.to_string().contains(&format!("bottle stop {name}")));
        // The first bottle is untouched by the refused start.
        let agent = docker
            .inspect_container(&running.ids[&Role::Agent], None)
            .await?;
        ensure!(agent.state.and_then(|s| s.running) == Some(true));
        Ok(())
    }
    .await;
    let removed = executor::remove(&docker, &name).await;
    result?;
    // The volumes: the agent's socket and the scanner's resolver file.
    ensure!(
        removed.containers == 4 && removed.networks == 1 && removed.volumes == 2,
        "{removed:?}"
    );
    assert_nothing_left(&docker, &name, std::process::id()).await
}

/// The `bottle` binary cargo built with the workspace (next to this test's folder).
fn bottle_binary() -> Result<PathBuf> {
    // Builds the workspace, binaries included, unless the setup script just did.
    fixture_bins::get()?;
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary lives in target/<profile>/deps")?
        .join("bottle");
    ensure!(path.is_file(), "{} is not built", path.display());
    Ok(path)
}

struct Bottle {
    binary: PathBuf,
    double_image: String,
}

/// No launcher command here takes this long; a hang fails the test instead of stalling it.
const COMMAND_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

impl Bottle {
    async fn run(&self, args: &[&str]) -> Result<(Output, u32)> {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<(Output, u32)> {
        let mut command = tokio::process::Command::new(&self.binary);
        command.args(args).envs(env.iter().copied());
        self.output(command).await
    }

    /// Runs `command` (with the double's image in its environment, no stdin) to its end.
    async fn output(&self, mut command: tokio::process::Command) -> Result<(Output, u32)> {
        let shown = format!("{:?}", command.as_std());
        let child = command
            .env(bottle::launch::DOUBLE_IMAGE_ENV, &self.double_image)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("a child pid")?;
        let output = tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output())
            .await
            .with_context(|| format!("{shown} did not finish in time"))??;
        Ok((output, pid))
    }
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_manifest(dir: &Path, text: &str) -> Result<String> {
    let path = dir.join("bottle.toml");
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

/// What a test of the binary needs: the engine, the images, an internal egress network, the
/// binary, a folder for manifests and a bottle name of its own.
struct CliTest {
    docker: Docker,
    images: TestImages,
    egress: InternalNetwork,
    bottle: Bottle,
    dir: tempfile::TempDir,
    name: String,
}

impl CliTest {
    async fn new(prefix: &str) -> Result<CliTest> {
        let docker = bottle::docker::connect().await?;
        let images = images::ensure(&docker).await?;
        let egress = InternalNetwork::create(&docker, "launcher-egress").await?;
        let bottle = Bottle {
            binary: bottle_binary()?,
            double_image: images.fixtures.clone(),
        };
        Ok(CliTest {
            docker,
            images,
            egress,
            bottle,
            dir: tempfile::tempdir()?,
            name: format!("{prefix}-{}", std::process::id()),
        })
    }

    /// A bottle.toml for the probe agent running `command` (a TOML array), egress internal.
    fn manifest(&self, command: &str) -> Result<String> {
        write_manifest(
            self.dir.path(),
            &format!(
                "name = \"{}\"\n[agent]\nimage = \"{}\"\ncommand = {command}\n\
                 [egress]\nallowlist = [\"api.anthropic.com\"]\nnetwork = \"{}\"\n",
                self.name, self.images.agent, self.egress.name
            ),
        )
    }
}

#[tokio::test]
async fn the_bottle_binary_starts_a_bottle_a_probe_is_blocked_and_stop_leaves_nothing() -> Result<()>
{
    let test = CliTest::new("cli").await?;
    let (docker, bottle, name) = (&test.docker, &test.bottle, &test.name);
    let manifest = test.manifest(r#"["sleep", "infinity"]"#)?;
    let args = [
        "start",
        "--detach",
        "--scanner",
        "double",
        "--manifest",
        &manifest,
    ];
    let (started, pid) = bottle.run(&args).await?;
    let result = async {
        let err = stderr(&started);
        ensure!(code(&started) == 0, "bottle start failed:\n{err}");
        ensure!(
            err.contains(bottle::render::DOUBLE_WARNING),
            "no double warning:\n{err}"
        );
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("claude-bottle: mitm ca fingerprint: "))
            .collect();
        ensure!(lines.len() == 1, "the fingerprint line once:\n{err}");

        // The agent trusts exactly the CA whose fingerprint was printed.
        let agent = format!("bottle-{name}-agent");
        let installed =
            bottle::exec::exec(docker, &agent, None, &["cat", plan::AGENT_CA_PATH]).await?;
        let fingerprint = executor::fingerprint(&installed.stdout)?;
        ensure!(
            lines[0] == executor::fingerprint_line(&fingerprint),
            "{} vs {fingerprint}",
            lines[0]
        );

        // A secret POST through the chain gets the scanner's 403; a host off the allowlist
        // too. Neither needs an upstream: nothing leaves the machine.
        for (request, why) in [
            (
                ProbeRequest::post(
                    "https://api.anthropic.com/v1/messages",
                    r#"{"messages": [{"role": "user", "content": "AKIAIOSFODNN7EXAMPLE"}]}"#,
                )
                .header("content-type", "application/json"),
                "a secret",
            ),
            (
                ProbeRequest::get("https://example.com/"),
                "not on the allowlist",
            ),
        ] {
            let result = probe::run(docker, &agent, Client::Curl, Protocol::H2, &request).await?;
            ensure!(
                result.status == Some(403) && result.text().contains("blocked"),
                "{why}: {result:?}"
            );
        }

        // A second start under the same name is refused and changes nothing.
        let (again, _) = bottle.run(&args).await?;
        ensure!(
            code(&again) == i32::from(exit::NAME_IN_USE),
            "{}",
            stderr(&again)
        );

        let (ps, _) = bottle.run(&["ps"]).await?;
        let listed = String::from_utf8_lossy(&ps.stdout).into_owned();
        ensure!(
            listed.lines().any(|l| l.starts_with(name.as_str())
                && l.contains("double")
                && l.contains("running")),
            "{listed}"
        );
        let (logs, _) = bottle.run(&["logs", name, "--component", "mitm"]).await?;
        ensure!(
            String::from_utf8_lossy(&logs.stdout).contains("bottle addon ready"),
            "{logs:?}"
        );
        Ok(())
    }
    .await;

    let (stopped, _) = bottle.run(&["stop", name]).await?;
    result?;
    ensure!(code(&stopped) == 0, "{}", stderr(&stopped));
    assert_nothing_left(docker, name, pid).await?;
    let (again, _) = bottle.run(&["stop", name]).await?;
    ensure!(code(&again) == i32::from(exit::NO_SUCH_BOTTLE));
    Ok(())
}

#[tokio::test]
async fn the_bottle_binary_refuses_bad_input_clearly_and_leaves_nothing() -> Result<()> {
    let test = CliTest::new("bad").await?;
    let (docker, images, bottle, dir, name) = (
        &test.docker,
        &test.images,
        &test.bottle,
        &test.dir,
        &test.name,
    );

    // A bad manifest: the file, the line and the fix.
    let manifest = write_manifest(
        dir.path(),
        &format!("name = \"{name}\"\n[egress]\nallowlist = [\"https://github.com\"]\n"),
    )?;
    let (out, pid) = bottle
        .run(&["start", "--scanner", "double", "--manifest", &manifest])
        .await?;
    let err = stderr(&out);
    ensure!(code(&out) == i32::from(exit::BAD_MANIFEST), "{err}");
    ensure!(
        err.contains("bottle.toml:3:") && err.contains("fix:"),
        "{err}"
    );
    assert_nothing_left(docker, name, pid).await?;

    let good = format!(
        "name = \"{name}\"\n[agent]\nimage = \"{}\"\ncommand = [\"true\"]\n",
        images.agent
    );
    let manifest = write_manifest(dir.path(), &good)?;

    // No Docker: where it looked, and what to do.
    let (out, _) = bottle
        .run_with(
            &["start", "--scanner", "double", "--manifest", &manifest],
            &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
        )
        .await?;
    let err = stderr(&out);
    ensure!(code(&out) == i32::from(exit::NO_DOCKER), "{err}");
    ensure!(err.contains("Start the Docker daemon"), "{err}");

    // The real scanner's image is not here and no registry answers: both ways out are named.
    // On an engine that has it (`docker load`ed, or pulled), there is no refusal to see.
    let entry = bottle::images::pinned::lock()?
        .entry(bottle::images::pinned::Pinned::Pipelock)
        .clone();
    let mut names = vec![entry.tagged()];
    names.extend(entry.reference().ok());
    let mut present = None;
    for image in &names {
        if docker.inspect_image(image).await.is_ok() {
            present = Some(image.clone());
        }
    }
    match present {
        Some(image) => eprintln!(
            "pipelock's pinned image is on this engine ({image}): the refusal of a start \
             without it is not checked here"
        ),
        None => {
            let (out, pid) = bottle.run(&["start", "--manifest", &manifest]).await?;
            let err = stderr(&out);
            ensure!(code(&out) == i32::from(exit::IMAGE_UNAVAILABLE), "{err}");
            ensure!(
                err.contains("--scanner double") && err.contains("docker load"),
                "{err}"
            );
            assert_nothing_left(docker, name, pid).await?;
        }
    }

    // An agent image that is not here.
    let missing = good.replace(&images.agent, "bottle-agent:no-such-tag");
    let manifest = write_manifest(dir.path(), &missing)?;
    let (out, pid) = bottle
        .run(&["start", "--scanner", "double", "--manifest", &manifest])
        .await?;
    let err = stderr(&out);
    ensure!(code(&out) == i32::from(exit::IMAGE_UNAVAILABLE), "{err}");
    ensure!(err.contains("bottle-agent:no-such-tag"), "{err}");
    assert_nothing_left(docker, name, pid).await?;

    // A dry run starts nothing and shows the reserved block.
    let (out, pid) = bottle
        .run(&[
            "start",
            "--dry-run",
            "--format",
            "json",
            "--scanner",
            "double",
            "--manifest",
            &manifest,
        ])
        .await?;
    ensure!(code(&out) == 0, "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        json["egress"]["mitm"] == serde_json::json!({"enabled": true, "ca_fingerprint": null}),
        "{json}"
    );
    assert_nothing_left(docker, name, pid).await
}

/// An attached start runs the agent command once the CA is in, passes its output and exit code
/// through, and removes the bottle when it ends; with a terminal the agent gets a TTY; Ctrl-C
/// removes the bottle too.
#[tokio::test]
async fn an_attached_start_runs_the_agent_then_removes_everything() -> Result<()> {
    let test = CliTest::new("attached").await?;
    let (docker, bottle, name) = (&test.docker, &test.bottle, &test.name);
    let manifest_with = |command: &str| test.manifest(command);

    // No terminal: output streamed, the agent's exit code is bottle's.
    let manifest = manifest_with(
        r#"["sh", "-c", "curl -s -o /dev/null -w 'status=%{http_code}' https://example.com/; exit 7"]"#,
    )?;
    let (out, pid) = bottle
        .run(&["start", "--scanner", "double", "--manifest", &manifest])
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        code(&out) == 7 && stdout.contains("status=403"),
        "exit {}, stdout {stdout}, stderr {}",
        code(&out),
        stderr(&out)
    );
    assert_nothing_left(docker, name, pid).await?;

    // A terminal (script(1) gives bottle one): the agent has a TTY.
    let manifest = manifest_with(r#"["sh", "-c", "test -t 0 && echo agent-has-a-tty; exit 3"]"#)?;
    let command_line = format!(
        "{} start --scanner double --manifest {manifest}",
        bottle.binary.display()
    );
    let mut script = tokio::process::Command::new("script");
    script.args(["-qec", &command_line, "/dev/null"]);
    let (out, _) = bottle.output(script).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        code(&out) == 3 && stdout.contains("agent-has-a-tty"),
        "exit {}, output {stdout}",
        code(&out)
    );
    ensure!(!executor::exists(docker, name).await?, "left behind");

    // Ctrl-C while the agent runs: everything is removed, exit 130.
    let manifest = manifest_with(r#"["sleep", "infinity"]"#)?;
    let mut running = bottle.attached(&manifest).await?;
    let (status, err) = running.signal(libc::SIGINT).await?;
    ensure!(
        status.code() == Some(i32::from(exit::INTERRUPTED)) && err.contains("interrupted"),
        "{status:?}\n{err}"
    );
    assert_nothing_left(docker, name, running.pid).await
}

/// A launcher killed outright leaves its bottle running: `bottle ps` finds it by its labels and
/// `bottle stop` removes it.
#[tokio::test]
async fn a_bottle_left_by_a_killed_launcher_is_listed_and_stopped() -> Result<()> {
    let test = CliTest::new("crashed").await?;
    let (docker, bottle, name) = (&test.docker, &test.bottle, &test.name);
    let manifest = test.manifest(r#"["sleep", "infinity"]"#)?;
    let mut running = bottle.attached(&manifest).await?;
    running.signal(libc::SIGKILL).await?;
    let result = async {
        ensure!(
            executor::exists(docker, name).await?,
            "nothing was left to find"
        );
        let (ps, _) = bottle.run(&["ps"]).await?;
        let listed = String::from_utf8_lossy(&ps.stdout).into_owned();
        ensure!(
            listed.lines().any(|l| l.starts_with(name.as_str())),
            "{listed}"
        );
        Ok(())
    }
    .await;
    let (stopped, _) = bottle.run(&["stop", name]).await?;
    result?;
    ensure!(code(&stopped) == 0, "{}", stderr(&stopped));
    ensure!(!executor::exists(docker, name).await?, "left after stop");
    Ok(())
}

/// An attached `bottle start` that has started its bottle (the fingerprint line is out).
struct Attached {
    child: tokio::process::Child,
    pid: u32,
    stderr: tokio::task::JoinHandle<String>,
}

impl Bottle {
    async fn attached(&self, manifest: &str) -> Result<Attached> {
        let mut child = tokio::process::Command::new(&self.binary)
            .args(["start", "--scanner", "double", "--manifest", manifest])
            .env(bottle::launch::DOUBLE_IMAGE_ENV, &self.double_image)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("a child pid")?;
        // Read stderr to its end: a closed pipe would make bottle's own messages fail.
        let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let stderr = tokio::spawn(async move {
            let mut started_tx = Some(started_tx);
            let mut all = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("claude-bottle: mitm ca fingerprint") {
                    started_tx.take().map(|tx| tx.send(()));
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        tokio::time::timeout(COMMAND_LIMIT, started_rx)
            .await
            .context("the bottle never started")?
            .context("bottle ended before it started")?;
        Ok(Attached { child, pid, stderr })
    }
}

impl Attached {
    /// Sends `signal` and waits for the launcher to end: its status and everything on stderr.
    async fn signal(&mut self, signal: i32) -> Result<(std::process::ExitStatus, String)> {
        // SAFETY: signals a child process of this test.
        unsafe { libc::kill(self.pid as i32, signal) };
        let status = tokio::time::timeout(COMMAND_LIMIT, self.child.wait()).await??;
        let err = (&mut self.stderr).await?;
        Ok((status, err))
    }
}

#[tokio::test]
async fn the_preflight_passes_here_in_seconds_and_leaves_no_network() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let started = std::time::Instant::now();
    bottle::preflight::check(&docker, false).await?;
    ensure!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the preflight took {:?}",
        started.elapsed()
    );
    let left = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await?
        .into_iter()
        .filter_map(|n| n.name)
        .filter(|n| n == &format!("bottle-preflight-{}", std::process::id()))
        .count();
    ensure!(left == 0, "the preflight left its network");
    Ok(())
}
