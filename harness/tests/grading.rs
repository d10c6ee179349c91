//! What the suite grades (`subject`): a scanner image given by reference runs the way pipelock's
//! does and is named by its own `/health`, never by its tag; mitmproxy given by reference runs
//! the bottle; `--scanner pipelock` without pipelock's image fails at once with the ways out.
//! Real pipelock cannot be pulled here: the real lane is the maintainer's (README, "Grading real
//! images"); these tests check its mechanics with what this machine has.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bollard::Docker;
use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use bottle::images::pinned::{self, Pinned};
use bottle::launch::ImagesMode;
use bottle::plan::{Role, ScannerKind};
use bottle_harness::chain::{Chain, ChainOptions};
use bottle_harness::exec::exec;
use bottle_harness::images::{self, TestImages};
use bottle_harness::subject::{self, RunInfo, ScannerChoice, Selection};
use futures_util::StreamExt;

fn selection(scanner: ScannerChoice) -> Selection {
    Selection {
        scanner,
        images: ImagesMode::Local,
        scanner_image: None,
        mitm_image: None,
    }
}

/// An image made for a test from a local one (`setup`, a shell script run as root in it first,
/// then `changes`, Dockerfile lines such as ENTRYPOINT), under a name of its own; removed on drop.
struct Shaped {
    docker: Docker,
    reference: String,
}

impl Shaped {
    async fn make(
        docker: &Docker,
        from: &str,
        repo: &str,
        setup: &str,
        changes: &str,
    ) -> Result<Shaped> {
        let tag = format!("t{}", std::process::id());
        let created = docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::new()
                        .name(&format!(
                            "bottle-test-shaping-{}-{tag}",
                            repo.replace('/', "-")
                        ))
                        .build(),
                ),
                ContainerCreateBody {
                    image: Some(from.to_string()),
                    user: Some("0".into()),
                    entrypoint: Some(vec!["sh".into(), "-ec".into(), setup.into()]),
                    cmd: Some(vec![]),
                    network_disabled: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let shaped = async {
            docker.start_container(&created.id, None).await?;
            let mut wait = docker.wait_container(&created.id, None);
            if let Some(status) = wait.next().await {
                status.context("the setup script failed")?;
            }
            docker
                .commit_container(
                    CommitContainerOptionsBuilder::new()
                        .container(&created.id)
                        .repo(repo)
                        .tag(&tag)
                        .changes(changes)
                        .build(),
                    ContainerConfig::default(),
                )
                .await
                .context("committing the image")
        }
        .await;
        docker
            .remove_container(
                &created.id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await?;
        shaped?;
        Ok(Shaped {
            docker: docker.clone(),
            reference: format!("{repo}:{tag}"),
        })
    }

    /// The fixtures image in pipelock's shape: its entrypoint runs the double with pipelock's
    /// command line, as pipelock's image runs `/pipelock`.
    async fn pipelock(docker: &Docker, fixtures: &str) -> Result<Shaped> {
        Shaped::make(
            docker,
            fixtures,
            "bottle-test/pipelock-shaped",
            "true",
            "ENTRYPOINT [\"pipelock-double\"]\nCMD [\"run\", \"--listen\", \"0.0.0.0:8888\"]",
        )
        .await
    }

    /// The mitmproxy built here in the official image's shape: it starts as root, and its
    /// entrypoint (as mitmproxy's docker-entrypoint.sh does) gives the `mitmproxy` user the
    /// owner of the confdir (in a 0700 home) and drops to that user for mitmdump (with setpriv
    /// where the official image has gosu). Run as an image not built here, it gets the
    /// capabilities that needs and no other (`Confinement::mitm`).
    async fn official_mitmproxy(docker: &Docker, mitmproxy: &str) -> Result<Shaped> {
        let entrypoint = r#"#!/bin/sh
set -eu
MITMPROXY_PATH=/home/mitmproxy/.mitmproxy
if [ -f "$MITMPROXY_PATH/mitmproxy-ca.pem" ]; then f="$MITMPROXY_PATH/mitmproxy-ca.pem"; else f="$MITMPROXY_PATH"; fi
usermod -o -u "$(stat -c %u "$f")" -g "$(stat -c %g "$f")" mitmproxy >/dev/null
case "$1" in
  mitmdump|mitmproxy|mitmweb) exec setpriv --reuid=mitmproxy --regid=mitmproxy --init-groups "$@" ;;
  *) exec "$@" ;;
esac
"#;
        // The confdir exists in the image, the user's own, in a home only it may enter (0700,
        // Debian's useradd default), as in the official image.
        let setup = format!(
            "cat > /usr/local/bin/docker-entrypoint.sh <<'END'\n{entrypoint}END\n\
             chmod 755 /usr/local/bin/docker-entrypoint.sh\n\
             install -d -o mitmproxy -g mitmproxy -m 755 /home/mitmproxy/.mitmproxy\n\
             chmod 700 /home/mitmproxy"
        );
        Shaped::make(
            docker,
            mitmproxy,
            "bottle-test/mitmproxy-official-shaped",
            &setup,
            "USER root\nENTRYPOINT [\"/usr/local/bin/docker-entrypoint.sh\"]\nCMD [\"mitmproxy\"]",
        )
        .await
    }
}

