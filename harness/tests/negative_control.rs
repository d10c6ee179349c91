//! The harness's own negative controls. Against a deliberately broken addon that allows every
//! request, the BLOCK and LOG scenarios must FAIL; against an addon without the rules that keep
//! non-HTTP bytes and other ports out (the layer rule, the port rule, no server connection
//! without an allowed request: addon/README.md), the BYPASS scenarios must FAIL; against an
//! addon that fails open, the FAILCLOSED scenarios must FAIL. A suite that passed here could not
//! tell a working chain from a broken one.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use bottle::plan::Role;
use bottle_harness::chain::{Chain, ChainOptions};
use bottle_harness::exec::exec_ok;
use bottle_harness::scenario::{
    self, Case, Client, DecidedBy, Family, Protocol, Scenario, Verdict,
};
use bottle_harness::{copy, fixture_bins, images, runner};

/// Lifts the addon's rule that a server connection opens only for a host and port a verdict
/// allowed on the same client connection: every target counts as allowed.
macro_rules! lift_the_connect_rule {
    () => {
        "\
class _Everywhere(dict):
    def get(self, key, default=None):
        return type('_All', (), {'__contains__': lambda s, x: True})()
addons[0]._allowed_targets = _Everywhere()
"
    };
}

/// Every answer of the scanner reads as allow.
const ALLOWS_EVERYTHING: &str = "\
from bottle_addon import verdict as _verdict
_verdict.read_answer = lambda answer: _verdict.Verdict(_verdict.Kind.ALLOW, \"broken\")
";

/// The addon as it was before the rules that closed BYPASS-001..005: mitmproxy picks its own
/// layers, every port is allowed, and any server connection may open.
const WITHOUT_THE_LAYER_AND_PORT_RULES: &str = concat!(
    "\
from bottle_addon import hooks as _hooks, policy as _policy
_hooks.BottleAddon.next_layer = lambda self, nextlayer: None
_hooks.BottleAddon.http_connect = lambda self, flow: None
_policy.Ports.__contains__ = lambda self, port: True
",
    lift_the_connect_rule!()
);

/// A chain that sends an allowed request twice: mitmproxy replays it once its answer is in (the
/// addon's rule that only a judged request opens a server connection, which refuses the replay,
/// is lifted too).
const SENDS_TWICE: &str = concat!(
    lift_the_connect_rule!(),
    "\
from mitmproxy import ctx as _ctx
from bottle_addon import hooks as _hooks
_response = _hooks.BottleAddon.response
def _twice(self, flow):
    if not flow.is_replay and flow.response is not None and flow.response.status_code == 200:
        _ctx.master.commands.call('replay.client', [flow.copy()])
    return _response(self, flow)
_hooks.BottleAddon.response = _twice
"
);

/// A copy of the addon with `patch` appended to its entry point.
fn broken_addon(patch: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("bottle-broken-addon-")
        .tempdir()?;
    copy::copy_tree(
        &fixture_bins::workspace_root().join("addon"),
        dir.path(),
        &copy::CACHE_NAMES,
    )?;
    let entry = dir.path().join("addon.py");
    let mut text = std::fs::read_to_string(&entry)?;
    text.push_str("\n# Negative control: broken on purpose.\n");
    text.push_str(patch);
    std::fs::write(&entry, text)?;
    Ok(dir)
}

async fn fails_against(id: &str, client: Client, patch: &str, expected: &str) -> Result<()> {
    let scenarios = scenario::load_dir(scenario::default_dir())?;
    let case = scenario::expand(&scenarios)
        .into_iter()
        .find(|c| c.scenario.id == id && c.client == client && c.protocol == Protocol::H1)
        .with_context(|| format!("no case {id}::{client}::h1"))?;
    let broken = broken_addon(patch)?;
    let options = ChainOptions {
        addon_dir: Some(broken.path().to_path_buf()),
        ..runner::options_for(&case)
    };
    let (failures, _, _) = runner::execute(&case, options).await?;
    eprintln!("{id} against the broken addon: {failures:#?}");
    ensure!(
        !failures.is_empty(),
        "{id} passed against an addon that allows everything"
    );
    ensure!(
        failures.iter().any(|f| f.contains(expected)),
        "{id} failed, but not on {expected:?}: {failures:?}"
    );
    Ok(())
}

#[tokio::test]
async fn block_fails_when_the_addon_allows_everything() -> Result<()> {
    fails_against(
        "BLOCK-001",
        Client::Curl,
        ALLOWS_EVERYTHING,
        "the secret reached an upstream",
    )
    .await
}

#[tokio::test]
async fn log_fails_when_the_addon_allows_everything() -> Result<()> {
    fails_against(
        "LOG-001",
        Client::Curl,
        ALLOWS_EVERYTHING,
        "decision verdict",
    )
    .await
}

#[tokio::test]
async fn dns_through_connect_reaches_a_resolver_without_the_rules() -> Result<()> {
    fails_against(
        "BYPASS-001",
        Client::Raw,
        WITHOUT_THE_LAYER_AND_PORT_RULES,
        "the secret reached an upstream",
    )
    .await
}

#[tokio::test]
async fn plaintext_in_a_tunnel_leaves_without_the_rules() -> Result<()> {
    fails_against(
        "BYPASS-003",
        Client::Raw,
        WITHOUT_THE_LAYER_AND_PORT_RULES,
        "upstream records of any kind",
    )
    .await
}

#[tokio::test]
async fn once_fails_when_the_chain_sends_twice() -> Result<()> {
    fails_against(
        "ONCE-001",
        Client::Curl,
        SENDS_TWICE,
        "expected 1 upstream records of any kind, got 2",
    )
    .await
}

/// The first runnable h1 case (its first client) of every scenario `wanted` picks.
fn first_cases(wanted: impl Fn(&Scenario) -> bool) -> Result<Vec<Case>> {
    let scenarios = scenario::load_dir(scenario::default_dir())?;
    let mut cases: Vec<Case> = Vec::new();
    for case in scenario::expand(&scenarios) {
        let runnable = case.protocol == Protocol::H1 && case.settled(true).is_none();
        if runnable
            && wanted(&case.scenario)
            && !cases.iter().any(|c| c.scenario.id == case.scenario.id)
        {
            cases.push(case);
        }
    }
    Ok(cases)
}

/// Whether a BYPASS scenario's expectation is pipelock's block: with the verdict stubbed to
/// allow, such a case must fail (its secret leaves, or the answer is not the 403).
fn relies_on_the_verdict(s: &Scenario) -> bool {
    let by_pipelock = s.expect.decision.as_ref().is_some_and(|d| {
        d.decided_by == Some(DecidedBy::Pipelock) && d.verdict != Some(Verdict::Allow)
    });
    by_pipelock
        || s.expect
            .body_contains
            .iter()
            .any(|b| b.starts_with("blocked: "))
}

/// The lane's negative control: one bottle whose addon allows every request without asking
/// the scanner (its test-only switch, `bottle_test_verdict=allow`), and every BYPASS scenario
/// whose expectation is pipelock's block run on it once (its first client, h1). Each must FAIL.
#[tokio::test]
async fn the_bypass_lane_fails_when_the_verdict_is_stubbed_to_allow() -> Result<()> {
    let cases = first_cases(|s| {
        s.family() == Some(Family::Bypass) && s.bottle.is_none() && relies_on_the_verdict(s)
    })?;
    ensure!(
        cases.len() >= 10,
        "only {} BYPASS cases rely on the verdict",
        cases.len()
    );
    let options = ChainOptions {
        verdict_stub_allow: true,
        ..ChainOptions::default()
    };
    let outcomes = run_on_one_bottle(&cases, options, None).await?;
    let passed = passing(&outcomes);
    eprintln!(
        "with the verdict stubbed to allow, {} of {} BYPASS cases that rely on it failed",
        outcomes.len() - passed.len(),
        outcomes.len()
    );
    ensure!(
        passed.is_empty(),
        "these BYPASS cases passed with every request allowed, so they do not test the verdict: \
         {passed:?}"
    );
    let leaked = outcomes
        .values()
        .filter(|failures| {
            failures
                .iter()
                .any(|f| f.contains("the secret reached an upstream"))
        })
        .count();
    ensure!(
        leaked * 2 >= outcomes.len(),
        "fewer than half of the failures saw the secret leave ({leaked} of {}): {outcomes:#?}",
        outcomes.len()
    );
    Ok(())
}

/// A fail-open addon: every fault on the verdict path (no answer, a late one, one it cannot
/// read) lets the request go as the agent sent it.
const FAILS_OPEN: &str = concat!(
    lift_the_connect_rule!(),
    "\
from bottle_addon import hooks as _hooks
def _fail_open(flow, state, why):
    state.update(decided_by='addon', verdict='allow', reason=None)
_hooks.BottleAddon._answer_unavailable = staticmethod(_fail_open)
"
);

/// The FAILCLOSED lane's negative control: every scenario whose expectation is the addon's
/// block for want of a verdict runs (its first client, h1) on a bottle whose addon fails open.
/// Each must FAIL: a lane that passed here could not tell a bottle that fails closed from one
/// that lets every request through when its scanner is gone.
#[tokio::test]
async fn the_failclosed_lane_fails_against_an_addon_that_fails_open() -> Result<()> {
    let cases = first_cases(|s| {
        let fails_closed = s
            .expect
            .decision
            .as_ref()
            .is_some_and(|d| d.reason_contains.as_deref() == Some("verdict_unavailable"));
        s.family() == Some(Family::FailClosed) && fails_closed
    })?;
    ensure!(
        cases.len() >= 10,
        "only {} FAILCLOSED cases expect the addon to fail closed",
        cases.len()
    );
    let broken = broken_addon(FAILS_OPEN)?;
    let mut passed = Vec::new();
    let mut leaked = 0;
    for case in &cases {
        let options = ChainOptions {
            addon_dir: Some(broken.path().to_path_buf()),
            ..runner::options_for(case)
        };
        let (failures, _, _) = runner::execute(case, options)
            .await
            .with_context(|| format!("running {}", case.name()))?;
        if failures.is_empty() {
            passed.push(case.name());
        }
        if failures
            .iter()
            .any(|f| f.contains("the secret reached an upstream"))
        {
            leaked += 1;
        }
    }
    eprintln!(
        "against an addon that fails open, {} of {} FAILCLOSED cases failed, {leaked} with their \
         request upstream",
        cases.len() - passed.len(),
        cases.len()
    );
    ensure!(
        passed.is_empty(),
        "these FAILCLOSED cases passed against an addon that fails open: {passed:?}"
    );
    ensure!(
        leaked == cases.len(),
        "only {leaked} of {} cases saw their request leave",
        cases.len()
    );
    Ok(())
}

/// mitmproxy trusts any upstream certificate (`ssl_insecure`, which the addon otherwise refuses).
const TRUSTS_ANY_CERTIFICATE: &str = "\
from mitmproxy import ctx as _ctx
from bottle_addon import hooks as _hooks
_hooks.REQUIRED_VALUES.pop('ssl_insecure', None)
class _TrustAnything:
    def running(self):
        _ctx.options.update(ssl_insecure=True)
addons.append(_TrustAnything())
";

/// The cases that met every expectation.
fn passing(outcomes: &BTreeMap<String, Vec<String>>) -> Vec<&String> {
    outcomes
        .iter()
        .filter(|(_, failures)| failures.is_empty())
        .map(|(name, _)| name)
        .collect()
}

/// Done to the bottle before each case.
type BeforeEach = dyn Fn(&Chain) -> futures_util::future::BoxFuture<'_, Result<()>> + Sync;

/// Runs `cases` one after another on one bottle with these options; their unmet expectations
/// by case name.
async fn run_on_one_bottle(
    cases: &[Case],
    options: ChainOptions,
    before_each: Option<&BeforeEach>,
) -> Result<BTreeMap<String, Vec<String>>> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let mut chain = Chain::up(&docker, &images, options).await?;
    let mut outcomes = BTreeMap::new();
    let mut broken = None;
    for case in cases {
        if let Some(before) = before_each
            && let Err(e) = before(&chain).await
        {
            broken = Some(e);
            break;
        }
        match runner::execute_on(case, &mut chain).await {
            Ok((failures, _)) => {
                outcomes.insert(case.name(), failures);
            }
            Err(e) => {
                broken = Some(e.context(format!("running {}", case.name())));
                break;
            }
        }
    }
    chain.down().await?;
    match broken {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

/// The TRUST lane's negative control: with mitmproxy trusting any certificate, every case that
/// expects a refused upstream certificate must FAIL.
#[tokio::test]
async fn the_trust_lane_fails_when_mitmproxy_trusts_any_certificate() -> Result<()> {
    let cases = first_cases(|s| s.family() == Some(Family::Trust) && s.expect.status == Some(502))?;
    ensure!(cases.len() >= 4, "only {} TRUST cases", cases.len());
    let broken = broken_addon(TRUSTS_ANY_CERTIFICATE)?;
    let options = ChainOptions {
        addon_dir: Some(broken.path().to_path_buf()),
        ..ChainOptions::default()
    };
    let outcomes = run_on_one_bottle(&cases, options, None).await?;
    let passed = passing(&outcomes);
    eprintln!("TRUST against a mitmproxy that trusts any certificate: {outcomes:#?}");
    ensure!(
        passed.is_empty(),
        "these TRUST cases passed with every certificate trusted: {passed:?}"
    );
    Ok(())
}

/// Copies the bottle's CA key into the agent's /tmp and prints it on mitmproxy's output.
fn leak_the_key(chain: &Chain) -> futures_util::future::BoxFuture<'_, Result<()>> {
    Box::pin(async move {
        let key = "/home/mitmproxy/.mitmproxy/mitmproxy-ca.pem";
        let pem = exec_ok(chain.docker(), chain.id(Role::Mitm), None, &["cat", key]).await?;
        let copy = format!("printf '%s' '{pem}' > /tmp/leaked.pem");
        exec_ok(
            chain.docker(),
            chain.id(Role::Agent),
            None,
            &["sh", "-c", &copy],
        )
        .await?;
        // Into mitmproxy's decision log, as one JSON line: what a careless log line would carry.
        let log = bottle::plan::MITM_DECISION_LOG;
        let print = format!(
            "printf '{{\"leak\": \"%s\"}}\\n' \"$(grep -v -- ----- {key} | tr -d '\\n')\" >> {log}"
        );
        exec_ok(
            chain.docker(),
            chain.id(Role::Mitm),
            None,
            &["sh", "-c", &print],
        )
        .await?;
        Ok(())
    })
}

/// The CA checks' negative control: on a bottle whose CA key was copied into the agent's /tmp
/// and printed by mitmproxy, CA-001 and CA-002 must FAIL.
#[tokio::test]
async fn the_ca_checks_see_a_key_that_leaked() -> Result<()> {
    let cases = first_cases(|s| ["CA-001", "CA-002"].contains(&s.id.as_str()))?;
    ensure!(cases.len() == 2, "{} cases", cases.len());
    let outcomes = run_on_one_bottle(&cases, ChainOptions::default(), Some(&leak_the_key)).await?;
    eprintln!("CA with the key leaked: {outcomes:#?}");
    for (name, failures) in &outcomes {
        ensure!(
            failures.iter().any(|f| f.contains("the CA key")),
            "{name} did not see the leaked key: {failures:?}"
        );
    }
    Ok(())
}

/// The LOAD lane's negative control: under load, an addon that allows everything lets the
/// secrets through, and the case must say so.
#[tokio::test]
async fn the_load_lane_fails_when_the_addon_allows_everything() -> Result<()> {
    fails_against(
        "LOAD-001",
        Client::Load,
        ALLOWS_EVERYTHING,
        "requests with the secret got pipelock's 403",
    )
    .await
}

/// Relays every block of the scanner with its text altered.
const ALTERS_THE_BLOCK_TEXT: &str = "\
import dataclasses as _dc
from bottle_addon import verdict as _verdict
_read_answer = _verdict.read_answer
def _altered(answer):
    found = _read_answer(answer)
    if found.kind is _verdict.Kind.BLOCK:
        return _dc.replace(found, body=found.body + b' (altered)')
    return found
_verdict.read_answer = _altered
";

/// PARITY's negative controls: every corpus case (curl, h1) on a bottle whose addon allows
/// every request without asking the scanner, then on one whose addon alters the scanner's block
/// text. Each case the scanner blocks in plaintext must FAIL on both, on its parity check; the
/// cases it allows agree on both (nothing else makes them fail).
#[tokio::test]
async fn parity_fails_when_the_chain_decides_or_answers_otherwise_than_the_scanner() -> Result<()> {
    let scenarios = scenario::load_all()?;
    let cases: Vec<Case> = scenario::expand(&scenarios)
        .into_iter()
        .filter(|c| c.scenario.expect.parity && c.client == Client::Curl)
        .filter(|c| c.protocol == Protocol::H1 && c.settled(true).is_none())
        .collect();
    ensure!(cases.len() >= 10, "only {} PARITY cases", cases.len());
    let stubbed = ChainOptions {
        verdict_stub_allow: true,
        ..runner::options_for(&cases[0])
    };
    let broken = broken_addon(ALTERS_THE_BLOCK_TEXT)?;
    let altered = ChainOptions {
        addon_dir: Some(broken.path().to_path_buf()),
        ..runner::options_for(&cases[0])
    };
    let mut failed_on = Vec::new();
    for (options, what) in [(stubbed, "the verdict"), (altered, "block text")] {
        let outcomes = run_on_one_bottle(&cases, options, None).await?;
        let failed: Vec<&String> = outcomes
            .iter()
            .filter(|(_, f)| !f.is_empty())
            .map(|(name, _)| name)
            .collect();
        eprintln!(
            "{what}: {} of {} PARITY cases failed",
            failed.len(),
            outcomes.len()
        );
        for (name, failures) in &outcomes {
            ensure!(
                failures.iter().all(|f| f.starts_with("parity: ")),
                "{name} failed on something else than parity ({what}): {failures:?}"
            );
        }
        ensure!(
            failed.len() >= 5,
            "only {} PARITY cases failed when the chain changed {what}: {outcomes:#?}",
            failed.len()
        );
        failed_on.push(failed.into_iter().cloned().collect::<Vec<_>>());
    }
    ensure!(
        failed_on[0] == failed_on[1],
        "the cases the scanner blocks fail under both controls: {failed_on:?}"
    );
    Ok(())
}

/// The generated lane's negative control: on a bottle whose addon allows every request without
/// asking the scanner, the lane finds a disagreement, shrinks it to a request that still
/// carries a credential the scanner blocks, and its scenario file loads back as one.
#[tokio::test(flavor = "multi_thread")]
async fn the_generated_parity_lane_finds_and_shrinks_a_disagreement() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let options = ChainOptions {
        verdict_stub_allow: true,
        ..bottle_harness::generated::chain_options()
    };
    let mut chain = Chain::up(&docker, &images, options).await?;
    let found = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Runtime::new()?;
        let found = bottle_harness::generated::run_lane(&runtime, &mut chain, 12, false);
        runtime.block_on(chain.down())?;
        found
    })
    .await??
    .context("the lane passed on a bottle that allows every request")?;
    eprintln!(
        "found: {}\nshrunk to: {:#?}",
        found.why, found.smallest.request
    );
    ensure!(found.why.contains("parity: "), "{}", found.why);
    ensure!(
        found.smallest.title.contains("a credential"),
        "shrunk to a request with nothing to block: {}",
        found.smallest.title
    );
    let text = bottle_harness::generated::scenario_file(&found.smallest)?;
    let back = scenario::parse_str(&text, std::path::Path::new("parity-found.toml"))?;
    ensure!(back[0].request == found.smallest.request && back[0].expect.parity);
    Ok(())
}
