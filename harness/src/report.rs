//! The report every run writes: one result file per case, and aggregates regenerated after each.
//!
//! Each test runs in its own process (cargo nextest), so [`Report::record`] writes
//! `results/<name>.json` and then, under a file lock, rebuilds `index.json`, `report.md` and
//! `summary.txt` from every result file: after the last test the report is complete, and a run
//! killed halfway still leaves a consistent report of what finished. [`Report::reset`] (the
//! nextest setup script, once per run) starts afresh.
//!
//! Every file is written to a temporary name and renamed into place, so a reader never sees half.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scenario::{Case, Client, Property, Protocol};
use crate::subject::RunInfo;

/// Overrides where the report goes.
pub const ENV: &str = "BOTTLE_REPORT_DIR";

/// The substring by which a scanner string names the pipelock double
/// (e.g. "pipelock-double 2.4.0-pipelock-double").
pub const DOUBLE_MARKER: &str = "pipelock-double";

/// The substring by which a scanner string names the fixtures' scanner-fake, which a case puts
/// in the scanner's place on purpose.
pub const SCANNER_FAKE_MARKER: &str = "(scanner-fake:";

/// The loud line of every `report.md` made with the double.
pub const DOUBLE_WARNING: &str = "**The scanner was the pipelock double, not pipelock.** \
     Scenarios that need real pipelock are NOT-APPLICABLE.";

/// The same line in `summary.txt`.
pub const DOUBLE_WARNING_TEXT: &str = "!! The scanner was the pipelock double, not pipelock. \
     Scenarios that need real pipelock are NOT-APPLICABLE.";

const RESULTS: &str = "results";
const INDEX: &str = "index.json";
const MARKDOWN: &str = "report.md";
const SUMMARY: &str = "summary.txt";
const LOCK: &str = ".lock";
/// What the run graded, written once by the setup script (`subject::RunInfo`).
const RUN: &str = "run.json";
/// The fidelity table against the graded scanner (`scanner_fidelity`): its section, and data.
pub const FIDELITY_MD: &str = "fidelity.md";
pub const FIDELITY_JSON: &str = "fidelity.json";

/// How many failing cases the one-screen summary names before "and N more".
const SUMMARY_FAILURES: usize = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
    #[serde(rename = "UNIMPLEMENTED")]
    Unimplemented,
    #[serde(rename = "NOT-APPLICABLE")]
    NotApplicable,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Pass,
        Outcome::Fail,
        Outcome::Unimplemented,
        Outcome::NotApplicable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Unimplemented => "UNIMPLEMENTED",
            Outcome::NotApplicable => "NOT-APPLICABLE",
        }
    }

    /// The matrix cell.
    pub fn short(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Unimplemented => "UNIMPL",
            Outcome::NotApplicable => "N-A",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a scanner string names the pipelock double.
pub fn scanner_is_double(scanner: &str) -> bool {
    scanner.contains(DOUBLE_MARKER)
}

/// What one case came to, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub id: String,
    pub title: String,
    pub property: Property,
    pub client: Client,
    pub protocol: Protocol,
    /// `BLOCK-001::curl::h2`
    pub name: String,
    /// BYPASS: the scenario's class and technique (the report groups by class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technique: Option<String>,
    /// PARITY: the corpus case (the report groups by its category).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<crate::corpus::CorpusInfo>,
    pub outcome: Outcome,
    /// Required for anything but PASS (why it failed, is unimplemented, does not apply).
    pub reason: Option<String>,
    pub duration_ms: u64,
    /// The mitmproxy decision record, the pipelock event, the upstream receipts, the probe result.
    pub evidence: serde_json::Value,
    /// Role → image tag, of the images this case ran on (empty if it ran nothing).
    pub images: BTreeMap<String, String>,
    /// "pipelock-double 2.4.0-pipelock-double" or the real image; empty if no scanner ran.
    pub scanner: String,
    /// RFC 3339, UTC.
    pub finished_at: String,
}

impl CaseResult {
    /// A result for `case`, finished now; fill in duration, evidence, images and scanner.
    pub fn new(case: &Case, outcome: Outcome, reason: Option<String>) -> CaseResult {
        CaseResult {
            id: case.scenario.id.clone(),
            title: case.scenario.title.clone(),
            property: case.scenario.property,
            client: case.client,
            protocol: case.protocol,
            name: case.name(),
            class: case.scenario.class.clone(),
            technique: case.scenario.technique.clone(),
            corpus: case.scenario.corpus.clone(),
            outcome,
            reason,
            duration_ms: 0,
            evidence: serde_json::Value::Null,
            images: BTreeMap::new(),
            scanner: String::new(),
            finished_at: now(),
        }
    }

