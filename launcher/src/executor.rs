//! Runs a [`BottlePlan`] on Docker: networks, the scanner, mitmproxy with the addon, the agent,
//! then the PRD's CA provisioning. A start that fails at any step removes everything it made
//! (every object carries the bottle's label), and so does [`remove`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, ListContainersOptions,
    ListNetworksOptions, ListVolumesOptions, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptions, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::docker::is_not_found;
use crate::exec::exec;
use crate::plan::{self, BottlePlan, ContainerPlan, NetworkMode, Role};

/// The steps of a start, in order; a test can make any of them fail ([`StartOptions::fail_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Networks,
    Scanner,
    Mitm,
    Agent,
    Relay,
    Ca,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Networks,
        Step::Scanner,
        Step::Mitm,
        Step::Agent,
        Step::Relay,
        Step::Ca,
    ];

    fn starting(role: Role) -> Step {
        match role {
            Role::Scanner => Step::Scanner,
            Role::Mitm => Step::Mitm,
            Role::Agent => Step::Agent,
            Role::Relay => Step::Relay,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "this plan turns on a test-only switch ({}: the scanner's verdict stubbed to allow); \
         only the conformance suite may start such a bottle",
        plan::TEST_SWITCHES_ENV
    )]
    TestSwitches,
    #[error(
        "a bottle named {0:?} exists already (containers, networks or volumes labelled with it): stop it \
         with `bottle stop {0}`, or choose another name with --name"
    )]
    NameInUse(String),
    #[error("image {image} is not in the local Docker engine: {hint}")]
    ImageMissing { image: String, hint: String },
    #[error("{container} stopped before it was ready (exit code {code:?}); its output:\n{output}")]
    ComponentExited {
        container: String,
        code: Option<i64>,
        output: String,
    },
    #[error(
        "{container} did not print {line:?} within {}s; its output:\n{output}",
        waited.as_secs()
    )]
    ComponentNotReady {
        container: String,
        line: String,
        waited: Duration,
        output: String,
    },
    #[error(
        "mitmproxy's CA {path} did not appear in {container} within {}s: mitmproxy writes it \
         at startup; see `docker logs {container}` for why it did not",
        waited.as_secs()
    )]
    CaNeverAppeared {
        container: String,
        path: String,
        waited: Duration,
    },
    #[error(
        "installing the CA in the agent ({container}) failed: `{command}` exited {code}:\n{output}\n\
         The agent image needs a shell, chmod and update-ca-certificates (Debian: the \
         ca-certificates package)."
    )]
    CaInstall {
        container: String,
        command: String,
        code: i64,
        output: String,
    },
    #[error("the Docker engine failed while {context}: {source}")]
    Engine {
        context: String,
        source: bollard::errors::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(
        "this Docker engine is {engine}: there {why}, so the agent's only route (mitmproxy's \
         proxy port) cannot be made to hold, and bottle does not start an agent that could \
         reach around it. Use a rootful Docker Engine on Linux (README.md, \"The agent's only \
         route\")"
    )]
    EngineCannotConfine { engine: String, why: String },
    #[error("failure injected at step {0:?} (test)")]
    Injected(Step),
    #[error(
        "bottle {0} could not be removed completely: `docker ps -a --filter label=org.bottle.bottle={0}` \
         and `docker network ls --filter label=org.bottle.bottle={0}` show what is left"
    )]
    Leftover(String),
}

pub(crate) fn engine(
    context: impl Into<String>,
) -> impl FnOnce(bollard::errors::Error) -> StartError {
    let context = context.into();
    move |source| StartError::Engine { context, source }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let context = context.into();
    move |source| StartError::Io { context, source }
}

#[derive(Clone, Debug)]
pub struct StartOptions {
    /// Labels added to every container and network (the harness marks its runs).
    pub extra_labels: BTreeMap<String, String>,
    /// How long a container may take to print its ready line.
    pub ready_timeout: Duration,
    /// How long mitmproxy may take to write its CA.
    pub ca_timeout: Duration,
    /// Give the agent a terminal and keep its stdin open (an attached `bottle start`).
    pub agent_tty: bool,
    /// Fail right after this step (tests of the rollback).
    pub fail_at: Option<Step>,
    /// Print each step on stderr (the command line does; the test harness does not).
    pub progress: bool,
    /// Start a plan with test-only switches (the harness's negative control); false everywhere
    /// else, so `bottle start` refuses one.
    pub allow_test_switches: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            extra_labels: BTreeMap::new(),
            ready_timeout: Duration::from_secs(60),
            ca_timeout: Duration::from_secs(30),
            agent_tty: false,
            fail_at: None,
            progress: false,
            allow_test_switches: false,
        }
    }
}

