//! The images themselves: reused when present, free of the build host's certificates, and a
//! failed build leaves nothing half-made behind.

use std::collections::HashSet;

use anyhow::{Result, bail, ensure};
use bollard::Docker;
use bollard::query_parameters::ListImagesOptionsBuilder;
use bottle::images::{self, ImageError, ImageOptions};
use bottle_harness::exec::exec;
use bottle_harness::{cleanup, run};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

fn image(tag: &str) -> GenericImage {
    let (repo, version) = tag.split_once(':').expect("tags are repo:hash");
    GenericImage::new(repo, version)
}

/// The base64 body of each PEM certificate in `bundle`, as one string each.
fn pem_bodies(bundle: &str) -> Vec<String> {
    bundle
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|b| b.split("-----END CERTIFICATE-----").next())
        .map(|b| b.split_whitespace().collect())
        .collect()
}

/// Every file below `dir`.
fn walk(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(dir)];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path)
            } else {
                files.push(path)
            }
        }
    }
    files
}

/// A 64-character line from the middle of a certificate: a fixed string `grep -F` can look for
/// in any PEM file, whatever its line layout.
fn marker(body: &str) -> String {
    let mid = (body.len() / 2 / 64) * 64;
    body[mid..(mid + 64).min(body.len())].to_string()
}

#[tokio::test]
async fn no_image_carries_the_build_hosts_certificates() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    cleanup::sweep(&docker, None).await?;
    let tags = bottle_harness::images::ensure(&docker).await?;

    // The certificates the host trusts beyond the public roots: the TLS-intercepting proxy's
    // CA on machines behind one. Public roots (the host's ca-certificates package, the image's
    // Debian bundle) are in images on purpose, and certifi carries them too.
    let host_path = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    let host_bundle = std::fs::read_to_string(&host_path)?;
    let mut public_roots = String::new();
    for entry in walk("/usr/share/ca-certificates") {
        public_roots.push_str(&std::fs::read_to_string(entry).unwrap_or_default());
    }
    let probe = image(&tags.base)
        .with_cmd(["sleep", "infinity"])
        .with_labels(run::labels())
        .with_network("none")
        .start()
        .await?;
    let debian = exec(
        &docker,
        probe.id(),
        None,
        &["cat", "/etc/ssl/certs/ca-certificates.crt"],
    )
    .await?
    .stdout;
    let debian: HashSet<String> = pem_bodies(&debian).into_iter().collect();
    let public: HashSet<String> = pem_bodies(&public_roots).into_iter().collect();
    let host_only: Vec<String> = pem_bodies(&host_bundle)
        .into_iter()
        .filter(|b| !debian.contains(b) && !public.contains(b))
        .collect();
    probe.rm().await?;
    eprintln!(
        "{} certificate(s) of {host_path} are not Debian's; looking for them in every image",
        host_only.len()
    );
    // A certificate every image does carry: proves the search would find one if it were there.
    let control = marker(
        debian
            .iter()
            .next()
            .expect("Debian ships root certificates"),
    );

    for (name, tag) in tags.all() {
        let container = image(tag)
            .with_cmd(["sleep", "infinity"])
            .with_labels(run::labels())
            .with_network("none")
            .start()
            .await?;
        // One pass over the whole filesystem for every host certificate and the control.
        let mut search = String::from("grep -rlF");
        for needle in host_only.iter().map(|b| marker(b)).chain([control.clone()]) {
            search.push_str(&format!(" -e '{needle}'"));
        }
        search.push_str(
            " / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; true",
        );
        let found = exec(&docker, container.id(), Some("0"), &["sh", "-c", &search]).await?;
        let hits: Vec<&str> = found.stdout.lines().collect();
        // The system bundle holds the control certificate: proof the search finds what is there.
        ensure!(
            hits.contains(&"/etc/ssl/certs/ca-certificates.crt"),
            "{name}: the control certificate was not found, so the search cannot be trusted"
        );
        // A matching file may hold only the control; look in each for a host certificate.
        for file in hits {
            let text = exec(&docker, container.id(), Some("0"), &["cat", file])
                .await?
                .stdout;
            for body in &host_only {
                ensure!(
                    !text.contains(&marker(body)),
                    "{name} ({tag}) carries a certificate of the build host in {file}"
                );
            }
        }
        let env = docker
            .inspect_image(tag)
            .await?
            .config
            .and_then(|c| c.env)
            .unwrap_or_default();
        for var in [
            "SSL_CERT_FILE",
            "PIP_CERT",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
        ] {
            ensure!(
                !env.iter().any(|e| e.starts_with(&format!("{var}="))),
                "{name} sets {var} in its environment"
            );
        }
        container.rm().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_second_ensure_reuses_every_image() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let first = bottle_harness::images::build_missing(&docker).await?;
    let ids = |docker: Docker, tags: Vec<String>| async move {
        let mut ids = Vec::new();
        for tag in tags {
            ids.push(docker.inspect_image(&tag).await?.id);
        }
        anyhow::Ok(ids)
    };
    let tags: Vec<String> = first.all().iter().map(|(_, t)| t.to_string()).collect();
    let before = ids(docker.clone(), tags.clone()).await?;
    let second = bottle_harness::images::build_missing(&docker).await?;
    let again: Vec<String> = second.all().iter().map(|(_, t)| t.to_string()).collect();
    ensure!(
        tags == again,
        "tags changed between two ensures: {tags:?} vs {again:?}"
    );
    ensure!(
        before == ids(docker.clone(), again).await?,
        "an image was rebuilt"
    );
    Ok(())
}

async fn dangling_images(docker: &Docker) -> Result<usize> {
    let filters = std::collections::HashMap::from([("dangling", vec!["true"])]);
    let options = ListImagesOptionsBuilder::new().filters(&filters).build();
    Ok(docker.list_images(Some(options)).await?.len())
}

#[tokio::test]
async fn a_failed_build_names_its_step_shows_its_output_and_leaves_nothing() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let tags = bottle_harness::images::ensure(&docker).await?;
    let dangling_before = dangling_images(&docker).await?;
    let tag = format!("bottle-broken:{}", run::unique("t"));
    let dockerfile = "ARG BASE\nFROM ${BASE}\nRUN echo first-step > /first\n\
                      RUN echo the-failing-step-said-this && exit 3\nRUN echo never\n";
    let err = images::build_from_dockerfile(
        &docker,
        &ImageOptions::from_env(),
        &tag,
        dockerfile,
        &tags.base,
    )
    .await
    .expect_err("the build must fail");
    let ImageError::StepFailed { step, tail, .. } = &err else {
        bail!("expected a StepFailed error, got {err}");
    };
    ensure!(
        step.contains("RUN echo the-failing-step-said-this"),
        "step: {step}"
    );
    ensure!(tail.contains("the-failing-step-said-this"), "tail: {tail}");
    ensure!(
        !images::exists(&docker, &tag).await?,
        "the failed image got tagged"
    );
    ensure!(
        dangling_images(&docker).await? <= dangling_before,
        "the failed build left untagged layers behind"
    );
    Ok(())
}
