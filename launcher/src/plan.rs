//! A bottle as pure data: which networks, which containers (image, command, env, files, where
//! they attach), and the steps that follow their start. `bottle start` executes a plan, and the
//! harness brings its bottles up from the same plan, so the suite tests what users run.
//!
//! Topology (DESIGN.md, README.md "The agent's only route"): the agent has no network at all;
//! a relay in its network namespace carries its loopback's proxy port to mitmproxy over a Unix
//! socket; mitmproxy reaches the scanner and the egress network; the scanner reaches nothing at
//! all (addon/README.md, "Exactly once").

use std::collections::{BTreeMap, BTreeSet};
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
/// The extra upstream CA (a corporate proxy's) mitmproxy trusts besides the system roots.
pub const MITM_UPSTREAM_CA: &str = "/opt/bottle/upstream-ca.pem";
/// The same CA for the scanner: Go adds the certificates of every file in `SSL_CERT_DIR` to the
/// system roots, which it still reads from its default bundle.
pub const SCANNER_UPSTREAM_CA_DIR: &str = "/etc/bottle/upstream-ca";
pub const MITM_CREDENTIALS: &str = "/opt/bottle/credentials.json";
pub const SCANNER_CONFIG: &str = "/etc/pipelock/pipelock.yaml";
/// Where the agent's system trust store picks the bottle's CA up (`update-ca-certificates`).
pub const AGENT_CA_PATH: &str = "/usr/local/share/ca-certificates/claude-bottle-mitm.crt";
pub const AGENT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Made (as root) once the agent trusts the bottle's CA; the agent command waits for it, so it
/// never sends a request before the trust store is in place. `update-ca-certificates` reads only
/// `*.crt` files, so the marker beside the certificate is ignored by it.
pub const AGENT_CA_READY: &str = "/usr/local/share/ca-certificates/claude-bottle-mitm.ready";
/// The agent's entrypoint: wait for [`AGENT_CA_READY`], then run the agent command (`"$@"`).
pub const AGENT_WAIT_FOR_CA: &str = "while [ ! -e /usr/local/share/ca-certificates/claude-bottle-mitm.ready ]; do sleep 0.1; done; exec \"$@\"";
/// Where the agent works: its home in the images built here (the `agent` user).
pub const AGENT_HOME: &str = "/home/agent";
/// The trust store `update-ca-certificates` reads (the CA is copied here) and writes.
pub const AGENT_CA_DIR: &str = "/usr/local/share/ca-certificates";
pub const AGENT_CA_STORE: &str = "/etc/ssl/certs";
/// The agent's default pids limit: Claude Code with its tools runs well under it; a fork bomb
/// stops at it.
pub const AGENT_PIDS_LIMIT: i64 = 1024;
/// The agent's default memory limit, 4 GiB.
pub const AGENT_MEMORY_BYTES: i64 = 4 << 30;
/// The agent's proxy address: its own loopback, where the relay listens.
pub const AGENT_PROXY_HOST: &str = "127.0.0.1";
/// Where mitmproxy and the relay mount the volume that holds the agent's socket (the agent
/// does not mount it).
pub const AGENT_SOCKET_DIR: &str = "/run/bottle-agent";
pub const AGENT_SOCKET: &str = "/run/bottle-agent/proxy.sock";
/// The relay's program (`addon/bottle_addon/relay.py`, standalone), in the relay's container.
pub const RELAY_SCRIPT: &str = "/opt/bottle/relay.py";
pub const RELAY_SOURCE: &str = include_str!("../../addon/bottle_addon/relay.py");
/// The relay runs as nobody: it needs no file of its image's users.
pub const RELAY_USER: &str = "65534:65534";
/// A resolver that answers nothing, at once: the scanner must resolve no names (Docker's
/// embedded DNS on an internal network otherwise hangs 10 s per unknown name, measured).
pub const DEAD_RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n";
/// Where the scanner's embedded resolver forwards the names it does not know:
/// Docker's resolver answers the names of the containers on a network itself and forwards every
/// other query to the host's resolvers, from the host, even on an internal network (measured:
/// the query name, a secret in it, reached the host's nameserver). Sent to the container's own
/// loopback instead, a query never leaves the container.
pub const OWN_LOOPBACK: &str = "127.0.0.1";
/// The agent has no IPv6 at all: no link-local route to the host's side of any bridge.
pub const NO_IPV6: [&str; 2] = [
    "net.ipv6.conf.all.disable_ipv6",
    "net.ipv6.conf.default.disable_ipv6",
];
/// The label every container and network of a bottle carries: the bottle's name.
pub const BOTTLE_LABEL: &str = "org.bottle.bottle";
pub const ROLE_LABEL: &str = "org.bottle.role";
/// Which scanner the bottle runs: `pipelock`, or `double` (not a protection).
pub const SCANNER_LABEL: &str = "org.bottle.scanner";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "bottle name {0:?} is not usable: use 1-40 characters a-z, 0-9 and '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("credential binding for {host}: the agent's environment has no {env}")]
    MissingCredential { host: String, env: String },
    #[error(
        "the allowlist is empty: pipelock would block every request. Name the hosts the agent \
         may reach (exact names or `*.example.com`)"
    )]
    EmptyAllowlist,
    #[error(
        "allowlist entry {0:?} is not a host pattern: use an exact host name (`api.example.com`) \
         or a wildcard over a domain (`*.example.com`), no scheme, port or path"
    )]
    BadAllowlistEntry(String),
    #[error("the agent command is empty: give the program to run and its arguments")]
    EmptyCommand,
}

