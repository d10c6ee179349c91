//! `bottle start --dry-run`: the plan as text for people and as JSON for tools. Both show the
//! plan with secrets redacted (`BottlePlan::redacted`).

use std::fmt::Write;

use crate::plan::{
    BottlePlan, ContainerPlan, FileContents, NetworkMode, NetworkRole, Role, ScannerKind,
};

/// The loud warning every start and dry run with the double prints.
pub const DOUBLE_WARNING: &str = "\
WARNING: this bottle's scanner is pipelock-double, a stand-in for tests.
WARNING: it is NOT protected by pipelock. Do not run an agent with real secrets in it.";

pub fn json(plan: &BottlePlan) -> String {
    serde_json::to_string_pretty(&plan.redacted()).expect("a plan is plain data") + "\n"
}

pub fn text(plan: &BottlePlan) -> String {
    let plan = plan.redacted();
    let mut out = String::new();
    let scanner = match plan.scanner {
        ScannerKind::Pipelock => "pipelock",
        ScannerKind::Double => "pipelock-double (NOT pipelock)",
    };
    let _ = writeln!(out, "bottle {} (dry run: nothing is started)", plan.name);
    let _ = writeln!(out, "scanner: {scanner}");
    if plan.scanner == ScannerKind::Double {
        let _ = writeln!(out, "{DOUBLE_WARNING}");
    }

    let _ = writeln!(out, "\nnetworks:");
    for network in &plan.networks {
        let role = match network.role {
            NetworkRole::Scan => "mitmproxy <-> scanner",
            NetworkRole::Egress => "mitmproxy -> upstreams",
        };
        let reach = if network.internal {
            "internal"
        } else {
            "routed"
        };
        let made = if network.create {
            "made and removed with the bottle"
        } else {
            "exists already; used, not removed"
        };
        let host = if network.host_address {
            ""
        } else {
            ", no host address"
        };
        let _ = writeln!(
            out,
            "  {:<28} {reach:<8} {role} ({made}{host})",
            network.name
        );
    }

    let _ = writeln!(out, "\ncontainers, in start order:");
    for container in &plan.containers {
        container_text(&mut out, &plan, container);
    }

    let ca = &plan.ca;
    let mitm = &plan.container(Role::Mitm).name;
    let agent = &plan.container(Role::Agent).name;
    let _ = writeln!(out, "\nCA provisioning (after the containers start):");
    let _ = writeln!(
        out,
        "  wait (bounded) for {} in {mitm}; stage it in a host temporary folder",
        ca.mitm_cert
    );
    let _ = writeln!(
        out,
        "  copy it to {} in {agent}, mode {:04o}; as root: {}; then touch {}",
        ca.agent_path,
        ca.mode,
        ca.install_command.join(" "),
        ca.ready_marker
    );
    let _ = writeln!(
        out,
        "  print `claude-bottle: mitm ca fingerprint: <sha256-first-16>...` on stderr"
    );

    let _ = writeln!(out, "\negress:");
    let mitm_status = &plan.egress.mitm;
    let _ = writeln!(
        out,
        "  mitm: enabled={}, ca_fingerprint={}",
        mitm_status.enabled,
        mitm_status
            .ca_fingerprint
            .as_deref()
            .unwrap_or("null (the CA does not exist before the start)")
    );
    let _ = writeln!(
        out,
        "  allowlist (pipelock strict mode): {}",
        plan.egress.allowlist.join(", ")
    );
    match &plan.egress.upstream_ca {
        Some(ca) => {
            let _ = writeln!(
                out,
                "  upstream CA: {} (trusted by mitmproxy and the scanner besides the system roots)",
                ca.source
            );
        }
        None => {
            let _ = writeln!(out, "  upstream CA: none (system roots only)");
        }
    }
    out
}

