//! Images by digest from `images.lock`: the official mitmproxy and pipelock images, pulled from
//! their registries and run by digest, never by tag.
//!
//! The lock file is embedded when the launcher is compiled, so an installed binary carries the
//! lock it was built (and reviewed) with. [`ensure`] finds the pinned image in the local engine
//! (pulled before, or loaded by the user with `docker load`) or pulls it, bounded in time, and
//! says what to do when it cannot: many machines cannot reach the registries.

use std::fmt;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::docker::is_not_found;
use crate::progress::Step;

/// The lock file as it was when the launcher was compiled.
pub const LOCK_TEXT: &str = include_str!("../../../images.lock");

/// An image that bottle runs from its publisher, by the digest in `images.lock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pinned {
    Mitmproxy,
    Pipelock,
}

impl Pinned {
    pub const ALL: [Pinned; 2] = [Pinned::Mitmproxy, Pinned::Pipelock];

    /// Its table in `images.lock`.
    pub fn name(self) -> &'static str {
        match self {
            Pinned::Mitmproxy => "mitmproxy",
            Pinned::Pipelock => "pipelock",
        }
    }
}

impl fmt::Display for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One image in `images.lock`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// Where it is published, e.g. `ghcr.io/luckypipewrench/pipelock`.
    pub repository: String,
    /// The release, for people: nothing is pulled or run by it.
    pub tag: String,
    /// `sha256:` and 64 lowercase hex digits: the tag's multi-arch index when it was reviewed.
    /// `None` refuses pinned mode for this image.
    #[serde(default)]
    pub digest: Option<String>,
}

/// The parsed lock file: one entry per [`Pinned`] image, nothing else.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub mitmproxy: LockEntry,
    pub pipelock: LockEntry,
}

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("images.lock is not valid: {0}")]
    InvalidLock(String),
    #[error(
        "images.lock has no digest for {repository}:{tag}, and bottle runs pinned images only by \
         digest.\nAdd one in a reviewed change: where a registry is reachable, run\n  \
         docker pull {repository}:{tag}\n  \
         docker inspect --format '{{{{index .RepoDigests 0}}}}' {repository}:{tag}\n\
         and set `digest = \"sha256:…\"` (the part after \"@\") in its entry in images.lock."
    )]
    NoDigest { repository: String, tag: String },
    #[error("the Docker engine failed while {context}: {source}")]
    Engine {
        context: String,
        source: bollard::errors::Error,
    },
    #[error("could not pull the {image} image {reference}: {reason}\n{ways_out}")]
    PullFailed {
        image: Pinned,
        reference: String,
        /// The engine's reason, or which time bound ran out.
        reason: String,
        /// What the user can do instead.
        ways_out: String,
    },
    #[error(
        "the image {reference} given by {flag} is not in this Docker engine and could not be \
         pulled: {reason}\nLoad it first (`docker load -i ARCHIVE`, from a `docker save` of it \
         made where a registry is reachable), or leave {flag} out."
    )]
    GivenUnavailable {
        flag: String,
        reference: String,
        reason: String,
    },
}

/// How long a pull may take. A registry that stops answering (or never answers) trips `idle`; a
/// pull that trickles along forever trips `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullBounds {
    /// The longest wait for the next word from the engine.
    pub idle: Duration,
    /// The longest a whole pull may take.
    pub total: Duration,
}

impl PullBounds {
    pub const DEFAULT: PullBounds = PullBounds {
        idle: Duration::from_secs(120),
        total: Duration::from_secs(20 * 60),
    };
}

impl Default for PullBounds {
    fn default() -> Self {
        PullBounds::DEFAULT
    }
}

/// The embedded lock file, parsed and checked.
pub fn lock() -> Result<Lock, PinnedError> {
    Lock::parse(LOCK_TEXT)
}

impl Lock {
    /// Parses lock text and checks every entry: a well-formed repository and tag, and a digest
    /// (where there is one) of `sha256:` and 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Lock, PinnedError> {
        let lock: Lock =
            toml::from_str(text).map_err(|e| PinnedError::InvalidLock(e.to_string()))?;
        for which in Pinned::ALL {
            lock.entry(which)
                .check()
                .map_err(|problem| PinnedError::InvalidLock(format!("[{which}] {problem}")))?;
        }
        Ok(lock)
    }

    pub fn entry(&self, which: Pinned) -> &LockEntry {
        match which {
            Pinned::Mitmproxy => &self.mitmproxy,
            Pinned::Pipelock => &self.pipelock,
        }
    }
}

