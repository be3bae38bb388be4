//! Documented exit codes (`docs/OPERATIONS.md`). Environmental stops exit with a code
//! of their own so a supervisor can tell "fix the machine" from "fix the config".

/// Stopped cleanly (SIGTERM/SIGINT, drained, fsynced).
pub const OK: i32 = 0;
/// An unexpected failure.
pub const FAILURE: i32 = 1;
/// The configuration or the flags are invalid.
pub const CONFIG: i32 = 2;
/// The data directory cannot be used (not creatable, locked by another broker, or the
/// O_DIRECT probe cannot write to it).
pub const DATA_DIR: i32 = 3;
/// A partition failed recovery (corruption where the log guarantees whole data).
pub const RECOVERY: i32 = 4;
/// A listener could not be bound (address in use, bad TLS material).
pub const LISTEN: i32 = 5;
