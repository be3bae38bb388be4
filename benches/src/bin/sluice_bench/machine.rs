//! The machine a run was measured on, for the report.

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_bench::load::report::{rfc3339_utc, Machine};

fn first_line(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// Hostname, CPUs, OS, kernel and the time now.
pub fn describe() -> Machine {
    let unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let hostname = first_line("/proc/sys/kernel/hostname")
        .or_else(|| first_line("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = first_line("/proc/version")
        .or_else(|| first_line("/proc/sys/kernel/osrelease"))
        .unwrap_or_else(|| "unknown".to_owned());
    Machine {
        hostname,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        kernel,
        timestamp: rfc3339_utc(unix_secs),
        unix_secs,
    }
}
