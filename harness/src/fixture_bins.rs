//! The fixture binaries (recording upstream, pipelock double), built by cargo for the fixtures
//! image. Cargo is the source of truth: when the binaries are fresh this is a quick no-op.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub const FIXTURE_PACKAGES: [&str; 2] = ["bottle-upstream", "pipelock-double"];
/// The binaries of those packages that go into the fixtures image.
pub const FIXTURE_BINARIES: [&str; 4] = [
    "bottle-upstream",
    "pipelock-double",
    "pipelock-fidelity",
    "scanner-fake",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness lives in the workspace")
        .to_path_buf()
}

/// Set by the nextest setup script for the tests it runs before: the fixture binaries it built,
/// `:`-separated, so tests do not each run cargo again.
pub const ENV: &str = "BOTTLE_FIXTURE_BINARIES";

/// The fixture binaries: from [`ENV`] when the setup script built them, else built now.
pub fn get() -> Result<Vec<PathBuf>> {
    match std::env::var_os(ENV) {
        Some(list) => Ok(std::env::split_paths(&list).collect()),
        None => build(),
    }
}

/// Builds the fixture binaries and returns their paths.
///
/// It builds the whole workspace with all targets, not just the two packages: selecting a subset
/// of packages changes cargo's feature unification, so most dependencies would be compiled a
/// second time even right after `cargo nextest run` / `cargo test` built the workspace. With the
/// same unit set as the test build, this is a no-op (a few seconds at most) after it.
pub fn build() -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--workspace",
        "--all-targets",
        "--message-format=json-render-diagnostics",
    ]);
    let output = cmd
        .output()
        .with_context(|| format!("running {cargo} build"))?;
    if !output.status.success() {
        bail!(
            "building the fixture binaries failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut binaries = Vec::new();
    for line in output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let message: serde_json::Value = serde_json::from_slice(line)?;
        // `--all-targets` also builds each bin as a unit-test harness (`profile.test`): skip it.
        let is_fixture_bin = message["reason"] == "compiler-artifact"
            && message["target"]["kind"] == serde_json::json!(["bin"])
            && message["profile"]["test"] == false
            && FIXTURE_BINARIES
                .iter()
                .any(|p| message["target"]["name"] == *p);
        if let (true, Some(exe)) = (is_fixture_bin, message["executable"].as_str()) {
            binaries.push(PathBuf::from(exe));
        }
    }
    binaries.sort();
    if binaries.len() != FIXTURE_BINARIES.len() {
        bail!(
            "expected {} fixture binaries, cargo reported {binaries:?}",
            FIXTURE_BINARIES.len()
        );
    }
    Ok(binaries)
}
