//! Tar archives of a plan's files, for Docker's archive upload. Every entry carries the current
//! time (or, for a host directory, the file's own mtime): mitmproxy never loads a script whose
//! mtime is the epoch, which is what a naive in-memory archive gives.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::plan::{FileContents, FilePlan};

/// Names never copied from a host directory: caches a host run of pytest, ruff or Python leaves.
pub const CACHE_NAMES: [&str; 3] = ["__pycache__", ".pytest_cache", ".ruff_cache"];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1)
}

/// One archive holding every file of `files`, paths relative to `/`, owned by root.
pub fn of_files(files: &[FilePlan]) -> std::io::Result<Vec<u8>> {
    let mut archive = Archive::new();
    for file in files {
        let path = file.path.trim_start_matches('/');
        match &file.contents {
            FileContents::Text(text) => {
                archive.parents(path)?;
                archive.file(path, text.as_bytes(), file.mode, now())?;
            }
            FileContents::BuiltinAddon => {
                archive.parents(path)?;
                archive.dir(path, file.mode)?;
                for (name, text) in crate::addon::FILES {
                    let target = format!("{path}/{name}");
                    archive.parents(&target)?;
                    archive.file(&target, text.as_bytes(), 0o644, now())?;
                }
            }
            FileContents::Dir(dir) => {
                archive.parents(path)?;
                archive.dir(path, file.mode)?;
                let copied = archive.tree(dir, path)?;
                if copied == 0 {
                    return Err(std::io::Error::other(format!(
                        "{} holds no files to copy",
                        dir.display()
                    )));
                }
            }
        }
    }
    archive.finish()
}

struct Archive {
    builder: tar::Builder<Vec<u8>>,
    dirs: std::collections::BTreeSet<String>,
}

impl Archive {
    fn new() -> Self {
        Archive {
            builder: tar::Builder::new(Vec::new()),
            dirs: Default::default(),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(size);
        header
    }

    /// The directories above `path`, world-readable, so that a non-root user can reach it.
    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        let parts: Vec<&str> = path.split('/').collect();
        for end in 1..parts.len() {
            self.dir(&parts[..end].join("/"), 0o755)?;
        }
        Ok(())
    }

    fn dir(&mut self, path: &str, mode: u32) -> std::io::Result<()> {
        if self.dirs.insert(path.to_string()) {
            let mut header = Self::header(tar::EntryType::Directory, mode, now(), 0);
            self.builder
                .append_data(&mut header, format!("{path}/"), std::io::empty())?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32, mtime: u64) -> std::io::Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, mode, mtime, data.len() as u64);
        self.builder.append_data(&mut header, path, data)
    }

    /// The files of `src` under `target`, minus caches, following symlinks; files keep their
    /// mtime and are made readable by all.
    fn tree(&mut self, src: &Path, target: &str) -> std::io::Result<usize> {
        use std::os::unix::fs::PermissionsExt;
        let mut copied = 0;
        let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if CACHE_NAMES.contains(&name.as_str()) || name.ends_with(".pyc") {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path)?;
            let inner = format!("{target}/{name}");
            if meta.is_dir() {
                self.dir(&inner, 0o755)?;
                copied += self.tree(&path, &inner)?;
            } else if meta.is_file() {
                let mtime = meta
                    .modified()?
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    .max(1);
                let mode = (meta.permissions().mode() & 0o777) | 0o444;
                self.file(&inner, &std::fs::read(&path)?, mode, mtime)?;
                copied += 1;
            }
        }
        Ok(copied)
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        self.builder.into_inner()
    }
}

/// The one regular file of a tar archive (what Docker gives for a single file's path).
pub fn single_file(archive: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            return Ok(data);
        }
    }
    Err(std::io::Error::other("the archive holds no file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, u32, u64)> {
        tar::Archive::new(archive)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn files_have_real_times_parents_and_modes() {
        let archive = of_files(&[
            FilePlan {
                path: "/etc/pipelock/pipelock.yaml".into(),
                contents: FileContents::Text("version: 1\n".into()),
                mode: 0o644,
            },
            FilePlan {
                path: "/opt/bottle/addon".into(),
                contents: FileContents::BuiltinAddon,
                mode: 0o755,
            },
        ])
        .unwrap();
        let entries = entries(&archive);
        assert!(
            entries.iter().all(|(_, _, mtime)| *mtime > 0),
            "{entries:?}"
        );
        assert!(entries.contains(&("etc/".into(), 0o755, entries[0].2)));
        let config = entries
            .iter()
            .find(|e| e.0 == "etc/pipelock/pipelock.yaml")
            .unwrap();
        assert_eq!(config.1, 0o644);
        for (name, _) in crate::addon::FILES {
            let path = format!("opt/bottle/addon/{name}");
            assert!(entries.iter().any(|e| e.0 == path), "{path} missing");
        }
    }

    #[test]
    fn a_host_directory_keeps_mtimes_and_leaves_caches_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("addon.py"), "x = 1\n").unwrap();
        std::fs::create_dir(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/addon.pyc"), "").unwrap();
        let archive = of_files(&[FilePlan {
            path: "/opt/a".into(),
            contents: FileContents::Dir(dir.path().into()),
            mode: 0o755,
        }])
        .unwrap();
        let names: Vec<String> = entries(&archive).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["opt/", "opt/a/", "opt/a/addon.py"]);
        assert_eq!(single_file(&archive).unwrap(), b"x = 1\n");

        let empty = tempfile::tempdir().unwrap();
        assert!(
            of_files(&[FilePlan {
                path: "/opt/a".into(),
                contents: FileContents::Dir(empty.path().into()),
                mode: 0o755,
            }])
            .is_err()
        );
    }
}