    /// The result file's name: the case name with `::` → `__`, plus `.json`.
    pub fn file_name(&self) -> String {
        format!("{}.json", self.name.replace("::", "__"))
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a current time formats as RFC 3339")
}

/// Counts per outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: usize,
    #[serde(rename = "PASS")]
    pub pass: usize,
    #[serde(rename = "FAIL")]
    pub fail: usize,
    #[serde(rename = "UNIMPLEMENTED")]
    pub unimplemented: usize,
    #[serde(rename = "NOT-APPLICABLE")]
    pub not_applicable: usize,
}

impl Counts {
    pub fn get(&self, outcome: Outcome) -> usize {
        match outcome {
            Outcome::Pass => self.pass,
            Outcome::Fail => self.fail,
            Outcome::Unimplemented => self.unimplemented,
            Outcome::NotApplicable => self.not_applicable,
        }
    }

    fn add(&mut self, outcome: Outcome) {
        self.total += 1;
        *match outcome {
            Outcome::Pass => &mut self.pass,
            Outcome::Fail => &mut self.fail,
            Outcome::Unimplemented => &mut self.unimplemented,
            Outcome::NotApplicable => &mut self.not_applicable,
        } += 1;
    }

    fn line(&self) -> String {
        format!(
            "{} cases: {} PASS, {} FAIL, {} UNIMPLEMENTED, {} NOT-APPLICABLE",
            self.total, self.pass, self.fail, self.unimplemented, self.not_applicable
        )
    }
}

/// `index.json`: the run's metadata and every case result, sorted by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub generated_at: String,
    /// Role → image tag over all results; `a | b` when results disagree (see `warnings`).
    pub images: BTreeMap<String, String>,
    /// The scanner over all results; `a | b` when results disagree.
    pub scanner: String,
    /// True when any result ran on the double.
    pub scanner_is_double: bool,
    pub counts: Counts,
    /// Things a reader must know: mixed images, unreadable result files.
    pub warnings: Vec<String>,
    /// What the run graded: the scanner and mitmproxy, what they said they are, every image's
    /// id and digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
    /// The scanner-fidelity section, when that test ran (`fidelity.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<String>,
    pub results: Vec<CaseResult>,
}

impl Index {
    pub(crate) fn build(results: Vec<CaseResult>, mut warnings: Vec<String>) -> Index {
        let mut results = results;
        results.sort_by(|a, b| a.name.cmp(&b.name));
        let mut counts = Counts::default();
        let mut images: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut scanners: BTreeSet<String> = BTreeSet::new();
        for r in &results {
            counts.add(r.outcome);
            for (role, tag) in &r.images {
                images.entry(role.clone()).or_default().insert(tag.clone());
            }
            // A case's own scanner-fake (FAILCLOSED) is not the run's scanner.
            if !r.scanner.is_empty() && !r.scanner.contains(SCANNER_FAKE_MARKER) {
                scanners.insert(r.scanner.clone());
            }
        }
        let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(" | ");
        let mixed: Vec<&String> = images
            .iter()
            .filter(|(_, tags)| tags.len() > 1)
            .map(|(role, _)| role)
            .collect();
        if !mixed.is_empty() || scanners.len() > 1 {
            let mut what: Vec<String> = mixed.iter().map(|r| r.to_string()).collect();
            if scanners.len() > 1 {
                what.push("scanner".into());
            }
            warnings.push(format!(
                "results from different images are mixed ({}): the report was not reset between \
                 runs, or the images changed during one",
                what.join(", ")
            ));
        }
        Index {
            generated_at: now(),
            images: images.iter().map(|(k, v)| (k.clone(), join(v))).collect(),
            scanner_is_double: scanners.iter().any(|s| scanner_is_double(s)),
            scanner: join(&scanners),
            counts,
            warnings,
            run: None,
            fidelity: None,
            results,
        }
    }

    /// Adds what the run graded; a run that graded the double is a run with the double.
    fn with_run(mut self, run: Option<RunInfo>) -> Index {
        if let Some(run) = &run {
            self.scanner_is_double |= run.graded.scanner_is_double();
        }
        self.run = run;
        self
    }