/// A started bottle: the plan with the CA fingerprint filled in, and container ids by role.
#[derive(Debug)]
pub struct Running {
    pub plan: BottlePlan,
    pub ids: HashMap<Role, String>,
}

/// Docker's bridge option that leaves the host without an address on the network.
pub const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";

/// Starts the bottle; on any error everything it made is removed before the error returns.
pub async fn start(
    docker: &Docker,
    plan: &BottlePlan,
    options: &StartOptions,
) -> Result<Running, StartError> {
    let switched = |c: &ContainerPlan| c.env.contains_key(plan::TEST_SWITCHES_ENV);
    if !options.allow_test_switches && plan.containers.iter().any(switched) {
        return Err(StartError::TestSwitches);
    }
    if exists(docker, &plan.name).await? {
        return Err(StartError::NameInUse(plan.name.clone()));
    }
    confining_engine(docker).await?;
    for container in &plan.containers {
        image_present(docker, &container.image).await?;
    }
    let result = start_steps(docker, plan, options).await;
    if result.is_err() {
        remove(docker, &plan.name).await;
    }
    result
}

async fn start_steps(
    docker: &Docker,
    plan: &BottlePlan,
    options: &StartOptions,
) -> Result<Running, StartError> {
    let check = |step: Step| match options.fail_at {
        Some(fail) if fail == step => Err(StartError::Injected(step)),
        _ => Ok(()),
    };
    let mut labels = options.extra_labels.clone();
    labels.extend(plan.labels.clone());
    let step = |label: String| crate::progress::Step::start_if(options.progress, label);

    let networks_step = step(format!(
        "creating the networks and volumes of bottle {}",
        plan.name
    ));
    for network in plan.networks.iter().filter(|n| n.create) {
        docker
            .create_network(NetworkCreateRequest {
                name: network.name.clone(),
                internal: Some(network.internal),
                labels: Some(labels.clone().into_iter().collect()),
                // No host address on the bridge: nothing on the host side answers there.
                options: (!network.host_address)
                    .then(|| HashMap::from([(INHIBIT_IPV4.to_string(), "true".to_string())])),
                ..Default::default()
            })
            .await
            .map_err(engine(format!("creating network {}", network.name)))?;
    }
    for volume in &plan.volumes {
        // In memory, gone with the bottle; open to every user of the two containers that mount
        // it (mitmproxy and the relay run as different users).
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                driver: Some("local".into()),
                driver_opts: Some(HashMap::from(
                    [
                        ("type", "tmpfs"),
                        ("device", "tmpfs"),
                        ("o", "mode=1777,size=1m"),
                    ]
                    .map(|(k, v)| (k.to_string(), v.to_string())),
                )),
                labels: Some(labels.clone().into_iter().collect()),
                ..Default::default()
            })
            .await
            .map_err(engine(format!("creating volume {volume}")))?;
    }
    networks_step.done();
    check(Step::Networks)?;

    // The containers start together; one that joins another's network namespace starts as soon
    // as that one runs. Every start runs to its end before an error returns, so the rollback
    // sees all that was made.
    let (labels, step, check) = (&labels, &step, &check);
    let start_one = |role: Role, owners: HashMap<Role, String>| async move {
        let container = plan.container(role);
        let shown = step(format!("starting {} ({})", container.name, container.image));
        let tty = container.role == Role::Agent && options.agent_tty;
        let id = start_container(docker, plan, container, labels, tty, options, &owners).await?;
        shown.done();
        check(Step::starting(container.role))?;
        Ok::<_, StartError>((container.role, id))
    };
    let joiners = |owner: Role| {
        plan.containers
            .iter()
            .filter(move |c| c.network_mode == NetworkMode::JoinsNamespaceOf(owner))
    };
    let started = futures_util::future::join_all(
        plan.containers
            .iter()
            .filter(|c| !matches!(c.network_mode, NetworkMode::JoinsNamespaceOf(_)))
            .map(|owner| async move {
                let (role, id) = start_one(owner.role, HashMap::new()).await?;
                let mut started = vec![(role, id.clone())];
                for joiner in joiners(role) {
                    let owners = HashMap::from([(role, id.clone())]);
                    started.push(start_one(joiner.role, owners).await?);
                }
                Ok::<_, StartError>(started)
            }),
    )
    .await;
    let mut ids = HashMap::new();
    for result in started {
        ids.extend(result?);
    }

    let shown = step("installing mitmproxy's CA in the agent".into());
    let ca_pem = provision_ca(docker, plan, options.ca_timeout).await?;
    shown.done();
    check(Step::Ca)?;
    let mut plan = plan.clone();
    plan.egress.mitm.ca_fingerprint = Some(fingerprint(&ca_pem).map_err(io("mitmproxy's CA"))?);
    Ok(Running { plan, ids })
}