/// What a bottle is made of; `bottle.toml` and the harness both produce one.
#[derive(Clone, Debug)]
pub struct BottleSpec {
    pub name: String,
    pub agent: AgentSpec,
    pub scanner: ScannerSpec,
    pub mitm_image: String,
    /// A host directory copied into mitmproxy instead of the addon built into this binary (the
    /// harness's negative control).
    pub addon_dir: Option<PathBuf>,
    pub egress: EgressSpec,
    pub credentials: Vec<CredentialBinding>,
    /// TESTS ONLY: the addon allows every request without asking the scanner (the suite's
    /// negative control). The executor refuses such a plan unless its caller is a test
    /// harness (`StartOptions::allow_test_switches`); `bottle start` never is.
    pub test_verdict_allow: bool,
}

/// The agent's limits a `bottle.toml` may set by name (`[agent]`); None: the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentLimits {
    pub pids_limit: Option<i64>,
    pub memory_mib: Option<i64>,
    /// Where the agent works besides /tmp: a volume in its read-only filesystem.
    pub home: Option<String>,
}

impl AgentLimits {
    /// The keys set, as `bottle.toml` names them: the dry run says which limits are not ours.
    pub fn set_by_name(&self) -> Vec<String> {
        [
            ("pids_limit", self.pids_limit.is_some()),
            ("memory_mib", self.memory_mib.is_some()),
            ("home", self.home.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| format!("agent.{name}"))
        .collect()
    }
}

#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub image: String,
    /// Run once the agent trusts the bottle's CA.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Names in `env` whose values are secrets: never printed (`BottlePlan::redacted`).
    pub secret_env: BTreeSet<String>,
    pub limits: AgentLimits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// The hosts the agent may reach (pipelock's `api_allowlist`, strict mode).
    pub allowlist: Vec<String>,
    /// No allowlist: pipelock runs without strict mode (its `balanced` mode) and judges every
    /// request's content whatever its host; `allowlist` is then unused. For agents that browse.
    pub any_host: bool,
    /// A CA that upstream certificates may also chain to (a TLS-intercepting corporate proxy's,
    /// or the test suite's stand-in root), trusted *besides* the system roots. Never
    /// `ssl_insecure`.
    pub upstream_ca: Option<UpstreamCa>,
    /// Private networks mitmproxy may connect to (the test suite's "internet").
    pub ssrf_allow: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UpstreamCa {
    /// Where it came from, for people reading the plan (a file name).
    pub source: String,
    #[serde(skip)]
    pub pem: String,
}

/// The hosts an agent running Claude Code needs, and nothing else: used when a manifest names
/// none. Wildcards also match the apex (pipelock's rule).
pub const DEFAULT_ALLOWLIST: [&str; 5] = [
    "api.anthropic.com",
    "statsig.anthropic.com",
    "github.com",
    "*.githubusercontent.com",
    "registry.npmjs.org",
];

/// The agent's own credential, allowed in one header to one https host (addon/README.md).
#[derive(Clone, Debug, Serialize)]
pub struct CredentialBinding {
    pub host: String,
    pub header: String,
    /// The agent environment variable that holds the secret.
    pub env: String,
    /// `Bearer` for `authorization: Bearer <secret>`; None: the header's value is the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkRole {
    /// mitmproxy ↔ scanner, internal.
    Scan,
    /// mitmproxy ↔ the upstreams.
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Scanner,
    Mitm,
    Agent,
    /// Carries the agent's proxy port to mitmproxy (README.md, "The agent's only route").
    Relay,
}

/// Where a container's network namespace comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Its own, on the plan's networks (`networks`).
    Networks,
    /// Its own, with no network at all: only a loopback.
    Isolated,
    /// The namespace of the container of this role, started before it (and nothing more).
    JoinsNamespaceOf(Role),
}

/// A volume of the bottle's (`BottlePlan::volumes`) mounted in a container.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeMount {
    pub volume: String,
    pub path: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetworkPlan {
    pub role: NetworkRole,
    pub name: String,
    pub internal: bool,
    /// False: the host has no address on the network (Docker's bridge option `inhibit_ipv4`):
    /// no gateway answers there, so a container on it reaches no host address and nothing
    /// routed (README.md, "The agent's only route").
    pub host_address: bool,
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
    /// The addon built into this binary (`crate::addon`), written with the current time.
    BuiltinAddon,
    /// A host directory, copied whole with its file times (mitmproxy never loads a script whose
    /// mtime is the epoch).
    Dir(PathBuf),
}

#[derive(Clone, Debug, Serialize)]
pub struct FilePlan {
    pub path: String,
    pub contents: FileContents,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
}

