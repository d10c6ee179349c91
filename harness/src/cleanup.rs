//! Removing what test runs leave behind: containers and networks whose creating process is gone
//! (a test killed with SIGKILL cannot clean up after itself).

use anyhow::Result;
use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use std::collections::HashMap;

use crate::run::OWNER_LABEL;

fn alive(pid: &str) -> bool {
    std::path::Path::new("/proc").join(pid).exists()
}

fn filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![OWNER_LABEL.to_string()])])
}

/// Removes containers, then networks and volumes, labelled by a harness process that no longer runs.
/// `only_pid` restricts it to one (live or not) process: this process's own teardown.
pub async fn sweep(docker: &Docker, only_pid: Option<u32>) -> Result<usize> {
    let owned_by_dead = |labels: Option<&HashMap<String, String>>| {
        let Some(pid) = labels.and_then(|l| l.get(OWNER_LABEL)) else {
            return false;
        };
        match only_pid {
            Some(mine) => *pid == mine.to_string(),
            None => !alive(pid),
        }
    };
    let mut removed = 0;
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter())
                .build(),
        ))
        .await?;
    for c in containers
        .iter()
        .filter(|c| owned_by_dead(c.labels.as_ref()))
    {
        let id = c.id.as_deref().unwrap_or_default();
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        if docker.remove_container(id, Some(options)).await.is_ok() {
            removed += 1;
        }
    }
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filter()).build(),
        ))
        .await?;
    for n in networks.iter().filter(|n| owned_by_dead(n.labels.as_ref())) {
        if docker
            .remove_network(n.id.as_deref().unwrap_or_default())
            .await
            .is_ok()
        {
            removed += 1;
        }
    }
    // After the containers that mounted them.
    let volumes = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(filter()),
        }))
        .await?;
    for v in volumes.volumes.unwrap_or_default() {
        if owned_by_dead(Some(&v.labels))
            && docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
                .is_ok()
        {
            removed += 1;
        }
    }
    if only_pid.is_none() {
        // The files a killed process staged (SIGKILL runs no handler).
        remove_dead_processes_temp_files();
    }
    Ok(removed)
}

fn remove_dead_processes_temp_files() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("bottle-")
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if let Some(pid) = pid
            && !alive(pid)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Installs, once per process, a handler that on SIGINT or SIGTERM (Ctrl-C, or nextest stopping
/// a test) removes every container and network this process made, then exits 130.
pub fn on_signal(_docker: &Docker) {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the signal handler");
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
                let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                eprintln!("[bottle] interrupted: removing this run's containers and networks");
                // A client of this runtime's own: the test's runtime may be the one stopping.
                if let Ok(docker) = bottle::docker::connect().await {
                    let _ = sweep(&docker, Some(std::process::id())).await;
                }
                // exit() runs no destructors: the staged temporary files go here.
                remove_temp_files(std::process::id());
                std::process::exit(130);
            });
        });
    });
}

/// The name prefix of the temporary files and directories this process stages (files copied
/// into containers, resolver files): `bottle-<pid>-<what>-`, so they can be found by owner.
pub fn temp_prefix(what: &str) -> String {
    bottle::executor::temp_prefix(what)
}

/// Removes the temporary files a process staged (see [`temp_prefix`]); returns how many.
pub fn remove_temp_files(pid: u32) -> usize {
    let prefix = format!("bottle-{pid}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix)
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}