/// The engines where the bottle's confinement is not known to hold, with the reason: the scanner's
/// network without a host address, the in-memory volume and the namespace the relay joins are
/// measured on Docker Engine only (README.md, "Where it cannot hold").
pub fn unconfinable(
    info: &bollard::models::SystemInfo,
    version: &bollard::models::SystemVersion,
) -> Option<(&'static str, &'static str)> {
    let security = info.security_options.as_deref().unwrap_or_default();
    if security
        .iter()
        .any(|option| option.contains("name=rootless"))
    {
        return Some((
            "rootless Docker",
            "containers' networks live in a user namespace whose way out (slirp4netns or \
             pasta) forwards to the host's loopback, which no bridge option closes",
        ));
    }
    let components = version.components.as_deref().unwrap_or_default();
    if components.iter().any(|c| c.name.contains("Podman")) {
        return Some((
            "Podman",
            "networks are made by netavark or CNI, which do not honour Docker's bridge options",
        ));
    }
    let os = info.operating_system.as_deref().unwrap_or_default();
    if os.contains("Docker Desktop") {
        return Some((
            "Docker Desktop",
            "the engine runs in a VM whose network stack forwards host.docker.internal and the \
             gateway to the host outside any bridge",
        ));
    }
    None
}

async fn confining_engine(docker: &Docker) -> Result<(), StartError> {
    let (info, version) = tokio::try_join!(docker.info(), docker.version())
        .map_err(engine("asking which engine this is"))?;
    match unconfinable(&info, &version) {
        Some((engine, why)) => Err(StartError::EngineCannotConfine {
            engine: engine.into(),
            why: why.into(),
        }),
        None => Ok(()),
    }
}

async fn image_present(docker: &Docker, image: &str) -> Result<(), StartError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Err(StartError::ImageMissing {
            image: image.to_string(),
            hint: "build or load it first (`bottle images` builds the local ones)".into(),
        }),
        Err(e) => Err(engine(format!("inspecting image {image}"))(e)),
    }
}

