//! bottle harness.