/// Modes read as people write them: "0644".
fn octal<S: serde::Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{mode:04o}"))
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerPlan {
    pub role: Role,
    pub name: String,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub network_mode: NetworkMode,
    /// With [`NetworkMode::Networks`]: the first is where the container starts; the others are
    /// connected before it is used.
    pub networks: Vec<Attachment>,
    /// The user its process runs as; None: the image's.
    pub user: Option<String>,
    pub mounts: Vec<VolumeMount>,
    /// Put in place before the container starts.
    pub files: Vec<FilePlan>,
    /// Replaces /etc/resolv.conf (bind-mounted) when set.
    pub resolv_conf: Option<String>,
    /// Resolver options (Docker's `--dns-option`).
    pub dns_options: Vec<String>,
    /// Where Docker's embedded resolver sends the names it does not know itself (`--dns`);
    /// empty: the host's resolvers.
    pub dns_servers: Vec<String>,
    /// Kernel settings of the container's network namespace (`--sysctl`).
    pub sysctls: BTreeMap<String, String>,
    /// A line on stdout that says the container is ready.
    pub ready_line: Option<String>,
    /// What the container may do beyond its files and networks (Docker's defaults are wide).
    pub confinement: Confinement,
}

/// The kernel's limits on a container (README.md, "The agent container"): no container of a
/// bottle can gain privileges (setuid binaries, file capabilities); the agent and mitmproxy drop
/// every capability a step of theirs does not need; the agent also gets a pids and a memory
/// limit. The agent needs none: its CA is installed by `docker exec` as root, who owns the trust
/// store without one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Confinement {
    /// All dropped but these; None: the engine's default set (an image not built here, whose
    /// needs are not known).
    pub capabilities: Option<Vec<String>>,
    pub no_new_privileges: bool,
    /// Processes and threads the container may have at once; None: the engine's default.
    pub pids_limit: Option<i64>,
    /// Bytes of memory; None: the engine's default (no limit).
    pub memory_bytes: Option<i64>,
    /// The image's filesystem is mounted read-only; only `tmpfs` and `volumes` can be written.
    pub read_only_root: bool,
    /// Empty, in memory, gone with the container.
    pub tmpfs: Vec<String>,
    /// Anonymous volumes, seeded with the image's files there, removed with the container.
    pub volumes: Vec<String>,
    /// The `bottle.toml` keys that set any of this (the dry run names them).
    pub set_in_manifest: Vec<String>,
}

impl Confinement {
    /// No privilege gain, these capabilities only, the engine's limits.
    pub fn service(capabilities: Option<&[&str]>) -> Self {
        Confinement {
            capabilities: capabilities.map(|c| c.iter().map(|s| s.to_string()).collect()),
            no_new_privileges: true,
            pids_limit: None,
            memory_bytes: None,
            read_only_root: false,
            tmpfs: Vec::new(),
            volumes: Vec::new(),
            set_in_manifest: Vec::new(),
        }
    }

    /// The agent, the untrusted party: no capability at all, limits, and a read-only root
    /// filesystem but for its home, /tmp and the trust store (root's: the agent cannot write
    /// it; the CA is installed there after start).
    pub fn agent(limits: &AgentLimits) -> Self {
        let home = limits.home.as_deref().unwrap_or(AGENT_HOME);
        Confinement {
            pids_limit: Some(limits.pids_limit.unwrap_or(AGENT_PIDS_LIMIT)),
            memory_bytes: Some(
                limits
                    .memory_mib
                    .map_or(AGENT_MEMORY_BYTES, |mib| mib << 20),
            ),
            read_only_root: true,
            tmpfs: vec!["/tmp".into()],
            volumes: [home, AGENT_CA_DIR, AGENT_CA_STORE]
                .map(String::from)
                .to_vec(),
            set_in_manifest: limits.set_by_name(),
            ..Confinement::service(Some(&[]))
        }
    }

    /// mitmproxy: the image built here starts as its user and needs no capability; the official
    /// image's entrypoint starts as root, reads the owner of its confdir inside a home only that
    /// user may enter (DAC_READ_SEARCH), gives the user that id (CHOWN) and drops to it with gosu
    /// (SETGID, SETUID). Measured on an image in that shape (harness/tests/grading.rs).
    pub fn mitm(image: &str) -> Self {
        let built_here = image
            .strip_prefix(crate::images::recipes::Recipe::Mitmproxy.repository())
            .is_some_and(|tag| tag.starts_with(':'));
        Confinement::service(Some(if built_here {
            &[]
        } else {
            &["CHOWN", "DAC_READ_SEARCH", "SETGID", "SETUID"]
        }))
    }
}

/// How the agent comes to trust mitmproxy's CA (the PRD's "CA lifecycle").
#[derive(Clone, Debug, Serialize)]
pub struct CaPlan {
    /// Wait (bounded) for this file in mitmproxy, then copy it into the agent at `agent_path`.
    pub mitm_cert: String,
    pub agent_path: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    /// Run in the agent as root after the copy.
    pub install_command: Vec<String>,
    /// Made in the agent, as root, when the install succeeded: the agent command starts then.
    pub ready_marker: String,
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
    pub allowlist: Vec<String>,
    /// Every host is reachable; pipelock judges the content only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub any_host: bool,
    pub upstream_ca: Option<UpstreamCa>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BottlePlan {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub scanner: ScannerKind,
    pub networks: Vec<NetworkPlan>,
    /// Named volumes made (in memory) and removed with the bottle.
    pub volumes: Vec<String>,
    /// In start order.
    pub containers: Vec<ContainerPlan>,
    pub ca: CaPlan,
    pub egress: EgressStatus,
    /// Env names whose values are secrets, in any container.
    #[serde(skip)]
    pub secret_env: BTreeSet<String>,
}

/// What a redacted secret reads as.
pub const REDACTED: &str = "<redacted>";

/// In mitmproxy's environment, lets the addon accept its test-only switches
/// (`bottle_test_verdict`); only the executor's test callers may start such a plan.
pub const TEST_SWITCHES_ENV: &str = "BOTTLE_TEST_SWITCHES";

impl BottlePlan {
    pub fn container(&self, role: Role) -> &ContainerPlan {
        self.containers
            .iter()
            .find(|c| c.role == role)
            .expect("every plan has a scanner, a mitm, an agent and a relay")
    }