impl Drop for Shaped {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let reference = self.reference.clone();
        bottle_harness::run::block_on_thread(async move {
            let _ = docker
                .remove_image(
                    &reference,
                    Some(RemoveImageOptionsBuilder::new().force(true).build()),
                    None,
                )
                .await;
        });
    }
}

/// Brings a bottle up on `images`, checks that a clean GET passes and a secret POST gets the
/// scanner's 403 with nothing upstream, and takes it down.
async fn blocks_and_passes(docker: &Docker, images: &TestImages) -> Result<()> {
    let chain = Chain::up(docker, images, ChainOptions::default()).await?;
    let outcome = async {
        let curl = |args: &'static [&'static str]| {
            let chain = &chain;
            async move {
                let mut cmd = vec!["curl", "-sS", "-o", "-", "-w", "\n%{http_code}"];
                cmd.extend(args);
                let out = exec(chain.docker(), chain.id(Role::Agent), None, &cmd).await?;
                Ok::<_, anyhow::Error>(format!("{}{}", out.stdout, out.stderr))
            }
        };
        let clean = curl(&["https://api.anthropic.com/v1/hello"]).await?;
        ensure!(clean.ends_with("\n200"), "{clean}");
        let secret = curl(&[
            "-d",
            "key=AKIAIOSFODNN7EXAMPLE",
            "https://api.anthropic.com/v1/upload",
        ])
        .await?;
        ensure!(secret.ends_with("\n403"), "{secret}");
        ensure!(chain.upstream_records().await?.len() == 1);
        // mitmdump itself runs as its user with no capability, whatever its entrypoint kept.
        let status = exec(
            chain.docker(),
            chain.id(Role::Mitm),
            None,
            &["cat", "/proc/1/status"],
        )
        .await?
        .stdout;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        ensure!(field("Name:") == ["mitmdump"], "{status}");
        ensure!(field("Uid:").iter().all(|uid| *uid != "0"), "{status}");
        ensure!(field("CapEff:") == ["0000000000000000"], "{status}");
        ensure!(field("CapPrm:") == ["0000000000000000"], "{status}");
        Ok(chain.plan.clone())
    }
    .await;
    if outcome.is_err() {
        eprintln!("{}", chain.logs().await);
    }
    chain.down().await?;
    let plan = outcome?;
    let scanner = plan.container(Role::Scanner);
    ensure!(scanner.image == images.graded.scanner_image, "{scanner:?}");
    ensure!(plan.container(Role::Mitm).image == images.graded.mitm_image);
    Ok(())
}

