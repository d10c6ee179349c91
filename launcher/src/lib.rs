//! bottle: an AI coding agent in a container whose HTTPS egress is decrypted by a per-bottle
//! mitmproxy and scanned by pipelock before it leaves.
//!
//! This library is the one source of truth for what a bottle is; the harness brings bottles up
//! from it (`plan`). Today it holds the plan, the Docker connection and the locally built images.

pub mod addon;
pub mod archive;
pub mod attach;
pub mod docker;
pub mod exec;
pub mod executor;
pub mod images;
pub mod launch;
pub mod manifest;
pub mod plan;
pub mod progress;
pub mod render;
