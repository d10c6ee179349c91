//! Every image the suite runs, ensured through the launcher's image module (one source of
//! truth), plus the fixtures image only the harness needs.

use anyhow::Result;
use bollard::Docker;
use bottle::images::{self, ImageOptions, Recipe};

use crate::fixture_bins;

#[derive(Clone, Debug)]
pub struct TestImages {
    pub base: String,
    pub mitmproxy: String,
    pub mitmproxy_test: String,
    pub agent: String,
    pub agent_claude: String,
    pub fixtures: String,
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

/// Builds what is missing (progress on stderr) and returns every tag.
pub async fn ensure(docker: &Docker) -> Result<TestImages> {
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
    Ok(TestImages {
        base,
        mitmproxy,
        mitmproxy_test,
        agent,
        agent_claude,
        fixtures,
    })
}
