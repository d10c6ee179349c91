//! The conformance runner: every scenario in `scenarios/*.toml` × client × protocol is one
//! named test (`cargo nextest run BLOCK-001`). Each leases a bottle from the run's pool (started
//! by the `pool` setup script; without one it brings its own up from the launcher's plan), resets
//! it, runs the scenario's request from a client inside the agent, checks what the client, the
//! upstream, mitmproxy's decision record and the scanner's event say, and writes its result to
//! the report (target/bottle-report/). Cases that cannot run here are ignored in the test list
//! and reported UNIMPLEMENTED or NOT-APPLICABLE with their reason by the setup script.

use std::process::ExitCode;
use std::time::Instant;

use bottle_harness::report::{self, CaseResult, Outcome};
use bottle_harness::runner;
use bottle_harness::scenario::{self, Case};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let scenarios = match scenario::load_all() {
        Ok(scenarios) => scenarios,
        Err(e) => {
            eprintln!("the scenarios cannot be loaded: {e}");
            return ExitCode::from(101);
        }
    };
    let trials = scenario::expand(&scenarios)
        .into_iter()
        .map(|case| {
            // Whether the scanner is the double is known only once the setup script asked it
            // (`/health`): such a case is settled when it runs, not here.
            let settled = case.settled(false);
            let name = case.name();
            let ignored = settled.is_some();
            Trial::test(name, move || run(case)).with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn run(case: Case) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    runtime.block_on(async {
        let started = Instant::now();
        if let Some(result) = settled_by_the_scanner(&case).await {
            if let Err(e) = report::record(&result) {
                eprintln!("writing the report failed: {e}");
            }
            eprintln!("{}: {}", result.outcome, result.reason.unwrap_or_default());
            return Ok(());
        }
        let (outcome, reason, evidence, chain_info) =
            match runner::execute(&case, runner::options_for(&case)).await {
                Ok((failures, evidence, info)) if failures.is_empty() => {
                    (Outcome::Pass, None, evidence, info)
                }
                Ok((failures, evidence, info)) => {
                    (Outcome::Fail, Some(failures.join("; ")), evidence, info)
                }
                Err(e) => (Outcome::Fail, Some(format!("{e:#}")), Value::Null, None),
            };
        let mut result = CaseResult::new(&case, outcome, reason.clone());
        result.duration_ms = started.elapsed().as_millis() as u64;
        result.evidence = evidence;
        if let Some((images, scanner)) = chain_info {
            result.images = images;
            result.scanner = scanner;
        }
        if let Err(e) = report::record(&result) {
            eprintln!("writing the report failed: {e}");
        }
        match reason {
            None => Ok(()),
            Some(reason) => Err(Failed::from(reason)),
        }
    })
}

/// NOT-APPLICABLE when the case needs real pipelock and the graded scanner said on `/health`
/// that it is the double (the setup script recorded it so already; this is the runner's word).
async fn settled_by_the_scanner(case: &Case) -> Option<CaseResult> {
    let docker = bottle::docker::connect().await.ok()?;
    let images = bottle_harness::images::ensure(&docker).await.ok()?;
    let (outcome, reason) = case.settled(images.graded.scanner_is_double())?;
    let mut result = CaseResult::new(case, outcome, Some(reason));
    result.scanner = images.graded.scanner_label();
    Some(result)
}
