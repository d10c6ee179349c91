//! The CA scenarios' checks (`[scenario.expect.ca]`, P8): the bottle's mitmproxy CA key is in
//! no file of the agent (searched as its user and as root), in no line any part of the bottle
//! logged, in no file on the host that the suite or the launcher staged; and a second bottle
//! has a CA of its own, which this bottle's agent does not trust.

use std::path::Path;

use anyhow::{Context, Result, bail};
use bottle::plan::{self, Role};

use crate::chain::Chain;
use crate::exec::{exec, exec_ok};
use crate::scenario::CaExpect;

/// mitmproxy's CA file in its confdir: the key, then the certificate.
const MITM_CA_KEY_FILE: &str = "/home/mitmproxy/.mitmproxy/mitmproxy-ca.pem";

/// One line of the key's base64 body: 64 characters no other file has by chance.
async fn key_line(chain: &Chain) -> Result<String> {
    let pem = exec_ok(
        chain.docker(),
        chain.id(Role::Mitm),
        None,
        &["cat", MITM_CA_KEY_FILE],
    )
    .await
    .context("reading mitmproxy's CA key in its container")?;
    let body: Vec<&str> = pem
        .lines()
        .skip_while(|l| !l.contains("PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    match body.iter().max_by_key(|l| l.len()) {
        Some(line) if line.len() >= 40 => Ok(line.to_string()),
        _ => bail!("no private key in {MITM_CA_KEY_FILE}"),
    }
}

pub async fn check(chain: &Chain, ca: &CaExpect) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    let line = key_line(chain).await?;
    if ca.key_absent_from_agent {
        for user in [Some(crate::probe::AGENT_USER), Some("0")] {
            let found = files_with(chain, Role::Agent, user, &line).await?;
            if !found.is_empty() {
                failures.push(format!(
                    "the CA key is readable in the agent as {}: {found:?}",
                    user.unwrap_or("its user")
                ));
            }
        }
    }
    if ca.key_in_no_log {
        for (part, text) in every_log(chain).await? {
            if text.contains(&line) {
                failures.push(format!("the CA key is in the {part}'s log"));
            }
        }
    }
    if ca.key_not_on_host {
        let mut found = Vec::new();
        let report = crate::fixture_bins::workspace_root().join("target/bottle-report");
        search_host(&std::env::temp_dir(), &line, true, &mut found);
        search_host(&report, &line, false, &mut found);
        if !found.is_empty() {
            failures.push(format!("the CA key is on the host's disk: {found:?}"));
        }
    }
    if ca.differs_from_another_bottle {
        failures.extend(differs_from_another_bottle(chain).await?);
    }
    Ok(failures)
}

/// The files of `role`'s container that contain `needle`, searched as `user` (pseudo
/// filesystems left out).
async fn files_with(
    chain: &Chain,
    role: Role,
    user: Option<&str>,
    needle: &str,
) -> Result<Vec<String>> {
    let out = exec(
        chain.docker(),
        chain.id(role),
        user,
        &[
            "grep",
            "-rlsF",
            "--exclude-dir=proc",
            "--exclude-dir=sys",
            "--exclude-dir=dev",
            "-e",
            needle,
            "/",
        ],
    )
    .await?;
    Ok(out.stdout.lines().map(String::from).collect())
}

/// Everything every part of the bottle printed, and mitmproxy's decision log.
async fn every_log(chain: &Chain) -> Result<Vec<(String, String)>> {
    let mut logs = Vec::new();
    for role in [Role::Scanner, Role::Mitm, Role::Agent, Role::Relay] {
        let (out, err) = crate::chain::container_logs(chain.docker(), chain.id(role)).await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
        logs.push((format!("{role:?}").to_lowercase(), text));
    }
    let decisions = exec_ok(
        chain.docker(),
        chain.id(Role::Mitm),
        None,
        &["cat", plan::MITM_DECISION_LOG],
    )
    .await?;
    logs.push(("decision log".into(), decisions));
    Ok(logs)
}

/// Files under `dir` (only `bottle-*` entries at its top when `bottle_only`) that contain
/// `needle`; unreadable ones are passed over.
fn search_host(dir: &Path, needle: &str, bottle_only: bool, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if bottle_only && !entry.file_name().to_string_lossy().starts_with("bottle") {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => search_host(&path, needle, false, found),
            Ok(t)
                if t.is_file()
                    && std::fs::read(&path)
                        .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle)) =>
            {
                found.push(path.display().to_string());
            }
            _ => {}
        }
    }
}

/// Another bottle (a pool bottle, or one brought up for this) has another CA, and this
/// bottle's agent trusts its own and not that one.
async fn differs_from_another_bottle(mine: &Chain) -> Result<Vec<String>> {
    let neighbour = crate::runner::Neighbour::find(mine).await?;
    let result = async {
        let mut failures = Vec::new();
        let theirs = &neighbour.chain.plan.egress.mitm.ca_fingerprint;
        let ours = &mine.plan.egress.mitm.ca_fingerprint;
        if ours.is_none() || ours == theirs {
            failures.push(format!(
                "two bottles, one CA: {ours:?} and {theirs:?} ({} and {})",
                mine.plan.name, neighbour.chain.plan.name
            ));
        }
        let installed = exec_ok(
            mine.docker(),
            mine.id(Role::Agent),
            None,
            &["cat", mine.plan.ca.agent_path.as_str()],
        )
        .await?;
        let trusted = bottle::executor::fingerprint(&installed).context("the agent's CA")?;
        if Some(&trusted) != ours.as_ref() {
            failures.push(format!(
                "the agent trusts {trusted}, not its own bottle's CA {ours:?}"
            ));
        }
        Ok::<_, anyhow::Error>(failures)
    }
    .await;
    neighbour.let_go().await?;
    result
}
