//! The bottle harness: brings containers up for the conformance suite and cleans up after it.
//!
//! A bottle comes up from the launcher's plan (`chain`); probes run clients inside its agent
//! (`probe`); scenarios are data (`scenario`), run one case at a time (`runner`) and reported
//! (`report`). Everything made is labelled and removed (`cleanup`, `network`).

pub mod ca_checks;
pub mod chain;
pub mod cleanup;
pub mod copy;
pub mod corpus;
pub mod exec;
pub mod fault;
pub mod fixture_bins;
pub mod gate;
pub mod generated;
pub mod host_listener;
pub mod images;
pub mod load;
pub mod network;
pub mod parity;
pub mod pool;
pub mod probe;
pub mod report;
pub mod run;
pub mod runner;
pub mod scanner_fidelity;
pub mod scenario;
pub mod subject;
pub mod traffic;
