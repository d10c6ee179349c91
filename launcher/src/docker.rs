//! Connecting to the Docker engine, with an error that says what to do when it is not there.

use bollard::Docker;

/// Where bollard looks when `DOCKER_HOST` is unset.
const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the Docker engine at {endpoint}: {reason}\n\
     bottle runs everything in containers. Start the Docker daemon (for example \
     `sudo systemctl start docker`), or set DOCKER_HOST to the engine's socket."
)]
pub struct DockerUnreachable {
    pub endpoint: String,
    pub reason: String,
}

/// The endpoint bollard will use: `DOCKER_HOST`, or the default Unix socket.
pub fn endpoint() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string())
}

/// Connects and pings, so a missing daemon fails here, once, with a clear message.
pub async fn connect() -> Result<Docker, DockerUnreachable> {
    let unreachable = |reason: String| DockerUnreachable {
        endpoint: endpoint(),
        reason,
    };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
    docker
        .ping()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// True when Docker answered 404 (no such image, container or network).
pub fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_daemon_names_the_socket_and_what_to_do() {
        // SAFETY: this test is the only one in this process touching DOCKER_HOST (nextest runs
        // each test in its own process).
        unsafe { std::env::set_var("DOCKER_HOST", "unix:///nonexistent/docker.sock") };
        let err = connect().await.expect_err("no daemon listens there");
        let text = err.to_string();
        assert!(text.contains("unix:///nonexistent/docker.sock"), "{text}");
        assert!(text.contains("Start the Docker daemon"), "{text}");
    }
}
