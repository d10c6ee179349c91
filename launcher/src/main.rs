//! `bottle`: the launcher's command line.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use bottle::images::{self, ImageOptions, Recipe};

/// Run an AI coding agent in a bottle: its HTTPS egress is decrypted by a per-bottle mitmproxy
/// and every request is scanned by pipelock before it may leave.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the local images a bottle runs (from Debian packages and PyPI, no registry needed),
    /// or reuse them when they exist. Tags are content hashes of the recipes.
    ///
    /// Needs root (debootstrap) the first time, debootstrap and python3 with pip on the host.
    /// Environment: BOTTLE_CACHE_DIR (downloads, default ~/.cache/bottle), BOTTLE_DEBIAN_MIRROR.
    Images {
        /// Which images; default: everything a bottle runs.
        #[arg(value_enum)]
        which: Vec<ImageName>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ImageName {
    Base,
    Mitmproxy,
    MitmproxyTest,
    Agent,
    AgentClaude,
}

impl From<ImageName> for Recipe {
    fn from(name: ImageName) -> Recipe {
        match name {
            ImageName::Base => Recipe::Base,
            ImageName::Mitmproxy => Recipe::Mitmproxy,
            ImageName::MitmproxyTest => Recipe::MitmproxyTest,
            ImageName::Agent => Recipe::Agent,
            ImageName::AgentClaude => Recipe::AgentClaude,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Images { which } => {
            let wanted: Vec<Recipe> = if which.is_empty() {
                vec![Recipe::Mitmproxy, Recipe::Agent, Recipe::AgentClaude]
            } else {
                which.into_iter().map(Recipe::from).collect()
            };
            let docker = bottle::docker::connect().await?;
            let tags = images::ensure(&docker, &ImageOptions::from_env(), &wanted).await?;
            for tag in tags {
                println!("{tag}");
            }
        }
    }
    Ok(())
}
