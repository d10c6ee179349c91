//! A whole bottle in containers, brought up from the launcher's `BottlePlan`, plus the test
//! "internet": an internal network where the recording upstream answers for real names with
//! certificates from a stand-in root that only mitmproxy trusts.
//!
//! Everything is removed by `down()`, by `Drop` while a panic unwinds, and on SIGINT/SIGTERM by
//! a process-wide handler (`cleanup::on_signal`). A chain can also be *attached*: a bottle another
//! process brought up and owns (the suite's pool, `pool`), described the same way but never
//! torn down from here.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use bollard::Docker;
use bottle::executor::{self, StartOptions};
use bottle::plan::{
    self, AgentSpec, BottlePlan, BottleSpec, CredentialBinding, EgressSpec, NetworkRole, Role,
    ScannerKind, ScannerSpec, UpstreamCa,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::exec::{exec, exec_ok};
use crate::images::TestImages;
use crate::network::{self, InternalNetwork};
use crate::scenario::ScannerFake;
use crate::{cleanup, run};

/// The upstream fixture's sink: every TCP and UDP port its HTTP listeners (443, 80) do not
/// serve, from the test internet, reaches one listener here that records every byte and
/// answers nothing (`fixtures/upstream/src/sink.rs`). A relay of any protocol to any port of
/// the test internet is recorded; the control port stays reachable from inside only.
pub const SINK_PORT: u16 = 9;

/// The names the upstream fixture answers for on the test internet.
pub const UPSTREAM_HOSTS: [&str; 3] = [
    "api.anthropic.com",
    "raw.githubusercontent.com",
    "example.com",
];
/// Names the upstream fixture answers for with a certificate no client may trust (TRUST): the
/// host and the fixture's certificate mode.
pub const UNTRUSTED_HOSTS: [(&str, &str); 4] = [
    ("expired.example.com", "expired"),
    ("self-signed.example.com", "self-signed"),
    ("wrong-name.example.com", "wrong-name"),
    ("unknown-root.example.com", "unknown-root"),
];
const UPSTREAM_CONTROL: &str = "http://127.0.0.1:9999";

/// Every name on the test internet: the allowlist of a test bottle, the upstream's aliases.
fn internet_hosts() -> Vec<&'static str> {
    UPSTREAM_HOSTS
        .into_iter()
        .chain(UNTRUSTED_HOSTS.map(|(host, _)| host))
        .collect()
}

/// What a test may vary about its bottle; the rest is the launcher's plan. Bottles with the
/// same options are shared through the pool (`pool_key`); another addon never is.
#[derive(Clone, Debug, Default)]
pub struct ChainOptions {
    /// The Claude Code agent image instead of the probe image.
    pub claude: bool,
    pub agent_env: BTreeMap<String, String>,
    pub credentials: Vec<CredentialBinding>,
    /// A different addon directory (the harness's own negative control).
    pub addon_dir: Option<PathBuf>,
    /// The addon's test-only switch: every request allowed without the scanner (the BYPASS
    /// lane's negative control). Never pooled.
    pub verdict_stub_allow: bool,
    /// The fixtures' `scanner-fake` in the scanner's place (FAILCLOSED). Never pooled.
    pub scanner_fake: Option<ScannerFake>,
    /// The case does things to the bottle (faults, load) or measures it: its own, never pooled.
    pub own_bottle: bool,
    /// No allowlist: the scanner without strict mode (PARITY).
    pub any_host: bool,
    /// More names the upstream answers for, besides [`UPSTREAM_HOSTS`] (a corpus's hosts).
    pub upstream_hosts: Vec<String>,
}

impl ChainOptions {
    /// Whether these are the defaults, the options of the pool's first bottles.
    pub fn is_default(&self) -> bool {
        !self.claude
            && self.agent_env.is_empty()
            && self.credentials.is_empty()
            && self.addon_dir.is_none()
            && !self.verdict_stub_allow
            && self.scanner_fake.is_none()
            && !self.own_bottle
            && !self.any_host
            && self.upstream_hosts.is_empty()
    }

