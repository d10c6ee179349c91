//! Ensures every image the suite needs, with progress: run once by nextest's setup script
//! before the container tests, so the first build is visible and not raced by parallel tests.

use anyhow::Result;

#[tokio::main]
async fn main() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let started = std::time::Instant::now();
    let images = bottle_harness::images::ensure(&docker).await?;
    for (name, tag) in images.all() {
        eprintln!("[bottle] image {name:<15} {tag}");
    }
    eprintln!(
        "[bottle] all images present ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