impl LockEntry {
    /// `repository@sha256:…`, the only way bottle names a pinned image.
    pub fn reference(&self) -> Result<String, PinnedError> {
        let Some(digest) = &self.digest else {
            return Err(PinnedError::NoDigest {
                repository: self.repository.clone(),
                tag: self.tag.clone(),
            });
        };
        self.check().map_err(|problem| {
            PinnedError::InvalidLock(format!("{}:{}: {problem}", self.repository, self.tag))
        })?;
        Ok(format!("{}@{digest}", self.repository))
    }

    /// `repository:tag`, the name a user's `docker load` gives the image.
    pub fn tagged(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    fn check(&self) -> Result<(), String> {
        check_repository(&self.repository)?;
        check_tag(&self.tag)?;
        match &self.digest {
            Some(digest) if !is_valid_digest(digest) => Err(format!(
                "digest {digest:?} is not `sha256:` followed by 64 lowercase hex digits"
            )),
            _ => Ok(()),
        }
    }
}

/// `sha256:` and exactly 64 lowercase hex digits.
pub fn is_valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn check_repository(repository: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("repository {repository:?} {why}"));
    if repository.is_empty() {
        return bad("is empty");
    }
    if repository.contains('@') {
        return bad("must not carry a digest: put it in `digest`");
    }
    if repository.split('/').any(str::is_empty) {
        return bad("has an empty path component");
    }
    let (host, path) = match repository.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => ("", repository),
    };
    if path.contains(':') {
        return bad("must not carry a tag: put it in `tag`");
    }
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
    let host_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
    if !path_ok || !host_ok {
        return bad("may hold only lowercase letters, digits, `.`, `_`, `-` and `/`");
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let well_formed = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not a Docker tag (letters, digits, `.`, `_`, `-`; at most 128)"
        ))
    }
}

/// The image for `which`, as a reference to run: the locked digest when the local engine has
/// it, else pulled from its registry (progress on stderr), bounded by [`PullBounds::DEFAULT`].
pub async fn ensure(docker: &Docker, which: Pinned) -> Result<String, PinnedError> {
    ensure_within(docker, which, PullBounds::DEFAULT).await
}

/// [`ensure`] with other time bounds for the pull.
///
/// Returns `repository@digest`, except for an image that a user loaded with `docker load`: an
/// engine that keeps no registry digests for loaded images (the classic image store) has it as
/// `repository:tag` only, which is then returned, with a note on stderr that the engine cannot
/// check it against the lock.
pub async fn ensure_within(
    docker: &Docker,
    which: Pinned,
    bounds: PullBounds,
) -> Result<String, PinnedError> {
    let lock = lock()?;
    ensure_entry(docker, which, lock.entry(which), bounds).await
}

async fn ensure_entry(
    docker: &Docker,
    which: Pinned,
    entry: &LockEntry,
    bounds: PullBounds,
) -> Result<String, PinnedError> {
    let reference = entry.reference()?;
    if let Some(local) = find_local(docker, which, entry, &reference).await? {
        return Ok(local);
    }
    pull(docker, which, entry, &reference, bounds).await?;
    // The engine checked the content against the digest; make sure it now answers to it.
    if inspect(docker, &reference).await?.is_some() {
        Ok(reference)
    } else {
        Err(PinnedError::PullFailed {
            image: which,
            reference: reference.clone(),
            reason: "the engine reported the pull done but has no image by that digest".into(),
            ways_out: ways_out(which, entry, &reference),
        })
    }
}

/// The image as the local engine has it: by the locked digest, or as a loaded `repository:tag`
/// that carries no registry digest at all. A `repository:tag` with another digest is not it.
async fn find_local(
    docker: &Docker,
    which: Pinned,
    entry: &LockEntry,
    reference: &str,
) -> Result<Option<String>, PinnedError> {
    if inspect(docker, reference).await?.is_some() {
        return Ok(Some(reference.to_string()));
    }
    let tagged = entry.tagged();
    let Some(image) = inspect(docker, &tagged).await? else {
        return Ok(None);
    };
    let wanted = normalized_repository(&entry.repository);
    let digests: Vec<&str> = image
        .repo_digests
        .iter()
        .flatten()
        .filter_map(|d| d.split_once('@'))
        .filter(|(repository, _)| normalized_repository(repository) == wanted)
        .map(|(_, digest)| digest)
        .collect();
    if digests.is_empty() {
        eprintln!(
            "[bottle] using {tagged} as the pinned {which} image: it carries no registry digest \
             here (an image loaded with `docker load`), so this engine cannot check it against \
             the digest in images.lock ({}); it is trusted as loaded.",
            entry.digest.as_deref().unwrap_or_default()
        );
        return Ok(Some(tagged));
    }
    eprintln!(
        "[bottle] {tagged} here is {}, not the digest in images.lock; pulling {reference}",
        digests.join(", ")
    );
    Ok(None)
}

