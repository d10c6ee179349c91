//! A whole bottle in containers, brought up from the launcher's `BottlePlan`, plus the test
//! "internet": an internal network where the recording upstream answers for real names with
//! certificates from a stand-in root that only mitmproxy trusts.
//!
//! Everything is removed by `down()`, by `Drop` while a panic unwinds, and on SIGINT/SIGTERM by
//! a process-wide handler (`cleanup::on_signal`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bottle::plan::{
    self, AgentSpec, BottlePlan, BottleSpec, ContainerPlan, CredentialBinding, EgressSpec,
    FileContents, NetworkRole, Role, ScannerKind, ScannerSpec,
};
use serde_json::Value;
use testcontainers::core::{Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use crate::exec::{exec, exec_ok};
use crate::images::TestImages;
use crate::network::{self, InternalNetwork};
use crate::{cleanup, copy, fixture_bins, run};

/// The names the upstream fixture answers for on the test internet.
pub const UPSTREAM_HOSTS: [&str; 3] = [
    "api.anthropic.com",
    "raw.githubusercontent.com",
    "example.com",
];
const UPSTREAM_CONTROL: &str = "http://127.0.0.1:9999";

/// What a test may vary about its bottle; the rest is the launcher's plan.
#[derive(Clone, Debug, Default)]
pub struct ChainOptions {
    /// The Claude Code agent image instead of the probe image.
    pub claude: bool,
    pub agent_env: BTreeMap<String, String>,
    pub credentials: Vec<CredentialBinding>,
    /// A different addon directory (the harness's own negative control).
    pub addon_dir: Option<PathBuf>,
}

pub struct Chain {
    docker: Docker,
    pub plan: BottlePlan,
    pub images: TestImages,
    pub upstream_ip: String,
    pub mitm_egress_ip: String,
    upstream: ContainerAsync<GenericImage>,
    containers: HashMap<&'static str, ContainerAsync<GenericImage>>,
    // Dropped last: removing a network also removes whatever is still on it.
    _networks: Vec<InternalNetwork>,
    _staged: Vec<tempfile::TempDir>,
}

fn image(tag: &str) -> GenericImage {
    let (repo, version) = tag.split_once(':').expect("tags are repo:hash");
    GenericImage::new(repo, version)
}

fn role_key(role: Role) -> &'static str {
    match role {
        Role::Scanner => "scanner",
        Role::Mitm => "mitm",
        Role::Agent => "agent",
    }
}

impl Chain {
    pub async fn up(docker: &Docker, images: &TestImages, options: ChainOptions) -> Result<Chain> {
        cleanup::on_signal(docker);
        let name = run::unique("t");
        let root = TestRoot::generate()?;
        let internet = InternalNetwork::create(docker, "bottle-internet").await?;
        let internet_subnet = network::subnet(docker, &internet.name).await?;

        let mut agent_env = options.agent_env.clone();
        agent_env
            .entry("HOME".into())
            .or_insert("/home/agent".into());
        let spec = BottleSpec {
            name: name.clone(),
            agent: AgentSpec {
                image: if options.claude {
                    images.agent_claude.clone()
                } else {
                    images.agent.clone()
                },
                command: vec!["sleep".into(), "infinity".into()],
                env: agent_env,
            },
            scanner: ScannerSpec {
                kind: ScannerKind::Double,
                image: images.fixtures.clone(),
                entrypoint: Some(vec!["pipelock-double".into()]),
            },
            mitm_image: images.mitmproxy.clone(),
            addon_dir: options
                .addon_dir
                .clone()
                .unwrap_or_else(|| fixture_bins::workspace_root().join("addon")),
            egress: EgressSpec {
                network: Some(internet.name.clone()),
                upstream_trust_pem: Some(root.cert_pem.clone()),
                // The test internet is a private network holding only the fixtures.
                ssrf_allow: vec![internet_subnet],
            },
            credentials: options.credentials.clone(),
        };
        let plan = plan::plan(&spec)?;

        // Independent steps run together: a chain per test is the unit of isolation, so its
        // bring-up time is the suite's time.
        let upstream_name = format!("bottle-{name}-upstream");
        let (upstream, plan_networks) = tokio::try_join!(
            start_upstream(docker, images, &internet.name, &upstream_name, &root),
            async {
                let mut made = Vec::new();
                for net in plan.networks.iter().filter(|n| n.create) {
                    made.push(
                        InternalNetwork::create_named(docker, &net.name, &plan.labels).await?,
                    );
                }
                anyhow::Ok(made)
            },
        )?;
        let mut networks = vec![internet];
        networks.extend(plan_networks);
        let upstream_ip = network::ip(docker, &networks[0].name, &upstream_name).await?;

        let started = futures_util::future::try_join_all(
            plan.containers.iter().map(|c| start(docker, &plan, c)),
        )
        .await?;
        let mut containers = HashMap::new();
        let mut staged = Vec::new();
        for (container_plan, (container, dirs)) in plan.containers.iter().zip(started) {
            containers.insert(role_key(container_plan.role), container);
            staged.extend(dirs);
        }
        let mut chain = Chain {
            docker: docker.clone(),
            plan,
            images: images.clone(),
            upstream_ip,
            mitm_egress_ip: String::new(),
            upstream,
            containers,
            _networks: networks,
            _staged: staged,
        };
        chain.mitm_egress_ip = network::ip(
            docker,
            &chain.plan.network(NetworkRole::Egress).name,
            &chain.plan.container(Role::Mitm).name,
        )
        .await?;
        chain.provision_ca().await?;
        Ok(chain)
    }

