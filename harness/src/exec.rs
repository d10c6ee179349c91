//! Running commands inside containers (as any user), with errors that say which command.

use anyhow::{Context, Result, bail};
use bollard::Docker;

pub use bottle::exec::Output;

/// Runs `cmd` in the container and waits for it; `user` None means the image's user.
pub async fn exec(
    docker: &Docker,
    container: &str,
    user: Option<&str>,
    cmd: &[&str],
) -> Result<Output> {
    bottle::exec::exec(docker, container, user, cmd)
        .await
        .with_context(|| format!("running {cmd:?} in {container}"))
}

/// Like [`exec`], with `input` on the command's stdin.
pub async fn exec_with_input(
    docker: &Docker,
    container: &str,
    user: Option<&str>,
    cmd: &[&str],
    input: &[u8],
) -> Result<Output> {
    bottle::exec::exec_with_input(docker, container, user, cmd, input)
        .await
        .with_context(|| format!("running {cmd:?} in {container}"))
}

/// Like [`exec`], but a non-zero exit is an error carrying the command's output.
pub async fn exec_ok(
    docker: &Docker,
    container: &str,
    user: Option<&str>,
    cmd: &[&str],
) -> Result<String> {
    let out = exec(docker, container, user, cmd).await?;
    if out.code != 0 {
        bail!(
            "{cmd:?} in {container} exited {}:\n{}{}",
            out.code,
            out.stdout,
            out.stderr
        );
    }
    Ok(out.stdout)
}