    pub fn network(&self, role: NetworkRole) -> &NetworkPlan {
        self.networks
            .iter()
            .find(|n| n.role == role)
            .expect("every plan has the scan and egress networks")
    }

    /// The plan as it may be shown: secret env values replaced by [`REDACTED`].
    pub fn redacted(&self) -> BottlePlan {
        let mut plan = self.clone();
        for container in &mut plan.containers {
            for (key, value) in &mut container.env {
                if self.secret_env.contains(key) {
                    *value = REDACTED.into();
                }
            }
        }
        plan
    }
}

/// An `api_allowlist` entry pipelock accepts: an exact host or `*.` and a domain with a dot.
pub fn valid_host_pattern(pattern: &str) -> bool {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    let labels: Vec<&str> = host.split('.').collect();
    let wildcard_ok = !pattern.starts_with("*.") || labels.len() >= 2;
    wildcard_ok
        && !host.is_empty()
        && host.len() <= 253
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
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
    if spec.egress.allowlist.is_empty() && !spec.egress.any_host {
        return Err(PlanError::EmptyAllowlist);
    }
    if let Some(bad) = spec
        .egress
        .allowlist
        .iter()
        .find(|p| !valid_host_pattern(p))
    {
        return Err(PlanError::BadAllowlistEntry(bad.clone()));
    }
    if spec.agent.command.is_empty() {
        return Err(PlanError::EmptyCommand);
    }
    let name = |part: &str| format!("bottle-{}-{part}", spec.name);
    let scanner_kind = match spec.scanner.kind {
        ScannerKind::Pipelock => "pipelock",
        ScannerKind::Double => "double",
    };
    let labels = BTreeMap::from([
        (BOTTLE_LABEL.to_string(), spec.name.clone()),
        (SCANNER_LABEL.to_string(), scanner_kind.to_string()),
    ]);

    let networks = vec![
        NetworkPlan {
            role: NetworkRole::Scan,
            name: name("scan-net"),
            internal: true,
            host_address: false,
            create: true,
        },
        match &spec.egress.network {
            Some(existing) => NetworkPlan {
                role: NetworkRole::Egress,
                name: existing.clone(),
                internal: true,
                host_address: true,
                create: false,
            },
            None => NetworkPlan {
                role: NetworkRole::Egress,
                name: name("egress-net"),
                internal: false,
                host_address: true,
                create: true,
            },
        },
    ];

    let scanner_name = name("scanner");
    let mitm_name = name("mitm");
    let socket_volume = name("agent-socket");
    let socket_mount = VolumeMount {
        volume: socket_volume.clone(),
        path: AGENT_SOCKET_DIR.into(),
    };
    let mut scanner_env = BTreeMap::new();
    let mut scanner_files = vec![FilePlan {
        path: SCANNER_CONFIG.into(),
        contents: FileContents::Text(pipelock_config(
            (!spec.egress.any_host).then_some(spec.egress.allowlist.as_slice()),
        )),
        mode: 0o644,
    }];
    if let Some(ca) = &spec.egress.upstream_ca {
        scanner_env.insert("SSL_CERT_DIR".to_string(), SCANNER_UPSTREAM_CA_DIR.into());
        scanner_files.push(FilePlan {
            path: format!("{SCANNER_UPSTREAM_CA_DIR}/upstream-ca.pem"),
            contents: FileContents::Text(ca.pem.clone()),
            mode: 0o644,
        });
    }
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
        env: scanner_env,
        network_mode: NetworkMode::Networks,
        networks: vec![Attachment {
            network: NetworkRole::Scan,
            aliases: vec![],
        }],
        user: None,
        mounts: vec![],
        files: scanner_files,
        resolv_conf: Some(DEAD_RESOLV_CONF.into()),
        dns_options: vec![],
        dns_servers: vec![OWN_LOOPBACK.into()],
        sysctls: BTreeMap::new(),
        ready_line: Some("\"event\":\"startup\"".into()),
        // pipelock's image is not built here and cannot be run here to learn its needs.
        confinement: Confinement::service(None),
    };

