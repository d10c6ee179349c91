//! Bottles shared by the scenario cases of one nextest run.
//!
//! nextest runs every case in its own process, and a bottle takes seconds to bring up, so the
//! setup script (`bottle-test-images`) starts a few bottles once, in a detached process of their
//! own, the *keeper* (`bottle-test-images --keep-pool`). The keeper's pid is on everything
//! it made (`run::OWNER_LABEL`), so `cleanup::sweep` leaves the pool alone while the keeper runs;
//! the keeper removes it all when the nextest process exits (Ctrl-C included) or on
//! SIGINT/SIGTERM/SIGHUP.
//!
//! The tests find the pool through [`ENV`]: a directory holding one lock file per bottle, named
//! after it. A case leases a bottle by locking its file (`flock`, released by the kernel when
//! the process ends however it ends), resets it (`Chain::reset`) and lets it go when done.
//! Without [`ENV`] (the test binary run directly, `cargo test`) every case brings up its own.
//!
//! Bottles with the default options are up before the first case. Once they are, the keeper
//! also brings up one bottle for each other set of options the scenarios ask for (the Claude
//! Code image, an agent environment, credential bindings), in a subdirectory named after the
//! options' key (`ChainOptions::pool_key`); a case that comes before its bottle is up brings up
//! its own, as without a pool.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bollard::Docker;

use crate::chain::{Chain, ChainOptions};
use crate::images::TestImages;
use crate::{cleanup, fixture_bins, runner, scenario};

/// Set by the setup script for the tests: the pool's directory.
pub const ENV: &str = "BOTTLE_POOL";
/// Set to anything to run without a pool (a fresh bottle per case).
pub const DISABLE_ENV: &str = "BOTTLE_NO_POOL";

const LOCK_SUFFIX: &str = ".lock";
/// The key of the default options: their bottles' lock files are in the pool's directory itself.
pub const DEFAULT_KEY: &str = "default";

/// The pool this process was handed, if any.
pub struct Pool {
    dir: PathBuf,
}

/// One bottle of the pool, held exclusively until dropped.
pub struct Lease {
    pub name: String,
    _lock: File,
}

impl Pool {
    pub fn from_env() -> Option<Pool> {
        let dir = PathBuf::from(std::env::var_os(ENV)?);
        dir.is_dir().then_some(Pool { dir })
    }

    fn dir_of(&self, key: &str) -> PathBuf {
        match key {
            DEFAULT_KEY => self.dir.clone(),
            key => self.dir.join(key),
        }
    }

    /// The names of the pool's default bottles, leased or not.
    pub fn names(&self) -> Result<Vec<String>> {
        names_in(&self.dir)
    }

    /// Blocks until one of the pool's bottles with options `key` is free, and takes it; None
    /// when the pool has none (yet).
    pub async fn lease_for(&self, key: &str) -> Result<Option<Lease>> {
        let dir = self.dir_of(key);
        if key != DEFAULT_KEY && names_in(&dir).map_or(true, |n| n.is_empty()) {
            return Ok(None);
        }
        lease_in(&dir).await.map(Some)
    }
}

