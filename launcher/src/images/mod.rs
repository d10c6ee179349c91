//! Images built here, with no registry: a Debian base (`base.rs`, no debootstrap), and images
//! built FROM it by the engine's classic builder with no network. The harness and the launcher both call
//! [`ensure`]; tags are content hashes, so an existing image is reused and a missing one is
//! built on demand, with progress on stderr.

mod base;
mod build;
mod debian;
mod fetch;
mod http;
pub mod pinned;
pub mod recipes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bollard::Docker;
use bytes::Bytes;

pub use recipes::Recipe;

use crate::docker::{DockerUnreachable, is_not_found};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Docker(#[from] DockerUnreachable),
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error("building {image} failed at step `{step}`:\n{tail}\n{hint}")]
    StepFailed {
        image: String,
        step: String,
        tail: String,
        hint: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("the Docker engine failed while {context}: {source}")]
    Engine {
        context: String,
        source: bollard::errors::Error,
    },
    #[error(
        "the fixtures image needs the fixture binaries; build them with \
         `cargo build -p bottle-upstream -p pipelock-double` and pass their paths"
    )]
    NoFixtureBinaries,
}

pub(crate) fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        context: context.to_string(),
        source,
    }
}

/// The last `n` lines of a step's output, for error messages.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where and how images are made.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Downloads (wheels, the Claude CLI), the build lock and scratch space.
    pub cache_dir: PathBuf,
    /// The Debian mirror the base image's packages come from.
    pub debian_mirror: String,
    /// The fixture binaries the fixtures image carries (only the harness has them).
    pub fixture_binaries: Vec<PathBuf>,
}

impl ImageOptions {
    /// `BOTTLE_CACHE_DIR` (default `$XDG_CACHE_HOME/bottle` or `~/.cache/bottle`) and
    /// `BOTTLE_DEBIAN_MIRROR` (default the Debian CDN).
    pub fn from_env() -> Self {
        let cache_dir = std::env::var_os("BOTTLE_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("bottle")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/bottle")))
            .unwrap_or_else(|| std::env::temp_dir().join("bottle-cache"));
        let debian_mirror = std::env::var("BOTTLE_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "https://deb.debian.org/debian".to_string());
        ImageOptions {
            cache_dir,
            debian_mirror,
            fixture_binaries: Vec::new(),
        }
    }
}

/// The tag `recipe` has with these options: a pure function of the recipes and inputs.
pub fn tag_of(opts: &ImageOptions, recipe: Recipe) -> Result<String, ImageError> {
    Ok(tags_with_parents(opts, &[recipe])?
        .remove(&recipe)
        .expect("the recipe's own tag"))
}

/// The tags of `wanted` and of all their parents, each computed once: the fixtures tag hashes
/// tens of megabytes of binaries.
fn tags_with_parents(
    opts: &ImageOptions,
    wanted: &[Recipe],
) -> Result<HashMap<Recipe, String>, ImageError> {
    let mut tags: HashMap<Recipe, String> = HashMap::new();
    // Recipe::ALL lists parents before children, so a parent's tag is always there first.
    for recipe in Recipe::ALL {
        let needed = wanted
            .iter()
            .any(|&w| std::iter::successors(Some(w), |r| r.parent()).any(|r| r == recipe));
        if !needed {
            continue;
        }
        let tag = match recipe.parent() {
            None => recipes::base_tag(),
            Some(parent) => {
                if recipe == Recipe::Fixtures && opts.fixture_binaries.is_empty() {
                    return Err(ImageError::NoFixtureBinaries);
                }
                let spec = recipes::docker_recipe(recipe, &opts.fixture_binaries)
                    .expect("every recipe with a parent is a Dockerfile");
                recipes::docker_tag(recipe, &spec, &tags[&parent])?
            }
        };
        tags.insert(recipe, tag);
    }
    Ok(tags)
}

