//! Debian's first stage, done here in Rust so the host needs no debootstrap and no root.
//!
//! What debootstrap's first stage does, we do: read the suite's package index, take the
//! packages of priority `required` and the ones asked for (with every dependency), download
//! them (each checked against the index's SHA-256), and unpack the required ones into one tar,
//! which the engine imports as a bootstrap image. The second stage
//! (`fixtures/images/base/second-stage.sh`) then installs every package with dpkg inside it.
//!
//! Trust: the index comes from the mirror over HTTPS with the host's CA roots, and every
//! package is checked against it. (debootstrap checks the index's signature with the host's
//! Debian keyring, which is exactly the host install this module removes; with no keyring it
//! falls back to HTTPS too.)

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One package of the index: what the first stage needs of its paragraph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The path under the mirror, `pool/main/...deb`.
    pub filename: String,
    pub sha256: String,
    pub required: bool,
    /// Pre-Depends and Depends: each entry a list of alternatives (package names only).
    depends: Vec<Vec<String>>,
    provides: Vec<String>,
}

/// A suite's `Packages` index for one architecture.
pub struct Index {
    packages: HashMap<String, Package>,
    /// Virtual package -> the real packages that provide it, in index order.
    providers: HashMap<String, Vec<String>>,
}

impl Index {
    pub fn parse(text: &str) -> Index {
        let mut packages = HashMap::new();
        let mut providers: HashMap<String, Vec<String>> = HashMap::new();
        for paragraph in text.split("\n\n") {
            let mut fields: HashMap<&str, &str> = HashMap::new();
            for line in paragraph.lines() {
                if line.starts_with([' ', '\t']) {
                    continue; // continuation lines (descriptions) are not needed
                }
                if let Some((key, value)) = line.split_once(':') {
                    fields.insert(key, value.trim());
                }
            }
            let (Some(name), Some(version), Some(filename), Some(sha256)) = (
                fields.get("Package"),
                fields.get("Version"),
                fields.get("Filename"),
                fields.get("SHA256"),
            ) else {
                continue;
            };
            let names = |field: &str| -> Vec<Vec<String>> {
                fields
                    .get(field)
                    .into_iter()
                    .flat_map(|v| v.split(','))
                    .map(|dep| dep.split('|').map(relation_name).collect::<Vec<_>>())
                    .filter(|alternatives| alternatives.iter().all(|n| !n.is_empty()))
                    .collect()
            };
            let mut depends = names("Pre-Depends");
            depends.extend(names("Depends"));
            let provides: Vec<String> = names("Provides").into_iter().flatten().collect();
            for virtual_name in &provides {
                providers
                    .entry(virtual_name.clone())
                    .or_default()
                    .push(name.to_string());
            }
            packages.insert(
                name.to_string(),
                Package {
                    name: name.to_string(),
                    version: version.to_string(),
                    filename: filename.to_string(),
                    sha256: sha256.to_string(),
                    required: fields.get("Priority") == Some(&"required"),
                    depends,
                    provides,
                },
            );
        }
        Index {
            packages,
            providers,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Package> {
        self.packages.get(name)
    }

    /// The packages of priority `required`, sorted.
    pub fn required(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .packages
            .values()
            .filter(|p| p.required)
            .map(|p| p.name.clone())
            .collect();
        names.sort();
        names
    }

    /// `roots` and everything they depend on, as debootstrap resolves it: for each dependency,
    /// an alternative already chosen, else the first real package, else the first provider.
    pub fn closure(&self, roots: &[String]) -> Result<BTreeSet<String>, String> {
        let mut chosen = BTreeSet::new();
        let mut todo: Vec<String> = roots.to_vec();
        while let Some(name) = todo.pop() {
            if chosen.contains(&name) {
                continue;
            }
            let package = self
                .packages
                .get(&name)
                .ok_or_else(|| format!("package {name} is not in the index"))?;
            chosen.insert(name);
            for alternatives in &package.depends {
                if alternatives.iter().any(|a| chosen.contains(a)) {
                    continue;
                }
                let pick = alternatives
                    .iter()
                    .find(|a| self.packages.contains_key(*a))
                    .cloned()
                    .or_else(|| {
                        alternatives
                            .iter()
                            .find_map(|a| self.providers.get(a).and_then(|p| p.first()).cloned())
                    })
                    .ok_or_else(|| {
                        format!(
                            "{} depends on {}, which nothing in the index provides",
                            package.name,
                            alternatives.join(" | ")
                        )
                    })?;
                todo.push(pick);
            }
        }
        Ok(chosen)
    }
}

/// `libc6 (>= 2.38)` or `awk:any` -> the bare name.
fn relation_name(relation: &str) -> String {
    let name = relation.trim().split([' ', '(', '[']).next().unwrap_or("");
    name.split(':').next().unwrap_or("").to_string()
}

/// The SHA-256 and size the (clear-signed) `InRelease` file gives for `path`.
pub fn release_entry(in_release: &str, path: &str) -> Option<(String, u64)> {
    let mut in_sha256 = false;
    for line in in_release.lines() {
        if !line.starts_with(' ') {
            in_sha256 = line.trim_end() == "SHA256:";
            continue;
        }
        if !in_sha256 {
            continue;
        }
        let mut parts = line.split_whitespace();
        if let (Some(hash), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next())
            && name == path
        {
            return Some((hash.to_string(), size.parse().ok()?));
        }
    }
    None
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The directories that are symlinks into /usr on a merged-/usr system (Debian since
/// bookworm). debootstrap makes the links first and unpacks through them; we rewrite the paths.
const ALIASED_DIRS: [&str; 4] = ["bin", "sbin", "lib", "lib64"];

/// A package's path as it lands on a merged-/usr root: `./bin/sh` -> `usr/bin/sh`. `None` for
/// the root itself and for the aliased directories themselves (they are the links).
fn merged_usr_path(path: &str) -> Option<String> {
    let path = path.trim_start_matches("./").trim_end_matches('/');
    if path.is_empty() || path == "." {
        return None;
    }
    let (first, rest) = path.split_once('/').unwrap_or((path, ""));
    if ALIASED_DIRS.contains(&first) {
        if rest.is_empty() {
            return None;
        }
        return Some(format!("usr/{first}/{rest}"));
    }
    Some(path.to_string())
}

/// The `data.tar*` member of a `.deb` (an ar archive), decompressed.
fn deb_data(deb: &[u8]) -> Result<Vec<u8>, String> {
    const MAGIC: &[u8] = b"!<arch>\n";
    if !deb.starts_with(MAGIC) {
        return Err("not a Debian package (no ar header)".into());
    }
    let mut pos = MAGIC.len();
    while pos + 60 <= deb.len() {
        let header = &deb[pos..pos + 60];
        let name = String::from_utf8_lossy(&header[..16]);
        let name = name.trim_end().trim_end_matches('/');
        let size: usize = String::from_utf8_lossy(&header[48..58])
            .trim()
            .parse()
            .map_err(|_| format!("bad ar member size for {name}"))?;
        let start = pos + 60;
        let body = deb
            .get(start..start + size)
            .ok_or_else(|| format!("ar member {name} is cut short"))?;
        if let Some(compression) = name.strip_prefix("data.tar") {
            let mut out = Vec::with_capacity(size * 4);
            match compression {
                "" => out.extend_from_slice(body),
                ".xz" => lzma_rs::xz_decompress(&mut &body[..], &mut out)
                    .map_err(|e| format!("{name}: {e:?}"))?,
                ".gz" => {
                    flate2::read::GzDecoder::new(body)
                        .read_to_end(&mut out)
                        .map_err(|e| format!("{name}: {e}"))?;
                }
                other => return Err(format!("data.tar{other}: compression not supported")),
            }
            return Ok(out);
        }
        pos = start + size + size % 2;
    }
    Err("no data.tar member".into())
}

/// Writes the first stage's root filesystem as a tar: the merged-/usr links, an empty dpkg
/// database that already knows dpkg (debootstrap's "feigned" install), and the files of every
/// package in `debs`, in order, on their merged-/usr paths, with their owners and modes.
pub fn write_first_stage(
    debs: &[(String, PathBuf)],
    dpkg_version: &str,
    out: impl Write,
) -> Result<(), String> {
    let mut tar = tar::Builder::new(out);
    let mut dirs: HashSet<String> = HashSet::new();
    let io = |e: std::io::Error| format!("writing the first stage: {e}");

    let mut dir = |tar: &mut tar::Builder<_>, path: &str, mode: u32| -> Result<(), String> {
        dirs.insert(path.to_string());
        let mut header = root_header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut header, path, std::io::empty())
            .map_err(io)
    };
    for path in [
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "etc",
        "root",
    ] {
        dir(&mut tar, path, 0o755)?;
    }
    dir(&mut tar, "tmp", 0o1777)?;
    for path in ["var", "var/lib", "var/lib/dpkg", "var/lib/dpkg/info"] {
        dir(&mut tar, path, 0o755)?;
    }
    for alias in ALIASED_DIRS {
        let mut header = root_header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut header, alias, format!("usr/{alias}"))
            .map_err(io)?;
    }
    let status = format!(
        "Package: dpkg\nVersion: {dpkg_version}\nMaintainer: unknown\nStatus: install ok installed\n\n"
    );
    for (path, body) in [
        ("var/lib/dpkg/status", status.as_bytes()),
        ("var/lib/dpkg/available", b"".as_slice()),
        ("var/lib/dpkg/info/dpkg.list", b"".as_slice()),
    ] {
        let mut header = root_header(tar::EntryType::Regular, 0o644, body.len() as u64);
        tar.append_data(&mut header, path, body).map_err(io)?;
    }

    for (name, path) in debs {
        let deb = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let data = deb_data(&deb).map_err(|e| format!("{name}: {e}"))?;
        let mut archive = tar::Archive::new(&data[..]);
        for entry in archive.entries().map_err(|e| format!("{name}: {e}"))? {
            let mut entry = entry.map_err(|e| format!("{name}: {e}"))?;
            let raw_path = String::from_utf8(entry.path_bytes().into_owned())
                .map_err(|_| format!("{name}: a path that is not UTF-8"))?;
            let Some(target) = merged_usr_path(&raw_path) else {
                continue;
            };
            let mut header = entry.header().clone();
            let kind = header.entry_type();
            let result = if kind.is_dir() {
                if !dirs.insert(target.clone()) {
                    continue;
                }
                tar.append_data(&mut header, &target, std::io::empty())
            } else if kind.is_symlink() {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                tar.append_link(
                    &mut header,
                    &target,
                    Path::new(&String::from_utf8_lossy(&link).into_owned()),
                )
            } else if kind.is_hard_link() {
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                let link = merged_usr_path(&link).unwrap_or(link);
                tar.append_link(&mut header, &target, &link)
            } else {
                tar.append_data(&mut header, &target, &mut entry)
            };
            result.map_err(|e| format!("{name}: {raw_path}: {e}"))?;
        }
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)
}

fn root_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "\
Package: app
Version: 1
Priority: optional
Depends: libc6 (>= 2.38), awk | mawk, mail-transport-agent
Filename: pool/main/a/app/app_1_amd64.deb
SHA256: aa

Package: libc6
Version: 2.41-1
Priority: required
Pre-Depends: libgcc-s1
Filename: pool/main/g/glibc/libc6_2.41-1_amd64.deb
SHA256: bb
Description: the C library
 a continuation line: Depends: nothing

Package: libgcc-s1
Version: 14
Priority: optional
Filename: pool/main/g/gcc/libgcc-s1_14_amd64.deb
SHA256: cc

Package: mawk
Version: 1.3
Priority: required
Provides: awk
Filename: pool/main/m/mawk/mawk_1.3_amd64.deb
SHA256: dd

Package: exim4
Version: 4
Priority: optional
Provides: mail-transport-agent
Filename: pool/main/e/exim4/exim4_4_amd64.deb
SHA256: ee
";

    #[test]
    fn the_closure_takes_pre_depends_alternatives_and_providers() {
        let index = Index::parse(INDEX);
        assert_eq!(index.required(), ["libc6", "mawk"]);
        let closure = index.closure(&["app".to_string()]).unwrap();
        let names: Vec<&str> = closure.iter().map(String::as_str).collect();
        // awk is virtual: mawk provides it; mail-transport-agent only through exim4.
        assert_eq!(names, ["app", "exim4", "libc6", "libgcc-s1", "mawk"]);
        assert_eq!(index.get("libc6").unwrap().version, "2.41-1");
    }

    #[test]
    fn a_dependency_nothing_provides_is_an_error_that_names_it() {
        let index =
            Index::parse("Package: a\nVersion: 1\nDepends: ghost\nFilename: f\nSHA256: x\n");
        let err = index.closure(&["a".to_string()]).unwrap_err();
        assert!(err.contains("ghost"), "{err}");
    }

    #[test]
    fn release_entries_come_from_the_sha256_section() {
        let release = "Origin: Debian\nMD5Sum:\n 00 10 main/binary-amd64/Packages.gz\nSHA256:\n 11 12 main/binary-amd64/Packages\n 22 13 main/binary-amd64/Packages.gz\n";
        assert_eq!(
            release_entry(release, "main/binary-amd64/Packages.gz"),
            Some(("22".to_string(), 13))
        );
        assert_eq!(
            release_entry(release, "main/binary-arm64/Packages.gz"),
            None
        );
    }

    #[test]
    fn paths_land_on_merged_usr() {
        assert_eq!(merged_usr_path("./bin/sh").as_deref(), Some("usr/bin/sh"));
        assert_eq!(
            merged_usr_path("./lib64/ld.so").as_deref(),
            Some("usr/lib64/ld.so")
        );
        assert_eq!(merged_usr_path("./usr/bin/x").as_deref(), Some("usr/bin/x"));
        assert_eq!(merged_usr_path("./libexec/x").as_deref(), Some("libexec/x"));
        assert_eq!(merged_usr_path("./bin/"), None);
        assert_eq!(merged_usr_path("./"), None);
    }

    /// A .deb built here: an ar archive whose data.tar.xz holds `./bin/hello` and a hard link.
    fn tiny_deb() -> Vec<u8> {
        let mut data = tar::Builder::new(Vec::new());
        let mut header = root_header(tar::EntryType::Directory, 0o755, 0);
        data.append_data(&mut header, "./bin/", std::io::empty())
            .unwrap();
        let mut header = root_header(tar::EntryType::Regular, 0o755, 5);
        data.append_data(&mut header, "./bin/hello", &b"hello"[..])
            .unwrap();
        let mut header = root_header(tar::EntryType::Link, 0o755, 0);
        data.append_link(&mut header, "./bin/hi", "./bin/hello")
            .unwrap();
        let data = data.into_inner().unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &data[..], &mut xz).unwrap();
        let mut deb = b"!<arch>\n".to_vec();
        for (name, body) in [("debian-binary", b"2.0\n".to_vec()), ("data.tar.xz", xz)] {
            deb.extend(
                format!(
                    "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    0,
                    0,
                    0,
                    100644,
                    body.len()
                )
                .bytes(),
            );
            deb.extend(&body);
            if body.len() % 2 == 1 {
                deb.push(b'\n');
            }
        }
        deb
    }

    #[test]
    fn the_first_stage_unpacks_a_package_onto_merged_usr_with_dpkg_feigned() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("hello.deb");
        std::fs::write(&deb, tiny_deb()).unwrap();
        let mut out = Vec::new();
        write_first_stage(&[("hello".into(), deb)], "1.22.21", &mut out).unwrap();
        let mut seen = HashMap::new();
        for entry in tar::Archive::new(&out[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.insert(path, (entry.header().entry_type(), link, body));
        }
        assert_eq!(seen["bin"].1.as_deref(), Some("usr/bin"), "bin is the link");
        assert_eq!(seen["usr/bin/hello"].2, "hello");
        assert_eq!(seen["usr/bin/hi"].1.as_deref(), Some("usr/bin/hello"));
        assert!(seen["var/lib/dpkg/status"].2.contains("Version: 1.22.21"));
        assert!(!seen.contains_key("bin/hello"));
    }
}