    /// The PRD's CA steps: mitmproxy's public cert into the agent's trust store, as root.
    async fn provision_ca(&mut self) -> Result<()> {
        let ca = self.plan.ca.clone();
        let mut pem = String::new();
        for _ in 0..50 {
            let out = exec(
                &self.docker,
                self.id(Role::Mitm),
                None,
                &["cat", &ca.mitm_cert],
            )
            .await?;
            if out.code == 0 && out.stdout.contains("BEGIN CERTIFICATE") {
                pem = out.stdout;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if pem.is_empty() {
            bail!("mitmproxy's CA {} never appeared", ca.mitm_cert);
        }
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&pem);
        let install = format!(
            "printf %s {encoded} | base64 -d > {path} && chmod {mode:o} {path} && {command}",
            path = ca.agent_path,
            mode = ca.mode,
            command = ca.install_command.join(" "),
        );
        exec_ok(
            &self.docker,
            self.id(Role::Agent),
            Some("0"),
            &["sh", "-c", &install],
        )
        .await?;
        self.plan.egress.mitm.ca_fingerprint = Some(fingerprint(&pem)?);
        Ok(())
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn id(&self, role: Role) -> &str {
        self.containers[role_key(role)].id()
    }

    pub fn upstream_id(&self) -> &str {
        self.upstream.id()
    }

    pub fn scanner_is_double(&self) -> bool {
        self.plan.scanner == ScannerKind::Double
    }

    /// Every request and TLS error the upstream recorded, on every port.
    pub async fn upstream_records(&self) -> Result<Vec<Value>> {
        let out = exec_ok(
            &self.docker,
            self.upstream.id(),
            None,
            &["curl", "-sS", &format!("{UPSTREAM_CONTROL}/records")],
        )
        .await?;
        serde_json::from_str(&out).with_context(|| format!("upstream records: {out}"))
    }

    /// Serves these routes (the upstream's `PUT /routes` JSON) from now on.
    pub async fn put_routes(&self, routes: &Value) -> Result<()> {
        exec_ok(
            &self.docker,
            self.upstream.id(),
            None,
            &[
                "curl",
                "-sS",
                "-f",
                "-X",
                "PUT",
                "--data-binary",
                &routes.to_string(),
                &format!("{UPSTREAM_CONTROL}/routes"),
            ],
        )
        .await?;
        Ok(())
    }

    /// mitmproxy's decision records so far.
    pub async fn decisions(&self) -> Result<Vec<Value>> {
        let out = exec(
            &self.docker,
            self.id(Role::Mitm),
            None,
            &["cat", plan::MITM_DECISION_LOG],
        )
        .await?;
        json_lines(&out.stdout)
    }

    /// The scanner's JSON events so far (its stdout).
    pub async fn scanner_events(&self) -> Result<Vec<Value>> {
        let logs = self.containers["scanner"].stdout_to_vec().await?;
        json_lines(&String::from_utf8_lossy(&logs))
    }

    /// stdout and stderr of every container, for a failure message.
    pub async fn logs(&self) -> String {
        let mut all = String::new();
        let mut parts: Vec<(&str, &ContainerAsync<GenericImage>)> =
            vec![("upstream", &self.upstream)];
        parts.extend(self.containers.iter().map(|(k, v)| (*k, v)));
        for (role, container) in parts {
            let out = container.stdout_to_vec().await.unwrap_or_default();
            let err = container.stderr_to_vec().await.unwrap_or_default();
            all.push_str(&format!(
                "----- {role} stdout\n{}\n----- {role} stderr\n{}\n",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            ));
        }
        all
    }

    /// Removes every container and network of this chain, and checks nothing is left.
    pub async fn down(mut self) -> Result<()> {
        futures_util::future::try_join_all(self.containers.drain().map(|(_, c)| c.rm())).await?;
        // The upstream and networks go with Drop (networks remove what is still on them).
        drop(self);
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
) -> Result<ContainerAsync<GenericImage>> {
    let mut args = vec![
        "serve".to_string(),
        "--root-ca-cert".into(),
        "/etc/bottle-upstream/root.pem".into(),
        "--root-ca-key".into(),
        "/etc/bottle-upstream/root.key".into(),
    ];
    for host in UPSTREAM_HOSTS {
        args.extend(["--host".into(), host.into()]);
    }
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
        .with_network(internet)
        .with_container_name(name)
        .with_labels(run::labels())
        .start()
        .await
        .context("starting the upstream fixture")?;
    network::connect(docker, internet, name, &UPSTREAM_HOSTS).await?;
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

/// Starts one container of the plan: files in place, resolver, then its other networks.
async fn start(
    docker: &Docker,
    bottle: &BottlePlan,
    plan: &ContainerPlan,
) -> Result<(ContainerAsync<GenericImage>, Vec<tempfile::TempDir>)> {
    let mut staged_dirs = Vec::new();
    let mut base = image(&plan.image);
    if let Some(line) = &plan.ready_line {
        base = base.with_wait_for(WaitFor::message_on_stdout(line));
    }
    let command: Vec<String> = match &plan.entrypoint {
        Some(entrypoint) => {
            let (program, args) = entrypoint.split_first().expect("non-empty entrypoint");
            base = base.with_entrypoint(program);
            // Arguments of a multi-word entrypoint go before the command.
            args.iter().chain(&plan.command).cloned().collect()
        }
        None => plan.command.clone(),
    };
    let mut request: ContainerRequest<GenericImage> = base.with_cmd(command);
    if !plan.dns_options.is_empty() {
        let options = plan.dns_options.clone();
        request = request.with_host_config_modifier(move |config| {
            config.dns_options = Some(options.clone());
        });
    }
    for (key, value) in &plan.env {
        request = request.with_env_var(key, value);
    }
    let mut labels = run::labels();
    labels.extend(bottle.labels.clone());
    labels.insert(plan::ROLE_LABEL.into(), role_key(plan.role).into());
    for file in &plan.files {
        request = match &file.contents {
            FileContents::Text(text) => {
                request.with_copy_to(file.path.clone(), text.clone().into_bytes())
            }
            FileContents::Dir(dir) => {
                let (with_dir, staged) = copy::with_dir(request, dir, &file.path)?;
                staged_dirs.push(staged);
                with_dir
            }
        };
    }
    if let Some(resolv) = &plan.resolv_conf {
        let staged = tempfile::Builder::new()
            .prefix("bottle-resolv-")
            .tempdir()?;
        let path = staged.path().join("resolv.conf");
        std::fs::write(&path, resolv)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        request = request.with_mount(Mount::bind_mount(
            path.to_string_lossy().into_owned(),
            "/etc/resolv.conf",
        ));
        staged_dirs.push(staged);
    }
    let (first, rest) = plan.networks.split_first().expect("attached somewhere");
    let container = request
        .with_network(&bottle.network(first.network).name)
        .with_container_name(&plan.name)
        .with_labels(labels)
        .start()
        .await
        .with_context(|| format!("starting {}", plan.name))?;
    for attachment in rest {
        let aliases: Vec<&str> = attachment.aliases.iter().map(String::as_str).collect();
        network::connect(
            docker,
            &bottle.network(attachment.network).name,
            &plan.name,
            &aliases,
        )
        .await?;
    }
    Ok((container, staged_dirs))
}

fn json_lines(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// sha256 of the certificate's DER, hex.
pub fn fingerprint(pem: &str) -> Result<String> {
    use base64::Engine;
    use sha2::Digest;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .context("mitmproxy's CA is not PEM")?;
    Ok(hex::encode(sha2::Sha256::digest(der)))
}
