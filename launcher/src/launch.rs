//! From what the user asked (`bottle start` flags and `bottle.toml`) to a `BottleSpec`: which
//! images, which scanner, which name. Also the launcher's errors and their exit codes.

use std::path::PathBuf;

use bollard::Docker;

use crate::docker::DockerUnreachable;
use crate::executor::StartError;
use crate::images::pinned::{self, Pinned, PinnedError};
use crate::images::{self, ImageError, ImageOptions, Recipe};
use crate::manifest::{Manifest, ManifestError, Resolved};
use crate::plan::{AgentSpec, BottleSpec, EgressSpec, PlanError, ScannerKind, ScannerSpec};

/// The name of a bottle when neither `--name` nor the manifest gives one.
pub const DEFAULT_NAME: &str = "default";
/// What the default agent image (the locally built Claude Code image) runs.
pub const DEFAULT_AGENT_COMMAND: [&str; 1] = ["claude"];
/// An image that carries `pipelock-double` (the harness's fixtures image); default: the newest
/// local `bottle-fixtures` image.
pub const DOUBLE_IMAGE_ENV: &str = "BOTTLE_DOUBLE_IMAGE";
const DOUBLE_REPOSITORY: &str = "bottle-fixtures";

/// Where images come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagesMode {
    /// Built here from Debian packages and PyPI, on demand.
    Local,
    /// The official images by the digests in `images.lock`, pulled.
    Pinned,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Docker(#[from] DockerUnreachable),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Pinned(#[from] PinnedError),
    #[error(
        "no image with pipelock-double here: set {DOUBLE_IMAGE_ENV} to one, or build the \
         fixtures image from this repository with `cargo run -p bottle-harness --bin \
         bottle-test-images`"
    )]
    NoDoubleImage,
    #[error(
        "--images pinned has no agent image of its own: set agent.image (and agent.command) in \
         bottle.toml, or use --images local (builds the Claude Code agent image here)"
    )]
    PinnedNeedsAgentImage,
    #[error("no bottle named {0:?}: `bottle ps` lists the bottles there are")]
    NoSuchBottle(String),
    #[error("interrupted; everything the start made was removed")]
    Interrupted,
}

/// The launcher's exit codes (README, "Exit codes"). An attached start exits with the agent's
/// own code when the bottle ran.
pub mod exit {
    pub const NO_SUCH_BOTTLE: u8 = 1;
    /// clap's own code for a bad command line.
    pub const USAGE: u8 = 2;
    pub const BAD_MANIFEST: u8 = 65;
    pub const NAME_IN_USE: u8 = 66;
    pub const IMAGE_UNAVAILABLE: u8 = 67;
    pub const START_FAILED: u8 = 68;
    pub const NO_DOCKER: u8 = 69;
    pub const INTERNAL: u8 = 70;
    pub const INTERRUPTED: u8 = 130;
}

impl LaunchError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::Manifest(_) | LaunchError::Plan(_) => exit::BAD_MANIFEST,
            LaunchError::Docker(_)
            | LaunchError::Preflight(_)
            | LaunchError::Start(StartError::EngineCannotConfine { .. }) => exit::NO_DOCKER,
            LaunchError::Start(StartError::NameInUse(_)) => exit::NAME_IN_USE,
            LaunchError::Start(StartError::ImageMissing { .. })
            | LaunchError::Image(_)
            | LaunchError::Pinned(_)
            | LaunchError::NoDoubleImage
            | LaunchError::PinnedNeedsAgentImage => exit::IMAGE_UNAVAILABLE,
            LaunchError::Start(
                StartError::ComponentExited { .. }
                | StartError::ComponentNotReady { .. }
                | StartError::CaNeverAppeared { .. }
                | StartError::CaInstall { .. }
                | StartError::Injected(_),
            ) => exit::START_FAILED,
            LaunchError::Start(_) => exit::INTERNAL,
            LaunchError::NoSuchBottle(_) => exit::NO_SUCH_BOTTLE,
            LaunchError::Interrupted => exit::INTERRUPTED,
        }
    }
}

/// What `bottle start` was asked for.
#[derive(Clone, Debug)]
pub struct StartRequest {
    pub manifest: Manifest,
    pub name: Option<String>,
    pub images: ImagesMode,
    pub scanner: ScannerKind,
    /// `--scanner-image`: this image runs as the scanner `scanner` says, instead of the lock's
    /// pipelock or the local double.
    pub scanner_image: Option<String>,
    /// `--mitm-image`: this image runs mitmproxy (and the relay), whatever `images` says.
    pub mitm_image: Option<String>,
}

/// The images a bottle runs.
#[derive(Clone, Debug)]
pub struct Images {
    pub mitm: String,
    pub agent: String,
    pub scanner: String,
}

/// The manifest at `path`, or `./bottle.toml` when there is one, or every default.
pub fn load_manifest(path: Option<PathBuf>) -> Result<Manifest, ManifestError> {
    match path {
        Some(path) => Manifest::load(&path),
        None if std::path::Path::new("bottle.toml").is_file() => {
            Manifest::load(std::path::Path::new("bottle.toml"))
        }
        None => Ok(Manifest::defaults()),
    }
}

