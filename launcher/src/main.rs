//! `bottle`: the launcher's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use bottle::executor::{self, StartOptions};
use bottle::images::{self, ImageOptions, Recipe};
use bottle::launch::{self, ImagesMode, LaunchError, StartRequest, exit};
use bottle::plan::{self, ScannerKind};
use bottle::{attach, render};

/// Run an AI coding agent in a bottle: its HTTPS egress is decrypted by a per-bottle mitmproxy
/// and every request is scanned by pipelock before it may leave.
///
/// A bottle is three containers on three Docker networks: the agent (which reaches nothing but
/// mitmproxy), mitmproxy with bottle's addon (which asks the scanner about every decrypted
/// request and blocks what it blocks), and pipelock (which reaches nothing at all). Everything
/// carries the label org.bottle.bottle=<name>, so `bottle ps` and `bottle stop` find it.
///
/// Exit codes: 0 ok; 1 no such bottle; 2 bad command line; 65 bad bottle.toml; 66 name in use;
/// 67 image unavailable; 68 a part of the bottle failed to start (e.g. the CA never appeared);
/// 69 Docker unreachable; 70 internal error; 130 interrupted. An attached start that ran exits
/// with the agent's own code.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a bottle and run the agent in it (attached: until it exits, then remove it all).
    ///
    /// Reads --manifest, else ./bottle.toml when there is one, else uses every default (the
    /// Claude Code image, `claude`, the default allowlist). Prints the mitmproxy CA's fingerprint
    /// once on stderr. Ctrl-C (without a terminal), SIGTERM or a failed step remove everything
    /// the start made.
    Start {
        /// The bottle.toml to use (see launcher/examples/bottle.toml).
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
        /// The bottle's name (default: the manifest's, else "default").
        #[arg(long)]
        name: Option<String>,
        /// Start the bottle and return; `bottle logs`, `bottle stop` later.
        #[arg(long)]
        detach: bool,
        /// Print what would run (containers, networks, env with secrets redacted, files) and
        /// start nothing.
        #[arg(long)]
        dry_run: bool,
        /// The dry run's format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// local: build the images here on demand (Debian packages and PyPI, no registry);
        /// pinned: the official images by the digests in images.lock, pulled.
        #[arg(long, value_enum, default_value_t = Images::Local)]
        images: Images,
        /// pipelock: the real scanner (images.lock; must be here or pullable). double: the
        /// test stand-in, which does NOT protect you.
        #[arg(long, value_enum, default_value_t = Scanner::Pipelock)]
        scanner: Scanner,
        /// Run this image as the scanner (as --scanner says: pipelock with its own entrypoint,
        /// double with `pipelock-double`) instead of images.lock's pipelock or the local double;
        /// here already (`docker load`) or pullable.
        #[arg(long, value_name = "REF")]
        scanner_image: Option<String>,
        /// Run this image as mitmproxy (and the relay) instead of the one --images names; it
        /// needs mitmproxy 12.2.3 and python3 (the addon checks at start).
        #[arg(long, value_name = "REF")]
        mitm_image: Option<String>,
    },
    /// List the bottles on this Docker engine (also what a crash left behind).
    Ps,
    /// Remove a bottle: its containers (mitmproxy's CA key with them) and networks.
    Stop {
        /// The bottle to remove.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Remove every bottle.
        #[arg(long)]
        all: bool,
    },
    /// Print the output of one part of a bottle.
    Logs {
        name: String,
        #[arg(long, value_enum, default_value_t = Component::Agent)]
        component: Component,
        /// Keep printing new output.
        #[arg(long, short)]
        follow: bool,
    },
    /// Build the local images a bottle runs (from Debian packages and PyPI, no registry needed),
    /// or reuse them when they exist. Tags are content hashes of the recipes.
    ///
    /// Needs only the Docker engine: Debian packages and wheels are fetched over HTTPS by bottle
    /// itself (the host's CA roots, SSL_CERT_FILE and HTTPS_PROXY honoured) and installed inside
    /// the engine.
    /// Environment: BOTTLE_CACHE_DIR (downloads, default ~/.cache/bottle), BOTTLE_DEBIAN_MIRROR
    /// (default https://deb.debian.org/debian), PIP_INDEX_URL (default https://pypi.org/simple).
    Images {
        /// Which images; default: everything a bottle runs.
        #[arg(value_enum)]
        which: Vec<ImageName>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Images {
    Local,
    Pinned,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scanner {
    Pipelock,
    Double,
}

#[derive(Clone, Copy, ValueEnum)]
enum Component {
    Agent,
    Mitm,
    Scanner,
    /// The sidecar that carries the agent's proxy port to mitmproxy.
    Relay,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bottle: error: {e}");
            e.exit_code()
        }
    };
    // Do not wait for a blocked stdin reader of an attached agent.
    runtime.shutdown_background();
    ExitCode::from(code)
}

