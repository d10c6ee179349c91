//! Fetching on the host: pinned wheels with pip, and the Claude Code CLI out of its wheel.
//!
//! Fetching happens here, where the host's network settings (its CA bundle, `PIP_CERT`, a
//! corporate proxy) already work; image builds then run with no network at all, so no
//! certificate of the build host can end up in an image.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use super::{ImageError, io_err, tail};
use crate::progress::Step;

/// pip's target: the images' Python (Debian trixie's CPython 3.13) on x86_64 glibc.
const PIP_PLATFORM_ARGS: &[&str] = &[
    "--only-binary=:all:",
    "--python-version",
    "3.13",
    "--implementation",
    "cp",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_34_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "any",
];

/// The member of the claude-agent-sdk wheel that is the Claude Code CLI.
const CLAUDE_IN_WHEEL: &str = "claude_agent_sdk/_bundled/claude";

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// Downloads the wheels a requirements file pins (with hashes) into a cached wheelhouse, which
/// also holds the requirements file as `requirements.txt`. Reused while the pins are the same.
pub async fn wheelhouse(cache: &Path, requirements: &str) -> Result<PathBuf, ImageError> {
    let dir = cache.join("wheels").join(short_hash(requirements));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let step = Step::start(format!("downloading pinned wheels into {}", dir.display()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io_err("creating the wheelhouse"))?;
    let reqs = dir.join("requirements.txt");
    std::fs::write(&reqs, requirements).map_err(io_err("writing requirements.txt"))?;
    pip_download(&reqs, &dir).await.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    std::fs::write(dir.join(".complete"), b"").map_err(io_err("marking the wheelhouse"))?;
    step.done();
    Ok(dir)
}

async fn pip_download(requirements: &Path, dest: &Path) -> Result<(), ImageError> {
    let output = tokio::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--progress-bar",
            "off",
        ])
        .args(PIP_PLATFORM_ARGS)
        .arg("-r")
        .arg(requirements)
        .arg("-d")
        .arg(dest)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| ImageError::StepFailed {
            image: "wheels".into(),
            step: "python3 -m pip download".into(),
            tail: e.to_string(),
            hint: "bottle fetches Python wheels with the host's pip: install python3 and pip \
                   (e.g. `apt-get install python3-pip`)."
                .into(),
        })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(ImageError::StepFailed {
            image: "wheels".into(),
            step: format!("pip download -r {}", requirements.display()),
            tail: tail(&text, 20),
            hint: "check that PyPI is reachable from this host (behind a TLS-intercepting proxy, \
                   point PIP_CERT or SSL_CERT_FILE at its CA bundle)."
                .into(),
        });
    }
    Ok(())
}

/// The Claude Code CLI, extracted from the pinned claude-agent-sdk wheel into the cache.
pub async fn claude_binary(cache: &Path, requirement: &str) -> Result<PathBuf, ImageError> {
    let dir = cache.join("claude").join(short_hash(requirement));
    let binary = dir.join("claude");
    if binary.exists() {
        return Ok(binary);
    }
    let wheels = wheelhouse(cache, requirement).await?;
    let step = Step::start("extracting the Claude Code CLI from the claude-agent-sdk wheel");
    let wheel = std::fs::read_dir(&wheels)
        .map_err(io_err("listing the wheelhouse"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ImageError::StepFailed {
            image: "claude".into(),
            step: "find the claude-agent-sdk wheel".into(),
            tail: format!("no .whl in {}", wheels.display()),
            hint: "delete the wheelhouse folder and try again.".into(),
        })?;
    std::fs::create_dir_all(&dir).map_err(io_err("creating the claude cache"))?;
    let partial = dir.join("claude.partial");
    let into = partial.clone();
    tokio::task::spawn_blocking(move || extract_member(&wheel, CLAUDE_IN_WHEEL, &into))
        .await
        .expect("extraction task panicked")?;
    // Rename last, so an interrupted extraction never looks like a finished one.
    std::fs::rename(&partial, &binary).map_err(io_err("installing the claude binary"))?;
    // The wheel itself is no longer needed; the binary is what the image takes.
    let _ = std::fs::remove_dir_all(&wheels);
    step.done();
    Ok(binary)
}

fn extract_member(zip_path: &Path, member: &str, dest: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(zip_path).map_err(io_err("opening the wheel"))?;
    let bad = |e: zip::result::ZipError| ImageError::StepFailed {
        image: "claude".into(),
        step: format!("extract {member} from {}", zip_path.display()),
        tail: e.to_string(),
        hint: "the pinned wheel's layout may have changed; see notes/claude-code.md.".into(),
    };
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    let mut entry = archive.by_name(member).map_err(bad)?;
    let mut out = std::fs::File::create(dest).map_err(io_err("writing the claude binary"))?;
    std::io::copy(&mut entry, &mut out).map_err(io_err("writing the claude binary"))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("making claude executable"))?;
    Ok(())
}
