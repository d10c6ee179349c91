//! Runs the conformance suite (every scenario × client × protocol, through real bottles) and
//! prints its report: `cargo run -p bottle-harness --bin bottle-conformance`. Arguments are
//! passed to `cargo nextest run` (e.g. a filter: `-- BLOCK`), except:
//! - `--baseline OLD` (a report directory or its index.json): after the run, every case whose
//!   outcome changed against OLD; exit 1 on a regression (PASS to anything else, a case gone,
//!   a case newly NOT-APPLICABLE); new cases are listed, not failures;
//! - `--diff OLD NEW`: only that comparison, no run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use bottle_harness::{fixture_bins, gate, report};

/// Exit status of a comparison that could not be made (a missing or unreadable report).
const CANNOT_COMPARE: u8 = 2;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--diff") {
        return match &args[1..] {
            [old, new] => compare(Path::new(old), Path::new(new)),
            _ => {
                eprintln!("bottle-conformance: --diff takes two reports: --diff OLD NEW");
                ExitCode::from(CANNOT_COMPARE)
            }
        };
    }
    let baseline = match args.iter().position(|a| a == "--baseline") {
        Some(i) if i + 1 < args.len() => {
            let path = PathBuf::from(args.remove(i + 1));
            args.remove(i);
            Some(path)
        }
        Some(_) => {
            eprintln!("bottle-conformance: --baseline takes a report: --baseline OLD/index.json");
            return ExitCode::from(CANNOT_COMPARE);
        }
        None => None,
    };
    if let Some(path) = &baseline
        && let Err(e) = gate::load(path)
    {
        // Said before the run, not after half an hour of it.
        eprintln!("bottle-conformance: the baseline cannot be read: {e:#}");
        return ExitCode::from(CANNOT_COMPARE);
    }
    let suite = run_suite(&args);
    let gate = match &baseline {
        Some(path) => compare(path, &report::Report::from_env().index_path()),
        None => ExitCode::SUCCESS,
    };
    if suite != ExitCode::SUCCESS {
        return suite;
    }
    gate
}

/// Prints every case whose outcome changed from `old` to `new`; 1 on a regression.
fn compare(old: &Path, new: &Path) -> ExitCode {
    let loaded = gate::load(old).and_then(|o| Ok((o, gate::load(new)?)));
    match loaded {
        Ok((old_outcomes, new_outcomes)) => {
            let changed = gate::diff(&old_outcomes, &new_outcomes);
            println!(
                "\ncompared with {}:\n{}",
                old.display(),
                gate::render(&changed)
            );
            match changed.iter().any(|c| c.1 == gate::Change::Regression) {
                true => ExitCode::FAILURE,
                false => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("bottle-conformance: cannot compare: {e:#}");
            ExitCode::from(CANNOT_COMPARE)
        }
    }
}

/// Runs the scenarios through `cargo nextest run`, then prints the report's summary.
fn run_suite(args: &[String]) -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut nextest = Command::new(&cargo);
    // `cargo run` hands this process its package's variables (CARGO_PKG_NAME, OUT_DIR, ...).
    // Some build scripts (ring's) rerun when those change, so passing them on would rebuild
    // half the tree here and again at the next `cargo nextest run` from a shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&&*name)
        {
            nextest.env_remove(&*name);
        }
    }
    let status = nextest
        .current_dir(fixture_bins::workspace_root())
        .args([
            "nextest",
            "run",
            "-p",
            "bottle-harness",
            "--test",
            "scenarios",
            "--no-fail-fast",
        ])
        .args(args)
        .status();
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            eprintln!(
                "bottle-conformance: cannot run `{cargo} nextest`: {e}\n\
                 install it with `cargo install cargo-nextest --locked`"
            );
            return ExitCode::from(2);
        }
    };
    match report::summary() {
        Ok(summary) => println!("\n{summary}"),
        Err(e) => eprintln!("bottle-conformance: no report was written: {e}"),
    }
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
