//! The image recipes and their content-hash tags.
//!
//! A tag is a hash of everything that goes into an image: its recipe text, the pinned inputs and
//! its parent's tag. So an image rebuilds exactly when something it is made of changes, and a
//! change to the base cascades to every image built on it.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::ImageError;

/// The images bottle builds locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// Debian trixie minbase, made as debootstrap would (`base.rs`), with every Debian package
    /// any image needs, so the ~300 MB root filesystem is stored once and shared.
    Base,
    /// Base + mitmproxy 12.2.3 in a venv.
    Mitmproxy,
    /// Mitmproxy + pytest, pytest-asyncio and ruff for the addon's tests, and actionlint,
    /// zizmor and check-jsonschema for the CI files users copy (`ci/`).
    MitmproxyTest,
    /// Base + a non-root user and the probe scripts.
    Agent,
    /// Agent + the real Claude Code CLI from the pinned claude-agent-sdk wheel.
    AgentClaude,
    /// Base + the fixture binaries (recording upstream, pipelock double) built by cargo.
    Fixtures,
}

impl Recipe {
    pub const ALL: [Recipe; 6] = [
        Recipe::Base,
        Recipe::Mitmproxy,
        Recipe::MitmproxyTest,
        Recipe::Agent,
        Recipe::AgentClaude,
        Recipe::Fixtures,
    ];

    /// The image repository name; the tag is the content hash.
    pub fn repository(self) -> &'static str {
        match self {
            Recipe::Base => "bottle-base",
            Recipe::Mitmproxy => "bottle-mitmproxy",
            Recipe::MitmproxyTest => "bottle-mitmproxy-test",
            Recipe::Agent => "bottle-agent",
            Recipe::AgentClaude => "bottle-agent-claude",
            Recipe::Fixtures => "bottle-fixtures",
        }
    }

    pub fn parent(self) -> Option<Recipe> {
        match self {
            Recipe::Base => None,
            Recipe::Mitmproxy | Recipe::Agent | Recipe::Fixtures => Some(Recipe::Base),
            Recipe::MitmproxyTest => Some(Recipe::Mitmproxy),
            Recipe::AgentClaude => Some(Recipe::Agent),
        }
    }
}

/// How the base root filesystem is made. Every Debian package of every image is here: images
/// are built with no network, so nothing can be installed later.
pub const DEBIAN_SUITE: &str = "trixie";
pub const DEBIAN_VARIANT: &str = "minbase";
pub const DEBIAN_PACKAGES: &[&str] = &[
    "ca-certificates",
    "python3",
    "python3-venv",
    "curl",
    "nodejs",
    "openssl",
    // The upstream fixture's sink: one nftables tproxy rule sends every other port to it.
    "nftables",
];
/// Removed from the root filesystem before import: apt's caches and documentation.
pub const BASE_PRUNE: &[&str] = &[
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
];
/// Bump when the way the base is made changes in a way the constants above do not show.
const BASE_RECIPE_REVISION: &str = "2";

/// A Dockerfile recipe: its text and what its build context holds.
pub struct DockerRecipe {
    pub dockerfile: &'static str,
    /// The build argument that names the parent image in the Dockerfile's `FROM`.
    pub parent_arg: &'static str,
    /// Pinned wheels (a requirements file with hashes), fetched on the host into `wheels/`.
    pub wheels: Option<&'static str>,
    /// The pinned claude-agent-sdk wheel, whose bundled CLI becomes `claude` in the context.
    pub claude_wheel: Option<&'static str>,
    /// Files copied into the context as they are.
    pub files: &'static [(&'static str, &'static [u8])],
    /// Binaries copied into `bin/` (the fixtures).
    pub binaries: Vec<PathBuf>,
}

macro_rules! recipe_file {
    ($path:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/images/",
            $path
        ))
    };
}
macro_rules! recipe_bytes {
    ($path:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/images/",
            $path
        ))
    };
}

/// The probe scripts the agent image carries, run by the harness inside the agent.
const AGENT_PROBES: &[(&str, &[u8])] = &[
    ("probes/probe.js", recipe_bytes!("agent/probes/probe.js")),
    ("probes/probe.py", recipe_bytes!("agent/probes/probe.py")),
    (
        "probes/probe_result.py",
        recipe_bytes!("agent/probes/probe_result.py"),
    ),
    (
        "probes/probe-curl.py",
        recipe_bytes!("agent/probes/probe-curl.py"),
    ),
    (
        "probes/probe-claude.py",
        recipe_bytes!("agent/probes/probe-claude.py"),
    ),
    (
        "probes/probe-raw.py",
        recipe_bytes!("agent/probes/probe-raw.py"),
    ),
    (
        "probes/probe-httpx.py",
        recipe_bytes!("agent/probes/probe-httpx.py"),
    ),
    (
        "probes/probe-inspect.py",
        recipe_bytes!("agent/probes/probe-inspect.py"),
    ),
    ("probes/load.js", recipe_bytes!("agent/probes/load.js")),
];

