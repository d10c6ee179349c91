//! The gate on an image bump: two reports' `index.json`, case by case. A case that passed and
//! no longer does, a case that is gone, and a case newly NOT-APPLICABLE are regressions; new
//! cases and cases that now pass are listed, never failures. Only each result's name, outcome
//! and reason are read, so a baseline written by an older suite still compares.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// A report's outcomes by case name, with their reasons.
pub type Outcomes = BTreeMap<String, (String, Option<String>)>;

/// Reads `index.json` (or a report directory holding one).
pub fn load(path: &Path) -> Result<Outcomes> {
    let file = if path.is_dir() {
        path.join("index.json")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a report's index.json", file.display()))?;
    let Some(results) = index["results"].as_array() else {
        bail!(
            "{} has no results: not a report's index.json",
            file.display()
        );
    };
    let mut outcomes = Outcomes::new();
    for result in results {
        let (Some(name), Some(outcome)) = (result["name"].as_str(), result["outcome"].as_str())
        else {
            bail!(
                "{}: a result without a name or an outcome: {result}",
                file.display()
            );
        };
        let reason = result["reason"].as_str().map(String::from);
        outcomes.insert(name.to_string(), (outcome.to_string(), reason));
    }
    Ok(outcomes)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// PASS to anything else, gone, or newly NOT-APPLICABLE.
    Regression,
    /// Now PASS.
    Improvement,
    /// Not in the baseline.
    New,
    /// Any other change of outcome (e.g. FAIL to UNIMPLEMENTED).
    Other,
}

/// One case whose outcome changed: (name, change, old outcome, new outcome, new reason).
pub type Changed = (
    String,
    Change,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Every case whose outcome differs between `old` and `new`, by name.
pub fn diff(old: &Outcomes, new: &Outcomes) -> Vec<Changed> {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    let mut changed = Vec::new();
    for name in names {
        let before = old.get(name).map(|(o, _)| o.clone());
        let (after, reason) = match new.get(name) {
            Some((o, r)) => (Some(o.clone()), r.clone()),
            None => (None, None),
        };
        if before == after {
            continue;
        }
        let change = match (before.as_deref(), after.as_deref()) {
            (_, None) => Change::Regression,
            (None, Some(_)) => Change::New,
            (Some("PASS"), Some(_)) => Change::Regression,
            (Some(_), Some("NOT-APPLICABLE")) => Change::Regression,
            (Some(_), Some("PASS")) => Change::Improvement,
            _ => Change::Other,
        };
        changed.push((name.clone(), change, before, after, reason));
    }
    changed
}

/// How many changes of each kind but regressions are listed one by one.
const MAX_LISTED: usize = 40;

/// The changes as lines a reader scans, regressions first, and the verdict.
pub fn render(changed: &[Changed]) -> String {
    let mut out = String::new();
    let regressions = changed.iter().filter(|c| c.1 == Change::Regression).count();
    for wanted in [
        Change::Regression,
        Change::Other,
        Change::Improvement,
        Change::New,
    ] {
        let of_kind: Vec<&Changed> = changed.iter().filter(|c| c.1 == wanted).collect();
        // Every regression; of the rest, enough to see what happened.
        let shown = match wanted {
            Change::Regression => of_kind.len(),
            _ => of_kind.len().min(MAX_LISTED),
        };
        for (name, change, before, after, reason) in of_kind.iter().take(shown).copied() {
            let label = match change {
                Change::Regression => "REGRESSION",
                Change::Improvement => "improved",
                Change::New => "new",
                Change::Other => "changed",
            };
            let _ = write!(
                out,
                "{label:<10} {name}: {} -> {}",
                before.as_deref().unwrap_or("(absent)"),
                after.as_deref().unwrap_or("(gone)")
            );
            if let Some(reason) = reason.as_deref().filter(|_| *change == Change::Regression) {
                let _ = write!(out, " ({})", crate::report::cut_chars(reason, 200));
            }
            out.push('\n');
        }
        if of_kind.len() > shown {
            let kind = format!("{wanted:?}").to_lowercase();
            let _ = writeln!(out, "... and {} more {kind}", of_kind.len() - shown);
        }
    }
    let _ = writeln!(
        out,
        "{} cases changed, {regressions} regressions{}",
        changed.len(),
        if regressions == 0 {
            ": the gate passes"
        } else {
            ": the gate FAILS"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(list: &[(&str, &str)]) -> Outcomes {
        list.iter()
            .map(|(n, o)| (n.to_string(), (o.to_string(), None)))
            .collect()
    }

    #[test]
    fn every_kind_of_change_is_named_and_only_regressions_fail() {
        let old = outcomes(&[
            ("A::curl::h1", "PASS"),
            ("B::curl::h1", "PASS"),
            ("C::curl::h1", "FAIL"),
            ("D::curl::h1", "PASS"),
            ("E::curl::h1", "UNIMPLEMENTED"),
            ("F::curl::h1", "FAIL"),
            ("G::curl::h1", "PASS"),
        ]);
        let new = outcomes(&[
            ("A::curl::h1", "PASS"),
            ("B::curl::h1", "FAIL"),
            ("C::curl::h1", "PASS"),
            ("E::curl::h1", "NOT-APPLICABLE"),
            ("F::curl::h1", "UNIMPLEMENTED"),
            ("G::curl::h1", "NOT-APPLICABLE"),
            ("H::curl::h1", "PASS"),
        ]);
        let changed = diff(&old, &new);
        let kinds: Vec<(&str, &Change)> = changed.iter().map(|c| (c.0.as_str(), &c.1)).collect();
        assert_eq!(
            kinds,
            [
                ("B::curl::h1", &Change::Regression),
                ("C::curl::h1", &Change::Improvement),
                ("D::curl::h1", &Change::Regression),
                ("E::curl::h1", &Change::Regression),
                ("F::curl::h1", &Change::Other),
                ("G::curl::h1", &Change::Regression),
                ("H::curl::h1", &Change::New),
            ]
        );
        let text = render(&changed);
        assert!(
            text.contains("REGRESSION D::curl::h1: PASS -> (gone)"),
            "{text}"
        );
        assert!(
            text.contains("new        H::curl::h1: (absent) -> PASS"),
            "{text}"
        );
        assert!(
            text.ends_with("7 cases changed, 4 regressions: the gate FAILS\n"),
            "{text}"
        );
        assert!(render(&diff(&old, &old)).contains("0 regressions: the gate passes"));
    }
}