/// Names the images without making any (a dry run): local tags are content hashes, pinned ones
/// come from the lock file. With `docker`, finds the double's image too.
pub async fn image_names(
    docker: Option<&Docker>,
    request: &StartRequest,
) -> Result<Images, LaunchError> {
    let opts = ImageOptions::from_env();
    let mitm = match (&request.mitm_image, request.images) {
        (Some(given), _) => given.clone(),
        (None, ImagesMode::Local) => images::tag_of(&opts, Recipe::Mitmproxy)?,
        (None, ImagesMode::Pinned) => pinned::lock()?.entry(Pinned::Mitmproxy).reference()?,
    };
    let agent = match (&request.manifest.agent_image, request.images) {
        (Some(image), _) => image.clone(),
        (None, ImagesMode::Local) => images::tag_of(&opts, Recipe::AgentClaude)?,
        (None, ImagesMode::Pinned) => return Err(LaunchError::PinnedNeedsAgentImage),
    };
    let scanner = match (&request.scanner_image, request.scanner) {
        (Some(given), _) => given.clone(),
        (None, ScannerKind::Pipelock) => pinned::lock()?.entry(Pinned::Pipelock).reference()?,
        (None, ScannerKind::Double) => match docker {
            Some(docker) => double_image(docker).await?,
            None => std::env::var(DOUBLE_IMAGE_ENV)
                .unwrap_or_else(|_| format!("{DOUBLE_REPOSITORY}:<newest local>")),
        },
    };
    Ok(Images {
        mitm,
        agent,
        scanner,
    })
}

/// Makes sure every image is here: builds the local ones (with progress), pulls pinned ones.
pub async fn ensure_images(docker: &Docker, request: &StartRequest) -> Result<Images, LaunchError> {
    crate::preflight::check(docker, false).await?;
    let mut images = image_names(Some(docker), request).await?;
    if request.images == ImagesMode::Local {
        let mut wanted = vec![];
        if request.mitm_image.is_none() {
            wanted.push(Recipe::Mitmproxy);
        }
        if request.manifest.agent_image.is_none() {
            wanted.push(Recipe::AgentClaude);
        }
        images::ensure(docker, &ImageOptions::from_env(), &wanted).await?;
    }
    images.mitm = match (&request.mitm_image, request.images) {
        (Some(given), _) => pinned::ensure_given(docker, "--mitm-image", given).await?,
        // A pinned image may be here by its tag only (`docker load` keeps no digest).
        (None, ImagesMode::Pinned) => pinned::ensure(docker, Pinned::Mitmproxy).await?,
        (None, ImagesMode::Local) => images.mitm,
    };
    images.scanner = match (&request.scanner_image, request.scanner) {
        (Some(given), _) => pinned::ensure_given(docker, "--scanner-image", given).await?,
        (None, ScannerKind::Pipelock) => pinned::ensure(docker, Pinned::Pipelock).await?,
        (None, ScannerKind::Double) => images.scanner,
    };
    Ok(images)
}

/// `BOTTLE_DOUBLE_IMAGE`, or the newest local `bottle-fixtures` image.
async fn double_image(docker: &Docker) -> Result<String, LaunchError> {
    if let Ok(image) = std::env::var(DOUBLE_IMAGE_ENV) {
        return Ok(image);
    }
    let list = docker
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            filters: Some(std::collections::HashMap::from([(
                "reference".to_string(),
                vec![DOUBLE_REPOSITORY.to_string()],
            )])),
            ..Default::default()
        }))
        .await
        .map_err(|source| StartError::Engine {
            context: "listing images".into(),
            source,
        })?;
    list.into_iter()
        .max_by_key(|image| image.created)
        .and_then(|image| image.repo_tags.into_iter().next())
        .ok_or(LaunchError::NoDoubleImage)
}

/// The spec of the bottle asked for, with the host's values `resolved` and these `images`.
pub fn spec(
    request: &StartRequest,
    resolved: Resolved,
    images: Images,
) -> Result<BottleSpec, LaunchError> {
    let manifest = &request.manifest;
    // The manifest requires a command with an image of its own.
    let command = manifest
        .agent_command
        .clone()
        .unwrap_or_else(|| DEFAULT_AGENT_COMMAND.map(String::from).to_vec());
    let scanner = ScannerSpec {
        kind: request.scanner,
        image: images.scanner,
        entrypoint: match request.scanner {
            ScannerKind::Pipelock => None,
            ScannerKind::Double => Some(vec!["pipelock-double".into()]),
        },
    };
    Ok(BottleSpec {
        name: request
            .name
            .clone()
            .or_else(|| manifest.name.clone())
            .unwrap_or_else(|| DEFAULT_NAME.into()),
        agent: AgentSpec {
            image: images.agent,
            command,
            env: resolved.env,
            secret_env: resolved.secret_env,
            limits: manifest.agent_limits.clone(),
        },
        scanner,
        mitm_image: images.mitm,
        addon_dir: None,
        egress: EgressSpec {
            network: manifest.egress_network.clone(),
            allowlist: manifest.allowlist.clone(),
            any_host: manifest.any_host,
            upstream_ca: resolved.upstream_ca,
            ssrf_allow: vec![],
        },
        credentials: manifest.credentials.clone(),
        test_verdict_allow: false,
    })
}