/// Creates the container, puts its files in place, attaches its networks, starts it and waits
/// for its ready line.
async fn start_container(
    docker: &Docker,
    bottle: &BottlePlan,
    plan: &ContainerPlan,
    labels: &BTreeMap<String, String>,
    tty: bool,
    options: &StartOptions,
    started: &HashMap<Role, String>,
) -> Result<String, StartError> {
    let mut labels = labels.clone();
    labels.insert(plan::ROLE_LABEL.into(), role_name(plan.role).into());
    let (network_mode, rest) = match plan.network_mode {
        NetworkMode::Networks => {
            let (first, rest) = plan.networks.split_first().expect("attached somewhere");
            (bottle.network(first.network).name.clone(), rest)
        }
        NetworkMode::Isolated => ("none".to_string(), &[][..]),
        NetworkMode::JoinsNamespaceOf(role) => (format!("container:{}", started[&role]), &[][..]),
    };
    // The resolver file is bind-mounted (Docker replaces /etc/resolv.conf at every start) from
    // a volume of the bottle's own, so the container can start again after a crash or a restart
    // and nothing of it stays on the host after the bottle.
    let staged = match &plan.resolv_conf {
        Some(text) => Some(stage_resolv_conf(docker, plan, &labels, text).await?),
        None => None,
    };
    let binds: Vec<String> = staged
        .as_ref()
        .map(|path| format!("{path}:/etc/resolv.conf:ro"))
        .into_iter()
        .chain(
            plan.mounts
                .iter()
                .map(|m| format!("{}:{}", m.volume, m.path)),
        )
        .collect();
    let body = ContainerCreateBody {
        image: Some(plan.image.clone()),
        entrypoint: plan.entrypoint.clone(),
        cmd: Some(plan.command.clone()),
        user: plan.user.clone(),
        env: Some(plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels.into_iter().collect()),
        tty: Some(tty),
        open_stdin: Some(tty),
        attach_stdin: Some(tty),
        attach_stdout: Some(tty),
        attach_stderr: Some(tty),
        host_config: Some(HostConfig {
            network_mode: Some(network_mode),
            dns_options: (!plan.dns_options.is_empty()).then(|| plan.dns_options.clone()),
            dns: (!plan.dns_servers.is_empty()).then(|| plan.dns_servers.clone()),
            sysctls: (!plan.sysctls.is_empty()).then(|| plan.sysctls.clone().into_iter().collect()),
            binds: (!binds.is_empty()).then_some(binds),
            cap_drop: plan
                .confinement
                .capabilities
                .as_ref()
                .map(|_| vec!["ALL".into()]),
            cap_add: plan.confinement.capabilities.clone(),
            security_opt: plan
                .confinement
                .no_new_privileges
                .then(|| vec!["no-new-privileges:true".into()]),
            pids_limit: plan.confinement.pids_limit,
            memory: plan.confinement.memory_bytes,
            readonly_rootfs: Some(plan.confinement.read_only_root),
            tmpfs: Some(
                plan.confinement
                    .tmpfs
                    .iter()
                    .map(|path| (path.clone(), "rw,nosuid,nodev".to_string()))
                    .collect(),
            ),
            ..Default::default()
        }),
        volumes: (!plan.confinement.volumes.is_empty()).then(|| plan.confinement.volumes.clone()),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&plan.name)
                    .build(),
            ),
            body,
        )
        .await
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            } => StartError::NameInUse(bottle.name.clone()),
            e => engine(format!("creating container {}", plan.name))(e),
        })?;
    if !plan.files.is_empty() {
        upload(docker, &created.id, &plan.name, "/", &plan.files).await?;
    }
    for attachment in rest {
        docker
            .connect_network(
                &bottle.network(attachment.network).name,
                NetworkConnectRequest {
                    container: created.id.clone(),
                    endpoint_config: Some(EndpointSettings {
                        aliases: Some(attachment.aliases.clone()),
                        ..Default::default()
                    }),
                },
            )
            .await
            .map_err(engine(format!("connecting {} to its networks", plan.name)))?;
    }
    docker
        .start_container(&created.id, None)
        .await
        .map_err(engine(format!("starting {}", plan.name)))?;
    if let Some(line) = &plan.ready_line {
        wait_for_line(docker, &plan.name, line, options.ready_timeout).await?;
    }
    Ok(created.id)
}