fn container_text(out: &mut String, plan: &BottlePlan, container: &ContainerPlan) {
    let role = match container.role {
        Role::Scanner => "scanner",
        Role::Mitm => "mitmproxy",
        Role::Agent => "agent",
        Role::Relay => "relay",
    };
    let _ = writeln!(out, "  {role}: {}", container.name);
    let _ = writeln!(out, "    image:      {}", container.image);
    if let Some(entrypoint) = &container.entrypoint {
        let _ = writeln!(out, "    entrypoint: {}", shell_words(entrypoint));
    }
    let _ = writeln!(out, "    command:    {}", shell_words(&container.command));
    let networks = match container.network_mode {
        NetworkMode::Networks => container
            .networks
            .iter()
            .map(|a| plan.network(a.network).name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        NetworkMode::Isolated => "none (its own loopback only)".to_string(),
        NetworkMode::JoinsNamespaceOf(role) => format!(
            "none of its own: in {}'s network namespace",
            plan.container(role).name
        ),
    };
    let _ = writeln!(out, "    networks:   {networks}");
    if let Some(user) = &container.user {
        let _ = writeln!(out, "    user:       {user}");
    }
    for mount in &container.mounts {
        let _ = writeln!(
            out,
            "    volume:     {} at {} (in memory, made and removed with the bottle)",
            mount.volume, mount.path
        );
    }
    let confinement = &container.confinement;
    let mut limits = vec![match confinement.capabilities.as_deref() {
        None => "the engine's default capabilities".to_string(),
        Some([]) => "no capabilities".to_string(),
        Some(kept) => format!("no capabilities but {}", kept.join(", ")),
    }];
    if confinement.no_new_privileges {
        limits.push("no-new-privileges".into());
    }
    if let Some(pids) = confinement.pids_limit {
        limits.push(format!("pids {pids}"));
    }
    if let Some(bytes) = confinement.memory_bytes {
        limits.push(format!("memory {} MiB", bytes >> 20));
    }
    if confinement.read_only_root {
        limits.push("read-only root".into());
    }
    if !confinement.set_in_manifest.is_empty() {
        limits.push(format!(
            "set in bottle.toml: {}",
            confinement.set_in_manifest.join(", ")
        ));
    }
    let _ = writeln!(out, "    limits:     {}", limits.join(", "));
    let writable: Vec<String> = confinement
        .tmpfs
        .iter()
        .map(|path| format!("{path} (tmpfs)"))
        .chain(
            confinement
                .volumes
                .iter()
                .map(|path| format!("{path} (volume)")),
        )
        .collect();
    if !writable.is_empty() {
        let _ = writeln!(out, "    writable:   {}", writable.join(", "));
    }
    for (key, value) in &container.env {
        let _ = writeln!(out, "    env:        {key}={value}");
    }
    for file in &container.files {
        let what = match &file.contents {
            FileContents::Text(text) => format!("{} bytes", text.len()),
            FileContents::BuiltinAddon => format!(
                "the addon built into bottle, {} files",
                crate::addon::FILES.len()
            ),
            FileContents::Dir(dir) => format!("copied from {}", dir.display()),
        };
        let _ = writeln!(
            out,
            "    file:       {} ({:04o}, {what})",
            file.path, file.mode
        );
    }
    if let Some(resolv) = &container.resolv_conf {
        let _ = writeln!(
            out,
            "    resolver:   /etc/resolv.conf replaced: {}",
            resolv.lines().collect::<Vec<_>>().join("; ")
        );
    }
    if !container.dns_options.is_empty() {
        let _ = writeln!(out, "    dns:        {}", container.dns_options.join(" "));
    }
    if !container.dns_servers.is_empty() {
        let _ = writeln!(
            out,
            "    forwarder:  names Docker's resolver does not know go to {} (in the container)",
            container.dns_servers.join(", ")
        );
    }
    for (key, value) in &container.sysctls {
        let _ = writeln!(out, "    sysctl:     {key}={value}");
    }
    if let Some(line) = &container.ready_line {
        let _ = writeln!(out, "    ready when: stdout shows {line}");
    }
}

/// Words joined with spaces, quoted where a shell would need it.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
