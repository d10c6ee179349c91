//! `bottle.toml`: what a user says about their bottle (`launcher/examples/bottle.toml` shows
//! every key). `Manifest::parse` checks all it can without the host and points at the line to
//! fix; `Manifest::resolve` does the rest at start: host env values and the upstream CA file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::plan::{
    AGENT_CA_DIR, AGENT_CA_STORE, AgentLimits, CredentialBinding, DEFAULT_ALLOWLIST, UpstreamCa,
    valid_host_pattern, valid_name,
};

/// Env names the bottle sets in the agent itself: a proxy variable (or `NO_PROXY`) would let
/// traffic skip mitmproxy, a CA variable would break the chain. `CLAUDE_BOTTLE_PIPELOCK_URL` is
/// mitmproxy's own: a credential's env var is copied into mitmproxy's environment, so it must not
/// be able to redirect mitmproxy's scanner.
pub const RESERVED_ENV: [&str; 10] = [
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CLAUDE_BOTTLE_PIPELOCK_URL",
];

/// A manifest with its paths resolved; `None`/empty means "the caller's default".
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The file name shown in errors, or `(defaults)`.
    pub source: String,
    pub name: Option<String>,
    pub agent_image: Option<String>,
    pub agent_command: Option<Vec<String>>,
    /// Literal values for the agent's environment.
    pub env: BTreeMap<String, String>,
    /// Names whose values come from the host's environment at start; secrets.
    pub pass_env: Vec<String>,
    /// [`DEFAULT_ALLOWLIST`] when the manifest names none.
    pub allowlist: Vec<String>,
    /// `[egress] any_host = true`: no allowlist, pipelock judges content only.
    pub any_host: bool,
    /// Resolved against the manifest's folder.
    pub upstream_ca: Option<PathBuf>,
    /// An existing Docker network for mitmproxy's egress, instead of one the bottle makes.
    pub egress_network: Option<String>,
    pub credentials: Vec<CredentialBinding>,
    /// `[agent]` `pids_limit`, `memory_mib`, `home`: set only by name.
    pub agent_limits: AgentLimits,
}

/// What [`Manifest::resolve`] found on the host.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Literal env and the `pass_env` values.
    pub env: BTreeMap<String, String>,
    /// The `pass_env` names: their values are never printed.
    pub secret_env: BTreeSet<String>,
    pub upstream_ca: Option<UpstreamCa>,
}

/// Displays as `<file>:<line>:<column>: <problem>\n  fix: <fix>`, or `<file>: ...` when the
/// problem has no place in the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}\n  fix: {fix}", self.location())]
pub struct ManifestError {
    pub file: String,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    pub problem: String,
    pub fix: String,
}

impl ManifestError {
    fn location(&self) -> Location<'_> {
        Location(self)
    }
}

struct Location<'a>(&'a ManifestError);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}", self.0.file),
            None => write!(f, "{}", self.0.file),
        }
    }
}

const NAME_FIX: &str = "use 1-40 characters a-z, 0-9 and '-', starting with a letter or digit";
const HOST_PATTERN_FIX: &str = "use an exact host name (`api.example.com`) or a wildcard over a \
    domain (`*.example.com`), lowercase, no scheme, port or path";

