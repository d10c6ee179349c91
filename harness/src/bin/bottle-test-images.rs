//! Ensures every image the suite needs, with progress: run once by nextest's setup script
//! before the container tests, so the first build is visible and not raced by parallel tests.
//! It also starts this run's report: it clears the last one and records the scenario cases that
//! will not run (UNIMPLEMENTED, NOT-APPLICABLE) with their reasons, so none is skipped silently.
//!
//! `bottle-test-images --pool` is the second setup script, for the scenario cases: it starts the
//! run's pool of bottles (`bottle_harness::pool`) in a detached keeper,
//! `bottle-test-images --keep-pool NEXTEST_PID SIZE`, and hands it to the tests.

use std::io::Write;

use anyhow::{Context, Result};
use bottle_harness::{fixture_bins, pool};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // An error here is the user's to act on (no engine, no disk, a failed build): one message
    // that says what to do, never a backtrace (nextest sets RUST_BACKTRACE for its scripts).
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bottle-test-images: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--keep-pool", watched, size] => {
            let images = bottle_harness::images::ensure(&docker).await?;
            return pool::keep(&docker, &images, size.parse()?, watched.parse()?).await;
        }
        ["--pool"] => return pool_script(),
        _ => {}
    }
    // Before the fixture build and the images: an engine or a disk that cannot serve fails now.
    bottle::preflight::check(&docker, false).await?;
    let started = std::time::Instant::now();
    // The fixture binaries compile while the images that do not carry them build.
    let fixture_build = tokio::task::spawn_blocking(|| {
        let step = bottle::progress::Step::start("building the fixture binaries (cargo)");
        let binaries = fixture_bins::build()?;
        step.done();
        Ok::<_, anyhow::Error>(binaries)
    });
    let (binaries, others) = tokio::join!(
        fixture_build,
        bottle_harness::images::build_all_but_fixtures(&docker)
    );
    let binaries = binaries.context("the fixture build task")??;
    others?;
    // Hand the binaries to the tests, so that they do not run cargo again.
    if let Some(path) = std::env::var_os("NEXTEST_ENV") {
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        let joined = std::env::join_paths(&binaries).context("joining binary paths")?;
        writeln!(file, "{}={}", fixture_bins::ENV, joined.to_string_lossy())?;
    }
    // SAFETY: single-threaded at this point; the variable is read by the ensure below.
    unsafe { std::env::set_var(fixture_bins::ENV, std::env::join_paths(&binaries)?) };
    let images = bottle_harness::images::build_missing(&docker).await?;
    if let Some(path) = std::env::var_os("NEXTEST_ENV") {
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        writeln!(file, "{}={}", bottle_harness::images::ENV, images.to_env())?;
    }
    for (name, tag) in images.all() {
        eprintln!("[bottle] image {name:<15} {tag}");
    }
    let graded = &images.graded;
    eprintln!(
        "[bottle] graded scanner: {}\n[bottle]   chosen: {}\n[bottle] graded mitmproxy: {} ({})",
        graded.scanner_label(),
        graded.chosen,
        graded.mitm_version_line(),
        graded.mitm_image
    );
    if graded.scanner_is_double() {
        eprintln!("[bottle] {}", bottle_harness::report::DOUBLE_WARNING_TEXT);
    }
    eprintln!(
        "[bottle] all images present ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    let run = bottle_harness::subject::RunInfo::collect(&docker, &images).await?;
    start_report(&images, &run)
}

/// The `pool` setup script (after this one, for the scenario cases only): starts the run's pool
/// and hands its directory to the tests.
fn pool_script() -> Result<()> {
    let Some(path) = std::env::var_os("NEXTEST_ENV") else {
        anyhow::bail!("--pool is nextest's setup script: NEXTEST_ENV is not set");
    };
    if std::env::var_os(pool::DISABLE_ENV).is_some() {
        eprintln!(
            "[bottle] {} is set: a fresh bottle per case",
            pool::DISABLE_ENV
        );
        return Ok(());
    }
    let step = bottle::progress::Step::start("starting the pool of bottles");
    let dir = start_pool()?;
    step.done();
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(file, "{}={}", pool::ENV, dir.display())?;
    Ok(())
}

/// Starts the keeper, detached (its own session, no terminal, no nextest pipe), watching this
/// script's parent, nextest; returns the pool's directory once its bottles are up.
fn start_pool() -> Result<std::path::PathBuf> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let size = pool::size_from_nextest_config();
    // The keeper's own output, for when it fails; overwritten by the next run.
    let log = fixture_bins::workspace_root().join("target/bottle-pool-keeper.log");
    // The path, not /proc/self/exe: the cargo build above may have replaced this binary.
    let exe = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute() && p.exists())
        .map_or_else(std::env::current_exe, Ok)?;
    let mut keeper = Command::new(exe);
    keeper
        .args([
            "--keep-pool",
            &std::os::unix::process::parent_id().to_string(),
            &size.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        keeper.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = keeper.spawn().context("starting the pool keeper")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("reading the pool keeper")?;
    match line.trim().strip_prefix("ready ") {
        Some(dir) => Ok(dir.into()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "the pool keeper did not come up: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        }
    }
}

/// Resets the report with what this run grades, and records the cases that will not run.
fn start_report(
    images: &bottle_harness::images::TestImages,
    run: &bottle_harness::subject::RunInfo,
) -> Result<()> {
    use bottle_harness::report::{self, CaseResult};
    use bottle_harness::scenario;
    report::reset()?;
    report::Report::from_env().write_run(run)?;
    let scenarios = scenario::load_all()?;
    let mut settled = 0;
    for case in scenario::expand(&scenarios) {
        if let Some((outcome, reason)) = case.settled(images.graded.scanner_is_double()) {
            let mut result = CaseResult::new(&case, outcome, Some(reason));
            result.images = [
                ("agent", &images.agent),
                ("mitm", &images.graded.mitm_image),
                ("scanner", &images.graded.scanner_image),
            ]
            .into_iter()
            .map(|(role, tag)| (role.to_string(), tag.to_string()))
            .collect();
            result.scanner = images.graded.scanner_label();
            report::record(&result)?;
            settled += 1;
        }
    }
    eprintln!(
        "[bottle] report: {} ({settled} cases that will not run are recorded with their reason)",
        report::Report::default_dir().display()
    );
    Ok(())
}
