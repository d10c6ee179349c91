//! Faults done to a bottle's parts (a scenario's `[[faults]]`): Docker stops, starts, restarts,
//! pauses, kills or cuts a container off its networks, before the request or while it runs.
//! A bottle that took a fault is the case's own and goes with it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::models::NetworkDisconnectRequest;
use bollard::query_parameters::{
    KillContainerOptions, RestartContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use bottle::plan::Role;

use crate::chain::Chain;
use crate::scenario::{Fault, FaultAction, FaultTarget};

/// How long a part that was started again may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

fn container(chain: &Chain, target: FaultTarget) -> &str {
    match target {
        FaultTarget::Scanner => chain.id(Role::Scanner),
        FaultTarget::Mitm => chain.id(Role::Mitm),
        FaultTarget::Upstream => chain.upstream_id(),
    }
}

/// The line the part prints when it is ready, when it prints one.
fn ready_line(chain: &Chain, target: FaultTarget) -> Option<&str> {
    match target {
        FaultTarget::Scanner => chain.plan.container(Role::Scanner).ready_line.as_deref(),
        FaultTarget::Mitm => chain.plan.container(Role::Mitm).ready_line.as_deref(),
        FaultTarget::Upstream => None,
    }
}

/// Does `fault` and, for a start or restart, waits until the part is ready again.
pub async fn apply(chain: &Chain, fault: &Fault) -> Result<()> {
    let docker = chain.docker();
    let id = container(chain, fault.target);
    let readies_before = match fault.action {
        FaultAction::Start | FaultAction::Restart => Some(readies(chain, fault.target).await?),
        _ => None,
    };
    let what = format!("{:?} {:?}", fault.action, fault.target).to_lowercase();
    match fault.action {
        FaultAction::Stop => {
            docker
                .stop_container(id, Some(StopContainerOptionsBuilder::new().t(1).build()))
                .await
        }
        FaultAction::Start => {
            docker
                .start_container(id, None::<StartContainerOptions>)
                .await
        }
        FaultAction::Restart => {
            docker
                .restart_container(id, Some(RestartContainerOptionsBuilder::new().t(1).build()))
                .await
        }
        FaultAction::Pause => docker.pause_container(id).await,
        FaultAction::Unpause => docker.unpause_container(id).await,
        FaultAction::Kill => {
            docker
                .kill_container(id, None::<KillContainerOptions>)
                .await
        }
        FaultAction::Disconnect => {
            let inspected = docker.inspect_container(id, None).await?;
            let networks = inspected
                .network_settings
                .and_then(|n| n.networks)
                .unwrap_or_default();
            for network in networks.keys() {
                docker
                    .disconnect_network(
                        network,
                        NetworkDisconnectRequest {
                            container: id.to_string(),
                            force: Some(true),
                        },
                    )
                    .await
                    .with_context(|| format!("{what}: from {network}"))?;
            }
            Ok(())
        }
    }
    .with_context(|| what.clone())?;
    if let Some(before) = readies_before {
        wait_ready(chain, fault.target, before)
            .await
            .with_context(|| format!("{what}: not ready again"))?;
    }
    Ok(())
}

/// Does the timed faults (those with `after_ms`) at their times after `sent`.
pub async fn apply_timed(chain: &Chain, faults: &[Fault], sent: Instant) -> Result<()> {
    for fault in faults {
        let Some(after) = fault.after_ms else {
            continue;
        };
        tokio::time::sleep_until((sent + Duration::from_millis(after)).into()).await;
        apply(chain, fault).await?;
    }
    Ok(())
}

/// Brings mitmproxy back after the faults, so its decision log can be read: unpaused, or
/// started again when it is not running.
pub async fn heal(chain: &Chain, faults: &[Fault]) -> Result<()> {
    if !faults.iter().any(|f| f.target == FaultTarget::Mitm) {
        return Ok(());
    }
    let docker = chain.docker();
    let id = chain.id(Role::Mitm);
    let state = docker.inspect_container(id, None).await?.state;
    let (paused, running) = state.map_or((false, false), |s| {
        (s.paused.unwrap_or(false), s.running.unwrap_or(false))
    });
    if paused {
        docker.unpause_container(id).await?;
    } else if !running {
        docker
            .start_container(id, None::<StartContainerOptions>)
            .await?;
    }
    Ok(())
}

/// How many times the part has said it is ready (0 when it prints no ready line).
async fn readies(chain: &Chain, target: FaultTarget) -> Result<usize> {
    let Some(line) = ready_line(chain, target) else {
        return Ok(0);
    };
    let (out, err) = crate::chain::container_logs(chain.docker(), container(chain, target)).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    Ok(text.matches(line).count())
}

async fn wait_ready(chain: &Chain, target: FaultTarget, before: usize) -> Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    let id = container(chain, target);
    loop {
        let running = chain
            .docker()
            .inspect_container(id, None)
            .await?
            .state
            .and_then(|s| s.running)
            .unwrap_or(false);
        let ready = ready_line(chain, target).is_none() || readies(chain, target).await? > before;
        if running && ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("waited {} s", READY_WITHIN.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