impl Manifest {
    /// No file: every default.
    pub fn defaults() -> Manifest {
        Manifest {
            source: "(defaults)".into(),
            name: None,
            agent_image: None,
            agent_command: None,
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            allowlist: DEFAULT_ALLOWLIST.map(String::from).to_vec(),
            any_host: false,
            upstream_ca: None,
            egress_network: None,
            credentials: Vec::new(),
            agent_limits: AgentLimits::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: source.clone(),
            position: None,
            problem: format!("cannot read the manifest: {e}"),
            fix: "check the path and that the file is readable UTF-8 text; without a manifest \
                  the bottle uses the defaults"
                .into(),
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Manifest::parse(&text, &source, base_dir)
    }

    /// `source` names the file in errors; relative paths in it resolve against `base_dir`.
    pub fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Manifest, ManifestError> {
        let at = Ctx { text, source };
        let raw: RawManifest = toml::from_str(text).map_err(|e| at.toml_error(&e))?;
        let mut manifest = Manifest {
            source: source.into(),
            ..Manifest::defaults()
        };

        if let Some(name) = raw.name {
            if !valid_name(name.get_ref()) {
                return Err(at.err(
                    name.span(),
                    format!("{:?} is not a usable bottle name", name.get_ref()),
                    NAME_FIX,
                ));
            }
            manifest.name = Some(name.into_inner());
        }

        let agent = raw.agent.unwrap_or_default();
        if let Some(image) = agent.image {
            if image.get_ref().trim().is_empty() {
                return Err(at.err(
                    image.span(),
                    "agent.image is empty",
                    "name an image (`my-agent:1`), or remove the key to use the default",
                ));
            }
            if agent.command.is_none() {
                return Err(at.err(
                    image.span(),
                    "agent.image is set but agent.command is not",
                    "add `command = [\"program\", \"arg\"]` under [agent]: the bottle runs it \
                     once the agent trusts mitmproxy's CA (the image's own entrypoint is not used)",
                ));
            }
            manifest.agent_image = Some(image.into_inner());
        }
        if let Some(command) = agent.command {
            let Some(program) = command.get_ref().first() else {
                return Err(at.err(
                    command.span(),
                    "agent.command is empty",
                    "give the program and its arguments (`[\"claude\"]`), or remove the key to \
                     use the default",
                ));
            };
            if program.get_ref().is_empty() {
                return Err(at.err(
                    program.span(),
                    "the program in agent.command is an empty string",
                    "put the program to run first (`[\"claude\", ...]`)",
                ));
            }
            let argv = command.into_inner().into_iter();
            manifest.agent_command = Some(argv.map(Spanned::into_inner).collect());
        }
        if let Some(pids) = agent.pids_limit {
            if !(64..=65536).contains(pids.get_ref()) {
                return Err(at.err(
                    pids.span(),
                    format!("agent.pids_limit {} is out of range", pids.get_ref()),
                    "give 64 to 65536 processes and threads (default 1024), or remove the key",
                ));
            }
            manifest.agent_limits.pids_limit = Some(pids.into_inner());
        }
        if let Some(memory) = agent.memory_mib {
            if !(256..=1 << 20).contains(memory.get_ref()) {
                return Err(at.err(
                    memory.span(),
                    format!("agent.memory_mib {} is out of range", memory.get_ref()),
                    "give 256 to 1048576 MiB (default 4096), or remove the key",
                ));
            }
            manifest.agent_limits.memory_mib = Some(memory.into_inner());
        }
        if let Some(home) = agent.home {
            let path = home.get_ref();
            let reserved = [AGENT_CA_DIR, AGENT_CA_STORE, "/tmp"];
            if !path.starts_with('/')
                || path.len() < 2
                || path.ends_with('/')
                || path.split('/').any(|part| part == ".." || part == ".")
                || reserved
                    .iter()
                    .any(|r| path == *r || path.starts_with(&format!("{r}/")))
            {
                return Err(at.err(
                    home.span(),
                    format!("agent.home {path:?} cannot be where the agent works"),
                    "give the absolute path of the agent user's home in your image                      (`/home/dev`); not `/`, /tmp or the trust store",
                ));
            }
            manifest.agent_limits.home = Some(home.into_inner());
        }
        for (key, value) in agent.env {
            at.check_env_name(&key, "agent.env")?;
            manifest.env.insert(key.into_inner(), value.into_inner());
        }
        for name in agent.pass_env {
            at.check_env_name(&name, "agent.pass_env")?;
            if manifest.env.contains_key(name.get_ref()) {
                return Err(at.err(
                    name.span(),
                    format!("{} is in both agent.env and agent.pass_env", name.get_ref()),
                    "keep it in one: agent.env for a literal value, agent.pass_env to take it \
                     from the host",
                ));
            }
            if manifest.pass_env.contains(name.get_ref()) {
                return Err(at.err(
                    name.span(),
                    format!("{} is listed twice in agent.pass_env", name.get_ref()),
                    "list it once",
                ));
            }
            manifest.pass_env.push(name.into_inner());
        }

        let egress = raw.egress.unwrap_or_default();
        if let Some(any_host) = egress.any_host {
            if *any_host.get_ref() && egress.allowlist.is_some() {
                return Err(at.err(
                    any_host.span(),
                    "egress.any_host = true and egress.allowlist are both set: with any host \
                     allowed, pipelock ignores the allowlist",
                    "remove one of them: any_host (safer: only the allowlist's hosts are reachable) or \
                     the allowlist",
                ));
            }
            manifest.any_host = any_host.into_inner();
        }
        if let Some(allowlist) = egress.allowlist {
            if allowlist.get_ref().is_empty() {
                return Err(at.err(
                    allowlist.span(),
                    "egress.allowlist is empty: pipelock would block every request",
                    "name the hosts the agent may reach, or remove the key to use the default \
                     list",
                ));
            }
            for host in allowlist.get_ref() {
                if !valid_host_pattern(host.get_ref()) {
                    return Err(at.err(
                        host.span(),
                        format!("allowlist entry {:?} is not a host pattern", host.get_ref()),
                        HOST_PATTERN_FIX,
                    ));
                }
            }
            let hosts = allowlist.into_inner().into_iter();
            manifest.allowlist = hosts.map(Spanned::into_inner).collect();
        }
        if let Some(ca) = egress.upstream_ca {
            if ca.get_ref().is_empty() {
                return Err(at.err(
                    ca.span(),
                    "egress.upstream_ca is empty",
                    "give the path of the proxy's CA certificate (PEM), relative to this file, \
                     or remove the key",
                ));
            }
            manifest.upstream_ca = Some(base_dir.join(ca.get_ref()));
        }
        if let Some(network) = egress.network {
            if network.get_ref().trim().is_empty() {
                return Err(at.err(
                    network.span(),
                    "egress.network is empty",
                    "name an existing Docker network (`docker network ls`), or remove the key to \
                     let the bottle make its own",
                ));
            }
            manifest.egress_network = Some(network.into_inner());
        }

        for binding in raw.credentials {
            let host = binding.host.get_ref();
            if host.starts_with("*.") || !valid_host_pattern(host) {
                return Err(at.err(
                    binding.host.span(),
                    format!("credential host {host:?} is not an exact host name"),
                    "use the one https host the credential is for (`api.anthropic.com`), \
                     lowercase, no wildcard, scheme, port or path",
                ));
            }
            let header = binding.header.get_ref();
            if !valid_header_name(header) {
                return Err(at.err(
                    binding.header.span(),
                    format!("credential header {header:?} is not an HTTP header name"),
                    "use a header name such as `x-api-key` or `authorization` (letters, digits \
                     and !#$%&'*+-.^_`|~, no spaces or colon)",
                ));
            }
            let env = binding.env.get_ref();
            if !manifest.env.contains_key(env) && !manifest.pass_env.contains(env) {
                return Err(at.err(
                    binding.env.span(),
                    format!("credential env {env:?} is not in agent.env or agent.pass_env"),
                    format!(
                        "add {env:?} to agent.pass_env (taken from the host) or agent.env, or \
                         name the variable that holds the credential"
                    ),
                ));
            }
            // Header names are case-insensitive.
            let duplicate = manifest
                .credentials
                .iter()
                .any(|b| b.host == *host && b.header.eq_ignore_ascii_case(header));
            if duplicate {
                return Err(at.err(
                    binding.header.span(),
                    format!("a second credential for header {header:?} to {host}"),
                    "keep one [[credentials]] entry per host and header",
                ));
            }
            let scheme = match binding.scheme {
                Some(scheme) => {
                    let text = scheme.get_ref();
                    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Err(at.err(
                            scheme.span(),
                            format!("credential scheme {text:?} is not an auth scheme"),
                            "use the word before the secret in the header, e.g. `Bearer` \
                             (letters and digits), or leave scheme out when the header's value \
                             is the secret itself",
                        ));
                    }
                    Some(scheme.into_inner())
                }
                None => None,
            };
            manifest.credentials.push(CredentialBinding {
                host: binding.host.into_inner(),
                header: binding.header.into_inner(),
                env: binding.env.into_inner(),
                scheme,
            });
        }
        Ok(manifest)
    }

