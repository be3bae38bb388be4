//! The library half of `sluice-cli`: the pure parts of the `sluice` binary that
//! integration tests (`tests/layout.rs`) exercise directly. Everything else lives in the
//! binary (`main.rs`).

pub mod layout;
