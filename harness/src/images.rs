//! Every image the suite runs, ensured through the launcher's image module (one source of
//! truth), plus the fixtures image only the harness needs, and the scanner and mitmproxy images
//! the suite grades (`subject`).

use anyhow::{Context, Result};
use bollard::Docker;
use bottle::images::{self, ImageOptions, Recipe};
use serde::{Deserialize, Serialize};

use crate::fixture_bins;
use crate::subject::{self, Graded};

/// The local builds, by recipe; `graded` is what the bottles run as scanner and mitmproxy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestImages {
    pub base: String,
    pub mitmproxy: String,
    pub mitmproxy_test: String,
    pub agent: String,
    pub agent_claude: String,
    pub fixtures: String,
    pub graded: Graded,
}

impl TestImages {
    pub fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("base", &self.base),
            ("mitmproxy", &self.mitmproxy),
            ("mitmproxy-test", &self.mitmproxy_test),
            ("agent", &self.agent),
            ("agent-claude", &self.agent_claude),
            ("fixtures", &self.fixtures),
        ]
    }
}

/// Set by the nextest setup script for the tests it runs before: the images it just ensured and
/// what the graded ones said they are (JSON), so each test process does not hash the fixture
/// binaries, inspect every image and ask the scanner again.
pub const ENV: &str = "BOTTLE_RESOLVED_IMAGES";

impl TestImages {
    /// The images as [`ENV`] carries them.
    pub fn to_env(&self) -> String {
        serde_json::to_string(self).expect("plain strings serialize")
    }

    fn from_env(value: &str) -> Option<TestImages> {
        serde_json::from_str(value).ok()
    }
}

/// Builds what is missing (progress on stderr) and returns every tag; under nextest, the tags
/// its setup script ensured.
pub async fn ensure(docker: &Docker) -> Result<TestImages> {
    match std::env::var(ENV)
        .ok()
        .and_then(|v| TestImages::from_env(&v))
    {
        Some(images) => Ok(images),
        None => build_missing(docker).await,
    }
}

/// Builds what is missing of every image but the fixtures, which need the fixture binaries:
/// so the images can build while cargo compiles those.
pub async fn build_all_but_fixtures(docker: &Docker) -> Result<()> {
    let wanted: Vec<Recipe> = Recipe::ALL
        .into_iter()
        .filter(|r| *r != Recipe::Fixtures)
        .collect();
    images::ensure(docker, &ImageOptions::from_env(), &wanted).await?;
    Ok(())
}

/// Builds what is missing (progress on stderr) and returns every tag, always checking.
pub async fn build_missing(docker: &Docker) -> Result<TestImages> {
    let opts = ImageOptions {
        fixture_binaries: fixture_bins::get()?,
        ..ImageOptions::from_env()
    };
    let tags = images::ensure(docker, &opts, &Recipe::ALL).await?;
    let [
        base,
        mitmproxy,
        mitmproxy_test,
        agent,
        agent_claude,
        fixtures,
    ] = <[String; 6]>::try_from(tags).expect("one tag per recipe");
    let selection = subject::Selection::from_env()?;
    let graded = subject::grade(docker, &selection, &mitmproxy, &fixtures)
        .await
        .context("choosing the images to grade")?;
    Ok(TestImages {
        base,
        mitmproxy,
        mitmproxy_test,
        agent,
        agent_claude,
        fixtures,
        graded,
    })
}