    /// The one-screen text of `summary.txt`.
    pub fn summary(&self, dir: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "bottle conformance: {}", self.counts.line());
        if self.scanner_is_double {
            let _ = writeln!(out, "{DOUBLE_WARNING_TEXT}");
        }
        if let Some(run) = &self.run {
            let _ = writeln!(out, "graded: {}", run.graded.scanner_label());
            let _ = writeln!(out, "  chosen: {}", run.graded.chosen);
            let _ = writeln!(
                out,
                "  mitmproxy: {} ({})",
                run.graded.mitm_version_line(),
                run.graded.mitm_image
            );
        }
        let _ = writeln!(out, "scanner: {}", or_none(&self.scanner));
        for (role, tag) in &self.images {
            let _ = writeln!(out, "image {role}: {tag}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let failing: Vec<&CaseResult> = self
            .results
            .iter()
            .filter(|r| r.outcome == Outcome::Fail)
            .collect();
        if !failing.is_empty() {
            let _ = writeln!(out, "failing:");
            for r in failing.iter().take(SUMMARY_FAILURES) {
                let reason = r.reason.as_deref().unwrap_or("no reason given");
                let _ = writeln!(out, "  {}: {}", r.name, one_line(reason, 100));
            }
            if failing.len() > SUMMARY_FAILURES {
                let _ = writeln!(out, "  ... and {} more", failing.len() - SUMMARY_FAILURES);
            }
        }
        let _ = writeln!(out, "full report: {}", dir.join(MARKDOWN).display());
        out
    }

    /// Where the run's time went, by family: the cases that ran (PASS or FAIL), their total
    /// time and the slowest of them. Cases run a few at once, so the totals add up to more than
    /// the run took.
    pub fn time_by_family(&self) -> String {
        // family -> (cases, total ms, slowest ms, slowest case)
        let mut families: BTreeMap<&str, (usize, u64, u64, &str)> = BTreeMap::new();
        for r in self
            .results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Pass | Outcome::Fail))
        {
            // `FAMILY-NNN`, and `PARITY-<case id>`.
            let family = match r.id.split_once('-') {
                Some(("PARITY", _)) => "PARITY",
                _ => r.id.rsplit_once('-').map_or(r.id.as_str(), |(f, _)| f),
            };
            let entry = families.entry(family).or_insert((0, 0, 0, ""));
            entry.0 += 1;
            entry.1 += r.duration_ms;
            if r.duration_ms >= entry.2 {
                (entry.2, entry.3) = (r.duration_ms, r.name.as_str());
            }
        }
        let mut out = String::from("## Time by family\n\n");
        out.push_str(
            "| family | cases run | total s | slowest case | its s |\n|---|--:|--:|---|--:|\n",
        );
        for (family, (cases, total, slowest, name)) in &families {
            let _ = writeln!(
                out,
                "| {family} | {cases} | {:.1} | `{}` | {:.1} |",
                *total as f64 / 1000.0,
                cell(name),
                *slowest as f64 / 1000.0
            );
        }
        out
    }

    /// `report.md`: header, the matrix, then every case that did not pass with its reason.
    /// The BYPASS lane by technique class: per class, its techniques and how each one's cases
    /// came out, and the class's run time. Empty when no case of a class ran.
    pub fn bypass_by_class(&self) -> String {
        // class -> technique -> (scenario id, results)
        let mut classes: BTreeMap<&str, BTreeMap<(&str, &str), Vec<&CaseResult>>> = BTreeMap::new();
        for r in &self.results {
            if let (Some(class), Some(technique)) = (&r.class, &r.technique) {
                classes
                    .entry(class.as_str())
                    .or_default()
                    .entry((r.id.as_str(), technique.as_str()))
                    .or_default()
                    .push(r);
            }
        }
        if classes.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "## BYPASS by technique class

",
        );
        for (class, techniques) in &classes {
            let all: Vec<&CaseResult> = techniques.values().flatten().copied().collect();
            let passed = all.iter().filter(|r| r.outcome == Outcome::Pass).count();
            let failed = all.iter().filter(|r| r.outcome == Outcome::Fail).count();
            let not_run = all.len() - passed - failed;
            let ran_ms: u64 = all.iter().map(|r| r.duration_ms).sum();
            let _ = writeln!(
                out,
                "### {} — {} techniques; {} cases: {passed} passed, {failed} failed, {not_run} not \
                 run; {:.1} s\n",
                cell(class),
                techniques.len(),
                all.len(),
                ran_ms as f64 / 1000.0
            );
            let _ = writeln!(out, "| scenario | technique | cases |\n|---|---|---|");
            for ((id, technique), results) in techniques {
                let cases: Vec<String> = results
                    .iter()
                    .map(|r| format!("{} {} {}", r.client, r.protocol, r.outcome.short()))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    cell(id),
                    cell(technique),
                    cases.join(", ")
                );
            }
            let _ = writeln!(out);
        }
        out
    }

    /// The LOAD cases' figures from their evidence: requests, time, latency, peak memory.
    pub fn load_figures(&self) -> String {
        let loads: Vec<&CaseResult> = self
            .results
            .iter()
            .filter(|r| !r.evidence["load"].is_null())
            .collect();
        if loads.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "## LOAD\n\n| case | outcome | requests | concurrency | clean passed | secrets \
             blocked | failed | time | p50 / p99 | mitmproxy peak RSS | scanner peak RSS |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        let mib = |v: &serde_json::Value| match v.as_u64() {
            Some(kib) => format!("{:.0} MiB", kib as f64 / 1024.0),
            None => "not measured".into(),
        };
        for r in loads {
            let load = &r.evidence["load"];
            let figures = &load["figures"];
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} s | {} / {} ms | {} | {} |",
                cell(&r.name),
                r.outcome.short(),
                load["requests"],
                load["concurrency"],
                figures["clean_passed"],
                figures["secrets_blocked"],
                figures["failed"],
                figures["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                figures["latency_ms"]["p50"],
                figures["latency_ms"]["p99"],
                mib(&load["peak_rss"]["mitm_kib"]),
                mib(&load["peak_rss"]["scanner_kib"]),
            );
        }
        out.push('\n');
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# bottle conformance report\n");
        if self.scanner_is_double {
            let _ = writeln!(out, "{DOUBLE_WARNING}\n");
        }
        let _ = writeln!(out, "{}\n", self.counts.line());
        let _ = writeln!(out, "Generated {}.\n", self.generated_at);
        let _ = writeln!(out, "| role | image |\n|---|---|");
        let _ = writeln!(out, "| scanner | {} |", cell(or_none(&self.scanner)));
        for (role, tag) in &self.images {
            let _ = writeln!(out, "| {} | `{}` |", cell(role), cell(tag));
        }
        let _ = writeln!(out);
        if let Some(run) = &self.run {
            let _ = writeln!(out, "{}", run.markdown());
        }
        for w in &self.warnings {
            let _ = writeln!(out, "**Warning:** {}\n", cell(w));
        }

        // The HTTP clients always; Claude Code only when it ran.
        let columns: Vec<(Client, Protocol)> = Client::EVERY
            .into_iter()
            .flat_map(|c| Protocol::ALL.into_iter().map(move |p| (c, p)))
            .filter(|(c, p)| {
                Client::ALL.contains(c)
                    || self
                        .results
                        .iter()
                        .any(|r| r.client == *c && r.protocol == *p)
            })
            .collect();
        let _ = writeln!(out, "## Matrix\n");
        let mut header = String::from("| scenario | property | title |");
        let mut rule = String::from("|---|---|---|");
        for (c, p) in &columns {
            let _ = write!(header, " {c} {p} |");
            rule.push_str(":-:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        let mut rows: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
        for r in &self.results {
            rows.entry(r.id.as_str()).or_default().push(r);
        }
        for (id, results) in &rows {
            let first = results[0];
            let _ = write!(
                out,
                "| {} | {} | {} |",
                cell(id),
                first.property,
                cell(&first.title)
            );
            for (c, p) in &columns {
                let found = results
                    .iter()
                    .find(|r| r.client == *c && r.protocol == *p)
                    .map_or("", |r| r.outcome.short());
                let _ = write!(out, " {found} |");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "\nAn empty cell: that case did not run in this run.\n");

        let _ = writeln!(out, "{}", self.bypass_by_class());
        let _ = writeln!(out, "{}", crate::parity::report_section(&self.results));
        let _ = writeln!(out, "{}", self.load_figures());
        if let Some(fidelity) = &self.fidelity {
            let _ = writeln!(out, "{fidelity}");
        }
        let _ = writeln!(out, "{}", self.time_by_family());

        let _ = writeln!(out, "## Not passing\n");
        let mut any = false;
        for outcome in [
            Outcome::Fail,
            Outcome::Unimplemented,
            Outcome::NotApplicable,
        ] {
            let of: Vec<&CaseResult> = self
                .results
                .iter()
                .filter(|r| r.outcome == outcome)
                .collect();
            if of.is_empty() {
                continue;
            }
            any = true;
            let _ = writeln!(out, "### {outcome} ({})\n", of.len());
            for r in of {
                let reason = r.reason.as_deref().unwrap_or("no reason given");
                let _ = writeln!(
                    out,
                    "- `{}` ({} ms): {}",
                    r.name,
                    r.duration_ms,
                    cell(reason)
                );
            }
            let _ = writeln!(out);
        }
        if !any {
            let _ = writeln!(out, "Every case passed.");
        }
        out
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none recorded)" } else { s }
}

/// Text safe inside a Markdown table cell or list item: one line, `|` escaped.
pub(crate) fn cell(s: &str) -> String {
    s.replace('\r', "").replace('\n', " ").replace('|', "\\|")
}

pub(crate) fn one_line(s: &str, max_chars: usize) -> String {
    cut_chars(&s.replace(['\r', '\n'], " "), max_chars)
}

/// `s` cut to `max_chars` characters, with `…` when something was cut.
pub(crate) fn cut_chars(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report: {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("report: {}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "report: no {INDEX} in {}: no case has been recorded since the last reset",
        dir.display()
    )]
    NoIndex { dir: PathBuf },
}

pub type Result<T, E = ReportError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A report folder.
#[derive(Clone, Debug)]
pub struct Report {
    dir: PathBuf,
}

impl Report {
    /// `$BOTTLE_REPORT_DIR`, else `<workspace>/target/bottle-report`.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os(ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => crate::fixture_bins::workspace_root()
                .join("target")
                .join("bottle-report"),
        }
    }

    /// The report in [`Report::default_dir`].
    pub fn from_env() -> Report {
        Report::at(Report::default_dir())
    }

    pub fn at(dir: impl Into<PathBuf>) -> Report {
        Report { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn results_dir(&self) -> PathBuf {
        self.dir.join(RESULTS)
    }

    pub fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX)
    }

    pub fn markdown_path(&self) -> PathBuf {
        self.dir.join(MARKDOWN)
    }

    pub fn summary_path(&self) -> PathBuf {
        self.dir.join(SUMMARY)
    }

    /// Writes the case's result file, then regenerates the aggregates, all under the lock. A
    /// second result for the same case name replaces the first.
    pub fn record(&self, result: &CaseResult) -> Result<()> {
        let _lock = self.lock()?;
        let results = self.results_dir();
        std::fs::create_dir_all(&results).map_err(io(&results))?;
        let path = results.join(result.file_name());
        let json = serde_json::to_vec_pretty(result).map_err(|source| ReportError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json)?;
        self.regenerate_locked()
    }

    /// Writes what the run graded (once, at its start) and regenerates the aggregates.
    pub fn write_run(&self, run: &RunInfo) -> Result<()> {
        let _lock = self.lock()?;
        let path = self.dir.join(RUN);
        let json = serde_json::to_vec_pretty(run).map_err(|source| ReportError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json)?;
        self.regenerate_locked()
    }

    /// Adds what the run graded to the JUnit file at `path` as `<properties>`; nothing when
    /// there is no such file or no run.json.
    pub fn annotate_junit(&self, path: &Path) -> std::result::Result<(), String> {
        let Ok(xml) = std::fs::read_to_string(path) else {
            return Ok(());
        };
        let run = self.index().map_err(|e| e.to_string())?.run;
        let Some(run) = run else { return Ok(()) };
        let annotated = crate::subject::annotate_junit(&xml, &run.junit_properties());
        write_atomic(path, annotated.as_bytes()).map_err(|e| e.to_string())
    }

    /// Writes the scanner-fidelity section and its data, and regenerates the aggregates.
    pub fn write_fidelity(&self, fidelity: &crate::scanner_fidelity::Fidelity) -> Result<()> {
        let _lock = self.lock()?;
        let path = self.dir.join(FIDELITY_JSON);
        let json = serde_json::to_vec_pretty(fidelity).map_err(|source| ReportError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json)?;
        write_atomic(&self.dir.join(FIDELITY_MD), fidelity.markdown().as_bytes())?;
        self.regenerate_locked()
    }

    /// Rebuilds the aggregates from the result files (e.g. after editing one by hand).
    pub fn regenerate(&self) -> Result<()> {
        let _lock = self.lock()?;
        self.regenerate_locked()
    }

    /// Removes every result file and the aggregates.
    pub fn reset(&self) -> Result<()> {
        let _lock = self.lock()?;
        let results = self.results_dir();
        match std::fs::remove_dir_all(&results) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&results)(e)),
            _ => {}
        }
        for path in [
            self.index_path(),
            self.markdown_path(),
            self.summary_path(),
            self.dir.join(RUN),
            self.dir.join(FIDELITY_MD),
            self.dir.join(FIDELITY_JSON),
        ] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// The aggregate as last written.
    pub fn index(&self) -> Result<Index> {
        let path = self.index_path();
        let bytes = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReportError::NoIndex {
                    dir: self.dir.clone(),
                });
            }
            other => other.map_err(io(&path))?,
        };
        serde_json::from_slice(&bytes).map_err(|source| ReportError::Json { path, source })
    }

    /// The one-screen summary of the aggregate as last written.
    pub fn summary(&self) -> Result<String> {
        Ok(self.index()?.summary(&self.dir))
    }

    fn lock(&self) -> Result<File> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(file) // unlocked when dropped (closed)
    }

    fn regenerate_locked(&self) -> Result<()> {
        let dir = self.results_dir();
        let mut results = Vec::new();
        let mut warnings = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            other => Some(other.map_err(io(&dir))?),
        };
        for entry in entries.into_iter().flatten() {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<CaseResult>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) => results.push(r),
                Err(e) => warnings.push(format!(
                    "{} is not a case result and was left out: {e}",
                    path.display()
                )),
            }
        }
        let run_path = self.dir.join(RUN);
        let run = match std::fs::read(&run_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            other => match other
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<RunInfo>(&b).map_err(|e| e.to_string()))
            {
                Ok(run) => Some(run),
                Err(e) => {
                    warnings.push(format!(
                        "{} cannot be read, so what ran is not named: {e}",
                        run_path.display()
                    ));
                    None
                }
            },
        };
        let mut index = Index::build(results, warnings).with_run(run);
        index.fidelity = std::fs::read_to_string(self.dir.join(FIDELITY_MD)).ok();
        let index_path = self.index_path();
        let json = serde_json::to_vec_pretty(&index).map_err(|source| ReportError::Json {
            path: index_path.clone(),
            source,
        })?;
        write_atomic(&index_path, &json)?;
        write_atomic(&self.markdown_path(), index.markdown().as_bytes())?;
        write_atomic(&self.summary_path(), index.summary(&self.dir).as_bytes())?;
        Ok(())
    }
}