/// Puts `text` in a volume of its own (on Docker's disk, labelled with the bottle, removed with
/// it) through a container that is created for that and never started, and returns the file's
/// path on the engine: a bind source that lives as long as the bottle.
async fn stage_resolv_conf(
    docker: &Docker,
    plan: &ContainerPlan,
    labels: &BTreeMap<String, String>,
    text: &str,
) -> Result<String, StartError> {
    let volume = format!("{}-resolver", plan.name);
    let created = docker
        .create_volume(VolumeCreateRequest {
            name: Some(volume.clone()),
            driver: Some("local".into()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        })
        .await
        .map_err(engine(format!("creating volume {volume}")))?;
    let writer = format!("{}-resolver-writer", plan.name);
    let body = ContainerCreateBody {
        image: Some(plan.image.clone()),
        // Never run: the container only carries the volume for the archive upload.
        entrypoint: Some(vec!["/nonexistent".into()]),
        labels: Some(labels.clone().into_iter().collect()),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{volume}:/resolver")]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&writer).build()),
            body,
        )
        .await
        .map_err(engine(format!("creating {writer}")))?
        .id;
    let file = plan::FilePlan {
        path: "resolv.conf".into(),
        contents: plan::FileContents::Text(text.into()),
        mode: 0o644,
    };
    let uploaded = upload(docker, &id, &writer, "/resolver/", &[file]).await;
    docker
        .remove_container(
            &id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
        .map_err(engine(format!("removing {writer}")))?;
    uploaded?;
    Ok(format!(
        "{}/resolv.conf",
        created.mountpoint.trim_end_matches('/')
    ))
}

/// The prefix of this process's temporary files: `bottle-<pid>-<what>`, so a sweep can tell
/// those of a process that died.
pub fn temp_prefix(what: &str) -> String {
    format!("bottle-{}-{what}-", std::process::id())
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Scanner => "scanner",
        Role::Mitm => "mitm",
        Role::Agent => "agent",
        Role::Relay => "relay",
    }
}

/// Follows the container's stdout until `line` appears; fails when the container stops first
/// or the time is up, with what it printed.
async fn wait_for_line(
    docker: &Docker,
    container: &str,
    line: &str,
    timeout: Duration,
) -> Result<(), StartError> {
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .follow(true)
        .build();
    let mut stream = docker.logs(container, Some(options));
    let mut seen = String::new();
    let found = tokio::time::timeout(timeout, async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(engine(format!("reading the output of {container}")))?;
            seen.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if seen.contains(line) {
                return Ok(true);
            }
        }
        Ok::<_, StartError>(false)
    })
    .await;
    match found {
        Ok(Ok(true)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(false)) => {
            let code = docker
                .inspect_container(container, None)
                .await
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.exit_code);
            Err(StartError::ComponentExited {
                container: container.to_string(),
                code,
                output: tail(&seen, 40),
            })
        }
        Err(_) => Err(StartError::ComponentNotReady {
            container: container.to_string(),
            line: line.to_string(),
            waited: timeout,
            output: tail(&seen, 40),
        }),
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The PRD's CA lifecycle: wait (bounded) for mitmproxy's public CA, stage it in a host
/// temporary folder, copy it into the agent, then as root chmod it, run the install command and
/// mark the agent ready. Returns the PEM.
async fn provision_ca(
    docker: &Docker,
    plan: &BottlePlan,
    timeout: Duration,
) -> Result<String, StartError> {
    let ca = &plan.ca;
    let mitm = &plan.container(Role::Mitm).name;
    let agent = &plan.container(Role::Agent).name;
    let deadline = tokio::time::Instant::now() + timeout;
    let pem = loop {
        match download(docker, mitm, &ca.mitm_cert).await {
            Ok(data) if String::from_utf8_lossy(&data).contains("BEGIN CERTIFICATE") => {
                break data;
            }
            Ok(_) => {}
            Err(StartError::Engine { source, .. }) if is_not_found(&source) => {}
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StartError::CaNeverAppeared {
                container: mitm.clone(),
                path: ca.mitm_cert.clone(),
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Staged on the host as the PRD describes; removed when `stage` drops.
    let stage = tempfile::Builder::new()
        .prefix(&temp_prefix("ca"))
        .tempdir()
        .map_err(io("staging mitmproxy's CA"))?;
    let staged = stage.path().join("mitm-ca.crt");
    std::fs::write(&staged, &pem).map_err(io("staging mitmproxy's CA"))?;
    let text = std::fs::read_to_string(&staged).map_err(io("reading the staged CA"))?;
    // Into the file's own directory: the agent's root filesystem is read-only, its trust store a
    // volume (plan::Confinement::agent), and Docker unpacks an archive only into a writable mount.
    let (dir, file_name) = ca
        .agent_path
        .rsplit_once('/')
        .expect("the CA path is absolute");
    let file = plan::FilePlan {
        path: file_name.to_string(),
        contents: plan::FileContents::Text(text.clone()),
        mode: ca.mode,
    };
    upload(docker, agent, agent, &format!("{dir}/"), &[file]).await?;
    let chmod = vec![
        "chmod".to_string(),
        format!("{:o}", ca.mode),
        ca.agent_path.clone(),
    ];
    let touch = vec!["touch".to_string(), ca.ready_marker.clone()];
    for command in [&chmod, &ca.install_command, &touch] {
        let out = exec(docker, agent, Some("0"), command)
            .await
            .map_err(engine(format!("running {command:?} in {agent}")))?;
        if out.code != 0 {
            return Err(StartError::CaInstall {
                container: agent.clone(),
                command: command.join(" "),
                code: out.code,
                output: format!("{}{}", out.stdout, out.stderr),
            });
        }
    }
    Ok(text)
}

/// Puts `files` (paths relative to the directory `into`) into the container `id` (called `name`
/// in errors), as one archive.
async fn upload(
    docker: &Docker,
    id: &str,
    name: &str,
    into: &str,
    files: &[plan::FilePlan],
) -> Result<(), StartError> {
    let archive =
        crate::archive::of_files(files).map_err(io(format!("packing the files of {name}")))?;
    docker
        .upload_to_container(
            id,
            Some(UploadToContainerOptionsBuilder::new().path(into).build()),
            bollard::body_full(archive.into()),
        )
        .await
        .map_err(engine(format!("copying files into {name}")))
}

/// A single file out of a container (Docker's archive download).
async fn download(docker: &Docker, container: &str, path: &str) -> Result<Vec<u8>, StartError> {
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(options));
    let mut archive = Vec::new();
    while let Some(chunk) = stream.next().await {
        archive.extend_from_slice(
            &chunk.map_err(engine(format!("copying {path} out of {container}")))?,
        );
    }
    crate::archive::single_file(&archive).map_err(io(format!("unpacking {path}")))
}

/// sha256 of the certificate's DER, hex.
pub fn fingerprint(pem: &str) -> std::io::Result<String> {
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
        .map_err(std::io::Error::other)?;
    if der.is_empty() {
        return Err(std::io::Error::other("no certificate in the PEM"));
    }
    Ok(hex::encode(sha2::Sha256::digest(der)))
}

/// The line a real start prints once, on stderr (the PRD's format).
pub fn fingerprint_line(fingerprint: &str) -> String {
    format!(
        "claude-bottle: mitm ca fingerprint: {}...",
        &fingerprint[..16.min(fingerprint.len())]
    )
}

fn label_filter(value: String) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![value])])
}

