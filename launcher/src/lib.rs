//! bottle: an AI coding agent in a container whose HTTPS egress is decrypted by a per-bottle
//! mitmproxy and scanned by pipelock before it leaves.
//!
//! This library is the one source of truth for what a bottle is: `bottle.toml` (`manifest`) and
//! the command line (`launch`) make a `plan`, which the `executor` runs on Docker. The test
//! harness brings its bottles up through the same plan and executor.

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
pub mod preflight;
pub mod progress;
pub mod render;
