//! Running commands inside containers (as any user: CA provisioning needs root in the agent).

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use futures_util::StreamExt;

#[derive(Debug)]
pub struct Output {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` in the container and waits for it; `user` None means the image's user.
pub async fn exec(
    docker: &Docker,
    container: &str,
    user: Option<&str>,
    cmd: &[&str],
) -> Result<Output> {
    let created = docker
        .create_exec(
            container,
            ExecConfig {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                user: user.map(str::to_string),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating exec {cmd:?} in {container}"))?;
    let mut out = Output {
        code: -1,
        stdout: String::new(),
        stderr: String::new(),
    };
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, None::<StartExecOptions>)
        .await?
    {
        while let Some(chunk) = output.next().await {
            match chunk? {
                bollard::container::LogOutput::StdErr { message } => {
                    out.stderr.push_str(&String::from_utf8_lossy(&message))
                }
                other => out
                    .stdout
                    .push_str(&String::from_utf8_lossy(&other.into_bytes())),
            }
        }
    }
    out.code = docker
        .inspect_exec(&created.id)
        .await?
        .exit_code
        .context("exec finished without an exit code")?;
    Ok(out)
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