#[tokio::test]
async fn a_double_under_another_name_run_as_pipelock_is_still_graded_as_the_double() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let shaped = Shaped::pipelock(&docker, &images.fixtures).await?;
    let asked = Selection {
        scanner_image: Some(shaped.reference.clone()),
        mitm_image: Some(images.mitmproxy.clone()),
        ..selection(ScannerChoice::Pipelock)
    };
    let graded = subject::grade(&docker, &asked, "unused", "unused").await?;
    eprintln!("{graded:#?}");
    // Run as pipelock runs (its own entrypoint), named by what it said on /health.
    ensure!(graded.scanner_kind == ScannerKind::Pipelock, "{graded:?}");
    ensure!(graded.scanner_image == shaped.reference, "{graded:?}");
    ensure!(graded.scanner_is_double(), "{graded:?}");
    ensure!(
        graded
            .scanner_label()
            .starts_with("pipelock-double 2.4.0-pipelock-double"),
        "{}",
        graded.scanner_label()
    );
    ensure!(
        graded.chosen.contains("--scanner-image"),
        "{}",
        graded.chosen
    );
    ensure!(graded.mitm_image == images.mitmproxy, "{graded:?}");
    ensure!(
        graded.mitm_version_line() == "Mitmproxy: 12.2.3",
        "{}",
        graded.mitm_version
    );

    let images = TestImages { graded, ..images };
    let run = RunInfo::collect(&docker, &images).await?;
    let scanner = &run.images[0];
    ensure!(
        scanner.role == "scanner" && scanner.reference == shaped.reference,
        "{run:?}"
    );
    ensure!(scanner.id.starts_with("sha256:"), "{scanner:?}");
    ensure!(
        run.markdown().contains("the pipelock double"),
        "{}",
        run.markdown()
    );
    // A bottle runs the scanner by that reference with the image's own entrypoint.
    blocks_and_passes(&docker, &images).await
}

/// The official mitmproxy image cannot be pulled here; one in its shape (root, an entrypoint
/// that drops to the `mitmproxy` user) given by `--mitm-image` runs a bottle as the local build
/// does.
#[tokio::test]
async fn a_mitmproxy_image_shaped_like_the_official_one_runs_the_bottle() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let shaped = Shaped::official_mitmproxy(&docker, &images.mitmproxy).await?;
    let asked = Selection {
        mitm_image: Some(shaped.reference.clone()),
        ..selection(ScannerChoice::Double)
    };
    let graded = subject::grade(&docker, &asked, "unused", &images.fixtures).await?;
    ensure!(graded.mitm_image == shaped.reference, "{graded:?}");
    ensure!(
        graded.mitm_version_line() == "Mitmproxy: 12.2.3",
        "{}",
        graded.mitm_version
    );
    let images = TestImages { graded, ..images };
    blocks_and_passes(&docker, &images).await
}

#[tokio::test]
async fn scanner_pipelock_without_its_image_fails_at_once_with_both_ways_out() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let started = Instant::now();
    let result = subject::grade(
        &docker,
        &selection(ScannerChoice::Pipelock),
        &images.mitmproxy,
        &images.fixtures,
    )
    .await;
    let elapsed = started.elapsed();
    let err = match result {
        Ok(graded) => {
            // A machine with pipelock's image (the maintainer's): it must not be the double.
            eprintln!("pipelock's image is here: {}", graded.scanner_label());
            ensure!(!graded.scanner_is_double(), "{graded:?}");
            return Ok(());
        }
        Err(e) => format!("{e:#}"),
    };
    eprintln!("after {elapsed:?}: {err}");
    ensure!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    ensure!(err.contains("--scanner pipelock"), "{err}");
    ensure!(err.contains("docker load -i pipelock.tar"), "{err}");
    ensure!(err.contains("--scanner double"), "{err}");
    Ok(())
}

#[tokio::test]
async fn auto_grades_pipelock_when_its_image_is_here_and_else_says_it_chose_the_double()
-> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let graded = subject::grade(
        &docker,
        &selection(ScannerChoice::Auto),
        &images.mitmproxy,
        &images.fixtures,
    )
    .await?;
    eprintln!("{}: {}", graded.scanner_label(), graded.chosen);
    let lock = pinned::lock()?;
    let pipelock_here = docker
        .inspect_image(&lock.entry(Pinned::Pipelock).reference()?)
        .await
        .is_ok()
        || docker
            .inspect_image(&lock.entry(Pinned::Pipelock).tagged())
            .await
            .is_ok();
    if pipelock_here {
        ensure!(graded.scanner_kind == ScannerKind::Pipelock, "{graded:?}");
        ensure!(!graded.scanner_is_double(), "{graded:?}");
    } else {
        ensure!(graded.scanner_kind == ScannerKind::Double, "{graded:?}");
        ensure!(graded.scanner_is_double(), "{graded:?}");
        ensure!(
            graded
                .chosen
                .starts_with("auto: no pipelock image here or pullable"),
            "{}",
            graded.chosen
        );
    }
    Ok(())
}
