//! A bottle as pure data: which networks, which containers (image, command, env, files, where
//! they attach), and the steps that follow their start. `bottle start` executes a plan, and the
//! harness brings its bottles up from the same plan, so the suite tests what users run.
//!
//! Topology (DESIGN.md): the agent reaches nothing but mitmproxy; mitmproxy reaches the scanner
//! and the egress network; the scanner reaches nothing at all (addon/README.md, "Exactly once").

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// mitmproxy's proxy port, as the agent's `HTTPS_PROXY` names it.
pub const MITM_PORT: u16 = 8080;
/// The scanner's listener (pipelock's default).
pub const SCANNER_PORT: u16 = 8888;
pub const MITM_CONFDIR: &str = "/home/mitmproxy/.mitmproxy";
/// The public half of mitmproxy's CA, the one handed to the agent.
pub const MITM_CA_CERT: &str = "/home/mitmproxy/.mitmproxy/mitmproxy-ca-cert.pem";
pub const MITM_DECISION_LOG: &str = "/home/mitmproxy/decisions.jsonl";
pub const MITM_ADDON_DIR: &str = "/opt/bottle/addon";
pub const MITM_UPSTREAM_TRUST: &str = "/opt/bottle/upstream-trust.pem";
pub const MITM_CREDENTIALS: &str = "/opt/bottle/credentials.json";
pub const SCANNER_CONFIG: &str = "/etc/pipelock/pipelock.yaml";
/// Where the agent's system trust store picks the bottle's CA up (`update-ca-certificates`).
pub const AGENT_CA_PATH: &str = "/usr/local/share/ca-certificates/claude-bottle-mitm.crt";
pub const AGENT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// A resolver that answers nothing, at once: the scanner must resolve no names (Docker's
/// embedded DNS on an internal network otherwise hangs 10 s per unknown name, measured).
pub const DEAD_RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n";
/// The label every container and network of a bottle carries: the bottle's name.
pub const BOTTLE_LABEL: &str = "org.bottle.bottle";
pub const ROLE_LABEL: &str = "org.bottle.role";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "bottle name {0:?} is not usable: use 1-40 characters a-z, 0-9 and '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("credential binding for {host}: the agent's environment has no {env}")]
    MissingCredential { host: String, env: String },
}

/// What a bottle is made of; `bottle.toml` and the harness both produce one.
#[derive(Clone, Debug)]
pub struct BottleSpec {
    pub name: String,
    pub agent: AgentSpec,
    pub scanner: ScannerSpec,
    pub mitm_image: String,
    /// The addon's directory on the host, copied into mitmproxy.
    pub addon_dir: PathBuf,
    pub egress: EgressSpec,
    pub credentials: Vec<CredentialBinding>,
}

#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScannerKind {
    Pipelock,
    /// The stand-in for machines that cannot pull pipelock: not a protection.
    Double,
}

