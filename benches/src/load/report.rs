//! The final report of a run: the readable block printed at the end and the one JSON
//! object `--json FILE` writes (same numbers).
//!
//! JSON shape (every run): `tool`, `mode`, `machine` (hostname, cpus, os, arch, kernel,
//! timestamp), `params` (every flag as given or defaulted), `setup` (what actually ran:
//! topic, partitions, producers, consumers...), `msgs`, `bytes`, `secs`,
//! `msgs_per_sec`, `mb_per_sec` (10^6 bytes/s of message values), `p50_ms`, `p90_ms`,
//! `p99_ms`, `p999_ms`, `max_ms`, `mean_ms` (`null` when no latency is measured, i.e.
//! `consume`), `latency` (what the percentiles are of), `errors` (total) and
//! `errors_by_kind`, `warmup_msgs`, `capped`, `stop`, `ack` (e2e only: the produce
//! acknowledgement latency), `produced` (e2e only), `verify` (with `--verify`), `ok`.

use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{ErrorCounts, LatencySummary};
use super::verify::VerifyReport;

/// The machine a run was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub hostname: String,
    /// CPUs available to the process.
    pub cpus: usize,
    /// `std::env::consts::OS`.
    pub os: String,
    /// `std::env::consts::ARCH`.
    pub arch: String,
    /// The kernel (first line of `/proc/version` on Linux).
    pub kernel: String,
    /// When the report was made, RFC 3339 UTC.
    pub timestamp: String,
    /// The same, seconds since the Unix epoch.
    pub unix_secs: u64,
}

/// What actually ran (the topic may have had other partition counts than asked, and
/// consumers are capped at the partition count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setup {
    pub server: String,
    pub topic: String,
    pub partitions: u32,
    pub producers: u32,
    pub consumers: u32,
    pub size_bytes: usize,
    /// `all`, `leader` or `none`.
    pub acks: String,
    /// Open-loop total rate; `None` is closed loop (as fast as the window allows).
    pub rate_per_sec: Option<u64>,
    /// The run's id, in every payload's header (hex).
    pub run_id: String,
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `"sluice-bench"`.
    pub tool: &'static str,
    /// `produce`, `consume` or `e2e`.
    pub mode: String,
    pub machine: Machine,
    /// Every flag, as parsed.
    pub params: serde_json::Value,
    pub setup: Setup,
    /// Measured records (warm-up excluded): acknowledged (produce) or consumed
    /// (consume, e2e).
    pub msgs: u64,
    /// Value bytes of the measured records.
    pub bytes: u64,
    /// The measured interval: from the end of the warm-up (or the start) to the last
    /// measured acknowledgement or consumed record.
    pub secs: f64,
    pub msgs_per_sec: f64,
    /// 10^6 bytes per second.
    pub mb_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// What the percentiles measure.
    pub latency: Option<&'static str>,
    /// All failures.
    pub errors: u64,
    pub errors_by_kind: ErrorCounts,
    /// Records sent (produce) or consumed (e2e, consume) during the warm-up.
    pub warmup_msgs: u64,
    /// Whether `--max-secs` stopped the run before its `--count`.
    pub capped: bool,
    /// Why sending (or consuming) stopped, in words.
    pub stop: String,
    /// e2e: the produce acknowledgement latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<LatencySummary>,
    /// e2e: measured records acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produced: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
    /// No errors, something measured, and no verify anomaly.
    pub ok: bool,
}

impl Report {
    /// A report of a run not yet measured: zero counts, no latencies, not `ok`.
    pub fn new(mode: &str, machine: Machine, params: serde_json::Value, setup: Setup) -> Report {
        Report {
            tool: "sluice-bench",
            mode: mode.to_owned(),
            machine,
            params,
            setup,
            msgs: 0,
            bytes: 0,
            secs: 0.0,
            msgs_per_sec: 0.0,
            mb_per_sec: 0.0,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            p999_ms: None,
            max_ms: None,
            mean_ms: None,
            latency: None,
            errors: 0,
            errors_by_kind: ErrorCounts::default(),
            warmup_msgs: 0,
            capped: false,
            stop: String::new(),
            ack: None,
            produced: None,
            verify: None,
            ok: false,
        }
    }

