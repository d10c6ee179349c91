//! Runs the conformance suite (every scenario × client × protocol, through real bottles) and
//! prints its report: `cargo run -p bottle-harness --bin bottle-conformance`. Arguments are
//! passed to `cargo nextest run` (e.g. a filter: `-- BLOCK`).

use std::process::{Command, ExitCode};

use bottle_harness::{fixture_bins, report};

fn main() -> ExitCode {
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
