//! What the suite grades: which scanner and which mitmproxy run in its bottles, chosen with the
//! launcher's vocabulary — `bottle-conformance --scanner auto|pipelock|double --images
//! local|pinned --scanner-image REF --mitm-image REF`, or under `cargo nextest run` the
//! environment variables below — and what those images say they are: the scanner's own
//! `/health` version (so a double under any tag is still reported as the double) and
//! `mitmdump --version`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bottle::images::pinned::{self, Pinned, PinnedError, PullBounds};
use bottle::launch::ImagesMode;
use bottle::plan::{SCANNER_PORT, ScannerKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::report::DOUBLE_MARKER;
use crate::run::{self, OWNER_LABEL};

/// `auto` (default), `pipelock` or `double`.
pub const SCANNER_ENV: &str = "BOTTLE_SCANNER";
/// `local` (default: built here) or `pinned` (images.lock's official images).
pub const IMAGES_ENV: &str = "BOTTLE_IMAGES";
/// An image to run as the scanner.
pub const SCANNER_IMAGE_ENV: &str = "BOTTLE_SCANNER_IMAGE";
/// An image to run as mitmproxy.
pub const MITM_IMAGE_ENV: &str = "BOTTLE_MITM_IMAGE";

/// The command-line flags of `bottle-conformance` and the variables they set for nextest.
pub const FLAGS: [(&str, &str); 4] = [
    ("--scanner", SCANNER_ENV),
    ("--images", IMAGES_ENV),
    ("--scanner-image", SCANNER_IMAGE_ENV),
    ("--mitm-image", MITM_IMAGE_ENV),
];

/// How long `auto` waits on a registry before it settles for the double.
const AUTO_PULL: PullBounds = PullBounds {
    idle: Duration::from_secs(20),
    total: Duration::from_secs(10 * 60),
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScannerChoice {
    /// Real pipelock when its image is here or pullable, otherwise the double.
    #[default]
    Auto,
    Pipelock,
    Double,
}

/// What was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub scanner: ScannerChoice,
    pub images: ImagesMode,
    pub scanner_image: Option<String>,
    pub mitm_image: Option<String>,
}

impl Selection {
    pub fn from_env() -> Result<Selection> {
        Selection::from_lookup(|name| std::env::var(name).ok())
    }

    /// Unset or empty variables take the defaults; any other unknown value is an error that
    /// names the variable and its choices.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Selection> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let scanner = match get(SCANNER_ENV).as_deref().map(str::trim) {
            None | Some("auto") => ScannerChoice::Auto,
            Some("pipelock") => ScannerChoice::Pipelock,
            Some("double") => ScannerChoice::Double,
            Some(other) => {
                bail!("{SCANNER_ENV}={other:?} (--scanner) is not one of auto, pipelock, double")
            }
        };
        let images = match get(IMAGES_ENV).as_deref().map(str::trim) {
            None | Some("local") => ImagesMode::Local,
            Some("pinned") => ImagesMode::Pinned,
            Some(other) => {
                bail!("{IMAGES_ENV}={other:?} (--images) is not one of local, pinned")
            }
        };
        Ok(Selection {
            scanner,
            images,
            scanner_image: get(SCANNER_IMAGE_ENV).map(|v| v.trim().to_string()),
            mitm_image: get(MITM_IMAGE_ENV).map(|v| v.trim().to_string()),
        })
    }
}

/// Takes `bottle-conformance`'s image flags (`--scanner X` or `--scanner=X`, ...) out of
/// `args` and returns the variables they set, checked.
pub fn take_flags(args: &mut Vec<String>) -> Result<Vec<(&'static str, String)>> {
    let mut set = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let found = FLAGS.iter().find_map(|(flag, env)| {
            if args[i] == *flag {
                Some((*flag, *env, None))
            } else {
                args[i]
                    .strip_prefix(&format!("{flag}="))
                    .map(|v| (*flag, *env, Some(v.to_string())))
            }
        });
        let Some((flag, env, inline)) = found else {
            i += 1;
            continue;
        };
        let value = match inline {
            Some(value) => value,
            None if i + 1 < args.len() => args.remove(i + 1),
            None => bail!("{flag} takes a value"),
        };
        args.remove(i);
        set.push((env, value));
    }
    let lookup: HashMap<&str, String> = set.iter().cloned().collect();
    Selection::from_lookup(|name| {
        lookup
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    })?;
    Ok(set)
}