    /// Sets the percentile fields from `summary`.
    pub fn set_latency(&mut self, what: &'static str, summary: Option<LatencySummary>) {
        self.latency = summary.map(|_| what);
        self.p50_ms = summary.map(|s| s.p50_ms);
        self.p90_ms = summary.map(|s| s.p90_ms);
        self.p99_ms = summary.map(|s| s.p99_ms);
        self.p999_ms = summary.map(|s| s.p999_ms);
        self.max_ms = summary.map(|s| s.max_ms);
        self.mean_ms = summary.map(|s| s.mean_ms);
    }

    /// Decides `ok`: something was measured, nothing failed, verify found nothing.
    pub fn judge(&mut self) {
        let verified = self.verify.as_ref().is_none_or(|v| v.anomalies() == 0);
        self.ok = self.msgs > 0 && self.errors == 0 && verified;
    }

    /// The readable block.
    pub fn render(&self) -> String {
        let s = &self.setup;
        let mut out = String::new();
        let loop_kind = match s.rate_per_sec {
            Some(r) => format!("open loop at {} msgs/s", thousands(r)),
            None => "closed loop (max speed)".to_owned(),
        };
        let producing = format!(
            "{}, acks={}, {}-byte messages, {loop_kind}",
            plural(s.producers, "producer"),
            s.acks,
            s.size_bytes
        );
        let what_ran = match self.mode.as_str() {
            "consume" => plural(s.consumers, "consumer"),
            "e2e" => format!("{producing}, {}", plural(s.consumers, "consumer")),
            _ => producing,
        };
        let _ = writeln!(
            out,
            "sluice-bench {}: topic {} ({} partitions) on {}, {what_ran}",
            self.mode, s.topic, s.partitions, s.server
        );
        let _ = writeln!(
            out,
            "  measured     {} msgs, {:.1} MB in {:.3} s (warm-up: {} msgs excluded)",
            thousands(self.msgs),
            self.bytes as f64 / 1e6,
            self.secs,
            thousands(self.warmup_msgs)
        );
        let _ = writeln!(
            out,
            "  throughput   {} msgs/s, {:.2} MB/s (MB = 10^6 bytes of message values)",
            thousands(self.msgs_per_sec.round() as u64),
            self.mb_per_sec
        );
        if let Some(target) = s.rate_per_sec {
            if self.msgs_per_sec < target as f64 * 0.95 && self.msgs > 0 {
                let _ = writeln!(
                    out,
                    "  note         below the target rate of {} msgs/s: the broker or this \
                     machine could not keep up (latency counts from the scheduled send time)",
                    thousands(target)
                );
            }
        }
        let from = if s.rate_per_sec.is_some() {
            ", from the scheduled send time"
        } else {
            ""
        };
        let line = |label: &str, l: &LatencySummary, what: &str| {
            format!(
                "  {label:<12} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  \
                 max {:.3} ms  ({what})\n",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            )
        };
        if let (Some(p50), Some(p90), Some(p99), Some(p999), Some(max), Some(mean)) = (
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.mean_ms,
        ) {
            let summary = LatencySummary {
                count: self.msgs,
                p50_ms: p50,
                p90_ms: p90,
                p99_ms: p99,
                p999_ms: p999,
                max_ms: max,
                mean_ms: mean,
            };
            let (label, what) = match self.mode.as_str() {
                "e2e" => ("e2e latency", "produce -> consume"),
                _ => ("ack latency", "send -> acknowledged"),
            };
            out.push_str(&line(label, &summary, &format!("{what}{from}")));
        }
        if let Some(ack) = &self.ack {
            let what = format!("send -> acknowledged{from}");
            out.push_str(&line("ack latency", ack, &what));
        }
        if let Some(produced) = self.produced {
            let _ = writeln!(
                out,
                "  produced     {} msgs acknowledged",
                thousands(produced)
            );
        }
        if self.errors == 0 {
            let _ = writeln!(out, "  errors       0");
        } else {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k}: {}", thousands(n)))
                .collect();
            let _ = writeln!(
                out,
                "  errors       {} ({})",
                thousands(self.errors),
                kinds.join(", ")
            );
        }
        let _ = writeln!(out, "  stopped      {}", self.stop);
        if let Some(v) = &self.verify {
            let verdict = if v.anomalies() == 0 { "PASS" } else { "FAIL" };
            let _ = writeln!(
                out,
                "  verify       {verdict}: {} acked, {} read back; lost {}, duplicated {}, \
                 misplaced {}, reordered {}, written despite a definite failure {}, \
                 unknown {}, offset order {}",
                thousands(v.acked),
                thousands(v.consumed),
                v.lost,
                v.duplicated,
                v.misplaced,
                v.reordered,
                v.written_despite_definite_failure,
                v.unknown_records,
                v.offset_order_errors
            );
            let _ = writeln!(
                out,
                "               (not anomalies: failed definitely {}, indeterminate found {} / \
                 missing {}, foreign {}, offset gaps {}, read {})",
                v.failed_definite,
                v.indeterminate_found,
                v.indeterminate_missing,
                v.foreign,
                v.offset_gaps,
                if v.read_complete {
                    "complete"
                } else {
                    "INCOMPLETE"
                }
            );
            for e in &v.examples {
                let _ = writeln!(out, "               - {e}");
            }
        }
        let _ = writeln!(
            out,
            "  result       {}",
            if self.ok { "ok" } else { "FAILED" }
        );
        out
    }
}