/// Containers of the bottle `name` (any state), as Docker lists them.
pub async fn containers(
    docker: &Docker,
    name: Option<&str>,
) -> Result<Vec<bollard::models::ContainerSummary>, StartError> {
    let label = match name {
        Some(name) => format!("{}={name}", plan::BOTTLE_LABEL),
        None => plan::BOTTLE_LABEL.to_string(),
    };
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(label)),
            ..Default::default()
        }))
        .await
        .map_err(engine("listing containers"))
}

async fn networks(
    docker: &Docker,
    name: &str,
) -> Result<Vec<bollard::models::Network>, StartError> {
    docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(label_filter(format!("{}={name}", plan::BOTTLE_LABEL))),
        }))
        .await
        .map_err(engine("listing networks"))
}

/// Whether anything labelled with the bottle `name` exists.
pub async fn exists(docker: &Docker, name: &str) -> Result<bool, StartError> {
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(label_filter(format!("{}={name}", plan::BOTTLE_LABEL))),
        }))
        .await
        .map_err(engine("listing volumes"))?;
    Ok(!containers(docker, Some(name)).await?.is_empty()
        || !networks(docker, name).await?.is_empty()
        || !volumes.volumes.unwrap_or_default().is_empty())
}

/// What [`remove`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

/// Removes every container (with its anonymous volumes, so mitmproxy's CA key goes too) and
/// every network labelled with the bottle `name`. Best effort and idempotent: what is already
/// gone is not an error.
pub async fn remove(docker: &Docker, name: &str) -> Removed {
    let mut removed = Removed::default();
    let force = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    if let Ok(list) = containers(docker, Some(name)).await {
        let ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
        let results = futures_util::future::join_all(
            ids.iter()
                .map(|id| docker.remove_container(id, Some(force.clone()))),
        )
        .await;
        removed.containers = results
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Ok(())
                        | Err(bollard::errors::Error::DockerResponseServerError {
                            status_code: 404,
                            ..
                        })
                )
            })
            .count();
    }
    if let Ok(list) = networks(docker, name).await {
        for network in list {
            let Some(net) = network.name else { continue };
            if docker.remove_network(&net).await.is_ok() {
                removed.networks += 1;
            }
        }
    }
    // After the containers: Docker keeps a volume that a container still mounts.
    removed.volumes = remove_volumes(
        docker,
        label_filter(format!("{}={name}", plan::BOTTLE_LABEL)),
    )
    .await;
    removed
}

