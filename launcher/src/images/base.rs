//! The base image: Debian made in two stages with no host tool but the Docker engine.
//!
//! The first stage runs here (`debian.rs`: index, dependencies, downloads, the required
//! packages unpacked into one tar, imported as a bootstrap image); the second runs in the
//! engine (`fixtures/images/base/`: dpkg installs every package, offline), and its result is
//! copied into one layer. No root and no debootstrap on the host.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::{CreateImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::{StreamExt, TryStreamExt};

use super::debian::{self, Index};
use super::http::Http;
use super::recipes::{BASE_PRUNE, DEBIAN_PACKAGES, DEBIAN_SUITE};
use super::{ImageError, build, io_err};
use crate::progress::Step;

/// What the minbase variant adds to the required packages.
const MINBASE_EXTRA: &[&str] = &["apt"];
const ARCH: &str = "amd64";
const PARALLEL_DOWNLOADS: usize = 8;

pub const SECOND_STAGE_DOCKERFILE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/images/base/Dockerfile"
));
pub const SECOND_STAGE_SCRIPT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/images/base/second-stage.sh"
));

fn failed(step: &str, tail: impl Into<String>, hint: &str) -> ImageError {
    ImageError::StepFailed {
        image: "base".into(),
        step: step.into(),
        tail: tail.into(),
        hint: hint.into(),
    }
}

const MIRROR_HINT: &str = "check that the Debian mirror is reachable from this host (set \
                           BOTTLE_DEBIAN_MIRROR to another; behind a TLS-intercepting proxy, \
                           SSL_CERT_FILE names its CA bundle).";

pub async fn build(
    docker: &Docker,
    tag: &str,
    mirror: &str,
    cache: &Path,
    scratch: &Path,
) -> Result<(), ImageError> {
    let mirror = mirror.trim_end_matches('/');
    let step = Step::start(format!(
        "fetching Debian {DEBIAN_SUITE} for {tag} from {mirror}"
    ));
    if mirror.starts_with("http://") {
        step.detail(
            "warning: a plain-HTTP mirror: the package index is not authenticated \
             (an https:// mirror is)",
        );
    }
    let http =
        Http::new().map_err(|e| failed("reading the host's CA certificates", e, MIRROR_HINT))?;
    step.detail("reading the package index");
    let index = fetch_index(&http, mirror).await?;
    let unresolved = |e: String| {
        failed(
            "resolving dependencies",
            e,
            "the package list in launcher/src/images/recipes.rs names a package this suite lacks.",
        )
    };
    let required = index.closure(&index.required()).map_err(unresolved)?;
    let wanted: Vec<String> = MINBASE_EXTRA
        .iter()
        .chain(DEBIAN_PACKAGES)
        .map(|s| s.to_string())
        .collect();
    let base: BTreeSet<String> = index
        .closure(&wanted)
        .map_err(unresolved)?
        .difference(&required)
        .cloned()
        .collect();
    step.detail(&format!(
        "downloading {} packages ({} required, {} more)",
        required.len() + base.len(),
        required.len(),
        base.len()
    ));
    let all: Vec<&String> = required.iter().chain(&base).collect();
    let debs = download(&http, mirror, &index, &all, &cache.join("debian")).await?;

    step.detail("unpacking the required packages (first stage)");
    let first_stage = scratch.join("first-stage.tar");
    let required_debs: Vec<(String, PathBuf)> = required
        .iter()
        .map(|n| (n.clone(), debs[n].clone()))
        .collect();
    let dpkg_version = index
        .get("dpkg")
        .map(|p| p.version.clone())
        .ok_or_else(|| unresolved("dpkg is not in the index".into()))?;
    let out = std::fs::File::create(&first_stage).map_err(io_err("creating the first stage"))?;
    tokio::task::spawn_blocking(move || {
        debian::write_first_stage(&required_debs, &dpkg_version, std::io::BufWriter::new(out))
    })
    .await
    .expect("the first stage task panicked")
    .map_err(|e| {
        failed(
            "first stage",
            e,
            "a package could not be unpacked; see above.",
        )
    })?;

    let bootstrap = format!(
        "bottle-bootstrap:{}",
        tag.rsplit_once(':').map_or(tag, |(_, hash)| hash)
    );
    import_tar(docker, &first_stage, &bootstrap).await?;
    let _ = std::fs::remove_file(&first_stage);
    step.done();

    let result = second_stage(docker, tag, &bootstrap, &required, &base, &debs, scratch).await;
    let options = RemoveImageOptionsBuilder::new().force(true).build();
    let _ = docker.remove_image(&bootstrap, Some(options), None).await;
    result
}

