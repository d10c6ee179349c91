//! The preflight before the first long compile: a suite that cannot run on this engine says so
//! in seconds, not after minutes of compiling. std only (and libc), so it runs first.
//!
//! It runs once, and again when DOCKER_HOST or BOTTLE_SKIP_PREFLIGHT change; the launcher's own
//! preflight checks again at every run. BOTTLE_SKIP_PREFLIGHT=1 compiles without an engine.

use std::io::{Read, Write};
use std::time::Duration;

// The launcher uses all of it; this script only what it checks.
#[allow(dead_code)]
#[path = "../launcher/src/preflight_limits.rs"]
mod limits;

/// Free space the first compile needs where the target folder is.
const MIN_FREE_TO_COMPILE: u64 = 3 << 30;

fn main() {
    println!("cargo:rerun-if-env-changed=DOCKER_HOST");
    println!("cargo:rerun-if-env-changed=BOTTLE_SKIP_PREFLIGHT");
    if std::env::var_os("BOTTLE_SKIP_PREFLIGHT").is_some_and(|v| v == "1") {
        return;
    }
    if let Err(problem) = preflight() {
        eprintln!(
            "bottle preflight: {problem} (BOTTLE_SKIP_PREFLIGHT=1 compiles without this check)"
        );
        std::process::exit(1);
    }
}

fn preflight() -> Result<(), String> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let engine = Engine { host: host.clone() };
    let version = engine.get("/version").map_err(|e| {
        format!(
            "the Docker engine at {host} does not answer ({e}): start it, or set DOCKER_HOST to it"
        )
    })?;
    let api = json_string(&version, "ApiVersion").unwrap_or_default();
    if !limits::api_enough(&api) {
        return Err(format!(
            "the Docker engine speaks API {api}; bottle needs {}.{} (Docker 20.10) or newer: upgrade the engine",
            limits::MIN_API.0,
            limits::MIN_API.1
        ));
    }
    let info = engine
        .get("/info")
        .map_err(|e| format!("the Docker engine at {host}: {e}"))?;
    let memory: i64 = json_number(&info, "MemTotal").unwrap_or(0);
    if memory > 0 && memory < limits::MIN_MEMORY_BYTES {
        return Err(format!(
            "the Docker engine has {} MiB of memory; a bottle needs {} MiB: give the engine (or its VM) more memory",
            memory >> 20,
            limits::MIN_MEMORY_BYTES >> 20
        ));
    }
    // The compile itself: a clean build of the workspace's tests is about 3 GiB.
    let out_dir = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    if let Some(free) = limits::free_bytes(&out_dir)
        && free < MIN_FREE_TO_COMPILE
    {
        return Err(format!(
            "the disk of {out_dir} has {} MiB free; compiling the suite needs {} MiB: free space there or set CARGO_TARGET_DIR to a disk with room",
            free >> 20,
            MIN_FREE_TO_COMPILE >> 20
        ));
    }
    // Images may be there already; the runtime preflight asks for more room only if not.
    if let Some(root) = json_string(&info, "DockerRootDir")
        && let Some(free) = limits::free_bytes(&root)
        && free < limits::MIN_FREE_TO_RUN
    {
        return Err(format!(
            "{root} (the Docker engine's storage) has {} MiB free; running a bottle needs {} MiB: free space there (`docker system prune` removes what no container uses)",
            free >> 20,
            limits::MIN_FREE_TO_RUN >> 20
        ));
    }
    Ok(())
}

/// The engine's API over its socket (unix://) or plain TCP (tcp://), one request a connection.
struct Engine {
    host: String,
}

impl Engine {
    fn get(&self, path: &str) -> Result<String, String> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n");
        let timeout = Some(Duration::from_secs(10));
        let mut response = Vec::new();
        if let Some(socket) = self.host.strip_prefix("unix://") {
            let mut stream =
                std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(timeout)
                .map_err(|e| e.to_string())?;
            stream
                .write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            stream
                .read_to_end(&mut response)
                .map_err(|e| e.to_string())?;
        } else if let Some(address) = self.host.strip_prefix("tcp://") {
            let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(timeout)
                .map_err(|e| e.to_string())?;
            stream
                .write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            stream
                .read_to_end(&mut response)
                .map_err(|e| e.to_string())?;
        } else {
            return Err(format!(
                "DOCKER_HOST {} is neither unix:// nor tcp://",
                self.host
            ));
        }
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").ok_or("an empty answer")?;
        let status = head.lines().next().unwrap_or("");
        if !status.contains(" 200 ") {
            return Err(format!("GET {path}: {status}"));
        }
        Ok(body.to_string())
    }
}

/// `"key":"value"` in a flat JSON answer (enough for /version and /info's top level).
fn json_string(json: &str, key: &str) -> Option<String> {
    let rest = json.split_once(&format!("\"{key}\":\""))?.1;
    Some(rest.split('"').next()?.to_string())
}

fn json_number(json: &str, key: &str) -> Option<i64> {
    let rest = json.split_once(&format!("\"{key}\":"))?.1;
    rest.split([',', '}']).next()?.trim().parse().ok()
}
