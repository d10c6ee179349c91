//! The fidelity table (`fixtures/pipelock-double/fidelity/`: what a real pipelock answered to
//! 233 requests under five configs) sent to the scanner this run grades, in its own image, and
//! compared row by row: agreement per config and field, in the report (`fidelity.md`).
//!
//! With real pipelock it measures whether the double still answers as this pipelock does: a
//! release that answers otherwise shows here, row by row (re-record the table with
//! `pipelock-fidelity --record`, fixtures/pipelock-double/README.md). With the double, that the
//! image the bottles run answers as the table says.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::UploadToContainerOptionsBuilder;
use bottle::plan::{FileContents, FilePlan, SCANNER_PORT, ScannerKind};
use pipelock_double::fidelity::{self, Answer, Field, Table};
use serde::{Deserialize, Serialize};

use crate::images::TestImages;
use crate::subject::Throwaway;

const CONFIG_PATH: &str = "/etc/pipelock/fidelity.yaml";
const TABLE_PATH: &str = "/fidelity";

/// The table in this repository.
pub fn table_dir() -> PathBuf {
    crate::fixture_bins::workspace_root().join("fixtures/pipelock-double/fidelity")
}

/// A row whose answer differs from the recorded one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Differing {
    pub id: String,
    pub fields: Vec<String>,
    pub recorded: Answer,
    pub got: Answer,
}

/// One config's agreement: rows compared, and how many agree on each field.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigFidelity {
    pub config: String,
    pub rows: usize,
    pub status: usize,
    pub body: usize,
    pub events: usize,
    pub differing: Vec<Differing>,
}

/// The table against one scanner.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fidelity {
    /// The scanner as every report names it.
    pub scanner: String,
    pub configs: Vec<ConfigFidelity>,
    pub seconds: f64,
}

impl Fidelity {
    pub fn agrees(&self) -> bool {
        self.configs.iter().all(|c| c.differing.is_empty())
    }

    /// The report's section: agreement per config and field, then each differing row with both
    /// answers.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## Scanner fidelity\n\nThe fidelity table (what a real pipelock v2.3.0-6 answered, \
             `fixtures/pipelock-double/fidelity/`) sent to **{}** in its image, {:.0} s. Rows \
             agreeing with the recorded answer, per field:\n\n\
             | config | rows | status | body | events |\n|---|---|---|---|---|\n",
            crate::report::cut_chars(&self.scanner, 200),
            self.seconds
        );
        for c in &self.configs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                c.config, c.rows, c.status, c.body, c.events
            );
        }
        for c in &self.configs {
            for d in &c.differing {
                let _ = write!(
                    out,
                    "\n- `{}` `{}` differs in {}: recorded `{} {}`, now `{} {}`",
                    c.config,
                    d.id,
                    d.fields.join(", "),
                    d.recorded.status,
                    crate::report::cut_chars(d.recorded.body.trim(), 120),
                    d.got.status,
                    crate::report::cut_chars(d.got.body.trim(), 120),
                );
            }
        }
        out.push('\n');
        out
    }
}