async fn run(cli: Cli) -> Result<u8, LaunchError> {
    match cli.command {
        Command::Start {
            manifest,
            name,
            detach,
            dry_run,
            format,
            images,
            scanner,
            scanner_image,
            mitm_image,
        } => {
            let request = StartRequest {
                manifest: launch::load_manifest(manifest)?,
                name,
                images: match images {
                    Images::Local => ImagesMode::Local,
                    Images::Pinned => ImagesMode::Pinned,
                },
                scanner: match scanner {
                    Scanner::Pipelock => ScannerKind::Pipelock,
                    Scanner::Double => ScannerKind::Double,
                },
                scanner_image,
                mitm_image,
            };
            if dry_run {
                dry_run_start(&request, format).await
            } else {
                start(&request, detach).await
            }
        }
        Command::Ps => ps().await,
        Command::Stop { name, all } => stop(name, all).await,
        Command::Logs {
            name,
            component,
            follow,
        } => logs(&name, component, follow).await,
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
            Ok(0)
        }
    }
}

async fn dry_run_start(request: &StartRequest, format: Format) -> Result<u8, LaunchError> {
    // Secrets are redacted in the output; their presence on the host is still checked.
    let resolved = request.manifest.resolve(|name| std::env::var(name).ok())?;
    // Nothing is built, pulled or looked up: local tags are content hashes, pinned ones are in
    // images.lock, and the double's image is BOTTLE_DOUBLE_IMAGE or named as a placeholder.
    let images = launch::image_names(None, request).await?;
    let plan = plan::plan(&launch::spec(request, resolved, images)?)?;
    match format {
        Format::Text => print!("{}", render::text(&plan)),
        Format::Json => print!("{}", render::json(&plan)),
    }
    Ok(0)
}

async fn start(request: &StartRequest, detach: bool) -> Result<u8, LaunchError> {
    let resolved = request.manifest.resolve(|name| std::env::var(name).ok())?;
    let docker = bottle::docker::connect().await?;
    if request.scanner == ScannerKind::Double {
        eprintln!("{}", render::DOUBLE_WARNING);
    }
    // Ctrl-C while images build stops bottle at once (nothing of the bottle exists yet); from
    // here on it removes what the start made.
    let images = launch::ensure_images(&docker, request).await?;
    let mut interrupts = Interrupts::listen();
    let plan = plan::plan(&launch::spec(request, resolved, images)?)?;
    let tty = !detach && attach::stdin_is_terminal();
    let options = StartOptions {
        agent_tty: tty,
        progress: true,
        ..StartOptions::default()
    };

    let running = tokio::select! {
        result = executor::start(&docker, &plan, &options) => result?,
        _ = interrupts.recv() => {
            // The start was cut short: remove whatever it made by then.
            executor::remove(&docker, &plan.name).await;
            return Err(LaunchError::Interrupted);
        }
    };
    let fingerprint = running
        .plan
        .egress
        .mitm
        .ca_fingerprint
        .clone()
        .unwrap_or_default();
    eprintln!("{}", executor::fingerprint_line(&fingerprint));
    if detach {
        eprintln!(
            "bottle {name} is running. `bottle logs {name}` shows the agent's output, \
             `bottle stop {name}` removes it.",
            name = plan.name
        );
        return Ok(0);
    }
    let agent = &plan.container(plan::Role::Agent).name;
    let outcome = tokio::select! {
        code = attach::attach(&docker, agent, tty) => Some(code),
        _ = interrupts.recv() => None,
    };
    let removed = executor::remove(&docker, &plan.name).await;
    eprintln!(
        "[bottle] removed bottle {} ({} containers, {} networks, {} volumes)",
        plan.name, removed.containers, removed.networks, removed.volumes
    );
    match outcome {
        Some(code) => Ok(u8::try_from(code?).unwrap_or(exit::INTERNAL)),
        None => Err(LaunchError::Interrupted),
    }
}

