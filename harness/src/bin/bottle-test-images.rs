//! Ensures every image the suite needs, with progress: run once by nextest's setup script
//! before the container tests, so the first build is visible and not raced by parallel tests.
//! It also starts this run's report: it clears the last one and records the scenario cases that
//! will not run (UNIMPLEMENTED, NOT-APPLICABLE) with their reasons, so none is skipped silently.

use std::io::Write;

use anyhow::{Context, Result};
use bottle_harness::fixture_bins;

#[tokio::main]
async fn main() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let started = std::time::Instant::now();
    let step = bottle::progress::Step::start("building the fixture binaries (cargo)");
    let binaries = fixture_bins::build()?;
    step.done();
    // Hand the binaries to the tests, so that they do not run cargo again.
    if let Some(path) = std::env::var_os("NEXTEST_ENV") {
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        let joined = std::env::join_paths(&binaries).context("joining binary paths")?;
        writeln!(file, "{}={}", fixture_bins::ENV, joined.to_string_lossy())?;
    }
    // SAFETY: single-threaded at this point; the variable is read by the ensure below.
    unsafe { std::env::set_var(fixture_bins::ENV, std::env::join_paths(&binaries)?) };
    let images = bottle_harness::images::ensure(&docker).await?;
    for (name, tag) in images.all() {
        eprintln!("[bottle] image {name:<15} {tag}");
    }
    eprintln!(
        "[bottle] all images present ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    start_report(&images)
}

/// The harness runs the pipelock double (pipelock cannot be pulled here).
fn start_report(images: &bottle_harness::images::TestImages) -> Result<()> {
    use bottle_harness::report::{self, CaseResult};
    use bottle_harness::scenario;
    report::reset()?;
    let scenarios = scenario::load_dir(scenario::default_dir())?;
    let mut settled = 0;
    for case in scenario::expand(&scenarios) {
        if let Some((outcome, reason)) = case.settled(true) {
            let mut result = CaseResult::new(&case, outcome, Some(reason));
            result.images = [
                ("agent", &images.agent),
                ("mitm", &images.mitmproxy),
                ("scanner", &images.fixtures),
            ]
            .into_iter()
            .map(|(role, tag)| (role.to_string(), tag.to_string()))
            .collect();
            result.scanner = format!("{} (pipelock-double)", images.fixtures);
            report::record(&result)?;
            settled += 1;
        }
    }
    eprintln!(
        "[bottle] report: {} ({settled} cases that will not run are recorded with their reason)",
        report::Report::default_dir().display()
    );
    Ok(())
}