/// `docker.io/library/x`, `library/x` and `x` are one repository; so are `docker.io/o/x` and
/// `o/x`.
fn normalized_repository(repository: &str) -> String {
    let rest = repository
        .strip_prefix("docker.io/")
        .or_else(|| repository.strip_prefix("index.docker.io/"))
        .unwrap_or(repository);
    let has_host = rest
        .split_once('/')
        .is_some_and(|(first, _)| first.contains(['.', ':']) || first == "localhost");
    match (has_host, rest.contains('/')) {
        (true, _) => rest.to_string(),
        (false, true) => format!("docker.io/{rest}"),
        (false, false) => format!("docker.io/library/{rest}"),
    }
}

/// The registry a repository is pulled from.
fn registry_host(repository: &str) -> &str {
    match repository.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

async fn inspect(
    docker: &Docker,
    name: &str,
) -> Result<Option<bollard::models::ImageInspect>, PinnedError> {
    match docker.inspect_image(name).await {
        Ok(image) => Ok(Some(image)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(source) => Err(PinnedError::Engine {
            context: format!("looking for image {name}"),
            source,
        }),
    }
}

/// Statuses the engine repeats for every layer as bytes arrive: too many lines to show.
const CHATTY: &[&str] = &[
    "Downloading",
    "Extracting",
    "Waiting",
    "Pulling fs layer",
    "Verifying Checksum",
];

async fn pull(
    docker: &Docker,
    which: Pinned,
    entry: &LockEntry,
    reference: &str,
    bounds: PullBounds,
) -> Result<(), PinnedError> {
    let digest = entry.digest.as_deref().expect("reference() checked it");
    let what = format!("the pinned {which} image {reference}");
    pull_image(docker, &what, &entry.repository, digest, bounds)
        .await
        .map_err(|reason| PinnedError::PullFailed {
            image: which,
            reference: reference.to_string(),
            reason,
            ways_out: ways_out(which, entry, reference),
        })
}

/// Pulls `from_image` at `tag` (a tag or a digest), with progress on stderr; the reason when
/// it cannot.
async fn pull_image(
    docker: &Docker,
    what: &str,
    from_image: &str,
    tag: &str,
    bounds: PullBounds,
) -> Result<(), String> {
    let step = Step::start(format!("pulling {what}"));
    let options = CreateImageOptionsBuilder::new()
        .from_image(from_image)
        .tag(tag)
        .build();
    let mut stream = docker.create_image(Some(options), None, None);
    let started = Instant::now();
    loop {
        let left = bounds.total.saturating_sub(started.elapsed());
        let wait = bounds.idle.min(left);
        let item = match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) if wait < bounds.idle => {
                return Err(format!(
                    "the pull did not finish within {} s",
                    bounds.total.as_secs_f64()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "no answer from the registry within {} s (it is unreachable or hanging)",
                    bounds.idle.as_secs_f64()
                ));
            }
        };
        let info = item.map_err(|e| engine_reason(&e))?;
        if let Some(status) = info.status.as_deref()
            && !CHATTY.contains(&status)
        {
            match info.id.as_deref() {
                Some(id) if !id.is_empty() => step.detail(&format!("{id}: {status}")),
                _ => step.detail(status),
            }
        }
    }
    step.done();
    Ok(())
}