/// The scanner and mitmproxy the bottles run, and what they say they are.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Graded {
    /// How the scanner's container is started: pipelock's own entrypoint, or `pipelock-double`.
    pub scanner_kind: ScannerKind,
    pub scanner_image: String,
    pub mitm_image: String,
    /// How the choice was made, in one line (said at the start and in every report).
    pub chosen: String,
    /// The `version` the scanner gave on `/health`: what decides whether it is the double.
    pub scanner_version: String,
    /// Its whole `/health` answer.
    pub scanner_health: Value,
    /// `mitmdump --version` in the mitmproxy image.
    pub mitm_version: String,
}

impl Graded {
    /// From the scanner's own word, never from the image's name or the flag.
    pub fn scanner_is_double(&self) -> bool {
        self.scanner_version.contains(DOUBLE_MARKER) || self.scanner_version.is_empty()
    }

    /// "pipelock 2.3.0 (ghcr.io/…@sha256:…)" or "pipelock-double 2.4.0-pipelock-double (…)":
    /// the scanner of every case result.
    pub fn scanner_label(&self) -> String {
        let name = if self.scanner_is_double() {
            DOUBLE_MARKER
        } else {
            "pipelock"
        };
        format!("{name} {} ({})", self.scanner_version, self.scanner_image)
    }

    /// mitmproxy's version line, e.g. "Mitmproxy: 12.2.3".
    pub fn mitm_version_line(&self) -> &str {
        self.mitm_version.lines().next().unwrap_or_default()
    }
}

/// One image a run used, as the engine has it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageFacts {
    pub role: String,
    /// The reference the bottles ran it by.
    pub reference: String,
    /// The engine's image id (`sha256:…` of its config).
    pub id: String,
    /// `repository@sha256:…` where it came from a registry; empty for a local build or an
    /// image loaded with `docker load` on the classic store.
    pub repo_digests: Vec<String>,
}

/// What a run graded, for the report (`run.json`, `report.md`, `summary.txt`) and JUnit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub graded: Graded,
    pub images: Vec<ImageFacts>,
}

impl RunInfo {
    /// The graded images and every other image the bottles run, inspected.
    pub async fn collect(docker: &Docker, images: &crate::images::TestImages) -> Result<RunInfo> {
        let mut facts = Vec::new();
        for (role, reference) in [
            ("scanner", &images.graded.scanner_image),
            ("mitm", &images.graded.mitm_image),
            ("agent", &images.agent),
            ("agent-claude", &images.agent_claude),
            ("upstream", &images.fixtures),
        ] {
            let image = docker
                .inspect_image(reference)
                .await
                .with_context(|| format!("inspecting {reference}"))?;
            facts.push(ImageFacts {
                role: role.into(),
                reference: reference.clone(),
                id: image.id.unwrap_or_default(),
                repo_digests: image.repo_digests.unwrap_or_default(),
            });
        }
        Ok(RunInfo {
            graded: images.graded.clone(),
            images: facts,
        })
    }

    /// The "What ran" section of `report.md`.
    pub fn markdown(&self) -> String {
        let g = &self.graded;
        let mut out = String::from(
            "## What ran

",
        );
        out.push_str(&format!(
            "- scanner: **{}** — its `/health` said version `{}`; chosen: {}
",
            if g.scanner_is_double() {
                "the pipelock double"
            } else {
                "pipelock"
            },
            g.scanner_version,
            g.chosen
        ));
        out.push_str(&format!(
            "- mitmproxy: `{}` (`mitmdump --version`: {})

",
            g.mitm_image,
            g.mitm_version.lines().collect::<Vec<_>>().join("; ")
        ));
        out.push_str(
            "| role | reference | image id | repo digests |
|---|---|---|---|
",
        );
        for f in &self.images {
            let digests = if f.repo_digests.is_empty() {
                "(none: built or loaded here)".to_string()
            } else {
                f.repo_digests.join("<br>")
            };
            out.push_str(&format!(
                "| {} | `{}` | `{}` | {} |
",
                f.role, f.reference, f.id, digests
            ));
        }
        out
    }

