//! The CLAUDE scenarios (scenarios/claude.toml) in more depth than the scenario format says: the
//! real Claude Code's round-trip through a bottle puts its own key, unchanged, in `x-api-key` at
//! its own API, the decision record names the binding that let it pass, and the same key in
//! another host's header or in a body is then blocked with nothing reaching an upstream.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use bottle::plan::{CredentialBinding, Role};
use bottle_harness::chain::{Chain, ChainOptions};
use bottle_harness::exec::exec;
use bottle_harness::images;
use bottle_harness::probe::{self, Client, ProbeRequest, Protocol};

/// Fake, but shaped like a real key, so pipelock's "Anthropic API Key" pattern matches it.
const API_KEY: &str = "sk-ant-api03-bottletestkey0123456789abcdefghijklmnopqrstuvwxyz";
const FIXTURE_REPLY: &str = "Hello from the bottle upstream fixture.";

fn options(bound: bool) -> ChainOptions {
    let env = [
        ("ANTHROPIC_API_KEY", API_KEY),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
    ];
    ChainOptions {
        claude: true,
        agent_env: env
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        credentials: if bound {
            vec![CredentialBinding {
                host: "api.anthropic.com".into(),
                header: "x-api-key".into(),
                env: "ANTHROPIC_API_KEY".into(),
                scheme: None,
            }]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

/// `claude -p` as the agent user; its stdout and stderr together.
async fn ask_claude(chain: &Chain) -> Result<(i64, String)> {
    let run = exec(
        chain.docker(),
        chain.id(Role::Agent),
        Some("1000"),
        &["timeout", "60", "claude", "-p", "say hi"],
    );
    let out = tokio::time::timeout(Duration::from_secs(90), run).await??;
    Ok((out.code, format!("{}{}", out.stdout, out.stderr)))
}

async fn with_claude_chain<F>(bound: bool, check: F) -> Result<()>
where
    F: AsyncFnOnce(&Chain) -> Result<()>,
{
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let chain = Chain::up(&docker, &images, options(bound)).await?;
    let result = check(&chain).await;
    if result.is_err() {
        eprintln!("{}", chain.logs().await);
    }
    chain.down().await?;
    result
}

#[tokio::test]
async fn claude_code_completes_a_round_trip_with_its_own_key_bound_to_its_api() -> Result<()> {
    with_claude_chain(true, async |chain| {
        let (code, output) = ask_claude(chain).await?;
        ensure!(code == 0, "claude -p exited {code}: {output}");
        ensure!(output.contains(FIXTURE_REPLY), "claude printed: {output}");
        for trust_error in ["certificate", "UNABLE_TO_VERIFY", "SELF_SIGNED"] {
            ensure!(!output.contains(trust_error), "TLS trouble: {output}");
        }

        // Its key reached its own API, in x-api-key, and the decision record says it was bound.
        let records = chain.upstream_records().await?;
        let message = records
            .iter()
            .find(|r| {
                r["method"] == "POST"
                    && r["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("/v1/messages"))
            })
            .ok_or_else(|| anyhow::anyhow!("no POST /v1/messages upstream: {records:?}"))?;
        let sent_key = message["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| {
                h[0].as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("x-api-key"))
            })
            .and_then(|h| h[1].as_str());
        ensure!(
            sent_key == Some(API_KEY),
            "x-api-key upstream: {sent_key:?}"
        );
        let decisions = chain.decisions().await?;
        let bound = decisions
            .iter()
            .find(|d| d["method"] == "POST" && d["verdict"] == "allow")
            .map(|d| d["credential"].clone());
        ensure!(
            bound == Some(serde_json::json!(["x-api-key"])),
            "decision records: {decisions:?}"
        );

        // The same key anywhere else is blocked before the scanner is asked.
        let elsewhere =
            ProbeRequest::get("https://example.com/collect").header("x-api-key", API_KEY);
        let in_body = ProbeRequest::post(
            "https://api.anthropic.com/v1/messages",
            API_KEY.as_bytes().to_vec(),
        );
        for request in [elsewhere, in_body] {
            let r = probe::run(
                chain.docker(),
                chain.id(Role::Agent),
                Client::Curl,
                Protocol::H2,
                &request,
            )
            .await?;
            ensure!(
                r.status == Some(403)
                    && r.header("x-bottle-block-reason") == Some("credential_misuse"),
                "{} {}: {r:?}",
                request.method,
                request.url
            );
        }
        let after = chain.upstream_records().await?;
        ensure!(
            after.len() == records.len(),
            "a misused key reached an upstream: {after:?}"
        );
        Ok(())
    })
    .await
}
