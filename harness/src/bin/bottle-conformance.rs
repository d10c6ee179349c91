//! Runs the conformance suite (every scenario × client × protocol, through real bottles) and
//! prints its report: `cargo run -p bottle-harness --bin bottle-conformance`. Arguments are
//! passed to `cargo nextest run` (e.g. a filter: `-- BLOCK`).

use std::process::{Command, ExitCode};

use bottle_harness::{fixture_bins, report};

fn main() -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
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
        .args(std::env::args().skip(1))
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