/// "1 consumer", "2 consumers".
fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `n` with commas between groups of three digits.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2024-01-01T00:00:00Z`).
pub fn rfc3339_utc(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The (year, month, day) of `days` since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::Latency;

    fn report() -> Report {
        let machine = Machine {
            hostname: "h".into(),
            cpus: 2,
            os: "linux".into(),
            arch: "x86_64".into(),
            kernel: "Linux version 6".into(),
            timestamp: rfc3339_utc(0),
            unix_secs: 0,
        };
        let setup = Setup {
            server: "127.0.0.1:7878".into(),
            topic: "t".into(),
            partitions: 8,
            producers: 4,
            consumers: 1,
            size_bytes: 1024,
            acks: "all".into(),
            rate_per_sec: None,
            run_id: "00".into(),
        };
        let mut r = Report::new("produce", machine, serde_json::json!({"count": 10}), setup);
        r.msgs = 10;
        r.bytes = 10_240;
        r.secs = 0.5;
        r.msgs_per_sec = 20.0;
        r.mb_per_sec = 0.02048;
        r.stop = "count reached".into();
        r
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut r = report();
        let mut l = Latency::new();
        l.record_ns(2_000_000);
        r.set_latency("ack", l.summary());
        r.judge();
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "tool",
            "mode",
            "machine",
            "params",
            "msgs",
            "bytes",
            "secs",
            "msgs_per_sec",
            "mb_per_sec",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "errors",
        ] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
        assert_eq!(v["tool"], "sluice-bench");
        assert_eq!(v["machine"]["cpus"], 2);
        assert!((v["p50_ms"].as_f64().unwrap() - 2.0).abs() < 0.01);
        assert_eq!(v["ok"], true);
        assert!(v.get("verify").is_none());
    }

    #[test]
    fn judge_fails_errors_empty_runs_and_anomalies() {
        let mut r = report();
        r.judge();
        assert!(r.ok);
        r.errors = 1;
        r.judge();
        assert!(!r.ok);
        let mut r = report();
        r.msgs = 0;
        r.judge();
        assert!(!r.ok);
        let mut r = report();
        r.verify = Some(VerifyReport {
            lost: 1,
            ..VerifyReport::default()
        });
        r.judge();
        assert!(!r.ok);
        assert!(r.render().contains("verify       FAIL"), "{}", r.render());
    }

    #[test]
    fn the_text_block_names_units() {
        let mut r = report();
        r.judge();
        let text = r.render();
        assert!(text.contains("MB = 10^6 bytes"), "{text}");
        assert!(text.contains("20 msgs/s"), "{text}");
        assert!(text.contains("result       ok"), "{text}");
    }

    #[test]
    fn numbers_and_dates_format() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