    let mut mitm_env = BTreeMap::from([(
        "CLAUDE_BOTTLE_PIPELOCK_URL".to_string(),
        format!("http://{scanner_name}:{SCANNER_PORT}"),
    )]);
    let mut mitm_files = vec![FilePlan {
        path: MITM_ADDON_DIR.into(),
        contents: match &spec.addon_dir {
            Some(dir) => FileContents::Dir(dir.clone()),
            None => FileContents::BuiltinAddon,
        },
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
    // mitmdump's flow lines would print the agent's method and URL (addon/README.md, "Logs").
    set("flow_detail=0".into());
    // The agent comes in through the relay's socket only; the proxy port is on loopback.
    set(format!("listen_host={AGENT_PROXY_HOST}"));
    set(format!("bottle_agent_socket={AGENT_SOCKET}"));
    set(format!("bottle_decision_log={MITM_DECISION_LOG}"));
    if let Some(ca) = &spec.egress.upstream_ca {
        mitm_files.push(FilePlan {
            path: MITM_UPSTREAM_CA.into(),
            contents: FileContents::Text(ca.pem.clone()),
            mode: 0o644,
        });
        // The addon adds it to the system roots (addon/README.md); never `ssl_insecure`.
        set(format!("bottle_upstream_ca={MITM_UPSTREAM_CA}"));
    }
    if !spec.egress.ssrf_allow.is_empty() {
        set(format!(
            "bottle_ssrf_allow={}",
            spec.egress.ssrf_allow.join(",")
        ));
    }
    if spec.test_verdict_allow {
        mitm_env.insert(TEST_SWITCHES_ENV.into(), "1".into());
        set("bottle_test_verdict=allow".into());
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
            let mut entry = serde_json::json!({
                "host": binding.host, "header": binding.header, "value_env": binding.env,
            });
            if let Some(scheme) = &binding.scheme {
                entry["scheme"] = serde_json::json!(scheme);
            }
            bindings.push(entry);
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
        network_mode: NetworkMode::Networks,
        networks: [NetworkRole::Scan, NetworkRole::Egress]
            .map(|network| Attachment {
                network,
                aliases: vec![],
            })
            .to_vec(),
        user: None,
        mounts: vec![socket_mount.clone()],
        files: mitm_files,
        resolv_conf: None,
        dns_options: vec![],
        // mitmproxy resolves the upstreams' names: the host's resolvers, on the egress side.
        dns_servers: vec![],
        sysctls: BTreeMap::new(),
        ready_line: Some("bottle addon ready".into()),
        confinement: Confinement::mitm(&spec.mitm_image),
    };

    let mut secret_env = spec.agent.secret_env.clone();
    secret_env.extend(spec.credentials.iter().map(|b| b.env.clone()));
    let proxy = format!("http://{AGENT_PROXY_HOST}:{MITM_PORT}");
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
        entrypoint: Some(
            ["sh", "-c", AGENT_WAIT_FOR_CA, "bottle-agent"]
                .map(String::from)
                .to_vec(),
        ),
        command: spec.agent.command.clone(),
        env: agent_env,
        // No network: its loopback only, where the relay listens. No host address, no other
        // bottle, no resolver, no broadcast reaches anything from here.
        network_mode: NetworkMode::Isolated,
        networks: vec![],
        user: None,
        mounts: vec![],
        files: vec![],
        resolv_conf: None,
        dns_options: vec![],
        dns_servers: vec![],
        sysctls: NO_IPV6
            .map(|key| (key.to_string(), "1".to_string()))
            .into_iter()
            .collect(),
        ready_line: None,
        confinement: Confinement::agent(&spec.agent.limits),
    };
    let relay = ContainerPlan {
        role: Role::Relay,
        name: name("relay"),
        // Any image with python3 would do; mitmproxy's is here already.
        image: spec.mitm_image.clone(),
        entrypoint: Some(vec!["python3".into(), RELAY_SCRIPT.into()]),
        command: vec![
            AGENT_PROXY_HOST.into(),
            MITM_PORT.to_string(),
            AGENT_SOCKET.into(),
        ],
        env: BTreeMap::new(),
        network_mode: NetworkMode::JoinsNamespaceOf(Role::Agent),
        networks: vec![],
        user: Some(RELAY_USER.into()),
        mounts: vec![socket_mount],
        files: vec![FilePlan {
            path: RELAY_SCRIPT.into(),
            contents: FileContents::Text(RELAY_SOURCE.into()),
            mode: 0o644,
        }],
        resolv_conf: None,
        dns_options: vec![],
        dns_servers: vec![],
        sysctls: BTreeMap::new(),
        ready_line: Some("bottle relay ready".into()),
        confinement: Confinement::service(Some(&[])),
    };

    Ok(BottlePlan {
        name: spec.name.clone(),
        labels,
        scanner: spec.scanner.kind,
        networks,
        volumes: vec![socket_volume],
        containers: vec![scanner, mitm, agent, relay],
        ca: CaPlan {
            mitm_cert: MITM_CA_CERT.into(),
            agent_path: AGENT_CA_PATH.into(),
            mode: 0o644,
            install_command: vec!["update-ca-certificates".into()],
            ready_marker: AGENT_CA_READY.into(),
        },
        egress: EgressStatus {
            mitm: MitmStatus {
                enabled: true,
                ca_fingerprint: None,
            },
            allowlist: match spec.egress.any_host {
                true => Vec::new(),
                false => spec.egress.allowlist.clone(),
            },
            any_host: spec.egress.any_host,
            upstream_ca: spec.egress.upstream_ca.clone(),
        },
        secret_env,
    })
}

/// The scanner's config: pipelock's forward proxy with request body and header DLP blocking, and
/// strict mode with `allowlist`, the only mode in which pipelock enforces `api_allowlist` (None:
/// any host, pipelock's default `balanced` mode). `internal: []` because
/// the scanner resolves no names (addon/README.md, "Exactly once"); the addon checks upstream
/// addresses where mitmproxy connects. The rate limit cannot be turned off in pipelock; set
/// beyond what an agent sends. Seed phrases are found from 24 words on, not pipelock's 12: at
/// 12, ordinary English blocks an agent's conversation (README, "The scanner's config").
pub fn pipelock_config(allowlist: Option<&[String]>) -> String {
    // Entries are host patterns (`valid_host_pattern`): safe as plain YAML scalars once quoted.
    let strict: String = match allowlist {
        Some(hosts) => {
            "mode: strict\napi_allowlist:\n".to_string()
                + &hosts
                    .iter()
                    .map(|host| format!("  - \"{host}\"\n"))
                    .collect::<String>()
        }
        None => String::new(),
    };
    "version: 1\n".to_string()
        + &strict
        + "forward_proxy:
  enabled: true
request_body_scanning:
  enabled: true
  action: block
  max_body_bytes: 5242880
  scan_headers: true
  header_mode: all
fetch_proxy:
  monitoring:
    max_requests_per_minute: 100000
logging:
  format: json
  output: stdout
sentry:
  enabled: false
internal: []
seed_phrase_detection:
  enabled: true
  min_words: 24
  verify_checksum: true
"
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
                secret_env: BTreeSet::new(),
                limits: Default::default(),
            },
            scanner: ScannerSpec {
                kind: ScannerKind::Double,
                image: "fixtures:1".into(),
                entrypoint: Some(vec!["pipelock-double".into()]),
            },
            mitm_image: "mitm:1".into(),
            addon_dir: None,
            egress: EgressSpec {
                network: None,
                allowlist: DEFAULT_ALLOWLIST.map(String::from).to_vec(),
                any_host: false,
                upstream_ca: None,
                ssrf_allow: vec![],
            },
            credentials: vec![],
            test_verdict_allow: false,
        }
    }

    #[test]
    fn any_host_drops_strict_mode_and_the_allowlist_from_the_scanner_config_only() {
        let mut any = spec();
        any.egress.any_host = true;
        let config = |plan: &BottlePlan| {
            plan.container(Role::Scanner)
                .files
                .iter()
                .find_map(|f| match &f.contents {
                    FileContents::Text(text) if f.path == SCANNER_CONFIG => Some(text.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let strict = config(&plan(&spec()).unwrap());
        let open = config(&plan(&any).unwrap());
        assert!(strict.contains("mode: strict\napi_allowlist:\n  - \"api.anthropic.com\""));
        assert!(
            !open.lines().any(|l| l.starts_with("mode:")) && !open.contains("api_allowlist"),
            "{open}"
        );
        assert_eq!(
            strict.lines().filter(|l| !l.starts_with("  - ")).count() - 2,
            open.lines().count()
        );
        any.egress.allowlist.clear();
        assert!(plan(&any).unwrap().egress.any_host);
    }

    #[test]
    fn the_test_verdict_switch_reaches_mitmproxy_only_when_asked_for() {
        let plain = plan(&spec()).unwrap();
        let mitm = plain.container(Role::Mitm);
        assert!(!mitm.env.contains_key(TEST_SWITCHES_ENV));
        assert!(
            !mitm
                .command
                .iter()
                .any(|a| a.contains("bottle_test_verdict"))
        );
        let switched = plan(&BottleSpec {
            test_verdict_allow: true,
            ..spec()
        })
        .unwrap();
        let mitm = switched.container(Role::Mitm);
        assert_eq!(mitm.env[TEST_SWITCHES_ENV], "1");
        assert!(
            mitm.command
                .contains(&"bottle_test_verdict=allow".to_string())
        );
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
        assert!(on(Role::Agent).is_empty() && on(Role::Relay).is_empty());
        assert_eq!(
            plan.container(Role::Agent).network_mode,
            NetworkMode::Isolated
        );
        assert_eq!(
            plan.container(Role::Relay).network_mode,
            NetworkMode::JoinsNamespaceOf(Role::Agent)
        );
        assert_eq!(on(Role::Scanner), [NetworkRole::Scan]);
        assert_eq!(on(Role::Mitm), [NetworkRole::Scan, NetworkRole::Egress]);
        assert!(plan.network(NetworkRole::Scan).internal);
        assert!(!plan.network(NetworkRole::Egress).internal);
        assert_eq!(
            plan.container(Role::Scanner).resolv_conf.as_deref(),
            Some(DEAD_RESOLV_CONF)
        );
    }

    #[test]
    fn the_agent_comes_out_only_through_the_relay_to_mitmproxys_loopback() {
        let plan = plan(&spec()).unwrap();
        // The socket's volume is mitmproxy's and the relay's, never the agent's.
        let mounted = |role| {
            plan.container(role)
                .mounts
                .iter()
                .map(|m| (m.volume.clone(), m.path.clone()))
                .collect::<Vec<_>>()
        };
        let socket = vec![(plan.volumes[0].clone(), AGENT_SOCKET_DIR.to_string())];
        assert_eq!(mounted(Role::Mitm), socket);
        assert_eq!(mounted(Role::Relay), socket);
        assert!(mounted(Role::Agent).is_empty());
        assert!(AGENT_SOCKET.starts_with(AGENT_SOCKET_DIR));
        let mitm = plan.container(Role::Mitm).command.join(" ");
        assert!(mitm.contains("listen_host=127.0.0.1"), "{mitm}");
        assert!(
            mitm.contains(&format!("bottle_agent_socket={AGENT_SOCKET}")),
            "{mitm}"
        );
        let relay = plan.container(Role::Relay);
        assert_eq!(relay.command, ["127.0.0.1", "8080", AGENT_SOCKET]);
        assert_eq!(relay.user.as_deref(), Some(RELAY_USER));
        assert_eq!(relay.confinement.capabilities.as_deref(), Some(&[][..]));
    }

    #[test]
    fn the_agent_has_no_ipv6_and_the_scanner_no_host_address_or_dns_out() {
        let plan = plan(&spec()).unwrap();
        // No gateway answers on the scanner's network; mitmproxy's way out has one.
        assert!(!plan.network(NetworkRole::Scan).host_address);
        assert!(plan.network(NetworkRole::Egress).host_address);
        let agent = plan.container(Role::Agent);
        for key in NO_IPV6 {
            assert_eq!(agent.sysctls[key], "1", "{key}");
        }
        assert_eq!(plan.container(Role::Scanner).dns_servers, [OWN_LOOPBACK]);
        // mitmproxy resolves the upstreams: the host's resolvers.
        assert!(plan.container(Role::Mitm).dns_servers.is_empty());
    }

    #[test]
    fn mitmproxy_runs_with_the_safe_options_and_the_agent_points_at_it() {
        let plan = plan(&spec()).unwrap();
        let mitm = plan.container(Role::Mitm);
        let command = mitm.command.join(" ");
        for option in [
            "connection_strategy=lazy",
            "rawtcp=false",
            "flow_detail=0",
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
        assert_eq!(agent.env["HTTPS_PROXY"], "http://127.0.0.1:8080");
        assert_eq!(agent.env["NODE_EXTRA_CA_CERTS"], AGENT_CA_PATH);
        assert_eq!(agent.env["SSL_CERT_FILE"], AGENT_CA_BUNDLE);
    }

    #[test]
    fn every_container_is_confined_and_the_agent_most() {
        let plan = plan(&spec()).unwrap();
        let agent = &plan.container(Role::Agent).confinement;
        assert_eq!(agent.capabilities.as_deref(), Some(&[][..]));
        assert!(agent.no_new_privileges);
        assert_eq!(
            (agent.pids_limit, agent.memory_bytes),
            (Some(AGENT_PIDS_LIMIT), Some(AGENT_MEMORY_BYTES))
        );
        // Read-only but where it works, and the trust store its CA goes into (as root).
        assert!(agent.read_only_root);
        assert_eq!(agent.tmpfs, ["/tmp"]);
        for dir in [AGENT_HOME, AGENT_CA_DIR, AGENT_CA_STORE] {
            assert!(agent.volumes.iter().any(|v| v == dir), "{dir}");
        }
        assert!(
            AGENT_CA_PATH.starts_with(AGENT_CA_DIR) && AGENT_CA_READY.starts_with(AGENT_CA_DIR)
        );
        assert!(AGENT_CA_BUNDLE.starts_with(AGENT_CA_STORE));
        for role in [Role::Mitm, Role::Scanner] {
            assert!(
                plan.container(role).confinement.no_new_privileges,
                "{role:?}"
            );
        }
        let kept = |image: &str| Confinement::mitm(image).capabilities.unwrap();
        assert!(kept("bottle-mitmproxy:0123456789abcdef").is_empty());
        assert_eq!(
            kept("mitmproxy/mitmproxy@sha256:00"),
            ["CHOWN", "DAC_READ_SEARCH", "SETGID", "SETUID"]
        );
        assert_eq!(kept("bottle-mitmproxy-test:0123").len(), 4);
    }

    #[test]
    fn a_credential_binding_gives_mitmproxy_the_secret_by_env_only() {
        let mut spec = spec();
        spec.credentials.push(CredentialBinding {
            host: "api.anthropic.com".into(),
            header: "x-api-key".into(),
            env: "ANTHROPIC_API_KEY".into(),
            scheme: None,
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
        assert!(!text.contains("scheme"), "{text}");
        spec.credentials[0].scheme = Some("Bearer".into());
        let plan = super::plan(&spec).unwrap();
        let file = plan
            .container(Role::Mitm)
            .files
            .iter()
            .find(|f| f.path == MITM_CREDENTIALS)
            .unwrap();
        let FileContents::Text(text) = &file.contents else {
            panic!("credentials are a text file")
        };
        assert!(text.contains("\"scheme\":\"Bearer\""), "{text}");

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
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&pipelock_config(Some(&[
            "api.anthropic.com".into(),
            "*.githubusercontent.com".into(),
        ])))
        .unwrap();
        let map = config.as_mapping().unwrap();
        for key in map.keys() {
            let key = key.as_str().unwrap();
            assert!(known.contains(&key), "pipelock does not know {key}");
        }
        // Every value the file sets, by its path: a key added or changed without a reason to
        // check fails here.
        fn leaves(prefix: &str, value: &serde_yaml_ng::Value, out: &mut Vec<(String, String)>) {
            match value {
                serde_yaml_ng::Value::Mapping(map) => {
                    for (key, inner) in map {
                        let key = key.as_str().unwrap();
                        let path = if prefix.is_empty() {
                            key.to_string()
                        } else {
                            format!("{prefix}.{key}")
                        };
                        leaves(&path, inner, out);
                    }
                }
                other => out.push((
                    prefix.to_string(),
                    serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                )),
            }
        }
        let mut found = Vec::new();
        leaves("", &config, &mut found);
        let expected: Vec<(String, String)> = [
            ("version", "1"),
            // The only mode in which pipelock enforces api_allowlist.
            ("mode", "strict"),
            (
                "api_allowlist",
                "- api.anthropic.com\n- '*.githubusercontent.com'",
            ),
            ("forward_proxy.enabled", "true"),
            ("request_body_scanning.enabled", "true"),
            // pipelock's default is warn.
            ("request_body_scanning.action", "block"),
            ("request_body_scanning.max_body_bytes", "5242880"),
            ("request_body_scanning.scan_headers", "true"),
            // `sensitive` scans six headers only: a secret in any other header would leave
            // unjudged (BYPASS-015).
            ("request_body_scanning.header_mode", "all"),
            // Cannot be turned off; far beyond what an agent sends.
            ("fetch_proxy.monitoring.max_requests_per_minute", "100000"),
            ("logging.format", "json"),
            ("logging.output", "stdout"),
            // The presets embed the maintainer's DSN.
            ("sentry.enabled", "false"),
            // The scanner resolves no names; the addon checks addresses instead.
            ("internal", "[]"),
            // At pipelock's 12, ordinary English in an agent's conversation is a seed phrase
            // (README, "The scanner's config").
            ("seed_phrase_detection.enabled", "true"),
            ("seed_phrase_detection.min_words", "24"),
            ("seed_phrase_detection.verify_checksum", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn an_upstream_ca_is_added_to_both_trust_stores_never_insecure() {
        let mut spec = spec();
        spec.egress.upstream_ca = Some(UpstreamCa {
            source: "corp.pem".into(),
            pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        });
        let plan = plan(&spec).unwrap();
        let mitm = plan.container(Role::Mitm);
        let command = mitm.command.join(" ");
        assert!(command.contains("bottle_upstream_ca=/opt/bottle/upstream-ca.pem"));
        // Never mitmproxy's own option: it would replace the system roots.
        assert!(
            !command.contains("ssl_verify_upstream_trusted_ca"),
            "{command}"
        );
        assert!(!command.contains("ssl_insecure"), "{command}");
        assert!(mitm.files.iter().any(|f| f.path == MITM_UPSTREAM_CA));
        let scanner = plan.container(Role::Scanner);
        assert_eq!(scanner.env["SSL_CERT_DIR"], SCANNER_UPSTREAM_CA_DIR);
        // Not SSL_CERT_FILE: that would replace the scanner's system bundle.
        assert!(!scanner.env.contains_key("SSL_CERT_FILE"));
        assert!(
            scanner
                .files
                .iter()
                .any(|f| f.path.starts_with(SCANNER_UPSTREAM_CA_DIR))
        );
        assert_eq!(plan.egress.upstream_ca.as_ref().unwrap().source, "corp.pem");
    }

    #[test]
    fn the_allowlist_takes_host_patterns_only_and_never_nothing() {
        for good in ["api.anthropic.com", "*.githubusercontent.com", "localhost"] {
            assert!(valid_host_pattern(good), "{good}");
        }
        for bad in [
            "",
            "*",
            "*.com",
            "https://github.com",
            "github.com:443",
            "github.com/x",
            "GitHub.com",
            "a..b",
            "-a.com",
            "*.*.com",
        ] {
            assert!(!valid_host_pattern(bad), "{bad}");
        }
        let mut spec = spec();
        spec.egress.allowlist.clear();
        assert!(matches!(plan(&spec), Err(PlanError::EmptyAllowlist)));
        spec.egress.allowlist = vec!["https://x.com".into()];
        assert!(matches!(plan(&spec), Err(PlanError::BadAllowlistEntry(_))));
    }

    #[test]
    fn the_agent_command_waits_for_the_ca_and_secrets_are_redacted() {
        let mut spec = spec();
        spec.agent.secret_env.insert("ANTHROPIC_API_KEY".into());
        let plan = plan(&spec).unwrap();
        let agent = plan.container(Role::Agent);
        let entrypoint = agent.entrypoint.as_ref().unwrap().join(" ");
        assert!(entrypoint.contains(AGENT_CA_READY), "{entrypoint}");
        assert_eq!(plan.ca.ready_marker, AGENT_CA_READY);
        assert_eq!(agent.command, ["sleep", "infinity"]);
        let shown = plan.redacted();
        assert_eq!(
            shown.container(Role::Agent).env["ANTHROPIC_API_KEY"],
            REDACTED
        );
        assert_eq!(agent.env["ANTHROPIC_API_KEY"], "sk-ant-test-0123456789");
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
