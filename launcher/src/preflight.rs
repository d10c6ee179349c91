//! Whether this engine and machine can run bottles, found out in the first seconds, before any
//! image is built: each failure is one line that says what to do.

use bollard::Docker;
use bollard::models::NetworkCreateRequest;

// `.cargo/preflight` checks the same limits before the first compile, in shell: keep the two
// in step.

/// Docker 20.10's API: `inhibit_ipv4`, volume driver options and the calls bottle makes.
pub const MIN_API: (u32, u32) = (1, 41);
/// What the engine needs for a bottle (mitmproxy, the scanner, the agent) with room to work.
pub const MIN_MEMORY_BYTES: i64 = 2 << 30;
/// Free space under the engine's root: the images are about 2 GB, and their builds need as
/// much again while they run.
pub const MIN_FREE_TO_BUILD: u64 = 5 << 30;
/// Free space when the images are there: containers, volumes and logs.
pub const MIN_FREE_TO_RUN: u64 = 1 << 30;

/// Whether an engine's API version (`1.41`) is at least [`MIN_API`].
pub fn api_enough(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= MIN_API
}

/// Free bytes of the filesystem holding `path`, when it is on this machine (a remote engine's
/// storage cannot be seen from here: None).
pub fn free_bytes(path: &str) -> Option<u64> {
    let c_path = std::ffi::CString::new(path).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and a pointer to writable memory of the right size.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if status != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "the Docker engine speaks API {found}; bottle needs {}.{} (Docker 20.10) or newer: \
         upgrade the engine",
        MIN_API.0,
        MIN_API.1
    )]
    OldEngine { found: String },
    #[error(
        "the Docker engine has {} MiB of memory; a bottle needs {} MiB: give the engine (or \
         its VM) more memory",
        have >> 20,
        MIN_MEMORY_BYTES >> 20
    )]
    Memory { have: i64 },
    #[error(
        "{path} (the Docker engine's storage) has {} MiB free; {what} needs {} MiB: free \
         space there (`docker system prune` removes what no container uses)",
        free >> 20,
        need >> 20
    )]
    Disk {
        path: String,
        free: u64,
        need: u64,
        what: &'static str,
    },
    #[error(
        "the Docker engine cannot make a network ({reason}): remove unused networks \
         (`docker network prune`) or give the engine more address pools \
         (`default-address-pools` in daemon.json)"
    )]
    Network { reason: String },
    #[error("the Docker engine failed while {context}: {source}")]
    Engine {
        context: &'static str,
        source: bollard::errors::Error,
    },
}

/// What is missing on disk, if anything: `build` when images are still to be built.
pub fn disk_problem(path: &str, free: u64, build: bool) -> Option<PreflightError> {
    let (need, what) = if build {
        (MIN_FREE_TO_BUILD, "building bottle's images")
    } else {
        (MIN_FREE_TO_RUN, "running a bottle")
    };
    (free < need).then(|| PreflightError::Disk {
        path: path.to_string(),
        free,
        need,
        what,
    })
}

/// The engine's API, memory and storage, and that it can make a network. `build`: images are
/// still to be built (more disk).
pub async fn check(docker: &Docker, build: bool) -> Result<(), PreflightError> {
    let engine = |context| move |source| PreflightError::Engine { context, source };
    let version = docker
        .version()
        .await
        .map_err(engine("asking its version"))?;
    let api = version.api_version.unwrap_or_default();
    if !api_enough(&api) {
        return Err(PreflightError::OldEngine { found: api });
    }
    let info = docker.info().await.map_err(engine("asking about it"))?;
    let memory = info.mem_total.unwrap_or(0);
    if memory > 0 && memory < MIN_MEMORY_BYTES {
        return Err(PreflightError::Memory { have: memory });
    }
    if let Some(root) = info.docker_root_dir
        && let Some(free) = free_bytes(&root)
        && let Some(problem) = disk_problem(&root, free, build)
    {
        return Err(problem);
    }
    network_can_be_made(docker).await
}

/// Makes and removes one internal network: a bottle makes two, and an engine out of address
/// pools fails there.
async fn network_can_be_made(docker: &Docker) -> Result<(), PreflightError> {
    let name = format!("bottle-preflight-{}", std::process::id());
    docker
        .create_network(NetworkCreateRequest {
            name: name.clone(),
            internal: Some(true),
            ..Default::default()
        })
        .await
        .map_err(|e| PreflightError::Network {
            reason: e.to_string(),
        })?;
    docker
        .remove_network(&name)
        .await
        .map_err(|source| PreflightError::Engine {
            context: "removing its preflight network",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_20_10_and_newer_are_enough() {
        assert!(api_enough("1.41"));
        assert!(api_enough("1.47"));
        assert!(api_enough("2.0"));
        assert!(!api_enough("1.40"));
        assert!(!api_enough("1.9"));
        assert!(!api_enough(""));
    }

    #[test]
    fn a_build_needs_more_room_than_a_run_and_the_message_says_what_to_do() {
        let gib = 1 << 30;
        assert!(disk_problem("/var/lib/docker", 2 * gib, false).is_none());
        let problem = disk_problem("/var/lib/docker", 2 * gib, true).unwrap();
        let text = problem.to_string();
        assert!(
            text.contains("/var/lib/docker") && text.contains("2048 MiB free"),
            "{text}"
        );
        assert!(text.contains("docker system prune"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(disk_problem("/x", gib / 2, false).is_some());
    }

    const CARGO_WRAPPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cargo/preflight");

    #[test]
    fn before_the_first_compile_an_engine_that_does_not_answer_is_one_line() {
        let target = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(CARGO_WRAPPER)
            .arg("true")
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .env("CARGO_TARGET_DIR", target.path())
            .env_remove("BOTTLE_SKIP_PREFLIGHT")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "the wrapper let rustc run: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("does not answer") && err.contains("DOCKER_HOST"),
            "{err}"
        );
    }

    #[test]
    fn the_cargo_wrapper_hands_rustc_every_variable_even_with_a_dash_in_its_name() {
        // cargo gives integration tests CARGO_BIN_EXE_<bin-name>; a POSIX sh would drop it.
        let output = std::process::Command::new(CARGO_WRAPPER)
            .arg("env")
            .env("BOTTLE_SKIP_PREFLIGHT", "1")
            .env("CARGO_BIN_EXE_bottle-test-hold", "/x")
            .output()
            .unwrap();
        assert!(output.status.success());
        let env = String::from_utf8_lossy(&output.stdout);
        assert!(env.contains("CARGO_BIN_EXE_bottle-test-hold=/x"), "{env}");
    }

    #[test]
    fn the_free_space_of_a_local_path_is_read_and_a_missing_one_is_none() {
        assert!(free_bytes("/").is_some_and(|free| free > 0));
        assert!(free_bytes("/no/such/path/here").is_none());
    }
}
