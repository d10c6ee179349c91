//! Brings a bottle up and holds it until killed: the harness's own test that Ctrl-C (SIGINT)
//! and SIGTERM leave nothing behind starts this and signals it.

use bottle_harness::chain::{Chain, ChainOptions};
use bottle_harness::images;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let chain = Chain::up(&docker, &images, ChainOptions::default()).await?;
    println!("chain up: {}", chain.plan.name);
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    chain.down().await
}