fn names_in(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading the pool {}", dir.display()))?
    {
        let file_name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(name) = file_name.strip_suffix(LOCK_SUFFIX) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Blocks until one of the bottles in `dir` is free, and takes it.
async fn lease_in(dir: &Path) -> Result<Lease> {
    let mut names = names_in(dir)?;
    if names.is_empty() {
        bail!("the pool {} has no bottles", dir.display());
    }
    // Start at a different bottle in each process, so free ones are found at once.
    let start = std::process::id() as usize % names.len();
    names.rotate_left(start);
    loop {
        for name in &names {
            let file = File::open(dir.join(format!("{name}{LOCK_SUFFIX}")))
                .with_context(|| format!("the pool lost bottle {name}"))?;
            // SAFETY: flock on a descriptor this function owns.
            let locked =
                unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if locked {
                return Ok(Lease {
                    name: name.clone(),
                    _lock: file,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pool's size: the `containers` test group's max-threads in .config/nextest.toml (one
/// bottle per case that can run at once), 2 if it cannot be read.
pub fn size_from_nextest_config() -> usize {
    let path = fixture_bins::workspace_root().join(".config/nextest.toml");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|config| {
            config
                .get("test-groups")?
                .get("containers")?
                .get("max-threads")?
                .as_integer()
        })
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

/// The keeper: brings `size` bottles up, says `ready` on stdout, keeps them until `watched`
/// (the nextest process) exits or a signal arrives, then removes everything it made.
pub async fn keep(docker: &Docker, images: &TestImages, size: usize, watched: u32) -> Result<()> {
    let me = std::process::id();
    // What an earlier keeper or test killed with SIGKILL left behind.
    let _ = cleanup::sweep(docker, None).await;
    let dir = std::env::temp_dir().join(format!("bottle-pool-{me}"));
    let outcome = async {
        tokio::select! {
            up = bring_up(docker, images, size, &dir) => up.map(Some),
            _ = stop(watched) => Ok(None),
        }
    }
    .await;
    let kept = match outcome {
        Ok(Some(chains)) => {
            let mut stdout = std::io::stdout();
            writeln!(stdout, "ready {}", dir.display())?;
            stdout.flush()?;
            // The setup script reads one line and goes: nothing else is written to stdout.
            eprintln!("[bottle] pool of {size} ready in {}", dir.display());
            let chains = std::sync::Mutex::new(chains);
            tokio::select! {
                _ = bring_up_other_options(docker, images, &dir, &chains) => stop(watched).await,
                _ = stop(watched) => {}
            }
            chains.into_inner().unwrap_or_else(|e| e.into_inner())
        }
        Ok(None) => Vec::new(),
        Err(e) => {
            eprintln!("[bottle] pool failed: {e:#}");
            Vec::new()
        }
    };
    eprintln!("[bottle] pool: removing its bottles");
    for chain in kept {
        let _ = chain.down().await;
    }
    let left = cleanup::sweep(docker, Some(me)).await;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("[bottle] pool removed ({left:?} left over swept)");
    Ok(())
}

async fn bring_up(
    docker: &Docker,
    images: &TestImages,
    size: usize,
    dir: &Path,
) -> Result<Vec<Chain>> {
    let chains = futures_util::future::try_join_all(
        (0..size).map(|_| Chain::up(docker, images, ChainOptions::default())),
    )
    .await?;
    std::fs::create_dir_all(dir)?;
    for chain in &chains {
        File::create(dir.join(format!("{}{LOCK_SUFFIX}", chain.plan.name)))?;
    }
    Ok(chains)
}

/// Bottles for a set of options other than the default: one more for each this many cases.
const CASES_PER_BOTTLE: usize = 40;
/// At most this many (as many as the containers group runs at once).
const MAX_PER_OPTIONS: usize = 3;

/// One bottle for each set of options other than the default that a scenario asks for (more for
/// a set many cases share), one after the other (the cases are running by now), each offered
/// once it is up.
async fn bring_up_other_options(
    docker: &Docker,
    images: &TestImages,
    dir: &Path,
    chains: &std::sync::Mutex<Vec<Chain>>,
) {
    let scenarios = match scenario::load_all() {
        Ok(scenarios) => scenarios,
        Err(e) => {
            eprintln!("[bottle] pool: no bottles for other options: {e}");
            return;
        }
    };
    // Options, and how many cases ask for them.
    let mut wanted: BTreeMap<String, (ChainOptions, usize)> = BTreeMap::new();
    for case in scenario::expand(&scenarios) {
        if case.settled(false).is_some() {
            continue;
        }
        let options = runner::options_for(&case);
        if let Some(key) = options.pool_key().filter(|k| k != DEFAULT_KEY) {
            wanted.entry(key).or_insert((options, 0)).1 += 1;
        }
    }
    // The first bottle of every set of options, then more for the sets many cases share
    // (PARITY's), so that they do not all wait for one.
    let mut queue: Vec<(String, ChainOptions)> = Vec::new();
    for extra in 0..MAX_PER_OPTIONS {
        for (key, (options, cases)) in &wanted {
            if extra == 0 || *cases > extra * CASES_PER_BOTTLE {
                queue.push((key.clone(), options.clone()));
            }
        }
    }
    for (key, options) in queue {
        let chain = match Chain::up(docker, images, options).await {
            Ok(chain) => chain,
            Err(e) => {
                eprintln!("[bottle] pool: a bottle for options {key} failed: {e:#}");
                continue;
            }
        };
        let offered = std::fs::create_dir_all(dir.join(&key)).and_then(|()| {
            File::create(
                dir.join(&key)
                    .join(format!("{}{LOCK_SUFFIX}", chain.plan.name)),
            )
        });
        if let Err(e) = offered {
            eprintln!("[bottle] pool: offering the bottle for options {key}: {e}");
        }
        chains.lock().unwrap_or_else(|e| e.into_inner()).push(chain);
    }
}

/// Returns when `watched` has exited or this process is asked to stop.
async fn stop(watched: u32) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    let gone = async {
        let proc = PathBuf::from(format!("/proc/{watched}"));
        while proc.exists() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = gone => {}
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
        _ = hangup.recv() => {}
    }
}