#[derive(Clone, Debug)]
pub struct ScannerSpec {
    pub kind: ScannerKind,
    pub image: String,
    /// Overrides the image's entrypoint (the double lives in the fixtures image).
    pub entrypoint: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct EgressSpec {
    /// `Some(name)`: attach mitmproxy to this existing network (the test suite's "internet");
    /// `None`: the bottle makes its own egress network, with a route out.
    pub network: Option<String>,
    /// PEM that *replaces* mitmproxy's upstream trust store (the test suite's stand-in root).
    pub upstream_trust_pem: Option<String>,
    /// Private networks mitmproxy may connect to (the test suite's "internet").
    pub ssrf_allow: Vec<String>,
}

/// The agent's own credential, allowed in one header to one https host (addon/README.md).
#[derive(Clone, Debug, Serialize)]
pub struct CredentialBinding {
    pub host: String,
    pub header: String,
    /// The agent environment variable that holds the secret.
    pub env: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkRole {
    /// agent ↔ mitmproxy, internal.
    Agent,
    /// mitmproxy ↔ scanner, internal.
    Scan,
    /// mitmproxy ↔ the upstreams.
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Scanner,
    Mitm,
    Agent,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetworkPlan {
    pub role: NetworkRole,
    pub name: String,
    pub internal: bool,
    /// False when the network exists already (the bottle neither makes nor removes it).
    pub create: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub network: NetworkRole,
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileContents {
    Text(String),
    /// A host directory, copied whole with its file times (mitmproxy never loads a script whose
    /// mtime is the epoch).
    Dir(PathBuf),
}

#[derive(Clone, Debug, Serialize)]
pub struct FilePlan {
    pub path: String,
    pub contents: FileContents,
    pub mode: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerPlan {
    pub role: Role,
    pub name: String,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The first is where the container starts; the others are connected before it is used.
    pub networks: Vec<Attachment>,
    /// Put in place before the container starts.
    pub files: Vec<FilePlan>,
    /// Replaces /etc/resolv.conf (bind-mounted) when set.
    pub resolv_conf: Option<String>,
    /// Resolver options (Docker's `--dns-option`).
    pub dns_options: Vec<String>,
    /// A line on stdout that says the container is ready.
    pub ready_line: Option<String>,
}

/// How the agent comes to trust mitmproxy's CA (the PRD's "CA lifecycle").
#[derive(Clone, Debug, Serialize)]
pub struct CaPlan {
    /// Wait (bounded) for this file in mitmproxy, then copy it into the agent at `agent_path`.
    pub mitm_cert: String,
    pub agent_path: String,
    pub mode: u32,
    /// Run in the agent as root after the copy.
    pub install_command: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MitmStatus {
    pub enabled: bool,
    /// Filled in once mitmproxy has made its CA.
    pub ca_fingerprint: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EgressStatus {
    pub mitm: MitmStatus,
}

#[derive(Clone, Debug, Serialize)]
pub struct BottlePlan {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub scanner: ScannerKind,
    pub networks: Vec<NetworkPlan>,
    /// In start order.
    pub containers: Vec<ContainerPlan>,
    pub ca: CaPlan,
    pub egress: EgressStatus,
}

impl BottlePlan {
    pub fn container(&self, role: Role) -> &ContainerPlan {
        self.containers
            .iter()
            .find(|c| c.role == role)
            .expect("every plan has a scanner, a mitm and an agent")
    }

    pub fn network(&self, role: NetworkRole) -> &NetworkPlan {
        self.networks
            .iter()
            .find(|n| n.role == role)
            .expect("every plan has the three networks")
    }
}

pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 40
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

pub fn plan(spec: &BottleSpec) -> Result<BottlePlan, PlanError> {
    if !valid_name(&spec.name) {
        return Err(PlanError::BadName(spec.name.clone()));
    }
    let name = |part: &str| format!("bottle-{}-{part}", spec.name);
    let labels = BTreeMap::from([(BOTTLE_LABEL.to_string(), spec.name.clone())]);

    let networks = vec![
        NetworkPlan {
            role: NetworkRole::Agent,
            name: name("agent-net"),
            internal: true,
            create: true,
        },
        NetworkPlan {
            role: NetworkRole::Scan,
            name: name("scan-net"),
            internal: true,
            create: true,
        },
        match &spec.egress.network {
            Some(existing) => NetworkPlan {
                role: NetworkRole::Egress,
                name: existing.clone(),
                internal: true,
                create: false,
            },
            None => NetworkPlan {
                role: NetworkRole::Egress,
                name: name("egress-net"),
                internal: false,
                create: true,
            },
        },
    ];

    let scanner_name = name("scanner");
    let mitm_name = name("mitm");
    let scanner = ContainerPlan {
        role: Role::Scanner,
        name: scanner_name.clone(),
        image: spec.scanner.image.clone(),
        entrypoint: spec.scanner.entrypoint.clone(),
        command: [
            "run",
            "--config",
            SCANNER_CONFIG,
            "--listen",
            &format!("0.0.0.0:{SCANNER_PORT}"),
        ]
        .map(String::from)
        .to_vec(),
        env: BTreeMap::new(),
        networks: vec![Attachment {
            network: NetworkRole::Scan,
            aliases: vec![],
        }],
        files: vec![FilePlan {
            path: SCANNER_CONFIG.into(),
            contents: FileContents::Text(pipelock_config()),
            mode: 0o644,
        }],
        resolv_conf: Some(DEAD_RESOLV_CONF.into()),
        dns_options: vec![],
        ready_line: Some("\"event\":\"startup\"".into()),
    };

    let mut mitm_env = BTreeMap::from([(
        "CLAUDE_BOTTLE_PIPELOCK_URL".to_string(),
        format!("http://{scanner_name}:{SCANNER_PORT}"),
    )]);
    let mut mitm_files = vec![FilePlan {
        path: MITM_ADDON_DIR.into(),
        contents: FileContents::Dir(spec.addon_dir.clone()),
        mode: 0o755,
    }];
    let mut command: Vec<String> = vec![
        "mitmdump".into(),
        "-s".into(),
        format!("{MITM_ADDON_DIR}/addon.py"),
    ];
    let mut set = |option: String| {
        command.push("--set".into());
        command.push(option);
    };
    set(format!("confdir={MITM_CONFDIR}"));
    set("connection_strategy=lazy".into());
    set("rawtcp=false".into());
    set(format!("bottle_decision_log={MITM_DECISION_LOG}"));
    if let Some(pem) = &spec.egress.upstream_trust_pem {
        mitm_files.push(FilePlan {
            path: MITM_UPSTREAM_TRUST.into(),
            contents: FileContents::Text(pem.clone()),
            mode: 0o644,
        });
        set(format!(
            "ssl_verify_upstream_trusted_ca={MITM_UPSTREAM_TRUST}"
        ));
    }
    if !spec.egress.ssrf_allow.is_empty() {
        set(format!(
            "bottle_ssrf_allow={}",
            spec.egress.ssrf_allow.join(",")
        ));
    }
    if !spec.credentials.is_empty() {
        let mut bindings = Vec::new();
        for binding in &spec.credentials {
            let secret =
                spec.agent
                    .env
                    .get(&binding.env)
                    .ok_or_else(|| PlanError::MissingCredential {
                        host: binding.host.clone(),
                        env: binding.env.clone(),
                    })?;
            // The secret reaches mitmproxy through its environment, never through a file.
            mitm_env.insert(binding.env.clone(), secret.clone());
            bindings.push(serde_json::json!({
                "host": binding.host, "header": binding.header, "value_env": binding.env,
            }));
        }
        mitm_files.push(FilePlan {
            path: MITM_CREDENTIALS.into(),
            contents: FileContents::Text(serde_json::json!({ "bindings": bindings }).to_string()),
            mode: 0o644,
        });
        set(format!("bottle_credentials={MITM_CREDENTIALS}"));
    }
    let mitm = ContainerPlan {
        role: Role::Mitm,
        name: mitm_name.clone(),
        image: spec.mitm_image.clone(),
        entrypoint: None,
        command,
        env: mitm_env,
        networks: [NetworkRole::Scan, NetworkRole::Agent, NetworkRole::Egress]
            .map(|network| Attachment {
                network,
                aliases: vec![],
            })
            .to_vec(),
        files: mitm_files,
        resolv_conf: None,
        dns_options: vec![],
        ready_line: Some("bottle addon ready".into()),
    };

    let proxy = format!("http://{mitm_name}:{MITM_PORT}");
    let mut agent_env = spec.agent.env.clone();
    for key in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        agent_env.insert(key.into(), proxy.clone());
    }
    agent_env.insert("NODE_EXTRA_CA_CERTS".into(), AGENT_CA_PATH.into());
    agent_env.insert("SSL_CERT_FILE".into(), AGENT_CA_BUNDLE.into());
    agent_env.insert("REQUESTS_CA_BUNDLE".into(), AGENT_CA_BUNDLE.into());
    let agent = ContainerPlan {
        role: Role::Agent,
        name: name("agent"),
        image: spec.agent.image.clone(),
        entrypoint: None,
        command: spec.agent.command.clone(),
        env: agent_env,
        networks: vec![Attachment {
            network: NetworkRole::Agent,
            aliases: vec![],
        }],
        files: vec![],
        resolv_conf: None,
        // The agent resolves only mitmproxy's name; any other name fails in about a second
        // instead of the 10 s Docker's embedded DNS takes on an internal network.
        dns_options: vec!["timeout:1".into(), "attempts:1".into()],
        ready_line: None,
    };

    Ok(BottlePlan {
        name: spec.name.clone(),
        labels,
        scanner: spec.scanner.kind,
        networks,
        containers: vec![scanner, mitm, agent],
        ca: CaPlan {
            mitm_cert: MITM_CA_CERT.into(),
            agent_path: AGENT_CA_PATH.into(),
            mode: 0o644,
            install_command: vec!["update-ca-certificates".into()],
        },
        egress: EgressStatus {
            mitm: MitmStatus {
                enabled: true,
                ca_fingerprint: None,
            },
        },
    })
}

/// The scanner's config: pipelock's forward proxy with request body and header DLP blocking.
/// `internal: []` because the scanner resolves no names (addon/README.md, "Exactly once"); the
/// addon checks upstream addresses where mitmproxy connects. The rate limit cannot be turned off
/// in pipelock; set beyond what an agent sends.
pub fn pipelock_config() -> String {
    "version: 1
mode: balanced
forward_proxy:
  enabled: true
request_body_scanning:
  enabled: true
  action: block
  max_body_bytes: 5242880
  scan_headers: true
  header_mode: sensitive
fetch_proxy:
  monitoring:
    max_requests_per_minute: 100000
logging:
  format: json
  output: stdout
sentry:
  enabled: false
internal: []
"
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BottleSpec {
        BottleSpec {
            name: "demo".into(),
            agent: AgentSpec {
                image: "agent:1".into(),
                command: vec!["sleep".into(), "infinity".into()],
                env: BTreeMap::from([(
                    "ANTHROPIC_API_KEY".into(),
                    "sk-ant-test-0123456789".into(),
                )]),
            },
            scanner: ScannerSpec {
                kind: ScannerKind::Double,
                image: "fixtures:1".into(),
                entrypoint: Some(vec!["pipelock-double".into()]),
            },
            mitm_image: "mitm:1".into(),
            addon_dir: "/src/addon".into(),
            egress: EgressSpec {
                network: None,
                upstream_trust_pem: None,
                ssrf_allow: vec![],
            },
            credentials: vec![],
        }
    }

    #[test]
    fn the_agent_reaches_only_mitmproxy_and_the_scanner_only_the_scan_network() {
        let plan = plan(&spec()).unwrap();
        let on = |role| {
            plan.container(role)
                .networks
                .iter()
                .map(|a| a.network)
                .collect::<Vec<_>>()
        };
        assert_eq!(on(Role::Agent), [NetworkRole::Agent]);
        assert_eq!(on(Role::Scanner), [NetworkRole::Scan]);
        assert_eq!(
            on(Role::Mitm),
            [NetworkRole::Scan, NetworkRole::Agent, NetworkRole::Egress]
        );
        assert!(plan.network(NetworkRole::Agent).internal);
        assert!(plan.network(NetworkRole::Scan).internal);
        assert!(!plan.network(NetworkRole::Egress).internal);
        assert_eq!(
            plan.container(Role::Scanner).resolv_conf.as_deref(),
            Some(DEAD_RESOLV_CONF)
        );
    }

    #[test]
    fn mitmproxy_runs_with_the_safe_options_and_the_agent_points_at_it() {
        let plan = plan(&spec()).unwrap();
        let mitm = plan.container(Role::Mitm);
        let command = mitm.command.join(" ");
        for option in [
            "connection_strategy=lazy",
            "rawtcp=false",
            "confdir=/home/mitmproxy/.mitmproxy",
        ] {
            assert!(command.contains(option), "{command}");
        }
        assert!(!command.contains("ssl_insecure"));
        assert_eq!(
            mitm.env["CLAUDE_BOTTLE_PIPELOCK_URL"],
            "http://bottle-demo-scanner:8888"
        );
        let agent = plan.container(Role::Agent);
        assert_eq!(agent.env["HTTPS_PROXY"], "http://bottle-demo-mitm:8080");
        assert_eq!(agent.env["NODE_EXTRA_CA_CERTS"], AGENT_CA_PATH);
        assert_eq!(agent.env["SSL_CERT_FILE"], AGENT_CA_BUNDLE);
    }

    #[test]
    fn a_credential_binding_gives_mitmproxy_the_secret_by_env_only() {
        let mut spec = spec();
        spec.credentials.push(CredentialBinding {
            host: "api.anthropic.com".into(),
            header: "x-api-key".into(),
            env: "ANTHROPIC_API_KEY".into(),
        });
        let plan = plan(&spec).unwrap();
        let mitm = plan.container(Role::Mitm);
        assert_eq!(mitm.env["ANTHROPIC_API_KEY"], "sk-ant-test-0123456789");
        let file = mitm
            .files
            .iter()
            .find(|f| f.path == MITM_CREDENTIALS)
            .unwrap();
        let FileContents::Text(text) = &file.contents else {
            panic!("credentials are a text file")
        };
        assert!(!text.contains("sk-ant"), "{text}");
        assert!(
            text.contains("\"value_env\":\"ANTHROPIC_API_KEY\""),
            "{text}"
        );

        spec.agent.env.clear();
        assert!(matches!(
            super::plan(&spec),
            Err(PlanError::MissingCredential { .. })
        ));
    }

    #[test]
    fn an_existing_egress_network_is_used_not_made() {
        let mut spec = spec();
        spec.egress.network = Some("the-internet".into());
        let plan = plan(&spec).unwrap();
        let egress = plan.network(NetworkRole::Egress);
        assert_eq!(egress.name, "the-internet");
        assert!(!egress.create);
    }

    /// pipelock rejects unknown keys at any level (notes/pipelock.md §5): every key the config
    /// uses is one of its 56 top-level keys, and the values say what the bottle relies on.
    #[test]
    fn the_pipelock_config_uses_only_pipelocks_keys_and_says_what_the_bottle_needs() {
        const PIPELOCK_TOP_LEVEL_KEYS: &str = "version mode enforce explain_blocks api_allowlist \
            suppress fetch_proxy forward_proxy websocket_proxy dlp canary_tokens response_scanning \
            mcp_input_scanning mcp_tool_scanning mcp_tool_policy git_protection logging \
            session_profiling adaptive_enforcement mcp_session_binding request_body_scanning \
            kill_switch sentry metrics_listen emit tool_chain_detection mcp_ws_listener \
            tls_interception cross_request_detection reverse_proxy scan_api address_protection \
            seed_phrase_detection rules file_sentry sandbox flight_recorder mcp_binary_integrity \
            mcp_tool_provenance behavioral_baseline airlock browser_shield media_policy \
            a2a_scanning taint mediation_envelope redaction agents default_agent_identity \
            bind_default_agent_identity license_key license_file license_public_key internal \
            trusted_domains ssrf";
        let known: Vec<&str> = PIPELOCK_TOP_LEVEL_KEYS.split_whitespace().collect();
        assert_eq!(known.len(), 56);
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&pipelock_config()).unwrap();
        let map = config.as_mapping().unwrap();
        for key in map.keys() {
            let key = key.as_str().unwrap();
            assert!(known.contains(&key), "pipelock does not know {key}");
        }
        let at = |path: &str| path.split('.').fold(&config, |v, k| &v[k]).clone();
        assert_eq!(at("forward_proxy.enabled").as_bool(), Some(true));
        assert_eq!(at("request_body_scanning.action").as_str(), Some("block"));
        assert_eq!(
            at("request_body_scanning.scan_headers").as_bool(),
            Some(true)
        );
        assert_eq!(at("sentry.enabled").as_bool(), Some(false));
        assert_eq!(at("logging.format").as_str(), Some("json"));
        assert_eq!(at("logging.output").as_str(), Some("stdout"));
        assert_eq!(at("internal"), serde_yaml_ng::Value::Sequence(vec![]));
        assert!(at("fetch_proxy.monitoring.max_requests_per_minute").as_u64() >= Some(10_000));
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "Demo", "-x", "a_b", &"x".repeat(41)] {
            let mut spec = spec();
            spec.name = bad.into();
            assert!(matches!(plan(&spec), Err(PlanError::BadName(_))), "{bad}");
        }
    }
}