pub fn docker_recipe(recipe: Recipe, fixture_binaries: &[PathBuf]) -> Option<DockerRecipe> {
    let plain = |dockerfile, parent_arg| DockerRecipe {
        dockerfile,
        parent_arg,
        wheels: None,
        claude_wheel: None,
        files: &[],
        binaries: Vec::new(),
    };
    Some(match recipe {
        Recipe::Base => return None,
        Recipe::Mitmproxy => DockerRecipe {
            wheels: Some(recipe_file!("mitmproxy/requirements.txt")),
            ..plain(recipe_file!("mitmproxy/Dockerfile"), "BASE")
        },
        Recipe::MitmproxyTest => DockerRecipe {
            wheels: Some(recipe_file!("mitmproxy-test/requirements.txt")),
            ..plain(recipe_file!("mitmproxy-test/Dockerfile"), "PARENT")
        },
        Recipe::Agent => DockerRecipe {
            files: AGENT_PROBES,
            wheels: Some(recipe_file!("agent/requirements.txt")),
            ..plain(recipe_file!("agent/Dockerfile"), "BASE")
        },
        Recipe::AgentClaude => DockerRecipe {
            claude_wheel: Some(recipe_file!("agent-claude/requirements.txt")),
            ..plain(recipe_file!("agent-claude/Dockerfile"), "PARENT")
        },
        Recipe::Fixtures => DockerRecipe {
            binaries: fixture_binaries.to_vec(),
            ..plain(recipe_file!("fixtures/Dockerfile"), "BASE")
        },
    })
}

/// Hashes labelled parts; the length prefixes keep `("ab","c")` apart from `("a","bc")`.
#[derive(Default)]
struct InputHash(Sha256);

impl InputHash {
    fn part(&mut self, label: &str, bytes: &[u8]) -> &mut Self {
        for chunk in [label.as_bytes(), bytes] {
            self.0.update((chunk.len() as u64).to_le_bytes());
            self.0.update(chunk);
        }
        self
    }

    fn tag(self) -> String {
        hex::encode(&self.0.finalize()[..8])
    }
}

/// The content-hash tag of the base image.
pub fn base_tag() -> String {
    let mut h = InputHash::default();
    h.part("revision", BASE_RECIPE_REVISION.as_bytes())
        .part("suite", DEBIAN_SUITE.as_bytes())
        .part("variant", DEBIAN_VARIANT.as_bytes())
        .part("packages", DEBIAN_PACKAGES.join(",").as_bytes())
        .part("prune", BASE_PRUNE.join(",").as_bytes())
        .part(
            "dockerfile",
            super::base::SECOND_STAGE_DOCKERFILE.as_bytes(),
        )
        .part("second-stage", super::base::SECOND_STAGE_SCRIPT.as_bytes());
    format!("{}:{}", Recipe::Base.repository(), h.tag())
}

/// The content-hash tag of a Dockerfile image, given its parent's tag.
pub fn docker_tag(
    recipe: Recipe,
    spec: &DockerRecipe,
    parent_tag: &str,
) -> Result<String, ImageError> {
    let mut h = InputHash::default();
    h.part("parent", parent_tag.as_bytes())
        .part("dockerfile", spec.dockerfile.as_bytes())
        .part("wheels", spec.wheels.unwrap_or_default().as_bytes())
        .part("claude", spec.claude_wheel.unwrap_or_default().as_bytes());
    for (name, bytes) in spec.files {
        h.part(name, bytes);
    }
    for path in &spec.binaries {
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
            context: format!("reading fixture binary {}", path.display()),
            source,
        })?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        h.part(&name, &Sha256::digest(&bytes));
    }
    Ok(format!("{}:{}", recipe.repository(), h.tag()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_change_when_an_input_changes_and_only_then() {
        let spec = docker_recipe(Recipe::Agent, &[]).unwrap();
        let a = docker_tag(Recipe::Agent, &spec, "bottle-base:1").unwrap();
        assert_eq!(
            a,
            docker_tag(Recipe::Agent, &spec, "bottle-base:1").unwrap()
        );
        assert_ne!(
            a,
            docker_tag(Recipe::Agent, &spec, "bottle-base:2").unwrap()
        );
        let edited = DockerRecipe {
            dockerfile: "FROM x\n",
            ..docker_recipe(Recipe::Agent, &[]).unwrap()
        };
        assert_ne!(
            a,
            docker_tag(Recipe::Agent, &edited, "bottle-base:1").unwrap()
        );
        assert!(a.starts_with("bottle-agent:"), "{a}");
    }

    #[test]
    fn the_agent_image_carries_every_probe_script() {
        // A probe left out of the list would be missing from the image, with the same tag.
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/images/agent/probes"
        );
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| format!("probes/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = AGENT_PROBES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn fixture_tags_follow_the_binaries_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bottle-upstream");
        std::fs::write(&bin, b"one").unwrap();
        let spec = docker_recipe(Recipe::Fixtures, std::slice::from_ref(&bin)).unwrap();
        let first = docker_tag(Recipe::Fixtures, &spec, "p").unwrap();
        std::fs::write(&bin, b"two").unwrap();
        assert_ne!(first, docker_tag(Recipe::Fixtures, &spec, "p").unwrap());
    }

    #[test]
    fn every_pinned_requirement_has_a_hash() {
        for recipe in Recipe::ALL {
            let Some(spec) = docker_recipe(recipe, &[]) else {
                continue;
            };
            for reqs in [spec.wheels, spec.claude_wheel].into_iter().flatten() {
                for line in reqs
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                {
                    assert!(
                        line.contains("==") && line.contains("--hash=sha256:"),
                        "{line}"
                    );
                }
            }
        }
    }

    #[test]
    fn mitmproxy_is_pinned_to_12_2_3() {
        let spec = docker_recipe(Recipe::Mitmproxy, &[]).unwrap();
        assert!(
            spec.wheels
                .unwrap()
                .lines()
                .any(|l| l.starts_with("mitmproxy==12.2.3 "))
        );
    }
}
