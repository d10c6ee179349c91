//! Internal networks for tests: no gateway, so nothing on them can reach beyond the machine.
//! testcontainers creates networks only as non-internal, so the harness makes its own.

use anyhow::{Context, Result};
use bollard::Docker;
use bollard::models::NetworkCreateRequest;

use crate::run;

/// An internal network that is removed (with every container still on it) when dropped.
pub struct InternalNetwork {
    docker: Docker,
    pub name: String,
}

impl InternalNetwork {
    pub async fn create(docker: &Docker, prefix: &str) -> Result<Self> {
        Self::create_named(docker, &run::unique(prefix), &Default::default()).await
    }

    /// An internal network under exactly this name, with `labels` added to the run's own.
    pub async fn create_named(
        docker: &Docker,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
        let name = name.to_string();
        let mut all_labels = run::labels();
        all_labels.extend(labels.clone());
        docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                internal: Some(true),
                labels: Some(all_labels),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating internal network {name}"))?;
        Ok(InternalNetwork {
            docker: docker.clone(),
            name,
        })
    }
}

impl Drop for InternalNetwork {
    fn drop(&mut self) {
        let (docker, name) = (self.docker.clone(), self.name.clone());
        run::block_on_thread(async move { remove_with_containers(&docker, &name).await });
    }
}

/// Force-removes the network's remaining containers first: Docker refuses to remove a network
/// that still has endpoints.
async fn remove_with_containers(docker: &Docker, name: &str) {
    if let Ok(net) = docker
        .inspect_network(
            name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
    {
        for id in net.containers.unwrap_or_default().keys() {
            let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(id, Some(options)).await;
        }
    }
    let _ = docker.remove_network(name).await;
}

/// Connects a container to a network under extra DNS names (`aliases`), which testcontainers
/// cannot do. A container already on that network is disconnected first, so this also gives
/// aliases to the network a container was started on.
pub async fn connect(
    docker: &Docker,
    network: &str,
    container: &str,
    aliases: &[&str],
) -> Result<()> {
    let attached = endpoints(docker, container).await?.contains_key(network);
    if attached {
        docker
            .disconnect_network(
                network,
                bollard::models::NetworkDisconnectRequest {
                    container: container.to_string(),
                    force: Some(true),
                },
            )
            .await
            .with_context(|| format!("disconnecting {container} from {network}"))?;
    }
    docker
        .connect_network(
            network,
            bollard::models::NetworkConnectRequest {
                container: container.to_string(),
                endpoint_config: Some(bollard::models::EndpointSettings {
                    aliases: Some(aliases.iter().map(|a| a.to_string()).collect()),
                    ..Default::default()
                }),
            },
        )
        .await
        .with_context(|| format!("connecting {container} to {network} as {aliases:?}"))
}

/// The container's IPv4 address on `network`.
pub async fn ip(docker: &Docker, network: &str, container: &str) -> Result<String> {
    endpoints(docker, container)
        .await?
        .remove(network)
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .with_context(|| format!("{container} has no address on {network}"))
}

/// The container's network endpoints, by network name.
async fn endpoints(
    docker: &Docker,
    container: &str,
) -> Result<std::collections::HashMap<String, bollard::models::EndpointSettings>> {
    Ok(docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .with_context(|| format!("inspecting container {container}"))?
        .network_settings
        .and_then(|s| s.networks)
        .unwrap_or_default())
}

/// The network's IPAM configs, as Docker records them.
async fn ipam_configs(docker: &Docker, network: &str) -> Result<Vec<bollard::models::IpamConfig>> {
    Ok(docker
        .inspect_network(
            network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .with_context(|| format!("inspecting network {network}"))?
        .ipam
        .and_then(|ipam| ipam.config)
        .unwrap_or_default())
}

/// The network's (first) IPv4 subnet, e.g. `172.20.0.0/16`.
pub async fn subnet(docker: &Docker, network: &str) -> Result<String> {
    ipam_configs(docker, network)
        .await?
        .into_iter()
        .find_map(|c| c.subnet)
        .with_context(|| format!("network {network} has no subnet"))
}

/// The network's (first) IPv4 gateway as Docker's IPAM records it: the host's address on the
/// bridge, unless the network was made without one (`inhibit_ipv4`), when nothing answers there.
/// Docker records none for its default bridge: there it is the subnet's first address.
pub async fn gateway(docker: &Docker, network: &str) -> Result<String> {
    let configs = ipam_configs(docker, network).await?;
    if let Some(gateway) = configs.iter().find_map(|c| c.gateway.clone()) {
        return Ok(gateway);
    }
    let first_of = |subnet: &str| -> Option<String> {
        let base: std::net::Ipv4Addr = subnet.split('/').next()?.parse().ok()?;
        Some(std::net::Ipv4Addr::from(u32::from(base) + 1).to_string())
    };
    configs
        .iter()
        .find_map(|c| c.subnet.as_deref().and_then(first_of))
        .with_context(|| format!("network {network} has no IPv4 gateway or subnet"))
}

/// This host's address on its default route (what a container would reach as "the host" besides
/// a bridge's gateway). No packet is sent: connecting a UDP socket only picks the route.
pub fn host_address() -> Result<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket
        .connect("192.0.2.255:9")
        .or_else(|_| socket.connect("10.255.255.255:9"))
        .context("the host has no IPv4 route to pick its own address from")?;
    Ok(socket.local_addr()?.ip().to_string())
}