/// Writes to a temporary file beside `path` and renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".partial")
        .tempfile_in(parent)
        .map_err(io(parent))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

/// [`Report::record`] on the report in [`Report::default_dir`].
pub fn record(result: &CaseResult) -> Result<()> {
    Report::from_env().record(result)
}

/// [`Report::reset`] on the report in [`Report::default_dir`].
pub fn reset() -> Result<()> {
    Report::from_env().reset()
}

/// [`Report::summary`] on the report in [`Report::default_dir`].
pub fn summary() -> Result<String> {
    Report::from_env().summary()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, expand, parse_str};
    use std::sync::Arc;

    const DOUBLE: &str = "pipelock-double 2.4.0-pipelock-double";
    const REAL: &str = "ghcr.io/luckypipewrench/pipelock@sha256:abc";

    fn scenarios() -> Vec<Scenario> {
        parse_str(
            r#"
[[scenario]]
id = "BLOCK-001"
title = "A credential | in a body is blocked"
property = "P1"
clients = ["curl", "node", "python-stdlib"]
[scenario.request]
url = "https://api.anthropic.com/"
[scenario.expect]
status = 403

[[scenario]]
id = "PASS-001"
title = "A clean request passes"
property = "P2"
clients = ["curl"]
[scenario.request]
url = "https://api.anthropic.com/"
[scenario.expect]
status = 200
"#,
            Path::new("test.toml"),
        )
        .unwrap()
    }

    fn result(case: &Case, scanner: &str) -> CaseResult {
        let (outcome, reason) = match case.settled(scanner_is_double(scanner)) {
            Some((o, r)) => (o, Some(r)),
            None if case.client == Client::Node => (Outcome::Fail, Some("got 200".into())),
            None => (Outcome::Pass, None),
        };
        let mut r = CaseResult::new(case, outcome, reason);
        r.duration_ms = 12;
        r.scanner = scanner.into();
        r.images = BTreeMap::from([("mitmproxy".into(), "bottle-mitmproxy:abc".into())]);
        r.evidence = serde_json::json!({"decision": {"verdict": "block"}});
        r
    }

    #[test]
    fn the_bypass_lane_is_grouped_by_class_with_each_technique() {
        let scenarios = parse_str(
            r#"
[[scenario]]
id = "BYPASS-024"
title = "CL.TE"
class = "h1 framing"
technique = "request smuggling, CL.TE"
property = "P7"
clients = ["curl", "node", "python-stdlib"]
[scenario.request]
url = "https://example.com/"
[scenario.expect]
status = 400
secret = "AKIA"
"#,
            Path::new("test.toml"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let report = Report::at(dir.path().join("report"));
        for case in &expand(&scenarios) {
            report.record(&result(case, REAL)).unwrap();
        }
        let index = report.index().unwrap();
        let lane = index.bypass_by_class();
        // Node's cases fail and python-stdlib's h2 does not apply (result() above): 3 of 6 pass.
        assert!(
            lane.contains(
                "### h1 framing — 1 techniques; 6 cases: 3 passed, 2 failed, 1 not run; 0.1 s"
            ),
            "{lane}"
        );
        assert!(
            lane.contains("| BYPASS-024 | request smuggling, CL.TE | curl h1 PASS"),
            "{lane}"
        );
        assert!(index.markdown().contains("## BYPASS by technique class"));
        // Without BYPASS results there is no section.
        assert_eq!(Index::build(Vec::new(), Vec::new()).bypass_by_class(), "");
    }

    #[test]
    fn records_aggregate() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::at(dir.path().join("report"));
        let cases = expand(&scenarios());
        assert_eq!(cases.len(), 8);
        for case in &cases {
            report.record(&result(case, REAL)).unwrap();
        }
        assert!(
            report
                .results_dir()
                .join("BLOCK-001__python-stdlib__h2.json")
                .is_file()
        );
        let index = report.index().unwrap();
        assert_eq!(
            index.counts,
            Counts {
                total: 8,
                pass: 5,
                fail: 2,
                unimplemented: 0,
                not_applicable: 1
            }
        );
        assert_eq!(index.scanner, REAL);
        assert!(!index.scanner_is_double);
        assert_eq!(index.images["mitmproxy"], "bottle-mitmproxy:abc");
        assert!(index.warnings.is_empty(), "{:?}", index.warnings);
        let names: Vec<_> = index.results.iter().map(|r| r.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(index.results[0], result(&cases[0], REAL).with_time(&index));
        // 7 of the 8 ran (one is NOT-APPLICABLE), 12 ms each.
        let times = index.time_by_family();
        assert!(times.contains("| BLOCK | 5 | 0.1 |"), "{times}");
        assert!(times.contains("| PASS | 2 | 0.0 |"), "{times}");
        assert!(index.markdown().contains("## Time by family"));

        // The same case again replaces its result.
        let mut again = result(&cases[2], REAL);
        again.outcome = Outcome::Pass;
        again.reason = None;
        report.record(&again).unwrap();
        let index = report.index().unwrap();
        assert_eq!((index.counts.total, index.counts.fail), (8, 1));

        let md = std::fs::read_to_string(report.markdown_path()).unwrap();
        assert!(
            md.contains(
                "| BLOCK-001 | P1 | A credential \\| in a body is blocked | PASS | PASS | PASS | FAIL |  |  | PASS | N-A |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| PASS-001 | P2 | A clean request passes | PASS | PASS |  |  |  |  |  |  |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- `BLOCK-001::node::h2` (12 ms): got 200"),
            "{md}"
        );
        assert!(md.contains("### NOT-APPLICABLE (1)"), "{md}");
        assert!(md.contains("HTTP/1.1 only"), "{md}");

        let summary = std::fs::read_to_string(report.summary_path()).unwrap();
        assert_eq!(summary, report.summary().unwrap());
        assert!(summary.contains("8 cases: 6 PASS, 1 FAIL, 0 UNIMPLEMENTED, 1 NOT-APPLICABLE"));
        assert!(
            summary.contains("  BLOCK-001::node::h2: got 200"),
            "{summary}"
        );
        assert!(
            summary.contains("image mitmproxy: bottle-mitmproxy:abc"),
            "{summary}"
        );
        assert!(summary.lines().count() < 25);
    }

    impl CaseResult {
        /// This result with the timestamp the index holds for it (for comparison).
        fn with_time(mut self, index: &Index) -> CaseResult {
            let stored = index.results.iter().find(|r| r.name == self.name).unwrap();
            self.finished_at = stored.finished_at.clone();
            self
        }
    }

    #[test]
    fn concurrent_records_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let base = Arc::new(result(&expand(&scenarios())[0], REAL));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let dir = dir.path().to_path_buf();
                let base = base.clone();
                std::thread::spawn(move || {
                    // Each thread its own Report, as each nextest process would have.
                    let report = Report::at(dir);
                    for i in 0..10 {
                        let mut r = (*base).clone();
                        r.id = format!("PASS-{t}{i:02}");
                        r.name = format!("{}::curl::h1", r.id);
                        report.record(&r).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let index = Report::at(dir.path()).index().unwrap();
        assert_eq!(index.counts.total, 80);
        assert_eq!(index.results.len(), 80);
        let md = std::fs::read_to_string(dir.path().join(MARKDOWN)).unwrap();
        assert_eq!(md.matches("| PASS-").count(), 80);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(RESULTS))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().ends_with(".json"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn the_double_warning_appears_exactly_with_the_double() {
        for (scanner, double) in [(DOUBLE, true), (REAL, false)] {
            let dir = tempfile::tempdir().unwrap();
            let report = Report::at(dir.path());
            for case in expand(&scenarios()) {
                report.record(&result(&case, scanner)).unwrap();
            }
            let index = report.index().unwrap();
            assert_eq!(index.scanner_is_double, double);
            let md = std::fs::read_to_string(report.markdown_path()).unwrap();
            assert_eq!(md.contains(DOUBLE_WARNING), double, "{scanner}");
            let summary = report.summary().unwrap();
            assert_eq!(
                summary.contains("The scanner was the pipelock double, not pipelock."),
                double,
                "{summary}"
            );
        }
    }

    #[test]
    fn mixed_images_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::at(dir.path());
        let cases = expand(&scenarios());
        report.record(&result(&cases[0], REAL)).unwrap();
        report.record(&result(&cases[1], DOUBLE)).unwrap();
        let index = report.index().unwrap();
        assert!(index.scanner_is_double);
        assert_eq!(index.scanner, format!("{REAL} | {DOUBLE}"));
        assert_eq!(index.warnings.len(), 1, "{:?}", index.warnings);
        assert!(index.warnings[0].contains("mixed"));
    }

    #[test]
    fn a_case_s_own_scanner_fake_is_not_a_mixed_run() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::at(dir.path());
        let cases = expand(&scenarios());
        report.record(&result(&cases[0], DOUBLE)).unwrap();
        let fake = format!("bottle-fixtures:x {SCANNER_FAKE_MARKER} misbehaves on purpose)");
        report.record(&result(&cases[1], &fake)).unwrap();
        let index = report.index().unwrap();
        assert_eq!(index.scanner, DOUBLE);
        assert!(index.warnings.is_empty(), "{:?}", index.warnings);
    }

    #[test]
    fn a_broken_result_file_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::at(dir.path());
        std::fs::create_dir_all(report.results_dir()).unwrap();
        std::fs::write(report.results_dir().join("junk.json"), "{").unwrap();
        report
            .record(&result(&expand(&scenarios())[0], REAL))
            .unwrap();
        let index = report.index().unwrap();
        assert_eq!(index.counts.total, 1);
        assert!(
            index.warnings[0].contains("junk.json"),
            "{:?}",
            index.warnings
        );
    }

    #[test]
    fn reset_clears() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::at(dir.path());
        report.reset().unwrap(); // nothing there yet: fine
        assert!(matches!(report.summary(), Err(ReportError::NoIndex { .. })));
        for case in expand(&scenarios()) {
            report.record(&result(&case, REAL)).unwrap();
        }
        report.reset().unwrap();
        assert!(!report.results_dir().exists());
        for path in [
            report.index_path(),
            report.markdown_path(),
            report.summary_path(),
        ] {
            assert!(!path.exists(), "{}", path.display());
        }
        assert!(matches!(report.index(), Err(ReportError::NoIndex { .. })));
        report
            .record(&result(&expand(&scenarios())[0], REAL))
            .unwrap();
        assert_eq!(report.index().unwrap().counts.total, 1);
    }

    #[test]
    fn outcomes_serialize_as_their_names() {
        let names: Vec<_> = Outcome::ALL
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect();
        assert_eq!(
            names,
            ["PASS", "FAIL", "UNIMPLEMENTED", "NOT-APPLICABLE"].map(serde_json::Value::from)
        );
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