    /// The pool bottles with exactly these options share this key: `default`, or a hash of
    /// everything the options set. None: never pooled (another addon is a test's own).
    pub fn pool_key(&self) -> Option<String> {
        if self.addon_dir.is_some()
            || self.verdict_stub_allow
            || self.scanner_fake.is_some()
            || self.own_bottle
        {
            return None;
        }
        if self.is_default() {
            return Some(crate::pool::DEFAULT_KEY.to_string());
        }
        let mut described = format!(
            "claude={:?} env={:?} credentials={:?}",
            self.claude, self.agent_env, self.credentials
        );
        // Keys of bottles with neither stay as they were.
        if self.any_host || !self.upstream_hosts.is_empty() {
            described += &format!(
                " any_host={} hosts={:?}",
                self.any_host, self.upstream_hosts
            );
        }
        Some(hex::encode(&Sha256::digest(described.as_bytes())[..6]))
    }
}

pub struct Chain {
    docker: Docker,
    pub plan: BottlePlan,
    pub images: TestImages,
    pub upstream_ip: String,
    pub mitm_egress_ip: String,
    /// Container ids by role key ("scanner", "mitm", "agent") and "upstream".
    ids: HashMap<&'static str, String>,
    /// Decision-log lines written before this chain's current user took it (`reset`).
    decisions_before: usize,
    /// Bytes of mitmproxy's stdout and stderr written before then.
    mitm_output_before: (usize, usize),
    /// What this process made and removes; `None` for an attached chain.
    owned: Option<Owned>,
    /// `scanner-fake` stands in the scanner's place.
    pub scanner_fake: bool,
}

/// What a chain this process brought up is made of; dropping it removes everything.
struct Owned {
    bottle: BottleGuard,
    _upstream: ContainerAsync<GenericImage>,
    // Dropped last: removing a network also removes whatever is still on it.
    _internet: InternalNetwork,
}

/// Removes the bottle (everything with its label) when dropped, e.g. while a panic unwinds.
struct BottleGuard {
    docker: Docker,
    name: Option<String>,
}

impl BottleGuard {
    async fn remove(&mut self) {
        if let Some(name) = self.name.take() {
            executor::remove(&self.docker, &name).await;
        }
    }
}

impl Drop for BottleGuard {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        let docker = self.docker.clone();
        run::block_on_thread(async move {
            executor::remove(&docker, &name).await;
        });
    }
}

fn image(tag: &str) -> GenericImage {
    let (repo, version) = tag.split_once(':').expect("tags are repo:hash");
    GenericImage::new(repo, version)
}

fn upstream_name(bottle: &str) -> String {
    format!("bottle-{bottle}-upstream")
}

fn internet_name(bottle: &str) -> String {
    format!("bottle-{bottle}-internet")
}

/// The launcher's spec of a test bottle: the one description `up` and `attach` both plan from.
fn spec(
    name: &str,
    images: &TestImages,
    options: &ChainOptions,
    internet: &str,
    internet_subnet: &str,
    root_pem: &str,
) -> BottleSpec {
    let mut agent_env = options.agent_env.clone();
    agent_env
        .entry("HOME".into())
        .or_insert("/home/agent".into());
    BottleSpec {
        name: name.to_string(),
        agent: AgentSpec {
            image: if options.claude {
                images.agent_claude.clone()
            } else {
                images.agent.clone()
            },
            command: vec!["sleep".into(), "infinity".into()],
            env: agent_env,
            secret_env: Default::default(),
            limits: Default::default(),
        },
        scanner: ScannerSpec {
            kind: images.graded.scanner_kind,
            image: images.graded.scanner_image.clone(),
            entrypoint: match images.graded.scanner_kind {
                ScannerKind::Pipelock => None,
                ScannerKind::Double => Some(vec!["pipelock-double".into()]),
            },
        },
        mitm_image: images.graded.mitm_image.clone(),
        addon_dir: options.addon_dir.clone(),
        egress: EgressSpec {
            network: Some(internet.to_string()),
            allowlist: internet_hosts().into_iter().map(String::from).collect(),
            any_host: options.any_host,
            // The stand-in root, trusted besides the system roots: the path a corporate
            // proxy's CA takes.
            upstream_ca: Some(UpstreamCa {
                source: "the test root".into(),
                pem: root_pem.to_string(),
            }),
            // The test internet is a private network holding only the fixtures.
            ssrf_allow: vec![internet_subnet.to_string()],
        },
        credentials: options.credentials.clone(),
        test_verdict_allow: options.verdict_stub_allow,
    }
}