/// Makes sure the images of `wanted` (and their parents) exist, building what is missing, and
/// returns their tags in the same order. Concurrent callers on one machine serialise on a lock
/// file, so only one of them builds and the others find the images there.
pub async fn ensure(
    docker: &Docker,
    opts: &ImageOptions,
    wanted: &[Recipe],
) -> Result<Vec<String>, ImageError> {
    let tags = tags_with_parents(opts, wanted)?;
    // Parents first (Recipe::ALL's order), each once.
    let mut missing = Vec::new();
    for recipe in Recipe::ALL.into_iter().filter(|r| tags.contains_key(r)) {
        if !exists(docker, &tags[&recipe]).await? {
            missing.push(recipe);
        }
    }
    let wanted_tags = wanted.iter().map(|r| tags[r].clone()).collect();
    if missing.is_empty() {
        return Ok(wanted_tags);
    }
    // Room to build, found out now rather than after minutes of building.
    crate::preflight::check(docker, true).await?;
    std::fs::create_dir_all(&opts.cache_dir).map_err(io_err("creating the cache folder"))?;
    let _lock = lock(&opts.cache_dir.join("images.lock")).await?;
    let tags = &tags;
    // The base first: every other image is built FROM it. Then one lane per child of the base
    // (mitmproxy, agent, fixtures), concurrently; a lane builds its images parent first.
    if missing.contains(&Recipe::Base) {
        build_if_missing(docker, opts, Recipe::Base, tags).await?;
    }
    let mut lanes: Vec<Vec<Recipe>> = Vec::new();
    for recipe in missing.into_iter().filter(|r| *r != Recipe::Base) {
        match lanes
            .iter_mut()
            .find(|lane| lane_root(lane[0]) == lane_root(recipe))
        {
            Some(lane) => lane.push(recipe),
            None => lanes.push(vec![recipe]),
        }
    }
    futures_util::future::try_join_all(lanes.into_iter().map(|lane| async move {
        for recipe in lane {
            build_if_missing(docker, opts, recipe, tags).await?;
        }
        Ok::<_, ImageError>(())
    }))
    .await?;
    Ok(wanted_tags)
}

/// The ancestor of `recipe` that is built directly on the base.
fn lane_root(mut recipe: Recipe) -> Recipe {
    while let Some(parent) = recipe.parent().filter(|p| *p != Recipe::Base) {
        recipe = parent;
    }
    recipe
}

async fn build_if_missing(
    docker: &Docker,
    opts: &ImageOptions,
    recipe: Recipe,
    tags: &HashMap<Recipe, String>,
) -> Result<(), ImageError> {
    // Another process may have built it while we waited for the lock.
    if !exists(docker, &tags[&recipe]).await? {
        let parent_tag = recipe.parent().map(|p| tags[&p].as_str());
        build_one(docker, opts, recipe, &tags[&recipe], parent_tag).await?;
    }
    Ok(())
}

pub async fn exists(docker: &Docker, tag: &str) -> Result<bool, ImageError> {
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(source) => Err(ImageError::Engine {
            context: format!("looking for image {tag}"),
            source,
        }),
    }
}

async fn build_one(
    docker: &Docker,
    opts: &ImageOptions,
    recipe: Recipe,
    tag: &str,
    parent_tag: Option<&str>,
) -> Result<(), ImageError> {
    let scratch_root = opts.cache_dir.join("tmp");
    std::fs::create_dir_all(&scratch_root).map_err(io_err("creating the scratch folder"))?;
    // Removed on every exit path, success or failure: nothing half-made stays on disk.
    let scratch = tempfile::Builder::new()
        .prefix(recipe.repository())
        .tempdir_in(&scratch_root)
        .map_err(io_err("creating a scratch folder"))?;
    match parent_tag {
        None => {
            base::build(
                docker,
                tag,
                &opts.debian_mirror,
                &opts.cache_dir,
                scratch.path(),
            )
            .await
        }
        Some(parent_tag) => {
            let spec = recipes::docker_recipe(recipe, &opts.fixture_binaries)
                .expect("every recipe with a parent is a Dockerfile");
            build::build(
                docker,
                recipe.repository(),
                &spec,
                tag,
                parent_tag,
                &opts.cache_dir,
                scratch.path(),
            )
            .await
        }
    }
}

/// Builds `tag` from a Dockerfile whose `FROM` names `${BASE}`, on top of `base_tag`, with no
/// network and an empty context. For ad-hoc images and for testing failure handling.
pub async fn build_from_dockerfile(
    docker: &Docker,
    opts: &ImageOptions,
    tag: &str,
    dockerfile: &'static str,
    base_tag: &str,
) -> Result<(), ImageError> {
    let spec = recipes::DockerRecipe {
        dockerfile,
        parent_arg: "BASE",
        wheels: None,
        claude_wheel: None,
        files: &[],
        binaries: Vec::new(),
    };
    let scratch = tempfile::tempdir().map_err(io_err("creating a scratch folder"))?;
    build::build(
        docker,
        "custom",
        &spec,
        tag,
        base_tag,
        &opts.cache_dir,
        scratch.path(),
    )
    .await
}

/// An exclusive lock on a file, held until the returned handle drops.
async fn lock(path: &Path) -> Result<std::fs::File, ImageError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("opening the image build lock"))?;
    if file.try_lock().is_err() {
        eprintln!("[bottle] another process is building images; waiting for it ...");
        return tokio::task::spawn_blocking(move || file.lock().map(|_| file))
            .await
            .expect("lock task panicked")
            .map_err(io_err("waiting for the image build lock"));
    }
    Ok(file)
}

