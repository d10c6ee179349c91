//! bottle launcher library.