/// The scanner's container runs `scanner-fake` (from the same fixtures image) instead.
fn put_fake_scanner(plan: &mut BottlePlan, fake: &ScannerFake) -> Result<()> {
    use base64::Engine;
    let answer = fake.answer_bytes().context("scanner_fake's answer")?;
    let scanner = plan
        .containers
        .iter_mut()
        .find(|c| c.role == Role::Scanner)
        .context("the plan has no scanner")?;
    scanner.entrypoint = Some(vec!["scanner-fake".into()]);
    scanner.command = vec![
        "--listen".into(),
        format!("0.0.0.0:{}", plan::SCANNER_PORT),
        "--answer-base64".into(),
        base64::engine::general_purpose::STANDARD.encode(answer),
        "--delay-ms".into(),
        fake.delay_ms.to_string(),
        "--then".into(),
        fake.then.as_str().into(),
    ];
    Ok(())
}

impl Chain {
    pub async fn up(docker: &Docker, images: &TestImages, options: ChainOptions) -> Result<Chain> {
        cleanup::on_signal(docker);
        let name = run::unique("t");
        let root = TestRoot::generate()?;
        // Not labelled as part of the bottle: it is the test's, and outlives nothing.
        let internet =
            InternalNetwork::create_named(docker, &internet_name(&name), &BTreeMap::new()).await?;
        let internet_subnet = network::subnet(docker, &internet.name).await?;
        let mut plan = plan::plan(&spec(
            &name,
            images,
            &options,
            &internet.name,
            &internet_subnet,
            &root.cert_pem,
        ))?;
        if let Some(fake) = &options.scanner_fake {
            put_fake_scanner(&mut plan, fake)?;
        }

        // The upstream and the bottle start together: a chain per test is the unit of
        // isolation, so its bring-up time is the suite's time.
        let upstream_name = upstream_name(&name);
        let start_options = StartOptions {
            extra_labels: run::labels().into_iter().collect(),
            // The suite is the one caller that may turn on the addon's test-only switch.
            allow_test_switches: options.verdict_stub_allow,
            ..StartOptions::default()
        };
        // Armed from here: a failed upstream cancels a half-made start, which this removes.
        let bottle = BottleGuard {
            docker: docker.clone(),
            name: Some(name.clone()),
        };
        let (upstream, running) = tokio::try_join!(
            start_upstream(
                docker,
                images,
                &internet.name,
                &upstream_name,
                &root,
                &options.upstream_hosts
            ),
            async {
                executor::start(docker, &plan, &start_options)
                    .await
                    .with_context(|| format!("starting bottle {name}"))
            },
        )?;
        let upstream_ip = network::ip(docker, &internet.name, &upstream_name).await?;
        let mitm_egress_ip = network::ip(
            docker,
            &internet.name,
            &running.plan.container(Role::Mitm).name,
        )
        .await?;
        let mut ids = HashMap::from([("upstream", upstream.id().to_string())]);
        for (role, id) in &running.ids {
            ids.insert(executor::role_name(*role), id.clone());
        }
        Ok(Chain {
            docker: docker.clone(),
            plan: running.plan,
            images: images.clone(),
            upstream_ip,
            mitm_egress_ip,
            ids,
            decisions_before: 0,
            mitm_output_before: (0, 0),
            owned: Some(Owned {
                bottle,
                _upstream: upstream,
                _internet: internet,
            }),
            scanner_fake: options.scanner_fake.is_some(),
        })
    }