    /// Name and value pairs for JUnit's `<properties>`.
    pub fn junit_properties(&self) -> Vec<(String, String)> {
        let g = &self.graded;
        let mut props = vec![
            ("bottle.scanner".to_string(), g.scanner_label()),
            (
                "bottle.scanner.is_double".to_string(),
                g.scanner_is_double().to_string(),
            ),
            (
                "bottle.scanner.version".to_string(),
                g.scanner_version.clone(),
            ),
            ("bottle.scanner.chosen".to_string(), g.chosen.clone()),
            (
                "bottle.mitmproxy.version".to_string(),
                g.mitm_version.lines().collect::<Vec<_>>().join("; "),
            ),
        ];
        for f in &self.images {
            props.push((format!("bottle.image.{}", f.role), f.reference.clone()));
            props.push((format!("bottle.image.{}.id", f.role), f.id.clone()));
            props.push((
                format!("bottle.image.{}.digests", f.role),
                f.repo_digests.join(" "),
            ));
        }
        props
    }
}

/// `xml` (a JUnit report, nextest's) with `props` in every `<testsuite>`'s `<properties>`.
/// Idempotent: a property already there by name is left as it is.
pub fn annotate_junit(xml: &str, props: &[(String, String)]) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let elements = |suite: &str| {
        props
            .iter()
            .filter(|(name, _)| !suite.contains(&format!("<property name=\"{}\"", escape(name))))
            .map(|(name, value)| {
                format!(
                    "<property name=\"{}\" value=\"{}\"/>",
                    escape(name),
                    escape(value)
                )
            })
            .collect::<String>()
    };
    let mut out = String::with_capacity(xml.len() + 4096);
    let mut rest = xml;
    while let Some(start) = rest
        .find("<testsuite ")
        .or_else(|| rest.find("<testsuite>"))
    {
        let Some(open_end) = rest[start..].find('>').map(|i| start + i + 1) else {
            break;
        };
        let self_closing = rest[..open_end].ends_with("/>");
        let suite_end = rest[open_end..]
            .find("</testsuite>")
            .map_or(rest.len(), |i| open_end + i);
        let suite = &rest[open_end..suite_end];
        out.push_str(&rest[..open_end]);
        if self_closing {
            rest = &rest[open_end..];
            continue;
        }
        match suite.find("<properties>") {
            Some(at) => {
                let at = open_end + at + "<properties>".len();
                out.push_str(&rest[open_end..at]);
                out.push_str(&elements(suite));
                rest = &rest[at..];
            }
            None => {
                out.push_str(&format!("<properties>{}</properties>", elements(suite)));
                rest = &rest[open_end..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Resolves the selection (finding, pulling or refusing images) and asks the images what they
/// are. `local_mitm` and `fixtures` are the local builds.
pub async fn grade(
    docker: &Docker,
    selection: &Selection,
    local_mitm: &str,
    fixtures: &str,
) -> Result<Graded> {
    let mitm_image = match (&selection.mitm_image, selection.images) {
        (Some(given), _) => pinned::ensure_given(docker, "--mitm-image", given).await?,
        (None, ImagesMode::Pinned) => pinned::ensure(docker, Pinned::Mitmproxy).await?,
        (None, ImagesMode::Local) => local_mitm.to_string(),
    };
    let (scanner_kind, scanner_image, chosen) = choose_scanner(docker, selection, fixtures).await?;
    let scanner_health = scanner_health(docker, scanner_kind, &scanner_image, &mitm_image)
        .await
        .with_context(|| format!("asking the scanner image {scanner_image} for its /health"))?;
    let scanner_version = scanner_health
        .get("version")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "the scanner image {scanner_image} answered /health without a version: \
                 {scanner_health}"
            )
        })?
        .to_string();
    let mitm_version = mitm_version(docker, &mitm_image)
        .await
        .with_context(|| format!("asking {mitm_image} for `mitmdump --version`"))?;
    Ok(Graded {
        scanner_kind,
        scanner_image,
        mitm_image,
        chosen,
        scanner_version,
        scanner_health,
        mitm_version,
    })
}

async fn choose_scanner(
    docker: &Docker,
    selection: &Selection,
    fixtures: &str,
) -> Result<(ScannerKind, String, String)> {
    if let Some(given) = &selection.scanner_image {
        let kind = match selection.scanner {
            ScannerChoice::Double => ScannerKind::Double,
            ScannerChoice::Auto | ScannerChoice::Pipelock => ScannerKind::Pipelock,
        };
        let image = pinned::ensure_given(docker, "--scanner-image", given).await?;
        let how = match kind {
            ScannerKind::Double => "with pipelock-double as its entrypoint",
            ScannerKind::Pipelock => "with its own entrypoint, as pipelock",
        };
        return Ok((kind, image, format!("--scanner-image {given}, run {how}")));
    }
    match selection.scanner {
        ScannerChoice::Double => Ok((
            ScannerKind::Double,
            fixtures.to_string(),
            "--scanner double: the pipelock double".into(),
        )),
        ScannerChoice::Pipelock => match pinned::ensure(docker, Pinned::Pipelock).await {
            Ok(image) => Ok((
                ScannerKind::Pipelock,
                image,
                "--scanner pipelock: images.lock's pipelock".into(),
            )),
            Err(e) => Err(no_pipelock(e)),
        },
        ScannerChoice::Auto => {
            match pinned::ensure_within(docker, Pinned::Pipelock, AUTO_PULL).await {
                Ok(image) => Ok((
                    ScannerKind::Pipelock,
                    image,
                    "auto: images.lock's pipelock is here".into(),
                )),
                Err(e @ (PinnedError::InvalidLock(_) | PinnedError::Engine { .. })) => {
                    Err(e.into())
                }
                Err(e) => {
                    let why = match &e {
                        PinnedError::PullFailed { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    Ok((
                        ScannerKind::Double,
                        fixtures.to_string(),
                        format!(
                            "auto: no pipelock image here or pullable ({}), so the pipelock double",
                            why.lines().next().unwrap_or_default()
                        ),
                    ))
                }
            }
        }
    }
}

/// `--scanner pipelock` without pipelock's image: the two ways out, for the suite.
fn no_pipelock(e: PinnedError) -> anyhow::Error {
    match e {
        PinnedError::PullFailed {
            reference, reason, ..
        } => {
            let tagged = pinned::lock()
                .map(|lock| lock.entry(Pinned::Pipelock).tagged())
                .unwrap_or_else(|_| "pipelock:pinned".into());
            anyhow!(
                "--scanner pipelock ({SCANNER_ENV}=pipelock): pipelock's image {reference} is \
                 not here and could not be pulled: {reason}\nEither\n  - load it: where a \
                 registry is reachable, `docker pull {reference}`, `docker tag {reference} \
                 {tagged}`, `docker save {tagged} -o pipelock.tar`; then here `docker load -i \
                 pipelock.tar` (README, \"Grading real images\"),\n  - or grade the double: \
                 --scanner double or auto ({SCANNER_ENV}=double); needs = \"pipelock\" \
                 scenarios are then NOT-APPLICABLE."
            )
        }
        other => other.into(),
    }
}

/// Starts the scanner image as the bottles would (no network at all), and asks its `/health`
/// from a container in its network namespace (python3 of the mitmproxy image).
async fn scanner_health(
    docker: &Docker,
    kind: ScannerKind,
    image: &str,
    client_image: &str,
) -> Result<Value> {
    let listen = format!("0.0.0.0:{SCANNER_PORT}");
    let scanner = Throwaway::create(
        docker,
        "health-scanner",
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: match kind {
                ScannerKind::Double => Some(vec!["pipelock-double".into()]),
                ScannerKind::Pipelock => None,
            },
            cmd: Some(vec!["run".into(), "--listen".into(), listen]),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await?;
    scanner.start().await?;
    let script = format!(
        "import sys, time, urllib.request\n\
         deadline = time.monotonic() + 20\n\
         while True:\n\
         \x20   try:\n\
         \x20       with urllib.request.urlopen('http://127.0.0.1:{SCANNER_PORT}/health', timeout=3) as r:\n\
         \x20           sys.stdout.write(r.read().decode()); break\n\
         \x20   except Exception as e:\n\
         \x20       if time.monotonic() > deadline: sys.exit(f'no /health within 20 s: {{e}}')\n\
         \x20       time.sleep(0.2)\n"
    );
    let client = Throwaway::create(
        docker,
        "health-client",
        ContainerCreateBody {
            image: Some(client_image.to_string()),
            entrypoint: Some(vec!["python3".into(), "-c".into(), script]),
            cmd: Some(vec![]),
            env: Some(vec!["NO_PROXY=*".into()]),
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{}", scanner.id)),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await?;
    let answer = client.run_to_end(Duration::from_secs(40)).await;
    let scanner_output = scanner.output().await.unwrap_or_default();
    client.remove().await;
    scanner.remove().await;
    let (stdout, stderr) = answer?;
    serde_json::from_str(stdout.trim()).map_err(|_| {
        anyhow!(
            "no JSON from /health: {}{}\nthe scanner printed: {}",
            stdout.trim(),
            stderr.trim(),
            crate::report::cut_chars(scanner_output.trim(), 2000)
        )
    })
}

/// `mitmdump --version`, run through the image's own entrypoint.
async fn mitm_version(docker: &Docker, image: &str) -> Result<String> {
    let container = Throwaway::create(
        docker,
        "mitm-version",
        ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["mitmdump".into(), "--version".into()]),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await?;
    let output = container.run_to_end(Duration::from_secs(60)).await;
    container.remove().await;
    let (stdout, stderr) = output?;
    if !stdout.contains("Mitmproxy:") {
        bail!(
            "not mitmproxy's version: {}{}",
            stdout.trim(),
            stderr.trim()
        );
    }
    Ok(stdout.trim().to_string())
}

/// A container made for one question and removed after it (labelled, so a crash leaves nothing
/// the next run's sweep would not remove).
pub(crate) struct Throwaway<'a> {
    docker: &'a Docker,
    pub(crate) id: String,
}

impl<'a> Throwaway<'a> {
    pub(crate) async fn create(
        docker: &'a Docker,
        what: &str,
        mut body: ContainerCreateBody,
    ) -> Result<Throwaway<'a>> {
        body.labels = Some(HashMap::from([(
            OWNER_LABEL.to_string(),
            std::process::id().to_string(),
        )]));
        let name = run::unique(what);
        let image = body.image.clone().unwrap_or_default();
        let id = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .with_context(|| format!("creating a container of {image}"))?
            .id;
        Ok(Throwaway { docker, id })
    }

    pub(crate) async fn start(&self) -> Result<()> {
        self.docker
            .start_container(&self.id, None)
            .await
            .context("starting a container")
    }

    /// Starts it and waits for its end; its stdout and stderr. A non-zero exit is an error.
    pub(crate) async fn run_to_end(&self, bound: Duration) -> Result<(String, String)> {
        self.start().await?;
        let mut wait = self.docker.wait_container(&self.id, None);
        let code = match tokio::time::timeout(bound, wait.next()).await {
            Err(_) => bail!("it did not end within {} s", bound.as_secs()),
            Ok(Some(Ok(status))) => status.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
            Ok(Some(Err(e))) => return Err(e).context("waiting for the container"),
            Ok(None) => 0,
        };
        let (stdout, stderr) = self.streams().await?;
        if code != 0 {
            bail!(
                "it exited {code}: {}",
                crate::report::cut_chars(format!("{stdout}{stderr}").trim(), 2000)
            );
        }
        Ok((stdout, stderr))
    }

    pub(crate) async fn streams(&self) -> Result<(String, String)> {
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let mut logs = self.docker.logs(&self.id, Some(options));
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some(chunk) = logs.next().await {
            use bollard::container::LogOutput;
            match chunk.context("reading a container's output")? {
                LogOutput::StdOut { message } => {
                    stdout.push_str(&String::from_utf8_lossy(&message))
                }
                LogOutput::StdErr { message } => {
                    stderr.push_str(&String::from_utf8_lossy(&message))
                }
                _ => {}
            }
        }
        Ok((stdout, stderr))
    }

    pub(crate) async fn output(&self) -> Result<String> {
        let (stdout, stderr) = self.streams().await?;
        Ok(format!("{stdout}{stderr}"))
    }

    pub(crate) async fn remove(self) {
        let _ = self
            .docker
            .remove_container(
                &self.id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_defaults_are_auto_and_local() {
        let selection = Selection::from_lookup(lookup(&[])).unwrap();
        assert_eq!(selection.scanner, ScannerChoice::Auto);
        assert_eq!(selection.images, ImagesMode::Local);
        assert_eq!(selection.scanner_image, None);
        let selection = Selection::from_lookup(lookup(&[(SCANNER_ENV, " ")])).unwrap();
        assert_eq!(selection.scanner, ScannerChoice::Auto);
    }

    #[test]
    fn bad_values_name_the_variable_and_the_choices() {
        let err = Selection::from_lookup(lookup(&[(SCANNER_ENV, "real")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("BOTTLE_SCANNER=\"real\""), "{text}");
        assert!(text.contains("auto, pipelock, double"), "{text}");
        let err = Selection::from_lookup(lookup(&[(IMAGES_ENV, "official")])).unwrap_err();
        assert!(err.to_string().contains("local, pinned"), "{err}");
    }

    #[test]
    fn flags_become_variables_and_leave_the_rest_for_nextest() {
        let mut args: Vec<String> = [
            "BLOCK",
            "--scanner",
            "double",
            "--mitm-image=mitm:1",
            "--images",
            "pinned",
            "--no-capture",
        ]
        .map(String::from)
        .to_vec();
        let set = take_flags(&mut args).unwrap();
        assert_eq!(args, ["BLOCK", "--no-capture"]);
        assert_eq!(
            set,
            [
                (SCANNER_ENV, "double".to_string()),
                (MITM_IMAGE_ENV, "mitm:1".to_string()),
                (IMAGES_ENV, "pinned".to_string()),
            ]
        );
        let mut args = vec!["--scanner".to_string()];
        assert!(
            take_flags(&mut args)
                .unwrap_err()
                .to_string()
                .contains("takes a value")
        );
        let mut args = vec!["--scanner=maybe".to_string()];
        assert!(take_flags(&mut args).is_err());
    }

    #[test]
    fn the_scanner_is_the_double_by_its_own_word_whatever_its_image() {
        let mut graded = Graded {
            scanner_kind: ScannerKind::Pipelock,
            scanner_image: "ghcr.io/luckypipewrench/pipelock:3.4.0".into(),
            mitm_image: "mitmproxy/mitmproxy:12.2.3".into(),
            chosen: String::new(),
            scanner_version: "2.4.0-pipelock-double".into(),
            scanner_health: Value::Null,
            mitm_version: "Mitmproxy: 12.2.3\nPython: 3.13".into(),
        };
        assert!(graded.scanner_is_double());
        assert!(graded.scanner_label().starts_with("pipelock-double 2.4.0"));
        graded.scanner_version = "2.3.0-6-g40865129".into();
        assert!(!graded.scanner_is_double());
        assert!(graded.scanner_label().starts_with("pipelock 2.3.0-6"));
        assert_eq!(graded.mitm_version_line(), "Mitmproxy: 12.2.3");
    }

    #[test]
    fn junit_gets_the_properties_in_every_suite_once() {
        let xml = "<?xml version=\"1.0\"?><testsuites name=\"x\"><testsuite name=\"a\" tests=\"1\"><testcase name=\"t\"/></testsuite><testsuite name=\"b\"><properties><property name=\"keep\" value=\"1\"/></properties></testsuite></testsuites>";
        let props = vec![(
            "bottle.scanner".to_string(),
            "pipelock-double 2.4.0 (a<b & \"c\")".to_string(),
        )];
        let once = annotate_junit(xml, &props);
        assert_eq!(once.matches("name=\"bottle.scanner\"").count(), 2, "{once}");
        assert!(once.contains("value=\"pipelock-double 2.4.0 (a&lt;b &amp; &quot;c&quot;)\""));
        assert!(
            once.contains("<property name=\"keep\" value=\"1\"/>"),
            "{once}"
        );
        assert!(once.contains("<testcase name=\"t\"/>"), "{once}");
        assert_eq!(annotate_junit(&once, &props), once, "twice is once");
    }
}
