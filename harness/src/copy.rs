//! Copying a host directory into a container before it starts, leaving caches out.
//!
//! The files are staged in a temporary directory and handed to testcontainers as a directory:
//! testcontainers archives a single file or a byte buffer with mtime 0 (the epoch), and mitmproxy
//! never loads a script whose mtime is the epoch (its reload watcher starts from
//! `last_mtime = 0.0` and loads only when `mtime > last_mtime`) — mitmdump then runs without the
//! addon, silently. A directory is archived with its real metadata.

use std::path::Path;

use anyhow::{Context, Result};
use testcontainers::{ContainerRequest, Image, ImageExt};

pub use bottle::archive::CACHE_NAMES;

/// Copies `src` into `dst` (which exists), skipping entries named in `skip` and `*.pyc` files,
/// following symlinks. Directories are 0755 and files at least 0444, so any user can read them.
pub fn copy_tree(src: &Path, dst: &Path, skip: &[&str]) -> Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut copied = 0;
    for entry in
        std::fs::read_dir(src).with_context(|| format!("reading directory {}", src.display()))?
    {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default();
        let name_str = name.to_string_lossy();
        if skip.contains(&name_str.as_ref()) || name_str.ends_with(".pyc") {
            continue;
        }
        let meta =
            std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let target = dst.join(name);
        if meta.is_dir() {
            std::fs::create_dir(&target)
                .with_context(|| format!("creating {}", target.display()))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
            copied += copy_tree(&path, &target, skip)?;
        } else if meta.is_file() {
            std::fs::copy(&path, &target)
                .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
            let mode = (meta.permissions().mode() & 0o777) | 0o444;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Adds the files of `dir` (minus [`CACHE_NAMES`]) to `request`, under `target`, owned by root
/// and readable by every user. Keep the returned directory until the container has started:
/// testcontainers reads it then.
pub fn with_dir<I: Image>(
    request: impl Into<ContainerRequest<I>>,
    dir: &Path,
    target: &str,
) -> Result<(ContainerRequest<I>, tempfile::TempDir)> {
    use std::os::unix::fs::PermissionsExt;
    let staged = tempfile::Builder::new()
        .prefix(&crate::cleanup::temp_prefix("copy"))
        .tempdir()?;
    // The staged directory itself becomes `target`: not the 0700 of a fresh temporary directory.
    std::fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(0o755))?;
    let copied = copy_tree(dir, staged.path(), &CACHE_NAMES)?;
    anyhow::ensure!(copied > 0, "{} holds no files to copy", dir.display());
    let request = request.into().with_copy_to(target, staged.path());
    Ok((request, staged))
}
