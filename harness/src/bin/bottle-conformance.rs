//! Runs the conformance suite (every scenario × client × protocol, through real bottles) and
//! prints its report: `cargo run -p bottle-harness --bin bottle-conformance`. Arguments are
//! passed to `cargo nextest run` (e.g. a filter: `-- BLOCK`), except:
//! - `--baseline OLD` (a report directory or its index.json): after the run, every case whose
//!   outcome changed against OLD; exit 1 on a regression (PASS to anything else, a case gone,
//!   a case newly NOT-APPLICABLE); new cases are listed, not failures;
//! - `--diff OLD NEW`: only that comparison, no run;
//! - `--corpus DIR` (repeatable): more PARITY cases, from a directory of agent-egress-bench
//!   case files (under `cargo nextest run`: BOTTLE_CORPUS, `:`-separated);
//! - what to grade, as `bottle start` names it: `--scanner auto|pipelock|double` (default auto:
//!   real pipelock when its image is here or pullable, else the double), `--images
//!   local|pinned`, `--scanner-image REF`, `--mitm-image REF` (under `cargo nextest run`:
//!   BOTTLE_SCANNER, BOTTLE_IMAGES, BOTTLE_SCANNER_IMAGE, BOTTLE_MITM_IMAGE).
//!
//! After the run, a JUnit file of nextest's (`--profile ci`) gets what ran as `<properties>`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use bottle_harness::{fixture_bins, gate, report, subject};

const HELP: &str = "\
bottle-conformance: runs the bottle conformance suite and prints its report

usage: bottle-conformance [OPTIONS] [NEXTEST ARGS...]
       bottle-conformance --diff OLD NEW

  --scanner auto|pipelock|double  the scanner to grade (default auto: pipelock's image when it
                                  is here or pullable, else the pipelock double)
  --images local|pinned           mitmproxy built here (default) or images.lock's official one
  --scanner-image REF             run this image as the scanner
  --mitm-image REF                run this image as mitmproxy
  --baseline OLD                  after the run, compare with OLD (a report directory or its
                                  index.json); exit 1 on a regression
  --diff OLD NEW                  only compare two reports (exit 1 on a regression, 2 when one
                                  cannot be read)
  --corpus DIR                    more PARITY cases: a directory of agent-egress-bench case
                                  files (JSON), besides ../shared/corpus/agent-egress-bench;
                                  repeatable
  --annotate-junit FILE           only add what the last run graded to a JUnit file

Anything else goes to `cargo nextest run` (e.g. a filter: BLOCK, or --profile ci).
The report: target/bottle-report/ (BOTTLE_REPORT_DIR moves it).";

/// Exit status of a comparison that could not be made (a missing or unreadable report).
const CANNOT_COMPARE: u8 = 2;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let grading = match subject::take_flags(&mut args) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("bottle-conformance: {e:#}\n(--help lists the options)");
            return ExitCode::from(2);
        }
    };
    if args.first().map(String::as_str) == Some("--annotate-junit") {
        let [_, path] = args.as_slice() else {
            eprintln!("bottle-conformance: --annotate-junit takes the JUnit file");
            return ExitCode::from(2);
        };
        return match report::Report::from_env().annotate_junit(Path::new(path)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bottle-conformance: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    // Read now: said before the run, not after half an hour of it, and kept in memory (the run
    // replaces the report, which may be the baseline itself).
    let baseline = match baseline.map(|path| gate::load(&path).map(|o| (path, o))) {
        None => None,
        Some(Ok(loaded)) => Some(loaded),
        Some(Err(e)) => {
            eprintln!("bottle-conformance: the baseline cannot be read: {e:#}");
            return ExitCode::from(CANNOT_COMPARE);
        }
    };
    // A run that fails before its first case must not leave the last run's report to be read
    // as this one's.
    if let Err(e) = report::reset() {
        eprintln!("bottle-conformance: the report cannot be reset: {e}");
        return ExitCode::from(2);
    }
    let corpus = match take_corpus(&mut args) {
        Ok(corpus) => corpus,
        Err(e) => {
            eprintln!("bottle-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let mut grading = grading;
    grading.extend(corpus.map(|dirs| (bottle_harness::corpus::CORPUS_ENV, dirs)));
    let suite = run_suite(&args, &grading);
    let gate = match &baseline {
        Some((path, old)) => match gate::load(&report::Report::from_env().index_path()) {
            Ok(new) => print_changes(path, old, &new),
            Err(e) => {
                eprintln!("bottle-conformance: cannot compare: {e:#}");
                ExitCode::from(CANNOT_COMPARE)
            }
        },
        None => ExitCode::SUCCESS,
    };
    if suite != ExitCode::SUCCESS {
        return suite;
    }
    gate
}

/// Takes every `--corpus DIR` out of `args`: the directories, absolute and checked, joined as
/// `BOTTLE_CORPUS` wants them (after any it already names).
fn take_corpus(args: &mut Vec<String>) -> Result<Option<String>, String> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(bottle_harness::corpus::CORPUS_ENV)
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    let before = dirs.len();
    while let Some(i) = args.iter().position(|a| a == "--corpus") {
        if i + 1 >= args.len() {
            return Err("--corpus takes a directory of case files: --corpus DIR".into());
        }
        let dir = PathBuf::from(args.remove(i + 1));
        args.remove(i);
        let dir = dir.canonicalize().map_err(|e| {
            format!(
                "--corpus {}: {e} (give a directory of agent-egress-bench case files)",
                dir.display()
            )
        })?;
        if !dir.is_dir() {
            return Err(format!("--corpus {}: not a directory", dir.display()));
        }
        dirs.push(dir);
    }
    if dirs.len() == before {
        return Ok(None);
    }
    let joined = std::env::join_paths(&dirs).map_err(|e| format!("--corpus: {e}"))?;
    Ok(Some(joined.to_string_lossy().into_owned()))
}

/// Prints every case whose outcome changed from `old` to `new`; 1 on a regression.
fn compare(old: &Path, new: &Path) -> ExitCode {
    let loaded = gate::load(old).and_then(|o| Ok((o, gate::load(new)?)));
    match loaded {
        Ok((old_outcomes, new_outcomes)) => print_changes(old, &old_outcomes, &new_outcomes),
        Err(e) => {
            eprintln!("bottle-conformance: cannot compare: {e:#}");
            ExitCode::from(CANNOT_COMPARE)
        }
    }
}

fn print_changes(old_path: &Path, old: &gate::Outcomes, new: &gate::Outcomes) -> ExitCode {
    let changed = gate::diff(old, new);
    println!(
        "\ncompared with {}:\n{}",
        old_path.display(),
        gate::render(&changed)
    );
    match changed.iter().any(|c| c.1 == gate::Change::Regression) {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    }
}

/// Runs the scenarios through `cargo nextest run`, then prints the report's summary.
fn run_suite(args: &[String], grading: &[(&str, String)]) -> ExitCode {
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
    nextest.envs(grading.iter().map(|(k, v)| (k, v)));
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
    annotate_junit(args);
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Adds what ran to the JUnit file of this run's nextest profile, when it writes one.
fn annotate_junit(args: &[String]) {
    let profile = args
        .iter()
        .position(|a| a == "--profile" || a == "-P")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--profile=").map(String::from))
        })
        .unwrap_or_else(|| "default".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixture_bins::workspace_root().join("target"));
    let path = target.join("nextest").join(&profile).join("junit.xml");
    if let Err(e) = report::Report::from_env().annotate_junit(&path) {
        eprintln!("bottle-conformance: {e:#}");
    }
}
