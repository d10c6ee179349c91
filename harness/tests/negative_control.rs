//! The harness's own negative control: against a deliberately broken addon that allows every
//! request, the BLOCK and LOG scenarios must FAIL. A suite that passed here could not tell a
//! working chain from a broken one.

use anyhow::{Context, Result, ensure};
use bottle_harness::chain::ChainOptions;
use bottle_harness::scenario::{self, Client, Protocol};
use bottle_harness::{copy, fixture_bins, runner};

/// A copy of the addon whose verdict reading always says "allow".
fn broken_addon() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("bottle-broken-addon-")
        .tempdir()?;
    copy::copy_tree(
        &fixture_bins::workspace_root().join("addon"),
        dir.path(),
        &copy::CACHE_NAMES,
    )?;
    let entry = dir.path().join("addon.py");
    let mut text = std::fs::read_to_string(&entry)?;
    text.push_str(
        "\n# Negative control: broken on purpose, every answer of the scanner reads as allow.\n\
         from bottle_addon import verdict as _verdict\n\
         _verdict.read_answer = lambda answer: _verdict.Verdict(_verdict.Kind.ALLOW, \"broken\")\n",
    );
    std::fs::write(&entry, text)?;
    Ok(dir)
}

async fn fails_against_the_broken_addon(id: &str, expected: &str) -> Result<()> {
    let scenarios = scenario::load_dir(scenario::default_dir())?;
    let case = scenario::expand(&scenarios)
        .into_iter()
        .find(|c| c.scenario.id == id && c.client == Client::Curl && c.protocol == Protocol::H1)
        .with_context(|| format!("no case {id}::curl::h1"))?;
    let broken = broken_addon()?;
    let options = ChainOptions {
        addon_dir: Some(broken.path().to_path_buf()),
        ..runner::options_for(&case)
    };
    let (failures, _, _) = runner::execute(&case, options).await?;
    eprintln!("{id} against the broken addon: {failures:#?}");
    ensure!(
        !failures.is_empty(),
        "{id} passed against an addon that allows everything"
    );
    ensure!(
        failures.iter().any(|f| f.contains(expected)),
        "{id} failed, but not on {expected:?}: {failures:?}"
    );
    Ok(())
}

#[tokio::test]
async fn block_fails_when_the_addon_allows_everything() -> Result<()> {
    fails_against_the_broken_addon("BLOCK-001", "the secret reached an upstream").await
}

#[tokio::test]
async fn log_fails_when_the_addon_allows_everything() -> Result<()> {
    fails_against_the_broken_addon("LOG-001", "decision verdict").await
}
