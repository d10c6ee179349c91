//! The bottle harness: brings containers up for the conformance suite and cleans up after it.
//!
//! Today: the test images (launcher images + fixtures), labelled internal networks, containers
//! that die with the test, and a sweep of what a killed test run left behind.

pub mod cleanup;
pub mod copy;
pub mod exec;
pub mod fixture_bins;
pub mod images;
pub mod network;
pub mod run;