    /// A bottle another process brought up with the default options and still owns (a pool
    /// bottle): found by its name, described by the same plan, never torn down from here.
    /// Call [`Chain::reset`] before using it.
    /// The running bottle `name`, brought up with `options` (a pool bottle): checked to run
    /// the images the plan says, so a bottle of other options is never taken for it.
    pub async fn attach(
        docker: &Docker,
        images: &TestImages,
        name: &str,
        options: &ChainOptions,
    ) -> Result<Chain> {
        let upstream_name = upstream_name(name);
        let internet = internet_name(name);
        let (subnet, root_pem, upstream_ip) = tokio::try_join!(
            network::subnet(docker, &internet),
            exec_ok(
                docker,
                &upstream_name,
                None,
                &["cat", "/etc/bottle-upstream/root.pem"]
            ),
            network::ip(docker, &internet, &upstream_name),
        )?;
        let mut plan = plan::plan(&spec(name, images, options, &internet, &subnet, &root_pem))?;
        for container in &plan.containers {
            let running = docker
                .inspect_container(&container.name, None)
                .await
                .with_context(|| format!("attaching bottle {name}"))?
                .config
                .and_then(|c| c.image)
                .unwrap_or_default();
            ensure!(
                running == container.image,
                "pool bottle {name}: {} runs {running}, not {} as its options say",
                container.name,
                container.image
            );
        }
        let mut ids = HashMap::from([("upstream", upstream_name.clone())]);
        for container in &plan.containers {
            ids.insert(executor::role_name(container.role), container.name.clone());
        }
        let mitm = plan.container(Role::Mitm).name.clone();
        let cat_cert = ["cat", plan.ca.mitm_cert.as_str()];
        let (mitm_egress_ip, mitm_cert) = tokio::try_join!(
            network::ip(docker, &plan.network(NetworkRole::Egress).name, &mitm),
            exec_ok(docker, &mitm, None, &cat_cert),
        )
        .with_context(|| format!("attaching bottle {name}"))?;
        plan.egress.mitm.ca_fingerprint =
            Some(executor::fingerprint(&mitm_cert).context("mitmproxy's CA")?);
        Ok(Chain {
            docker: docker.clone(),
            plan,
            images: images.clone(),
            upstream_ip,
            mitm_egress_ip,
            ids,
            decisions_before: 0,
            mitm_output_before: (0, 0),
            owned: None,
            scanner_fake: false,
        })
    }