    /// The agent env (literal values and the `pass_env` values `lookup` finds on the host), the
    /// secret env names, and the upstream CA read from disk.
    pub fn resolve(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Resolved, ManifestError> {
        let mut env = self.env.clone();
        for name in &self.pass_env {
            let value = lookup(name).ok_or_else(|| {
                self.err(
                    format!("agent.pass_env names {name}, which is not set in this environment"),
                    format!(
                        "export {name} before starting the bottle, or remove it from agent.pass_env"
                    ),
                )
            })?;
            env.insert(name.clone(), value);
        }
        let upstream_ca = match &self.upstream_ca {
            Some(path) => Some(self.read_upstream_ca(path)?),
            None => None,
        };
        Ok(Resolved {
            env,
            secret_env: self.pass_env.iter().cloned().collect(),
            upstream_ca,
        })
    }

    fn read_upstream_ca(&self, path: &Path) -> Result<UpstreamCa, ManifestError> {
        let shown = path.display();
        let pem = std::fs::read_to_string(path).map_err(|e| {
            self.err(
                format!("cannot read egress.upstream_ca {shown}: {e}"),
                "check the path (relative to the manifest's folder) and that the file is \
                 readable PEM text",
            )
        })?;
        // Checked first: a file holding both must never be handed to the containers.
        if pem.contains("PRIVATE KEY-----") {
            return Err(self.err(
                format!("egress.upstream_ca {shown} contains a private key"),
                "give only the CA's certificate: a private key must never be handed to the \
                 bottle (mitmproxy only needs the public certificate)",
            ));
        }
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(self.err(
                format!("egress.upstream_ca {shown} holds no PEM certificate"),
                "give the proxy's CA certificate in PEM form (a `-----BEGIN CERTIFICATE-----` \
                 block; convert DER with `openssl x509 -inform der -in ca.der -out ca.pem`)",
            ));
        }
        Ok(UpstreamCa {
            source: shown.to_string(),
            pem,
        })
    }

