//! Fetching on the host: pinned wheels from the package index, and the Claude Code CLI out of
//! its wheel. No pip on the host: each pin names one file by its hash, which is all a download
//! needs.
//!
//! Fetching happens here, where the host's network settings (its CA bundle) already work; image builds then run with no network at all, so no
//! certificate of the build host can end up in an image.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};

use super::http::Http;
use super::{ImageError, io_err};
use crate::progress::Step;

/// The member of the claude-agent-sdk wheel that is the Claude Code CLI.
const CLAUDE_IN_WHEEL: &str = "claude_agent_sdk/_bundled/claude";

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// Downloads the wheels a requirements file pins (with hashes) into a cached wheelhouse, which
/// also holds the requirements file as `requirements.txt`. Reused while the pins are the same.
pub async fn wheelhouse(cache: &Path, requirements: &str) -> Result<PathBuf, ImageError> {
    let dir = cache.join("wheels").join(short_hash(requirements));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let step = Step::start(format!("downloading pinned wheels into {}", dir.display()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io_err("creating the wheelhouse"))?;
    let reqs = dir.join("requirements.txt");
    std::fs::write(&reqs, requirements).map_err(io_err("writing requirements.txt"))?;
    download_pins(requirements, &dir).await.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    std::fs::write(dir.join(".complete"), b"").map_err(io_err("marking the wheelhouse"))?;
    step.done();
    Ok(dir)
}

/// One line of a pinned requirements file: `name==version --hash=sha256:<hex> ...`.
#[derive(Debug, PartialEq)]
struct Pin {
    name: String,
    hashes: Vec<String>,
}

/// The pins of a requirements file; every line must carry a hash (as `--require-hashes`).
fn parse_pins(requirements: &str) -> Result<Vec<Pin>, String> {
    let mut pins = Vec::new();
    for line in requirements.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let spec = words.next().unwrap_or("");
        let name = spec
            .split_once("==")
            .map(|(n, _)| n)
            .ok_or_else(|| format!("`{spec}` is not pinned with =="))?;
        let hashes: Vec<String> = words
            .filter_map(|w| w.strip_prefix("--hash=sha256:"))
            .map(str::to_string)
            .collect();
        if hashes.is_empty() {
            return Err(format!("`{spec}` has no --hash=sha256:"));
        }
        pins.push(Pin {
            name: name.to_string(),
            hashes,
        });
    }
    Ok(pins)
}

