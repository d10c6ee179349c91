//! Dockerfile images, built by the engine's classic builder with no network.
//!
//! `networkmode=none` means a build step can neither hang on nor pick up anything from the
//! network: every input is in the build context, fetched on the host beforehand.

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::StreamExt;

use super::recipes::DockerRecipe;
use super::{ImageError, fetch, io_err, tail, tar_stream};
use crate::progress::Step;

pub async fn build(
    docker: &Docker,
    label: &str,
    spec: &DockerRecipe,
    tag: &str,
    parent_tag: &str,
    cache: &Path,
    scratch: &Path,
) -> Result<(), ImageError> {
    let context = scratch.join("context");
    std::fs::create_dir_all(&context).map_err(io_err("creating the build context"))?;
    fill_context(spec, &context, cache).await?;
    let args = HashMap::from([(spec.parent_arg, parent_tag)]);
    build_context(docker, label, &context, tag, &args).await
}

/// Builds `tag` from a ready build context (a folder with its Dockerfile).
pub async fn build_context(
    docker: &Docker,
    label: &str,
    context: &Path,
    tag: &str,
    args: &HashMap<&str, &str>,
) -> Result<(), ImageError> {
    let step = Step::start(format!("building image {tag}"));
    let labels = HashMap::from([("org.bottle.recipe", label)]);
    let options = BuildImageOptionsBuilder::new()
        .t(tag)
        .buildargs(args)
        .labels(&labels)
        .networkmode("none")
        .rm(true)
        .forcerm(true)
        .build();
    let (tar_bytes, tar) = tar_stream(context)?;
    let body = bollard::body_try_stream(tar_bytes);
    let mut stream = docker.build_image(options, None, Some(body));
    let mut log = String::new();
    let mut current_step = String::from("sending the build context");
    let mut layers = Vec::new();
    let mut failure = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        };
        if let Some(text) = info.stream {
            log.push_str(&text);
            for line in text.lines() {
                if line.starts_with("Step ") {
                    current_step = line.to_string();
                    step.detail(line);
                } else if let Some(id) = line.trim().strip_prefix("---> ") {
                    layers.push(id.to_string());
                }
            }
        }
        if let Some(detail) = info.error_detail {
            failure = Some(detail.message.unwrap_or_default());
            break;
        }
    }
    let sent = tar.finish().await;
    if let Some(message) = failure {
        remove_untagged(docker, &layers).await;
        log.push_str(&message);
        return Err(ImageError::StepFailed {
            image: tag.into(),
            step: current_step,
            tail: tail(&log, 20),
            hint: "the image was not tagged; fix the recipe under fixtures/images/ and rerun."
                .into(),
        });
    }
    sent?;
    // A multi-stage build leaves its earlier stages' layers behind, untagged and unused.
    let kept: Vec<String> = docker
        .image_history(tag)
        .await
        .map(|history| history.into_iter().map(|h| h.id).collect())
        .unwrap_or_default();
    let unused: Vec<String> = layers
        .into_iter()
        .filter(|l| {
            !kept
                .iter()
                .any(|k| k.trim_start_matches("sha256:").starts_with(l.as_str()))
        })
        .collect();
    remove_untagged(docker, &unused).await;
    step.done();
    Ok(())
}

/// Writes the Dockerfile and every input of the recipe into the build context.
async fn fill_context(spec: &DockerRecipe, context: &Path, cache: &Path) -> Result<(), ImageError> {
    std::fs::write(context.join("Dockerfile"), spec.dockerfile)
        .map_err(io_err("writing the Dockerfile"))?;
    for (name, bytes) in spec.files {
        let path = context.join(name);
        std::fs::create_dir_all(path.parent().expect("context files have a folder"))
            .map_err(io_err("creating a context folder"))?;
        std::fs::write(&path, bytes).map_err(io_err("writing a context file"))?;
    }
    if let Some(requirements) = spec.wheels {
        let wheels = fetch::wheelhouse(cache, requirements).await?;
        link_dir(&wheels, &context.join("wheels"))?;
    }
    if let Some(requirement) = spec.claude_wheel {
        let claude = fetch::claude_binary(cache, requirement).await?;
        link_or_copy(&claude, &context.join("claude"))?;
    }
    if !spec.binaries.is_empty() {
        let bin = context.join("bin");
        std::fs::create_dir_all(&bin).map_err(io_err("creating bin/ in the context"))?;
        for path in &spec.binaries {
            let name = path.file_name().expect("binaries are files");
            link_or_copy(path, &bin.join(name))?;
        }
    }
    Ok(())
}

fn link_dir(from: &Path, to: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(to).map_err(io_err("creating a context folder"))?;
    for entry in std::fs::read_dir(from).map_err(io_err("reading the wheelhouse"))? {
        let path = entry.map_err(io_err("reading the wheelhouse"))?.path();
        if path.is_file() {
            link_or_copy(
                &path,
                &to.join(path.file_name().expect("a file has a name")),
            )?;
        }
    }
    Ok(())
}

/// Hard links are free for large inputs (the Claude CLI is ~370 MB); copy across filesystems.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io_err("copying into the build context"))?;
    }
    Ok(())
}

/// A failed build leaves the layers of its successful steps behind as untagged images.
async fn remove_untagged(docker: &Docker, layers: &[String]) {
    for id in layers.iter().rev() {
        let untagged = docker
            .inspect_image(id)
            .await
            .is_ok_and(|i| i.repo_tags.unwrap_or_default().is_empty());
        if untagged {
            let options = RemoveImageOptionsBuilder::new().noprune(false).build();
            let _ = docker.remove_image(id, Some(options), None).await;
        }
    }
}
