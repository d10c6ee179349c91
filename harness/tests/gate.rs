//! The image-bump gate from the command line: `bottle-conformance --diff OLD NEW` on two report
//! fixtures names every changed case and fails on a regression, and only then.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, ensure};

fn data(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gate")
        .join(dir)
}

fn diff(old: &PathBuf, new: &PathBuf) -> Result<(Option<i32>, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_bottle-conformance"))
        .arg("--diff")
        .arg(old)
        .arg(new)
        .output()?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn a_regression_fails_the_gate_and_every_change_is_listed() -> Result<()> {
    let (code, text) = diff(&data("old"), &data("new/index.json"))?;
    ensure!(code == Some(1), "exit {code:?}: {text}");
    for line in [
        "REGRESSION BLOCK-001::curl::h2: PASS -> FAIL (expected status 403, got status Some(200))",
        "REGRESSION PASS-001::node::h1: PASS -> (gone)",
        "new        LOAD-001::load::h1: (absent) -> PASS",
        "3 cases changed, 2 regressions: the gate FAILS",
    ] {
        ensure!(text.contains(line), "no {line:?} in:\n{text}");
    }
    ensure!(
        !text.contains("H2-001"),
        "an unchanged case listed:\n{text}"
    );
    Ok(())
}

#[test]
fn no_regression_passes_the_gate_and_a_bad_report_is_its_own_error() -> Result<()> {
    let (code, text) = diff(&data("new"), &data("new"))?;
    ensure!(code == Some(0), "exit {code:?}: {text}");
    ensure!(
        text.contains("0 cases changed, 0 regressions: the gate passes"),
        "{text}"
    );
    let (code, text) = diff(&data("old"), &data("nowhere"))?;
    ensure!(code == Some(2), "exit {code:?}: {text}");
    ensure!(
        text.contains("cannot compare") && text.contains("nowhere"),
        "{text}"
    );
    Ok(())
}