async fn fetch_index(http: &Http, mirror: &str) -> Result<Index, ImageError> {
    let release_url = format!("{mirror}/dists/{DEBIAN_SUITE}/InRelease");
    let step_name = "reading the Debian package index";
    let release = http
        .get(&release_url)
        .await
        .map_err(|e| failed(step_name, e, MIRROR_HINT))?;
    let release = String::from_utf8_lossy(&release);
    let path = format!("main/binary-{ARCH}/Packages.gz");
    let (hash, _) = debian::release_entry(&release, &path).ok_or_else(|| {
        failed(
            step_name,
            format!("{release_url} lists no SHA-256 for {path}"),
            MIRROR_HINT,
        )
    })?;
    let url = format!("{mirror}/dists/{DEBIAN_SUITE}/{path}");
    let packages = http
        .get(&url)
        .await
        .map_err(|e| failed(step_name, e, MIRROR_HINT))?;
    if debian::sha256_hex(&packages) != hash {
        return Err(failed(
            step_name,
            format!("{url} does not match the SHA-256 in InRelease"),
            MIRROR_HINT,
        ));
    }
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packages[..]), &mut text)
            .map(|_| text)
    })
    .await
    .expect("the index task panicked")
    .map_err(|e| failed(step_name, format!("{url}: {e}"), MIRROR_HINT))?;
    Ok(Index::parse(&text))
}

/// Each package into `dir` (kept: a later build reuses what still matches the index),
/// checked against the index's SHA-256. Returns package name -> file.
async fn download(
    http: &Http,
    mirror: &str,
    index: &Index,
    names: &[&String],
    dir: &Path,
) -> Result<HashMap<String, PathBuf>, ImageError> {
    std::fs::create_dir_all(dir).map_err(io_err("creating the Debian package cache"))?;
    futures_util::stream::iter(names.iter().map(|name| async move {
        let package = index
            .get(name)
            .expect("the closure only names indexed packages");
        let file_name = package.filename.rsplit('/').next().unwrap_or(name);
        let path = dir.join(file_name);
        let cached = std::fs::read(&path).is_ok_and(|b| debian::sha256_hex(&b) == package.sha256);
        if !cached {
            let url = format!("{mirror}/{}", package.filename);
            let step = "downloading Debian packages";
            let bytes = http
                .get(&url)
                .await
                .map_err(|e| failed(step, e, MIRROR_HINT))?;
            if debian::sha256_hex(&bytes) != package.sha256 {
                return Err(failed(
                    step,
                    format!("{url} does not match the SHA-256 in the package index"),
                    MIRROR_HINT,
                ));
            }
            let partial = path.with_extension("partial");
            std::fs::write(&partial, &bytes).map_err(io_err("writing a Debian package"))?;
            std::fs::rename(&partial, &path).map_err(io_err("writing a Debian package"))?;
        }
        Ok::<_, ImageError>(((*name).clone(), path))
    }))
    .buffer_unordered(PARALLEL_DOWNLOADS)
    .try_collect()
    .await
}

async fn import_tar(docker: &Docker, tar: &Path, tag: &str) -> Result<(), ImageError> {
    let (repo, version) = tag.split_once(':').expect("tags are repo:hash");
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(version)
        .build();
    let file = tokio::fs::File::open(tar)
        .await
        .map_err(io_err("opening the first stage"))?;
    let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    let mut stream = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    while let Some(item) = stream.next().await {
        item.map_err(|source| ImageError::Engine {
            context: format!("importing {tag}"),
            source,
        })?;
    }
    Ok(())
}

async fn second_stage(
    docker: &Docker,
    tag: &str,
    bootstrap: &str,
    required: &BTreeSet<String>,
    base: &BTreeSet<String>,
    debs: &HashMap<String, PathBuf>,
    scratch: &Path,
) -> Result<(), ImageError> {
    let context = scratch.join("context");
    std::fs::create_dir_all(&context).map_err(io_err("creating the build context"))?;
    let lines = |names: &mut dyn Iterator<Item = &String>| {
        names.fold(String::new(), |text, n| text + n + "\n")
    };
    for (name, text) in [
        ("Dockerfile", SECOND_STAGE_DOCKERFILE.to_string()),
        ("second-stage.sh", SECOND_STAGE_SCRIPT.to_string()),
        ("required.list", lines(&mut required.iter())),
        ("base.list", lines(&mut base.iter())),
        ("prune.list", BASE_PRUNE.join("\n") + "\n"),
    ] {
        std::fs::write(context.join(name), text).map_err(io_err("writing the build context"))?;
    }
    for (name, path) in debs {
        build::link_or_copy(path, &context.join(format!("{name}.deb")))?;
    }
    let args = HashMap::from([("BOOTSTRAP", bootstrap)]);
    build::build_context(docker, "base", &context, tag, &args).await
}
