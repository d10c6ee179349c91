//! The base image: a Debian root filesystem made by debootstrap and imported into Docker.

use std::path::Path;
use std::process::Stdio;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use super::recipes::{BASE_PRUNE, DEBIAN_PACKAGES, DEBIAN_SUITE, DEBIAN_VARIANT};
use super::{ImageError, tail, tar_stream};
use crate::progress::Step;

pub async fn build(
    docker: &Docker,
    tag: &str,
    mirror: &str,
    scratch: &Path,
) -> Result<(), ImageError> {
    let step = Step::start(format!(
        "building image {tag} (debootstrap {DEBIAN_SUITE}, ~1 min)"
    ));
    let rootfs = scratch.join("rootfs");
    let result = async {
        debootstrap(&rootfs, mirror, &step).await?;
        for dir in BASE_PRUNE {
            let _ = std::fs::remove_dir_all(rootfs.join(dir));
        }
        step.detail("importing the root filesystem into Docker");
        import(docker, &rootfs, tag).await
    }
    .await;
    unmount_below(&rootfs);
    result?;
    step.done();
    Ok(())
}

async fn debootstrap(rootfs: &Path, mirror: &str, step: &Step) -> Result<(), ImageError> {
    let failed = |step: &str, tail: String, hint: &str| ImageError::StepFailed {
        image: "base".into(),
        step: step.into(),
        tail,
        hint: hint.into(),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(failed(
            "debootstrap",
            "not running as root".into(),
            "debootstrap must run as root to build the base image: run this once as root \
             (for example `sudo -E cargo nextest run`); later runs reuse the image.",
        ));
    }
    let args = [
        format!("--variant={DEBIAN_VARIANT}"),
        format!("--include={}", DEBIAN_PACKAGES.join(",")),
        DEBIAN_SUITE.to_string(),
        rootfs.display().to_string(),
        mirror.to_string(),
    ];
    step.detail(&format!("debootstrap {}", args.join(" ")));
    let output = tokio::process::Command::new("debootstrap")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            failed(
                "debootstrap",
                e.to_string(),
                "install debootstrap on this host (`apt-get install debootstrap`).",
            )
        })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let log =
            std::fs::read_to_string(rootfs.join("debootstrap/debootstrap.log")).unwrap_or_default();
        text.push_str(&log);
        return Err(failed(
            "debootstrap",
            tail(&text, 20),
            "check that the Debian mirror is reachable (set BOTTLE_DEBIAN_MIRROR to another).",
        ));
    }
    Ok(())
}

async fn import(docker: &Docker, rootfs: &Path, tag: &str) -> Result<(), ImageError> {
    let (repo, version) = tag.split_once(':').expect("tags are repo:hash");
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(version)
        .changes(vec![
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "LABEL org.bottle.recipe=base".into(),
            "CMD [\"/bin/bash\"]".into(),
        ])
        .build();
    let (tar_bytes, tar) = tar_stream(rootfs)?;
    let body = bollard::body_try_stream(tar_bytes);
    let mut stream = docker.create_image(Some(options), Some(body), None);
    while let Some(item) = stream.next().await {
        item.map_err(|source| ImageError::Engine {
            context: format!("importing {tag}"),
            source,
        })?;
    }
    tar.finish().await
}

/// debootstrap mounts /proc and /sys in the target; on failure they can stay mounted, and the
/// scratch folder must never be removed through a live mount.
fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(point)
            .status();
    }
}