/// An image given by reference on the command line (`flag`, e.g. `--scanner-image`): the
/// engine's when it has it, else pulled. Run by that reference, as given.
pub async fn ensure_given(
    docker: &Docker,
    flag: &str,
    reference: &str,
) -> Result<String, PinnedError> {
    if inspect(docker, reference).await?.is_some() {
        return Ok(reference.to_string());
    }
    // `repo@sha256:…`, `repo:tag` (a registry's port is not a tag) or `repo` (latest).
    let (from_image, tag) = match reference.split_once('@') {
        Some((repository, digest)) => (repository, digest),
        None => match reference.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, tag),
            _ => (reference, "latest"),
        },
    };
    let what = format!("{reference} (given by {flag})");
    let pulled = pull_image(docker, &what, from_image, tag, PullBounds::DEFAULT).await;
    match pulled {
        Ok(()) if inspect(docker, reference).await?.is_some() => Ok(reference.to_string()),
        Ok(()) => Err(PinnedError::GivenUnavailable {
            flag: flag.into(),
            reference: reference.into(),
            reason: "the engine reported the pull done but has no image by that name".into(),
        }),
        Err(reason) => Err(PinnedError::GivenUnavailable {
            flag: flag.into(),
            reference: reference.into(),
            reason,
        }),
    }
}

