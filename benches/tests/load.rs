//! `sluice-bench` against a real `sluice-server`: produce with `--verify`, consume the
//! hot log, e2e with `--verify`, each writing `--json`; the report's fields and the
//! exit status are checked, not the speed (speed is never asserted).
//!
//! The broker is `sluice-test-support`'s: `SLUICE_SERVER_BIN` or one build of
//! `sluice-server`, on free loopback ports in a temporary data directory, killed at the
//! end.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sluice_test_support::Broker;

const BENCH: &str = env!("CARGO_BIN_EXE_sluice-bench");

/// Runs `sluice-bench` with `args` (no progress bar, no SLUICE_* from the environment).
fn bench(args: &[&str]) -> Output {
    Command::new(BENCH)
        .args(args)
        .env_remove("SLUICE_SERVER")
        .env_remove("SLUICE_CA")
        .stdin(Stdio::null())
        .output()
        .expect("run sluice-bench")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a mode against `broker` with `extra` flags and `--json`; checks it exited 0 and
/// returns the JSON report.
fn run_mode(broker: &Broker, dir: &Path, mode: &str, extra: &[&str]) -> Value {
    let json = dir.join(format!("{mode}.json"));
    let server = broker.addr().to_string();
    let ca = broker.ca_path();
    let mut args = vec![
        mode,
        "--server",
        &server,
        "--ca",
        ca.to_str().unwrap(),
        "--topic",
        "bench-test",
        "--partitions",
        "4",
        "--producers",
        "2",
        "--no-progress",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = bench(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{mode}: {}\nbroker log:\n{}",
        text(&out),
        broker.log_text()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("result       ok"), "{}", text(&out));
    assert!(stdout.contains("MB = 10^6 bytes"), "{}", text(&out));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("read --json"))
        .expect("--json is one JSON object");
    assert_eq!(report["tool"], "sluice-bench");
    assert_eq!(report["mode"], mode);
    assert_eq!(report["params"]["mode"], mode);
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(!report["machine"]["kernel"].as_str().unwrap().is_empty());
    assert!(report["machine"]["timestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(report["secs"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(report["msgs_per_sec"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(report["mb_per_sec"].as_f64().unwrap() > 0.0, "{report:#}");
    report
}

fn assert_latencies(report: &Value) {
    let ms = |k: &str| {
        report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {report:#}"))
    };
    let (p50, p90, p99, p999, max) = (
        ms("p50_ms"),
        ms("p90_ms"),
        ms("p99_ms"),
        ms("p999_ms"),
        ms("max_ms"),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{report:#}"
    );
}

fn assert_verified(report: &Value, acked: u64) {
    let v = &report["verify"];
    for k in [
        "lost",
        "duplicated",
        "misplaced",
        "reordered",
        "written_despite_definite_failure",
        "unknown_records",
        "offset_order_errors",
    ] {
        assert_eq!(v[k], 0, "{k}: {v:#}");
    }
    assert_eq!(v["acked"], acked, "{v:#}");
    assert_eq!(v["consumed"], acked, "{v:#}");
    assert_eq!(v["read_complete"], true, "{v:#}");
}

#[test]
fn produce_consume_and_e2e_against_a_real_broker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::start(dir.path().join("data"));

    // produce: 20,000 records, each acknowledged, read back once at its offset.
    let p = run_mode(
        &broker,
        dir.path(),
        "produce",
        &["--count", "20000", "--size", "256", "--verify"],
    );
    assert_eq!(p["msgs"], 20_000, "{p:#}");
    assert_eq!(p["bytes"], 20_000 * 256, "{p:#}");
    assert_eq!(p["setup"]["partitions"], 4);
    assert_eq!(p["params"]["count"], 20_000);
    assert_eq!(p["params"]["verify"], true);
    assert_eq!(p["latency"], "ack");
    assert_latencies(&p);
    assert_verified(&p, 20_000);

    // consume: the hot log from its start, every record the produce run wrote.
    let c = run_mode(&broker, dir.path(), "consume", &["--consumers", "2"]);
    assert_eq!(c["msgs"], 20_000, "{c:#}");
    assert_eq!(c["bytes"], 20_000 * 256, "{c:#}");
    assert_eq!(c["setup"]["consumers"], 2);
    assert!(c["p50_ms"].is_null(), "no latency for consume: {c:#}");

    // e2e, open loop: consumers see every record of this run; latency from the payload.
    let e = run_mode(
        &broker,
        dir.path(),
        "e2e",
        &[
            "--count", "4000", "--rate", "4000", "--size", "128", "--verify",
        ],
    );
    assert_eq!(e["msgs"], 4000, "{e:#}");
    assert_eq!(e["produced"], 4000, "{e:#}");
    assert_eq!(e["latency"], "end-to-end");
    assert_eq!(e["setup"]["rate_per_sec"], 4000);
    assert_latencies(&e);
    assert!(e["ack"]["p50_ms"].as_f64().unwrap() > 0.0, "{e:#}");
    assert_verified(&e, 4000);
}

#[test]
fn usage_errors_exit_2_and_setup_failures_exit_1() {
    for args in [
        &["produce", "--size", "8"][..],
        &["produce", "--count", "1", "--duration", "1"],
        &["consume", "--verify"],
        &["produce", "--server", "no-port"],
        &["sideways"],
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-ca.pem");
    let out = bench(&["produce", "--ca", missing.to_str().unwrap(), "--count", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{}", text(&out));
    assert!(!stderr.contains("panicked"), "{}", text(&out));
}