    /// An error without a position in the file.
    fn err(&self, problem: String, fix: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.source.clone(),
            position: None,
            problem,
            fix: fix.into(),
        }
    }
}

/// An RFC 9110 token.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The text being parsed, to turn byte spans into positions.
struct Ctx<'a> {
    text: &'a str,
    source: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ManifestError {
        let before = self.text.get(..span.start).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        ManifestError {
            file: self.source.into(),
            position: Some((line, column)),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Syntax, unknown keys and wrong types, as the toml crate reports them, with a fix.
    fn toml_error(&self, e: &toml::de::Error) -> ManifestError {
        // serde's words for TOML's arrays and tables.
        let message = e.message().trim().replace("a sequence", "an array");
        let (problem, fix) = if let Some(rest) = message.strip_prefix("unknown field ") {
            let (key, known) = rest.split_once(", expected ").unwrap_or((rest, "none"));
            let known = known
                .strip_prefix("one of ")
                .unwrap_or(known)
                .replace(" or ", ", ");
            (
                format!("unknown key {key}"),
                format!("remove it or correct its spelling; the keys here are {known}"),
            )
        } else if let Some(key) = message.strip_prefix("missing field ") {
            (
                format!("this table has no {key}"),
                format!("add {key}: a [[credentials]] entry needs host, header and env"),
            )
        } else if let Some((_, expected)) = message
            .split_once(", expected ")
            .filter(|_| message.starts_with("invalid type") || message.starts_with("invalid value"))
        {
            (message.clone(), format!("write {expected} here"))
        } else {
            (
                message.clone(),
                "correct the TOML syntax here (https://toml.io)".into(),
            )
        };
        match e.span() {
            Some(span) => self.err(span, problem, fix),
            None => ManifestError {
                file: self.source.into(),
                position: None,
                problem,
                fix,
            },
        }
    }

    fn check_env_name(&self, name: &Spanned<String>, table: &str) -> Result<(), ManifestError> {
        let name_str = name.get_ref();
        if !valid_env_name(name_str) {
            return Err(self.err(
                name.span(),
                format!("{name_str:?} in {table} is not an environment variable name"),
                "use letters, digits and '_', not starting with a digit ([A-Za-z_][A-Za-z0-9_]*)",
            ));
        }
        if RESERVED_ENV.contains(&name_str.as_str()) {
            return Err(self.err(
                name.span(),
                format!("{name_str} in {table} is set by the bottle itself"),
                format!(
                    "remove it: the bottle routes all traffic through mitmproxy and sets its CA; \
                     overriding {name_str} would bypass or break that (reserved: {})",
                    RESERVED_ENV.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a bottle.toml document")]
struct RawManifest {
    name: Option<Spanned<String>>,
    agent: Option<RawAgent>,
    egress: Option<RawEgress>,
    #[serde(default)]
    credentials: Vec<RawCredential>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [agent] table")]
struct RawAgent {
    image: Option<Spanned<String>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pass_env: Vec<Spanned<String>>,
    pids_limit: Option<Spanned<i64>>,
    memory_mib: Option<Spanned<i64>>,
    home: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [egress] table")]
struct RawEgress {
    allowlist: Option<Spanned<Vec<Spanned<String>>>>,
    any_host: Option<Spanned<bool>>,
    upstream_ca: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[credentials]] table")]
struct RawCredential {
    host: Spanned<String>,
    header: Spanned<String>,
    env: Spanned<String>,
    scheme: Option<Spanned<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "proj/bottle.toml";

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, FILE, Path::new("proj"))
    }

    /// The error for `text` names the file and `line`, and its fix says `fix`.
    #[track_caller]
    fn assert_error(text: &str, line: usize, fix: &str) -> String {
        let message = parse(text)
            .expect_err("the manifest is refused")
            .to_string();
        assert!(message.starts_with(&format!("{FILE}:{line}:")), "{message}");
        let (_, fix_text) = message.split_once("\n  fix: ").expect("a fix line");
        assert!(fix_text.contains(fix), "{message}");
        message
    }

    const FULL: &str = r#"
name = "demo"

[agent]
image = "my-agent:1"
command = ["claude", "--verbose"]
env = { TZ = "UTC", TOKEN = "literal" }
pass_env = ["ANTHROPIC_API_KEY"]

[egress]
allowlist = ["api.anthropic.com", "*.githubusercontent.com"]
upstream_ca = "certs/corp-ca.pem"

[[credentials]]
host = "api.anthropic.com"
header = "x-api-key"
env = "ANTHROPIC_API_KEY"

[[credentials]]
host = "api.github.com"
header = "Authorization"
env = "TOKEN"
"#;

    #[test]
    fn a_full_manifest_becomes_the_expected_struct() {
        let m = parse(FULL).unwrap();
        assert_eq!(m.source, FILE);
        assert_eq!(m.name.as_deref(), Some("demo"));
        assert_eq!(m.agent_image.as_deref(), Some("my-agent:1"));
        assert_eq!(
            m.agent_command,
            Some(vec!["claude".into(), "--verbose".into()])
        );
        assert_eq!(
            m.env,
            BTreeMap::from([
                ("TOKEN".into(), "literal".into()),
                ("TZ".into(), "UTC".into())
            ])
        );
        assert_eq!(m.pass_env, ["ANTHROPIC_API_KEY"]);
        assert_eq!(
            m.allowlist,
            ["api.anthropic.com", "*.githubusercontent.com"]
        );
        assert_eq!(m.upstream_ca, Some(PathBuf::from("proj/certs/corp-ca.pem")));
        let bindings: Vec<_> = m
            .credentials
            .iter()
            .map(|b| (b.host.as_str(), b.header.as_str(), b.env.as_str()))
            .collect();
        assert_eq!(
            bindings,
            [
                ("api.anthropic.com", "x-api-key", "ANTHROPIC_API_KEY"),
                ("api.github.com", "Authorization", "TOKEN"),
            ]
        );
    }

    #[test]
    fn defaults_and_an_empty_file_use_the_default_allowlist() {
        let defaults = Manifest::defaults();
        assert_eq!(defaults.source, "(defaults)");
        assert_eq!(defaults.allowlist, DEFAULT_ALLOWLIST);
        let empty = parse("").unwrap();
        assert_eq!(empty.allowlist, DEFAULT_ALLOWLIST);
        assert!(
            empty.name.is_none() && empty.agent_command.is_none() && empty.upstream_ca.is_none()
        );
        assert!(empty.env.is_empty() && empty.pass_env.is_empty() && empty.credentials.is_empty());
    }

    #[test]
    fn an_absolute_upstream_ca_stays_absolute() {
        let m = parse("[egress]\nupstream_ca = \"/etc/corp/ca.pem\"").unwrap();
        assert_eq!(m.upstream_ca, Some(PathBuf::from("/etc/corp/ca.pem")));
    }

    #[test]
    fn the_example_manifest_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bottle.toml");
        let m = Manifest::load(&path).unwrap();
        assert_eq!(m.name.as_deref(), Some("demo"));
        assert_eq!(m.pass_env, ["ANTHROPIC_API_KEY"]);
        assert_eq!(m.credentials.len(), 1);
        assert_eq!(
            m.upstream_ca,
            Some(path.with_file_name("corp-proxy-ca.pem"))
        );
    }

    #[test]
    fn load_reads_the_file_and_resolves_against_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bottle.toml");
        std::fs::write(&path, "[egress]\nupstream_ca = \"ca.pem\"\n").unwrap();
        let m = Manifest::load(&path).unwrap();
        assert_eq!(m.source, path.display().to_string());
        assert_eq!(m.upstream_ca, Some(dir.path().join("ca.pem")));
    }

    #[test]
    fn an_unreadable_file_names_the_path_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        let message = Manifest::load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: cannot read", path.display())),
            "{message}"
        );
        assert!(message.contains("fix: check the path"), "{message}");
    }

    #[test]
    fn toml_syntax_errors_point_at_the_place() {
        let message = assert_error("name = \"demo\"\n[agent\n", 2, "correct the TOML syntax");
        assert!(message.contains("proj/bottle.toml:2:7:"), "{message}");
    }

    #[test]
    fn unknown_keys_are_refused_everywhere_with_the_known_keys() {
        assert_error(
            "nmae = \"x\"",
            1,
            "`name`, `agent`, `egress`, `credentials`",
        );
        assert_error(
            "[agent]\nimage = \"a\"\nargs = []",
            3,
            "`image`, `command`, `env`, `pass_env`",
        );
        assert_error(
            "[egress]\nallow = []",
            2,
            "`allowlist`, `any_host`, `upstream_ca`, `network`",
        );
        assert_error(
            "[egress]\nnetwork = \"\"",
            2,
            "name an existing Docker network",
        );
        let message = assert_error(
            "[[credentials]]\nhost = \"a.b\"\nheader = \"x\"\nenv = \"E\"\nvalue = \"s\"",
            5,
            "`host`, `header`, `env`",
        );
        assert!(message.contains("unknown key `value`"), "{message}");
    }

    #[test]
    fn wrong_types_say_what_to_write() {
        assert_error("name = 3", 1, "write a string here");
        assert_error("\n[agent]\ncommand = \"claude\"", 3, "write an array here");
        assert_error("[agent]\nenv = { TZ = 1 }", 2, "write a string here");
        assert_error("agent = 3", 1, "write an [agent] table here");
    }

    #[test]
    fn credentials_need_every_key() {
        assert_error("\n[[credentials]]\nhost = \"a.b\"\n", 2, "add `header`");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["Demo", "", "-x", "a_b"] {
            assert_error(
                &format!("\nname = {bad:?}"),
                2,
                "1-40 characters a-z, 0-9 and '-'",
            );
        }
    }

    #[test]
    fn any_host_turns_the_allowlist_off_and_refuses_one_beside_it() {
        let m = parse("[egress]\nany_host = true").unwrap();
        assert!(m.any_host);
        assert!(!parse("").unwrap().any_host);
        assert_error(
            "[egress]\nany_host = true\nallowlist = [\"a.com\"]",
            2,
            "remove one of them",
        );
    }

    #[test]
    fn an_empty_allowlist_is_refused() {
        assert_error(
            "[egress]\n\nallowlist = []",
            3,
            "name the hosts the agent may reach",
        );
    }

    #[test]
    fn each_bad_allowlist_entry_is_pointed_at() {
        for bad in [
            "https://x.com",
            "x.com:443",
            "*",
            "*.com",
            "X.com",
            "x.com/path",
        ] {
            let text = format!("[egress]\nallowlist = [\n  \"ok.com\",\n  {bad:?},\n]");
            let message = assert_error(&text, 4, "exact host name");
            assert!(message.contains(&format!("{FILE}:4:3:")), "{message}");
        }
    }

    #[test]
    fn an_empty_command_or_program_is_refused() {
        assert_error(
            "[agent]\ncommand = []",
            2,
            "give the program and its arguments",
        );
        let message = assert_error("[agent]\ncommand = [\"\", \"x\"]", 2, "put the program");
        assert!(message.contains(":2:12:"), "{message}");
        assert_error("[agent]\nimage = \"\"", 2, "name an image");
        assert_error("[agent]\nimage = \"a:1\"", 2, "add `command = ");
    }

    #[test]
    fn the_agents_limits_are_set_by_name_within_bounds() {
        let m =
            parse("[agent]\npids_limit = 2048\nmemory_mib = 8192\nhome = \"/home/dev\"").unwrap();
        assert_eq!(
            m.agent_limits,
            AgentLimits {
                pids_limit: Some(2048),
                memory_mib: Some(8192),
                home: Some("/home/dev".into()),
            }
        );
        assert_eq!(
            m.agent_limits.set_by_name(),
            ["agent.pids_limit", "agent.memory_mib", "agent.home"]
        );
        assert_eq!(parse("").unwrap().agent_limits, AgentLimits::default());
        assert_error("[agent]\npids_limit = 10", 2, "give 64 to 65536");
        assert_error("[agent]\nmemory_mib = 0", 2, "give 256 to 1048576");
        for home in [
            "\"/\"",
            "\"home\"",
            "\"/tmp\"",
            "\"/etc/ssl/certs/x\"",
            "\"/a/../etc\"",
        ] {
            assert_error(&format!("[agent]\nhome = {home}"), 2, "absolute path");
        }
    }

    #[test]
    fn env_names_must_be_names() {
        assert_error(
            "[agent]\nenv = { \"1A\" = \"x\" }",
            2,
            "[A-Za-z_][A-Za-z0-9_]*",
        );
        assert_error(
            "[agent]\nenv = { \"A-B\" = \"x\" }",
            2,
            "[A-Za-z_][A-Za-z0-9_]*",
        );
        assert_error(
            "[agent]\npass_env = [\"OK\", \"\"]",
            2,
            "[A-Za-z_][A-Za-z0-9_]*",
        );
        assert!(parse("[agent]\nenv = { _a1 = \"x\" }\npass_env = [\"B_2\"]").is_ok());
    }

    #[test]
    fn the_bottles_own_env_names_cannot_be_overridden() {
        for name in RESERVED_ENV {
            assert_error(
                &format!("[agent.env]\n{name} = \"x\""),
                2,
                "bypass or break",
            );
            assert_error(
                &format!("[agent]\npass_env = [{name:?}]"),
                2,
                "bypass or break",
            );
        }
        let message = assert_error("[agent]\nenv = { NO_PROXY = \"*\" }", 2, "remove it");
        assert!(
            message.contains("NO_PROXY in agent.env is set by the bottle"),
            "{message}"
        );
    }

    #[test]
    fn a_name_in_both_env_and_pass_env_is_refused() {
        assert_error(
            "[agent]\nenv = { KEY = \"x\" }\npass_env = [\"KEY\"]",
            3,
            "keep it in one",
        );
        assert_error("[agent]\npass_env = [\"KEY\",\n\"KEY\"]", 3, "list it once");
    }

    fn credential(host: &str, header: &str, env: &str) -> String {
        format!(
            "[agent]\npass_env = [\"KEY\"]\n[[credentials]]\nhost = {host:?}\nheader = {header:?}\nenv = {env:?}\n"
        )
    }

    #[test]
    fn a_credential_host_is_one_exact_host() {
        assert!(parse(&credential("api.anthropic.com", "x-api-key", "KEY")).is_ok());
        for bad in [
            "*.anthropic.com",
            "https://api.anthropic.com",
            "api.anthropic.com:443",
            "",
        ] {
            assert_error(&credential(bad, "x-api-key", "KEY"), 4, "no wildcard");
        }
    }

    #[test]
    fn a_credential_header_is_an_http_token() {
        for bad in ["", "x api key", "x-api-key:", "ä"] {
            assert_error(&credential("a.com", bad, "KEY"), 5, "use a header name");
        }
    }

    #[test]
    fn a_credential_scheme_is_one_word_and_reaches_the_binding() {
        let text = format!(
            "{}scheme = \"Bearer\"\n",
            credential("api.anthropic.com", "authorization", "KEY")
        );
        let manifest = parse(&text).unwrap();
        assert_eq!(manifest.credentials[0].scheme.as_deref(), Some("Bearer"));
        assert_eq!(
            parse(&credential("a.com", "x-api-key", "KEY"))
                .unwrap()
                .credentials[0]
                .scheme,
            None
        );
        for bad in ["", "Bearer token", "Bearer:"] {
            let text = format!("{}scheme = {bad:?}\n", credential("a.com", "x", "KEY"));
            assert_error(&text, 7, "leave scheme out");
        }
    }

    #[test]
    fn a_credential_env_is_one_the_agent_has() {
        let message = assert_error(
            &credential("a.com", "x-api-key", "OTHER"),
            6,
            "agent.pass_env",
        );
        assert!(
            message.contains("\"OTHER\" is not in agent.env or agent.pass_env"),
            "{message}"
        );
    }

    #[test]
    fn a_second_binding_for_the_same_host_and_header_is_refused() {
        let text = credential("a.com", "x-api-key", "KEY")
            + "[[credentials]]\nhost = \"a.com\"\nheader = \"X-Api-Key\"\nenv = \"KEY\"\n";
        assert_error(&text, 9, "one [[credentials]] entry per host and header");
        let other_host = credential("a.com", "x-api-key", "KEY")
            + "[[credentials]]\nhost = \"b.com\"\nheader = \"x-api-key\"\nenv = \"KEY\"\n";
        assert!(parse(&other_host).is_ok());
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn with_ca(pem: &str) -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
        let m = Manifest::parse("[egress]\nupstream_ca = \"ca.pem\"", FILE, dir.path()).unwrap();
        (dir, m)
    }

    #[test]
    fn resolve_takes_pass_env_from_the_host_and_reads_the_ca() {
        let (dir, mut m) = with_ca(CERT);
        m.env.insert("TZ".into(), "UTC".into());
        m.pass_env.push("ANTHROPIC_API_KEY".into());
        let resolved = m
            .resolve(|name| (name == "ANTHROPIC_API_KEY").then(|| "sk-test".to_string()))
            .unwrap();
        assert_eq!(resolved.env["TZ"], "UTC");
        assert_eq!(resolved.env["ANTHROPIC_API_KEY"], "sk-test");
        assert_eq!(
            resolved.secret_env,
            BTreeSet::from(["ANTHROPIC_API_KEY".to_string()])
        );
        let ca = resolved.upstream_ca.unwrap();
        assert_eq!(ca.pem, CERT);
        assert_eq!(ca.source, dir.path().join("ca.pem").display().to_string());
    }

    #[test]
    fn a_pass_env_name_missing_on_the_host_says_to_export_it() {
        let mut m = Manifest::defaults();
        m.source = FILE.into();
        m.pass_env.push("ANTHROPIC_API_KEY".into());
        let message = m.resolve(|_| None).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{FILE}: agent.pass_env names ANTHROPIC_API_KEY")),
            "{message}"
        );
        assert!(
            message.contains("fix: export ANTHROPIC_API_KEY"),
            "{message}"
        );
    }

    #[test]
    fn an_unreadable_upstream_ca_names_the_path() {
        let m = parse("[egress]\nupstream_ca = \"nowhere/ca.pem\"").unwrap();
        let message = m.resolve(|_| None).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "{FILE}: cannot read egress.upstream_ca proj/nowhere/ca.pem"
            )),
            "{message}"
        );
        assert!(message.contains("fix: check the path"), "{message}");
    }

    #[test]
    fn an_upstream_ca_without_a_certificate_is_refused() {
        let (_dir, m) = with_ca("not a certificate\n");
        let message = m.resolve(|_| None).unwrap_err().to_string();
        assert!(message.contains("holds no PEM certificate"), "{message}");
        assert!(
            message.contains("fix: give the proxy's CA certificate in PEM form"),
            "{message}"
        );
    }

    #[test]
    fn an_upstream_ca_with_a_private_key_is_refused_without_showing_it() {
        for key in [
            "PRIVATE KEY",
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
        ] {
            let pem = format!("{CERT}-----BEGIN {key}-----\nSECRETBYTES\n-----END {key}-----\n");
            let (_dir, m) = with_ca(&pem);
            let message = m.resolve(|_| None).unwrap_err().to_string();
            assert!(message.contains("contains a private key"), "{message}");
            assert!(
                message.contains("a private key must never be handed to the bottle"),
                "{message}"
            );
            assert!(!message.contains("SECRETBYTES"), "{message}");
        }
    }
}