/// What the engine said, without bollard's wrapping.
fn engine_reason(err: &bollard::errors::Error) -> String {
    use bollard::errors::Error;
    match err {
        Error::DockerResponseServerError { message, .. } => message.trim().to_string(),
        Error::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

/// What to do when `which` cannot be pulled here.
fn ways_out(which: Pinned, entry: &LockEntry, reference: &str) -> String {
    let registry = registry_host(&entry.repository);
    let tagged = entry.tagged();
    let archive = format!("{which}.tar");
    let load = format!(
        "load the image from a machine that can reach {registry}:\n\
         \x20     docker pull {reference}\n\
         \x20     docker tag {reference} {tagged}\n\
         \x20     docker save {tagged} -o {archive}\n\
         \x20   then copy {archive} here and run: docker load -i {archive}"
    );
    match which {
        Pinned::Pipelock => format!(
            "pipelock has no local recipe: the real image can only come from its registry. \
             Either\n  - {load}\n  - or run `bottle start --scanner double`: pipelock-double \
             stands in for pipelock, and that bottle is NOT protected by pipelock (the double is a \
             test stand-in that knows a few secret patterns, not a scanner to rely on)."
        ),
        Pinned::Mitmproxy => format!(
            "Either\n  - use `--images local`, which builds mitmproxy 12.2.3 here from Debian \
             packages and PyPI\n  - or {load}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [mitmproxy]
        repository = "mitmproxy/mitmproxy"
        tag = "12.2.3"
        digest = "sha256:00b77b5d8804c8ad18cb6caefbf9d5849e895e8986c5ce011f4ae30f4385962f"

        [pipelock]
        repository = "ghcr.io/luckypipewrench/pipelock"
        tag = "3.4.0"
        digest = "sha256:2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694c"
    "#;

    fn invalid(text: &str) -> String {
        match Lock::parse(text) {
            Err(e @ PinnedError::InvalidLock(_)) => e.to_string(),
            other => panic!("expected InvalidLock, got {other:?}"),
        }
    }

    #[test]
    fn the_embedded_lock_parses_and_its_digests_are_well_formed() {
        let lock = lock().expect("images.lock parses");
        assert_eq!(lock.mitmproxy.repository, "mitmproxy/mitmproxy");
        assert_eq!(lock.mitmproxy.tag, "12.2.3");
        assert_eq!(lock.pipelock.repository, "ghcr.io/luckypipewrench/pipelock");
        for which in Pinned::ALL {
            let entry = lock.entry(which);
            if let Some(digest) = &entry.digest {
                assert!(is_valid_digest(digest), "{which}: {digest}");
                assert_eq!(
                    entry.reference().unwrap(),
                    format!("{}@{digest}", entry.repository)
                );
            }
        }
        assert_eq!(Lock::parse(GOOD).unwrap(), lock, "GOOD mirrors images.lock");
    }

    #[test]
    fn a_pinned_reference_is_repository_at_digest() {
        let lock = Lock::parse(GOOD).unwrap();
        assert_eq!(
            lock.entry(Pinned::Pipelock).reference().unwrap(),
            "ghcr.io/luckypipewrench/pipelock@sha256:\
             2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694c"
        );
        assert_eq!(
            lock.entry(Pinned::Mitmproxy).tagged(),
            "mitmproxy/mitmproxy:12.2.3"
        );
    }

    #[test]
    fn an_entry_without_a_digest_parses_but_refuses_pinned_mode_saying_how_to_add_one() {
        let text = GOOD.replace(
            "digest = \"sha256:2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694c\"",
            "",
        );
        let lock = Lock::parse(&text).unwrap();
        assert_eq!(lock.pipelock.digest, None);
        let err = lock.pipelock.reference().unwrap_err();
        assert!(matches!(err, PinnedError::NoDigest { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("no digest"), "{text}");
        assert!(
            text.contains("docker pull ghcr.io/luckypipewrench/pipelock:3.4.0"),
            "{text}"
        );
        assert!(
            text.contains(
                "docker inspect --format '{{index .RepoDigests 0}}' \
                 ghcr.io/luckypipewrench/pipelock:3.4.0"
            ),
            "{text}"
        );
    }

    #[test]
    fn malformed_digests_are_rejected_naming_the_entry() {
        let good = "sha256:2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694c";
        for bad in [
            "sha256:2E6CAA43967A5EF19CACBCE00188D829C1B5DE1EB0AD304A51D2085F32C5694C",
            "sha256:2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694",
            "sha256:2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694c0",
            "sha256:2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694g",
            "sha512:2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694c",
            "2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694c",
            "",
        ] {
            assert!(!is_valid_digest(bad), "{bad}");
            let text = invalid(&GOOD.replace(good, bad));
            assert!(text.contains("[pipelock]"), "{text}");
            assert!(text.contains("digest"), "{text}");
            assert!(text.contains("64 lowercase hex"), "{text}");
        }
    }

    #[test]
    fn unknown_keys_and_missing_entries_are_rejected_naming_them() {
        let text = invalid(&GOOD.replace("tag = \"3.4.0\"", "tag = \"3.4.0\"\nplatform = \"x\""));
        assert!(text.contains("platform"), "{text}");
        let text = invalid(&format!("{GOOD}\n[squid]\nrepository = \"squid\"\n"));
        assert!(text.contains("squid"), "{text}");
        let cut = GOOD.find("[pipelock]").unwrap();
        let text = invalid(&GOOD[..cut]);
        assert!(text.contains("pipelock"), "{text}");
        let text = invalid("[mitmproxy\n");
        assert!(text.contains("images.lock is not valid"), "{text}");
    }

    #[test]
    fn repositories_and_tags_are_checked() {
        let text = invalid(&GOOD.replace(
            "\"ghcr.io/luckypipewrench/pipelock\"",
            "\"ghcr.io/luckypipewrench/pipelock:3.4.0\"",
        ));
        assert!(text.contains("must not carry a tag"), "{text}");
        let text = invalid(&GOOD.replace(
            "\"mitmproxy/mitmproxy\"",
            "\"mitmproxy/mitmproxy@sha256:00\"",
        ));
        assert!(text.contains("[mitmproxy]"), "{text}");
        assert!(text.contains("must not carry a digest"), "{text}");
        let text = invalid(&GOOD.replace("\"12.2.3\"", "\"12.2.3 latest\""));
        assert!(text.contains("is not a Docker tag"), "{text}");
        let text = invalid(&GOOD.replace("\"mitmproxy/mitmproxy\"", "\"Mitmproxy/Mitmproxy\""));
        assert!(text.contains("lowercase"), "{text}");
        // A registry with a port is not a tag.
        let lock = Lock::parse(&GOOD.replace(
            "\"ghcr.io/luckypipewrench/pipelock\"",
            "\"localhost:5000/pipelock\"",
        ))
        .unwrap();
        assert_eq!(registry_host(&lock.pipelock.repository), "localhost:5000");
        assert_eq!(registry_host("mitmproxy/mitmproxy"), "docker.io");
    }

    #[test]
    fn docker_hub_spellings_are_one_repository() {
        assert_eq!(
            normalized_repository("mitmproxy/mitmproxy"),
            normalized_repository("docker.io/mitmproxy/mitmproxy")
        );
        assert_eq!(
            normalized_repository("debian"),
            normalized_repository("docker.io/library/debian")
        );
        assert_ne!(
            normalized_repository("ghcr.io/mitmproxy/mitmproxy"),
            normalized_repository("mitmproxy/mitmproxy")
        );
    }

    fn assert_ways_out(which: Pinned, text: &str) {
        assert!(text.contains("docker load -i"), "{text}");
        assert!(text.contains("docker save"), "{text}");
        match which {
            Pinned::Pipelock => {
                assert!(text.contains("bottle start --scanner double"), "{text}");
                assert!(text.contains("NOT protected by pipelock"), "{text}");
            }
            Pinned::Mitmproxy => assert!(text.contains("--images local"), "{text}"),
        }
    }

    // Needs a Docker engine with no registry access (as on the development machines). Where the
    // image is already in the engine, ensure returns it instead.
    #[tokio::test]
    async fn without_a_registry_ensure_fails_at_once_naming_the_image_and_the_ways_out() {
        let docker = crate::docker::connect().await.unwrap();
        let lock = lock().unwrap();
        for which in Pinned::ALL {
            let reference = lock.entry(which).reference().unwrap();
            let started = Instant::now();
            let result = ensure_within(
                &docker,
                which,
                PullBounds {
                    idle: Duration::from_secs(20),
                    total: Duration::from_secs(25),
                },
            )
            .await;
            let elapsed = started.elapsed();
            eprintln!("{which}: ensure returned after {elapsed:?}");
            let err = match result {
                Ok(found) => {
                    eprintln!("{which} is in the local engine as {found}; nothing to check");
                    continue;
                }
                Err(err) => err,
            };
            assert!(elapsed < Duration::from_secs(26), "{elapsed:?}");
            assert!(matches!(err, PinnedError::PullFailed { .. }), "{err:?}");
            let text = err.to_string();
            eprintln!("{text}");
            assert!(text.contains(&reference), "{text}");
            assert!(text.contains("could not pull"), "{text}");
            assert_ways_out(which, &text);
        }
    }

    /// Accepts connections on the loopback and never answers: a hanging registry.
    async fn silent_registry() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn a_hanging_registry_is_given_up_on_within_the_bound() {
        let docker = crate::docker::connect().await.unwrap();
        let (port, registry) = silent_registry().await;
        let entry = LockEntry {
            repository: format!("127.0.0.1:{port}/bottle-test/hanging"),
            tag: "1".into(),
            digest: Some(format!("sha256:{}", "0".repeat(64))),
        };
        let bounds = PullBounds {
            idle: Duration::from_secs(3),
            total: Duration::from_secs(60),
        };
        let started = Instant::now();
        let err = ensure_entry(&docker, Pinned::Pipelock, &entry, bounds)
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        registry.abort();
        eprintln!("gave up after {elapsed:?}: {err}");
        assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}: {err}");
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        let text = err.to_string();
        assert!(text.contains("within 3 s"), "{text}");
        assert!(text.contains(&entry.reference().unwrap()), "{text}");
        assert_ways_out(Pinned::Pipelock, &text);
    }

    #[tokio::test]
    async fn a_whole_pull_is_bounded_too() {
        let docker = crate::docker::connect().await.unwrap();
        let (port, registry) = silent_registry().await;
        let entry = LockEntry {
            repository: format!("127.0.0.1:{port}/bottle-test/slow"),
            tag: "1".into(),
            digest: Some(format!("sha256:{}", "1".repeat(64))),
        };
        let bounds = PullBounds {
            idle: Duration::from_secs(30),
            total: Duration::from_secs(2),
        };
        let err = ensure_entry(&docker, Pinned::Mitmproxy, &entry, bounds)
            .await
            .unwrap_err();
        registry.abort();
        let text = err.to_string();
        assert!(text.contains("did not finish within 2 s"), "{text}");
        assert_ways_out(Pinned::Mitmproxy, &text);
    }

    /// A one-file image with no registry digest, as `docker load` leaves one on the classic
    /// image store.
    async fn import_image(docker: &Docker, repository: &str, tag: &str) {
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, "hello", &b"hi\n"[..])
            .unwrap();
        let body = bytes::Bytes::from(archive.into_inner().unwrap());
        let options = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repository)
            .tag(tag)
            .build();
        let mut stream = docker.create_image(Some(options), Some(bollard::body_full(body)), None);
        while let Some(item) = stream.next().await {
            item.unwrap();
        }
    }

    #[tokio::test]
    async fn a_loaded_image_without_a_registry_digest_is_used_by_its_tag() {
        let docker = crate::docker::connect().await.unwrap();
        let repository = "bottle-pinned-test/loaded";
        let tag = format!("t{}", std::process::id());
        import_image(&docker, repository, &tag).await;
        let entry = LockEntry {
            repository: repository.into(),
            tag: tag.clone(),
            digest: Some(format!("sha256:{}", "2".repeat(64))),
        };
        let bounds = PullBounds {
            idle: Duration::from_secs(5),
            total: Duration::from_secs(5),
        };
        let found = ensure_entry(&docker, Pinned::Pipelock, &entry, bounds).await;
        let _ = docker
            .remove_image(
                &entry.tagged(),
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
        assert_eq!(found.unwrap(), format!("{repository}:{tag}"));
    }
}