    /// Makes what a case can observe as a fresh bottle's: no agent process left from the last
    /// user (a probe that outlived its timeout could still send), no upstream records, no
    /// upstream routes, and only decision records written from now on.
    pub async fn reset(&mut self) -> Result<()> {
        // As the agent user, `kill -1` reaches every process of it but the container's init.
        exec(
            &self.docker,
            self.id(Role::Agent),
            Some(crate::probe::AGENT_USER),
            &["sh", "-c", "kill -KILL -1 2>/dev/null; true"],
        )
        .await?;
        let clear = async {
            self.put_routes(&serde_json::json!({ "routes": [] }))
                .await?;
            self.upstream_control("DELETE", "/records", None).await
        };
        let (_, before, (out, err)) = tokio::try_join!(
            clear,
            self.all_decisions(),
            container_logs(&self.docker, self.id(Role::Mitm))
        )?;
        self.decisions_before = before.len();
        self.mitm_output_before = (out.len(), err.len());
        Ok(())
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn id(&self, role: Role) -> &str {
        &self.ids[executor::role_name(role)]
    }

    pub fn upstream_id(&self) -> &str {
        &self.ids["upstream"]
    }

    /// Every request and TLS error the upstream recorded, on every port.
    pub async fn upstream_records(&self) -> Result<Vec<Value>> {
        let out = self.upstream_control("GET", "/records", None).await?;
        serde_json::from_str(&out).with_context(|| format!("upstream records: {out}"))
    }

    /// How many records the upstream holds, how many are requests, and how many mention
    /// `needle` (the upstream counts: a load test's records are too many to read back).
    pub async fn upstream_summary(&self, needle: &str) -> Result<Value> {
        let out = self
            .upstream_control(
                "GET",
                &format!("/records/summary?mentioning={needle}"),
                None,
            )
            .await?;
        serde_json::from_str(&out).with_context(|| format!("upstream summary: {out}"))
    }

    /// The peak resident set of the container's main process (`VmHWM`), in KiB; None when the
    /// container cannot show it (an image without `cat`).
    pub async fn peak_rss_kib(&self, role: Role) -> Option<u64> {
        let out = exec(
            &self.docker,
            self.id(role),
            None,
            &["cat", "/proc/1/status"],
        )
        .await
        .ok()?;
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Serves these routes (the upstream's `PUT /routes` JSON) from now on.
    pub async fn put_routes(&self, routes: &Value) -> Result<()> {
        self.upstream_control("PUT", "/routes", Some(&routes.to_string()))
            .await
            .map(drop)
    }

    /// A request to the upstream fixture's control API, made inside its container.
    async fn upstream_control(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<String> {
        let url = format!("{UPSTREAM_CONTROL}{path}");
        let mut cmd = vec!["curl", "-sS", "-f", "-X", method];
        if let Some(body) = body {
            cmd.extend(["--data-binary", body]);
        }
        cmd.push(&url);
        exec_ok(&self.docker, self.upstream_id(), None, &cmd).await
    }

    /// mitmproxy's decision records so far (since the last [`Chain::reset`]).
    pub async fn decisions(&self) -> Result<Vec<Value>> {
        let mut all = self.all_decisions().await?;
        Ok(all.split_off(self.decisions_before.min(all.len())))
    }

    async fn all_decisions(&self) -> Result<Vec<Value>> {
        json_lines(&self.decision_log_text().await?)
    }

    async fn decision_log_text(&self) -> Result<String> {
        let out = exec(
            &self.docker,
            self.id(Role::Mitm),
            None,
            &["cat", plan::MITM_DECISION_LOG],
        )
        .await?;
        Ok(out.stdout)
    }

    /// Every line the chain (mitmproxy and the addon) wrote since the last [`Chain::reset`]:
    /// its stdout, its stderr and the decision log. No secret of a request may be in one.
    pub async fn chain_log_lines(&self) -> Result<Vec<String>> {
        let (decisions, (out, err)) = tokio::try_join!(
            self.decision_log_text(),
            container_logs(&self.docker, self.id(Role::Mitm))
        )?;
        let (out_before, err_before) = self.mitm_output_before;
        let tail = |bytes: &[u8], before: usize| {
            String::from_utf8_lossy(bytes.get(before..).unwrap_or_default()).into_owned()
        };
        let mut lines: Vec<String> = decisions
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .skip(self.decisions_before)
            .map(String::from)
            .collect();
        for text in [tail(&out, out_before), tail(&err, err_before)] {
            lines.extend(text.lines().map(String::from));
        }
        Ok(lines)
    }

    /// The scanner's JSON events so far (its stdout).
    pub async fn scanner_events(&self) -> Result<Vec<Value>> {
        let (logs, _) = container_logs(&self.docker, self.id(Role::Scanner)).await?;
        json_lines(&String::from_utf8_lossy(&logs))
    }

    /// stdout and stderr of every container, for a failure message.
    pub async fn logs(&self) -> String {
        let mut all = String::new();
        let mut parts: Vec<(&str, &str)> = self.ids.iter().map(|(k, v)| (*k, v.as_str())).collect();
        parts.sort();
        for (role, id) in parts {
            let (out, err) = container_logs(&self.docker, id).await.unwrap_or_default();
            all.push_str(&format!(
                "----- {role} stdout\n{}\n----- {role} stderr\n{}\n",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            ));
        }
        all
    }

    /// Removes every container and network of this chain; an attached chain is only let go
    /// (its owner removes it).
    pub async fn down(mut self) -> Result<()> {
        if let Some(mut owned) = self.owned.take() {
            owned.bottle.remove().await;
            // The upstream and the internet go with Drop (a network removes what is on it).
            drop(owned);
        }
        Ok(())
    }
}

/// The recording upstream on the test internet, answering for every name in [`UPSTREAM_HOSTS`]
/// with leaves from the test root.
async fn start_upstream(
    docker: &Docker,
    images: &TestImages,
    internet: &str,
    name: &str,
    root: &TestRoot,
    more_hosts: &[String],
) -> Result<ContainerAsync<GenericImage>> {
    let mut args = vec![
        "serve".to_string(),
        "--root-ca-cert".into(),
        "/etc/bottle-upstream/root.pem".into(),
        "--root-ca-key".into(),
        "/etc/bottle-upstream/root.key".into(),
    ];
    let more_hosts = more_hosts
        .iter()
        .map(String::as_str)
        .filter(|h| !internet_hosts().contains(h));
    let hosts: Vec<&str> = UPSTREAM_HOSTS.into_iter().chain(more_hosts).collect();
    for host in &hosts {
        args.extend(["--host".into(), host.to_string()]);
    }
    for (host, mode) in UNTRUSTED_HOSTS {
        args.extend(["--host".into(), format!("{host}={mode}")]);
    }
    args.extend(["--sink-port".into(), SINK_PORT.to_string()]);
    let upstream = image(&images.fixtures)
        .with_entrypoint("bottle-upstream")
        .with_wait_for(WaitFor::message_on_stdout("bottle-upstream ready"))
        .with_cmd(args)
        .with_copy_to(
            "/etc/bottle-upstream/root.pem",
            root.cert_pem.clone().into_bytes(),
        )
        .with_copy_to(
            "/etc/bottle-upstream/root.key",
            root.key_pem.clone().into_bytes(),
        )
        // The sink's nftables rule; the fixture is the test internet, never the agent's.
        .with_cap_add("NET_ADMIN")
        .with_network(internet)
        .with_container_name(name)
        .with_labels(run::labels())
        .start()
        .await
        .context("starting the upstream fixture")?;
    let aliases: Vec<&str> = internet_hosts()
        .into_iter()
        .chain(hosts.into_iter().skip(UPSTREAM_HOSTS.len()))
        .collect();
    network::connect(docker, internet, name, &aliases).await?;
    Ok(upstream)
}

/// The stand-in root the upstream's leaves chain to; only mitmproxy trusts it.
struct TestRoot {
    cert_pem: String,
    key_pem: String,
}

impl TestRoot {
    fn generate() -> Result<TestRoot> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "bottle test root (not trusted anywhere else)",
        );
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestRoot {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A container's stdout and stderr so far.
pub(crate) async fn container_logs(docker: &Docker, id: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    use bollard::container::LogOutput;
    use futures_util::StreamExt;
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(id, Some(options));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        match chunk.with_context(|| format!("logs of {id}"))? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                out.extend_from_slice(&message)
            }
            LogOutput::StdErr { message } => err.extend_from_slice(&message),
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok((out, err))
}

fn json_lines(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

#[cfg(test)]
mod pool_key_tests {
    use super::*;

    #[test]
    fn bottles_share_a_pool_key_exactly_when_their_options_are_the_same() {
        let default = ChainOptions::default();
        assert_eq!(
            default.pool_key().as_deref(),
            Some(crate::pool::DEFAULT_KEY)
        );
        let claude = ChainOptions {
            claude: true,
            ..ChainOptions::default()
        };
        let env = |value: &str| ChainOptions {
            agent_env: BTreeMap::from([("K".to_string(), value.to_string())]),
            ..ChainOptions::default()
        };
        let keys = [&default, &claude, &env("a"), &env("b")].map(|o| o.pool_key().unwrap());
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b, "two option sets share a pool key");
            }
        }
        assert_eq!(env("a").pool_key(), env("a").pool_key());
        let other_addon = ChainOptions {
            addon_dir: Some("/elsewhere".into()),
            ..ChainOptions::default()
        };
        assert_eq!(
            other_addon.pool_key(),
            None,
            "another addon is never shared"
        );
    }
}