/// Removes the named volumes matching `filters` (labels); how many went.
pub async fn remove_volumes(docker: &Docker, filters: HashMap<String, Vec<String>>) -> usize {
    let Ok(list) = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
    else {
        return 0;
    };
    let mut removed = 0;
    for volume in list.volumes.unwrap_or_default() {
        if docker
            .remove_volume(&volume.name, None::<RemoveVolumeOptions>)
            .await
            .is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// A bottle as `bottle ps` shows it.
#[derive(Debug)]
pub struct BottleSummary {
    pub name: String,
    pub scanner: String,
    /// Container state by role ("running", "exited", ...).
    pub containers: BTreeMap<String, String>,
    pub networks: usize,
}

/// Every bottle on the engine: whatever carries the bottle label, even the remains of a crash.
pub async fn list(docker: &Docker) -> Result<Vec<BottleSummary>, StartError> {
    let mut bottles: BTreeMap<String, BottleSummary> = BTreeMap::new();
    let summary = |name: &str, labels: &HashMap<String, String>| BottleSummary {
        name: name.to_string(),
        scanner: labels
            .get(plan::SCANNER_LABEL)
            .cloned()
            .unwrap_or_else(|| "?".into()),
        containers: BTreeMap::new(),
        networks: 0,
    };
    for container in containers(docker, None).await? {
        let labels = container.labels.unwrap_or_default();
        let Some(name) = labels.get(plan::BOTTLE_LABEL) else {
            continue;
        };
        let entry = bottles
            .entry(name.clone())
            .or_insert_with(|| summary(name, &labels));
        let role = labels
            .get(plan::ROLE_LABEL)
            .cloned()
            .unwrap_or_else(|| "other".into());
        let state = container
            .state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into());
        entry.containers.insert(role, state);
    }
    let all_networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(label_filter(plan::BOTTLE_LABEL.to_string())),
        }))
        .await
        .map_err(engine("listing networks"))?;
    for network in all_networks {
        let labels = network.labels.unwrap_or_default();
        let Some(name) = labels.get(plan::BOTTLE_LABEL) else {
            continue;
        };
        bottles
            .entry(name.clone())
            .or_insert_with(|| summary(name, &labels))
            .networks += 1;
    }
    Ok(bottles.into_values().collect())
}

/// The id of the bottle's container in `role`, if there is one.
pub async fn container_of(
    docker: &Docker,
    name: &str,
    role: Role,
) -> Result<Option<String>, StartError> {
    Ok(containers(docker, Some(name))
        .await?
        .into_iter()
        .find(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(plan::ROLE_LABEL))
                .is_some_and(|r| r == role_name(role))
        })
        .and_then(|c| c.id))
}

/// Copies the container's output to ours (stdout to stdout, stderr to stderr).
pub async fn print_logs(docker: &Docker, id: &str, follow: bool) -> Result<(), StartError> {
    use tokio::io::AsyncWriteExt;
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .follow(follow)
        .build();
    let mut stream = docker.logs(id, Some(options));
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    while let Some(chunk) = stream.next().await {
        let written = match chunk.map_err(engine("reading logs"))? {
            bollard::container::LogOutput::StdErr { message } => stderr.write_all(&message).await,
            other => stdout.write_all(&other.into_bytes()).await,
        };
        written.map_err(io("writing logs"))?;
    }
    stdout.flush().await.map_err(io("writing logs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_line_shows_the_first_sixteen_hex_digits() {
        let line = fingerprint_line("0123456789abcdef0123456789abcdef");
        assert_eq!(
            line,
            "claude-bottle: mitm ca fingerprint: 0123456789abcdef..."
        );
    }

    #[test]
    fn a_pem_without_a_certificate_has_no_fingerprint() {
        assert!(fingerprint("not a certificate").is_err());
    }

    #[test]
    fn only_a_rootful_linux_engine_can_confine_the_agent() {
        use bollard::models::{SystemInfo, SystemVersion, SystemVersionComponents};
        let info = |security: &[&str], os: &str| SystemInfo {
            security_options: Some(security.iter().map(|s| s.to_string()).collect()),
            operating_system: Some(os.into()),
            ..Default::default()
        };
        let engine = |name: &str| SystemVersion {
            components: Some(vec![SystemVersionComponents {
                name: name.into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let docker = engine("Engine");
        let this_machine = info(&["name=seccomp,profile=default"], "Debian GNU/Linux 12");
        assert_eq!(unconfinable(&this_machine, &docker), None);
        let rootless = info(&["name=seccomp,profile=default", "name=rootless"], "Ubuntu");
        assert_eq!(
            unconfinable(&rootless, &docker).unwrap().0,
            "rootless Docker"
        );
        let desktop = info(&["name=seccomp,profile=default"], "Docker Desktop");
        assert_eq!(unconfinable(&desktop, &docker).unwrap().0, "Docker Desktop");
        let podman = unconfinable(&this_machine, &engine("Podman Engine"));
        assert_eq!(podman.unwrap().0, "Podman");
    }
}