/// Sends the table to the graded scanner under each of its configs.
pub async fn measure(docker: &Docker, images: &TestImages) -> Result<Fidelity> {
    let started = std::time::Instant::now();
    let dir = table_dir();
    let table = Table::load(&dir)?;
    let files = table_files(&dir)?;
    let mut configs = Vec::new();
    for config in fidelity::CONFIGS {
        eprintln!("[bottle] fidelity: {config}, {} rows", table.rows.len());
        let answers = answers_of(docker, images, config, &files).await?;
        configs.push(compare(&table, config, &answers)?);
    }
    Ok(Fidelity {
        scanner: images.graded.scanner_label(),
        configs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The table's files (requests, answers, configs), as files for the client's container.
fn table_files(dir: &std::path::Path) -> Result<Vec<FilePlan>> {
    let mut files = Vec::new();
    for sub in ["", "configs"] {
        for entry in std::fs::read_dir(dir.join(sub))
            .with_context(|| format!("reading {}", dir.join(sub).display()))?
        {
            let path = entry?.path();
            if path.is_file() {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                files.push(FilePlan {
                    path: format!("{TABLE_PATH}/{sub}/{name}").replace("//", "/"),
                    contents: FileContents::Text(std::fs::read_to_string(&path)?),
                    mode: 0o644,
                });
            }
        }
    }
    Ok(files)
}

async fn upload(docker: &Docker, id: &str, files: &[FilePlan]) -> Result<()> {
    let archive = bottle::archive::of_files(files).context("packing files")?;
    docker
        .upload_to_container(
            id,
            Some(UploadToContainerOptionsBuilder::new().path("/").build()),
            bollard::body_full(archive.into()),
        )
        .await
        .context("copying files into a container")
}

/// Every row's answer from the graded scanner under `config`, its events joined from its log.
async fn answers_of(
    docker: &Docker,
    images: &TestImages,
    config: &str,
    table: &[FilePlan],
) -> Result<Vec<Answer>> {
    let graded = &images.graded;
    // No network at all, as in a bottle's place: a lookup fails at once, so an allowed row
    // gets pipelock's 502, as when the table was recorded.
    let scanner = Throwaway::create(
        docker,
        "fidelity-scanner",
        ContainerCreateBody {
            image: Some(graded.scanner_image.clone()),
            entrypoint: match graded.scanner_kind {
                ScannerKind::Double => Some(vec!["pipelock-double".into()]),
                ScannerKind::Pipelock => None,
            },
            cmd: Some(vec![
                "run".into(),
                "--config".into(),
                CONFIG_PATH.into(),
                "--listen".into(),
                format!("0.0.0.0:{SCANNER_PORT}"),
            ]),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await?;
    let yaml = table
        .iter()
        .find(|f| f.path == format!("{TABLE_PATH}/configs/{config}.yaml"))
        .map(|f| f.contents.clone())
        .with_context(|| format!("the table has no config {config}"))?;
    let outcome = async {
        upload(
            docker,
            &scanner.id,
            &[FilePlan {
                path: CONFIG_PATH.into(),
                contents: yaml,
                mode: 0o644,
            }],
        )
        .await?;
        scanner.start().await?;
        let client = Throwaway::create(
            docker,
            "fidelity-client",
            ContainerCreateBody {
                image: Some(images.fixtures.clone()),
                entrypoint: Some(vec!["pipelock-fidelity".into()]),
                cmd: Some(
                    [
                        "--scanner",
                        &format!("127.0.0.1:{SCANNER_PORT}"),
                        "--config",
                        config,
                        "--table",
                        TABLE_PATH,
                        "--record",
                        "/dev/stdout",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{}", scanner.id)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
        let ran = async {
            upload(docker, &client.id, table).await?;
            client.run_to_end(Duration::from_secs(600)).await
        }
        .await;
        client.remove().await;
        let (stdout, _) = ran.with_context(|| format!("sending the table under {config}"))?;
        let mut answers: Vec<Answer> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        // Events are written before the answer; give the last ones a moment all the same.
        tokio::time::sleep(Duration::from_millis(300)).await;
        fidelity::join_log_events(&mut answers, &scanner.output().await?);
        Ok::<_, anyhow::Error>(answers)
    }
    .await;
    scanner.remove().await;
    outcome
}

fn compare(table: &Table, config: &str, answers: &[Answer]) -> Result<ConfigFidelity> {
    let recorded = table
        .answers
        .get(config)
        .with_context(|| format!("the table has no answers for {config}"))?;
    if answers.len() != table.rows.len() {
        bail!(
            "{config}: {} answers for {} rows",
            answers.len(),
            table.rows.len()
        );
    }
    let mut out = ConfigFidelity {
        config: config.to_string(),
        rows: 0,
        status: 0,
        body: 0,
        events: 0,
        differing: Vec::new(),
    };
    for answer in answers {
        let Some(expected) = recorded.get(&answer.id) else {
            continue;
        };
        out.rows += 1;
        let fields = fidelity::differences(expected, answer);
        out.status += usize::from(!fields.contains(&Field::Status));
        out.body += usize::from(!fields.contains(&Field::Body));
        out.events += usize::from(!fields.contains(&Field::Events));
        if !fields.is_empty() {
            out.differing.push(Differing {
                id: answer.id.clone(),
                fields: fields.iter().map(|f| f.name().to_string()).collect(),
                recorded: expected.clone(),
                got: answer.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn answer(id: &str, status: u16, body: &str) -> Answer {
        Answer {
            id: id.into(),
            status,
            body: body.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_row_answered_otherwise_is_counted_and_shown_with_both_answers() {
        let rows = ["R-1", "R-2"]
            .map(|id| fidelity::Row {
                id: id.into(),
                category: "PATTERN".into(),
                detector: None,
                method: "GET".into(),
                url: "https://h/".into(),
                headers: vec![],
                body: None,
                body_base64: None,
                note: None,
            })
            .to_vec();
        let recorded = BTreeMap::from([
            ("R-1".to_string(), answer("R-1", 403, "blocked: x\n")),
            (
                "R-2".to_string(),
                answer("R-2", 502, "forward proxy fetch failed\n"),
            ),
        ]);
        let table = Table {
            rows,
            answers: BTreeMap::from([("sensitive".to_string(), recorded)]),
        };
        let got = [
            answer("R-1", 403, "blocked: x\n"),
            answer("R-2", 403, "blocked: y\n"),
        ];
        let c = compare(&table, "sensitive", &got).unwrap();
        assert_eq!((c.rows, c.status, c.body, c.events), (2, 1, 1, 2));
        assert_eq!(c.differing.len(), 1);
        assert_eq!(c.differing[0].fields, ["status", "body"]);
        let fidelity = Fidelity {
            scanner: "pipelock 9.9".into(),
            configs: vec![c],
            seconds: 1.0,
        };
        assert!(!fidelity.agrees());
        let md = fidelity.markdown();
        assert!(md.contains("| sensitive | 2 | 1 | 1 | 2 |"), "{md}");
        assert!(
            md.contains("`R-2` differs in status, body: recorded `502 forward proxy fetch failed`, now `403 blocked: y`"),
            "{md}"
        );
        assert!(
            compare(&table, "sensitive", &got[..1]).is_err(),
            "a missing answer is an error"
        );
    }
}
