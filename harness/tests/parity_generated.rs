//! The generated parity lane (P10): requests from `generated::strategy()` (a fixed seed;
//! `BOTTLE_PARITY_CASES` of them, default 24), each sent by its client through one bottle whose
//! scanner runs without strict mode, and asked of that scanner in plaintext; the two verdicts
//! must agree. A disagreement is shrunk by proptest to a smallest request, written as
//! `scenarios/parity-found-<id>.toml` (a regression the scenario runner then runs every time),
//! and fails the test. Each request is in the report's PARITY table as category "generated".

use std::time::Instant;

use anyhow::{Context, Result, bail};
use bottle_harness::chain::Chain;
use bottle_harness::generated::{self, CASES_ENV, DEFAULT_CASES};
use bottle_harness::{images, scenario};

#[test]
fn generated_requests_get_the_scanner_s_verdict_through_the_chain() -> Result<()> {
    let cases = match std::env::var(CASES_ENV) {
        Ok(n) => n
            .parse()
            .with_context(|| format!("{CASES_ENV}={n:?} is not a number of cases"))?,
        Err(_) => DEFAULT_CASES,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let docker = runtime.block_on(bottle::docker::connect())?;
    let images = runtime.block_on(images::ensure(&docker))?;
    let mut chain = runtime.block_on(Chain::up(&docker, &images, generated::chain_options()))?;
    let started = Instant::now();
    let found = generated::run_lane(&runtime, &mut chain, cases, true);
    runtime.block_on(chain.down())?;
    eprintln!(
        "generated parity: {cases} requests (seed fixed) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let Some(found) = found? else {
        return Ok(());
    };
    let s = &found.smallest;
    let path = scenario::default_dir().join(format!(
        "parity-found-{}.toml",
        s.id.trim_start_matches("PARITY-").to_ascii_lowercase()
    ));
    std::fs::write(&path, generated::scenario_file(s)?)
        .with_context(|| format!("writing {}", path.display()))?;
    bail!(
        "the chain and the scanner disagree on a generated request ({}); the smallest such \
         request is {}, written to {}: commit it as a regression once the chain is mended",
        found.why,
        s.id,
        path.display()
    )
}