/// A running `tar` whose output is the request body of an import or a build.
pub(crate) struct TarProcess(tokio::process::Child);

impl TarProcess {
    /// Waits for tar, so a read error in the folder is not mistaken for a short archive.
    pub async fn finish(mut self) -> Result<(), ImageError> {
        let status = self.0.wait().await.map_err(io_err("waiting for tar"))?;
        if !status.success() {
            return Err(ImageError::StepFailed {
                image: "context".into(),
                step: "tar".into(),
                tail: format!("tar exited with {status}"),
                hint: "check the folder is readable and the disk is not full.".into(),
            });
        }
        Ok(())
    }
}

/// Streams `dir` as a tar archive (numeric owners, as the files are) without holding it in
/// memory: the base root filesystem is ~300 MB and the Claude CLI ~370 MB.
pub(crate) fn tar_stream(
    dir: &Path,
) -> Result<
    (
        impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
        TarProcess,
    ),
    ImageError,
> {
    use futures_util::TryStreamExt;
    let mut child = tokio::process::Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err("starting tar"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stream = tokio_util::io::ReaderStream::with_capacity(stdout, 1 << 20).map_ok(Bytes::from);
    Ok((stream, TarProcess(child)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_on_the_same_child_of_the_base_share_a_lane() {
        assert_eq!(lane_root(Recipe::MitmproxyTest), Recipe::Mitmproxy);
        assert_eq!(lane_root(Recipe::AgentClaude), Recipe::Agent);
        assert_eq!(lane_root(Recipe::Fixtures), Recipe::Fixtures);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn the_fixtures_image_refuses_to_hash_without_binaries() {
        let opts = ImageOptions {
            cache_dir: "/nonexistent".into(),
            debian_mirror: String::new(),
            fixture_binaries: Vec::new(),
        };
        assert!(matches!(
            tag_of(&opts, Recipe::Fixtures),
            Err(ImageError::NoFixtureBinaries)
        ));
        let base = tag_of(&opts, Recipe::Base).unwrap();
        assert!(base.starts_with("bottle-base:"));
    }

    fn scratch_is_empty(cache: &Path) -> bool {
        std::fs::read_dir(cache.join("tmp")).map_or(true, |mut d| d.next().is_none())
    }

    // Needs a Docker engine, as building the base does (and nothing else on the host).
    #[tokio::test]
    async fn a_failed_debian_fetch_names_the_step_shows_the_url_and_leaves_nothing() {
        let docker = crate::docker::connect().await.unwrap();
        let cache = tempfile::tempdir().unwrap();
        let opts = ImageOptions {
            cache_dir: cache.path().into(),
            // Nothing listens on the discard port: the fetch fails at once, offline.
            debian_mirror: "http://127.0.0.1:9/debian".into(),
            fixture_binaries: Vec::new(),
        };
        let tag = "bottle-base-failing:test";
        let err = build_one(&docker, &opts, Recipe::Base, tag, None)
            .await
            .unwrap_err();
        let ImageError::StepFailed {
            step, tail, hint, ..
        } = &err
        else {
            panic!("expected StepFailed, got {err}");
        };
        assert_eq!(step, "reading the Debian package index");
        // A refused connection may be a mirror's moment: tried again before giving up.
        assert!(tail.contains("tried 3 times"), "{tail}");
        assert!(
            tail.contains("127.0.0.1"),
            "the output tail names the mirror: {tail}"
        );
        assert!(hint.contains("BOTTLE_DEBIAN_MIRROR"), "{hint}");
        assert!(!exists(&docker, tag).await.unwrap());
        assert!(
            scratch_is_empty(cache.path()),
            "the scratch root filesystem was left behind"
        );
    }

    #[tokio::test]
    async fn a_failed_wheel_download_names_the_step_and_leaves_no_wheelhouse() {
        // SAFETY: nextest runs each test in its own process; nothing else reads these here.
        unsafe {
            std::env::set_var("PIP_INDEX_URL", "http://127.0.0.1:9/simple");
        }
        let cache = tempfile::tempdir().unwrap();
        let requirement = "mitmproxy==12.2.3 --hash=sha256:00\n";
        let err = fetch::wheelhouse(cache.path(), requirement)
            .await
            .unwrap_err();
        let ImageError::StepFailed { step, tail, .. } = &err else {
            panic!("expected StepFailed, got {err}");
        };
        assert_eq!(step, "downloading pinned wheels");
        assert!(!tail.is_empty());
        let wheels = cache.path().join("wheels");
        assert!(std::fs::read_dir(&wheels).map_or(true, |mut d| d.next().is_none()));
    }
}
