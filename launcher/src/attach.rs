//! An attached `bottle start`: the agent's terminal is yours. With a terminal on stdin, the
//! agent gets a TTY of the same size and your keystrokes (Ctrl-C included, as with `docker run
//! -it`); without one, its output is streamed. Returns the agent's exit code.

use bollard::Docker;
use bollard::query_parameters::{AttachContainerOptionsBuilder, ResizeContainerTTYOptionsBuilder};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::executor::{StartError, engine};

/// Whether stdin is a terminal (then the agent gets a TTY).
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only reads the descriptor's state.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Puts the terminal in raw mode until dropped, so keys reach the agent unchanged.
struct RawMode(libc::termios);

impl RawMode {
    fn enable() -> Option<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it, cfmakeraw edits a copy.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0)
            .then_some((size.ws_row, size.ws_col))
    }
}

async fn resize(docker: &Docker, container: &str) {
    if let Some((rows, cols)) = terminal_size() {
        let options = ResizeContainerTTYOptionsBuilder::new()
            .h(rows.into())
            .w(cols.into())
            .build();
        let _ = docker.resize_container_tty(container, options).await;
    }
}

/// Attaches to the running agent until it exits; `tty` as the container was created.
pub async fn attach(docker: &Docker, container: &str, tty: bool) -> Result<i64, StartError> {
    let options = AttachContainerOptionsBuilder::new()
        .stdin(tty)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .logs(true)
        .build();
    let attached = docker
        .attach_container(container, Some(options))
        .await
        .map_err(engine("attaching to the agent"))?;
    let mut output = attached.output;
    let mut input = attached.input;
    let _raw = if tty { RawMode::enable() } else { None };
    if tty {
        resize(docker, container).await;
        let docker = docker.clone();
        let name = container.to_string();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                resize(&docker, &name).await;
            }
        });
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
        });
    }
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(chunk) = output.next().await {
        match chunk {
            Ok(bollard::container::LogOutput::StdErr { message }) => {
                let _ = stderr.write_all(&message).await;
                let _ = stderr.flush().await;
            }
            Ok(other) => {
                let _ = stdout.write_all(&other.into_bytes()).await;
                let _ = stdout.flush().await;
            }
            Err(_) => break,
        }
    }
    exit_code(docker, container).await
}

/// The agent's exit code once it has stopped.
async fn exit_code(docker: &Docker, container: &str) -> Result<i64, StartError> {
    let mut wait = docker.wait_container(container, None);
    match wait.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(engine("waiting for the agent")(e)),
        None => Ok(-1),
    }
}