/// Ctrl-C, SIGTERM and SIGHUP, listened to from the start of `bottle start` to its end: a
/// signal between two steps is kept, not lost.
struct Interrupts(Vec<tokio::signal::unix::Signal>);

impl Interrupts {
    fn listen() -> Interrupts {
        use tokio::signal::unix::{SignalKind, signal};
        Interrupts(
            [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .filter_map(|kind| signal(kind).ok())
            .collect(),
        )
    }

    /// Resolves when one of the signals arrives (or has arrived since the last call).
    async fn recv(&mut self) {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let any = self.0.iter_mut().map(|s| Box::pin(s.recv()));
        futures_util::future::select_all(any).await;
    }
}

async fn ps() -> Result<u8, LaunchError> {
    let docker = bottle::docker::connect().await?;
    let bottles = executor::list(&docker).await?;
    println!(
        "{:<28} {:<9} {:<40} NETWORKS",
        "NAME", "SCANNER", "STATE (agent/mitm/scanner/relay)"
    );
    for bottle in bottles {
        let state = ["agent", "mitm", "scanner", "relay"]
            .map(|role| {
                bottle
                    .containers
                    .get(role)
                    .map(String::as_str)
                    .unwrap_or("-")
            })
            .join("/");
        println!(
            "{:<28} {:<9} {:<40} {}",
            bottle.name, bottle.scanner, state, bottle.networks
        );
    }
    Ok(0)
}

async fn stop(name: Option<String>, all: bool) -> Result<u8, LaunchError> {
    let docker = bottle::docker::connect().await?;
    let names: Vec<String> = if all {
        executor::list(&docker)
            .await?
            .into_iter()
            .map(|b| b.name)
            .collect()
    } else {
        let name = name.expect("clap requires a name without --all");
        if !executor::exists(&docker, &name).await? {
            return Err(LaunchError::NoSuchBottle(name));
        }
        vec![name]
    };
    for name in names {
        let removed = executor::remove(&docker, &name).await;
        eprintln!(
            "removed bottle {name} ({} containers, {} networks, {} volumes)",
            removed.containers, removed.networks, removed.volumes
        );
        if executor::exists(&docker, &name).await? {
            return Err(executor::StartError::Leftover(name).into());
        }
    }
    Ok(0)
}

async fn logs(name: &str, component: Component, follow: bool) -> Result<u8, LaunchError> {
    let docker = bottle::docker::connect().await?;
    let role = match component {
        Component::Agent => plan::Role::Agent,
        Component::Mitm => plan::Role::Mitm,
        Component::Scanner => plan::Role::Scanner,
        Component::Relay => plan::Role::Relay,
    };
    let Some(id) = executor::container_of(&docker, name, role).await? else {
        return Err(LaunchError::NoSuchBottle(name.to_string()));
    };
    executor::print_logs(&docker, &id, follow).await?;
    Ok(0)
}
