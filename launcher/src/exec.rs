//! Running a command inside a container and collecting its output and exit code (CA
//! provisioning runs as root in the agent).

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
pub async fn exec<S: AsRef<str>>(
    docker: &Docker,
    container: &str,
    user: Option<&str>,
    cmd: &[S],
) -> Result<Output, bollard::errors::Error> {
    exec_with_input(docker, container, user, cmd, &[]).await
}

/// Like [`exec`], with `input` written to the command's stdin (then closed): for data too large
/// for a command line (one argument holds at most 128 KiB).
pub async fn exec_with_input<S: AsRef<str>>(
    docker: &Docker,
    container: &str,
    user: Option<&str>,
    cmd: &[S],
    input: &[u8],
) -> Result<Output, bollard::errors::Error> {
    use tokio::io::AsyncWriteExt;
    let created = docker
        .create_exec(
            container,
            ExecConfig {
                cmd: Some(cmd.iter().map(|s| s.as_ref().to_string()).collect()),
                user: user.map(str::to_string),
                attach_stdin: Some(!input.is_empty()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut out = Output {
        code: -1,
        stdout: String::new(),
        stderr: String::new(),
    };
    if let StartExecResults::Attached {
        mut output,
        input: mut stdin,
    } = docker
        .start_exec(&created.id, None::<StartExecOptions>)
        .await?
    {
        // Written while the output is read, so neither side waits on a full pipe. A command
        // that exits before reading it all leaves the rest unwritten: its output says why.
        let feed = async {
            if !input.is_empty() {
                let _ = stdin.write_all(input).await;
                let _ = stdin.shutdown().await;
            }
        };
        let read = async {
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
            Ok::<_, bollard::errors::Error>(())
        };
        let ((), read) = tokio::join!(feed, read);
        read?;
    }
    out.code = docker
        .inspect_exec(&created.id)
        .await?
        .exit_code
        .unwrap_or(-1);
    Ok(out)
}