/// PEP 503's project name in an index URL: lowercase, runs of `-_.` as one `-`.
fn normalized(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The links of a PEP 503 project page: (file name, href, sha256 of the href's fragment).
fn index_links(page: &str) -> Vec<(String, String, Option<String>)> {
    let mut links = Vec::new();
    for anchor in page.split("<a ").skip(1) {
        let Some((tag, rest)) = anchor.split_once('>') else {
            continue;
        };
        let Some(href) = tag
            .split_once("href=\"")
            .and_then(|(_, h)| h.split_once('"'))
            .map(|(h, _)| h.replace("&amp;", "&"))
        else {
            continue;
        };
        let text = rest.split("</a>").next().unwrap_or("").trim().to_string();
        let sha256 = href
            .split_once("#sha256=")
            .map(|(_, hash)| hash.to_string());
        links.push((text, href, sha256));
    }
    links
}

/// Downloads each pinned file, found on the index (`PIP_INDEX_URL`, default PyPI) by its hash,
/// as pip's `download --no-deps --require-hashes` would: only a file with a pinned hash is
/// taken, and its bytes are checked against it.
async fn download_pins(requirements: &str, dest: &Path) -> Result<(), ImageError> {
    let index = std::env::var("PIP_INDEX_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "https://pypi.org/simple".to_string());
    let failed = |tail: String| ImageError::StepFailed {
        image: "wheels".into(),
        step: "downloading pinned wheels".into(),
        tail,
        hint: "check that the package index is reachable from this host (PIP_INDEX_URL names \
               another; behind a TLS-intercepting proxy, SSL_CERT_FILE names its CA bundle)."
            .into(),
    };
    let pins = parse_pins(requirements).map_err(failed)?;
    let http = Http::new().map_err(failed)?;
    let index = &index;
    let http = &http;
    futures_util::stream::iter(pins.into_iter().map(|pin| async move {
        let page_url = format!("{}/{}/", index.trim_end_matches('/'), normalized(&pin.name));
        let page = http.get(&page_url).await.map_err(failed)?;
        let (file_name, href, sha256) = index_links(&String::from_utf8_lossy(&page))
            .into_iter()
            .find(|(_, _, sha)| sha.as_ref().is_some_and(|s| pin.hashes.contains(s)))
            .ok_or_else(|| {
                failed(format!(
                    "{page_url} lists no file with the pinned hash of {}",
                    pin.name
                ))
            })?;
        let url = url::Url::parse(&page_url)
            .and_then(|base| base.join(&href))
            .map_err(|e| failed(format!("{href}: {e}")))?;
        let bytes = http.get(url.as_str()).await.map_err(failed)?;
        let actual = super::debian::sha256_hex(&bytes);
        if Some(&actual) != sha256.as_ref() {
            return Err(failed(format!(
                "{url}: sha256 {actual} is not the pinned one"
            )));
        }
        if file_name.contains('/') || file_name.is_empty() {
            return Err(failed(format!("{page_url}: a file name `{file_name}`")));
        }
        std::fs::write(dest.join(&file_name), &bytes).map_err(io_err("writing a wheel"))
    }))
    .buffer_unordered(8)
    .try_collect::<()>()
    .await
}

/// The Claude Code CLI, extracted from the pinned claude-agent-sdk wheel into the cache.
pub async fn claude_binary(cache: &Path, requirement: &str) -> Result<PathBuf, ImageError> {
    let dir = cache.join("claude").join(short_hash(requirement));
    let binary = dir.join("claude");
    if binary.exists() {
        return Ok(binary);
    }
    let wheels = wheelhouse(cache, requirement).await?;
    let step = Step::start("extracting the Claude Code CLI from the claude-agent-sdk wheel");
    let wheel = std::fs::read_dir(&wheels)
        .map_err(io_err("listing the wheelhouse"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ImageError::StepFailed {
            image: "claude".into(),
            step: "find the claude-agent-sdk wheel".into(),
            tail: format!("no .whl in {}", wheels.display()),
            hint: "delete the wheelhouse folder and try again.".into(),
        })?;
    std::fs::create_dir_all(&dir).map_err(io_err("creating the claude cache"))?;
    let partial = dir.join("claude.partial");
    let into = partial.clone();
    tokio::task::spawn_blocking(move || extract_member(&wheel, CLAUDE_IN_WHEEL, &into))
        .await
        .expect("extraction task panicked")?;
    // Rename last, so an interrupted extraction never looks like a finished one.
    std::fs::rename(&partial, &binary).map_err(io_err("installing the claude binary"))?;
    // The wheel itself is no longer needed; the binary is what the image takes.
    let _ = std::fs::remove_dir_all(&wheels);
    step.done();
    Ok(binary)
}

fn extract_member(zip_path: &Path, member: &str, dest: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(zip_path).map_err(io_err("opening the wheel"))?;
    let bad = |e: zip::result::ZipError| ImageError::StepFailed {
        image: "claude".into(),
        step: format!("extract {member} from {}", zip_path.display()),
        tail: e.to_string(),
        hint: "the pinned wheel's layout may have changed; see notes/claude-code.md.".into(),
    };
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    let mut entry = archive.by_name(member).map_err(bad)?;
    let mut out = std::fs::File::create(dest).map_err(io_err("writing the claude binary"))?;
    std::io::copy(&mut entry, &mut out).map_err(io_err("writing the claude binary"))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("making claude executable"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_need_a_version_and_a_hash() {
        let pins =
            parse_pins("# c\nA_b.C==1 --hash=sha256:aa --hash=sha256:bb  # why\n\n").unwrap();
        assert_eq!(
            pins,
            [Pin {
                name: "A_b.C".into(),
                hashes: vec!["aa".into(), "bb".into()]
            }]
        );
        assert_eq!(normalized("A_b..C"), "a-b-c");
        assert!(parse_pins("mitmproxy>=12\n").is_err());
        assert!(parse_pins("mitmproxy==12\n").is_err());
    }

    #[test]
    fn index_links_carry_their_hashes() {
        let page = r#"<html><a href="../../p/x-1.whl#sha256=aa" data-requires-python="&gt;=3.9">x-1.whl</a>
<a href="https://f.example/y-2.tar.gz?a=1&amp;b=2#sha256=bb">y-2.tar.gz</a><a href="z">z</a>"#;
        let links = index_links(page);
        assert_eq!(
            links[0],
            (
                "x-1.whl".into(),
                "../../p/x-1.whl#sha256=aa".into(),
                Some("aa".into())
            )
        );
        assert_eq!(links[1].1, "https://f.example/y-2.tar.gz?a=1&b=2#sha256=bb");
        assert_eq!(links[2].2, None);
    }
}
