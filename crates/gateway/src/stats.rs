//! The gateway's counters, as a plain stats struct (STYLE: metrics live with their module).
//! The metrics crate maps a [`StatsSnapshot`] onto prometheus-client families at scrape
//! time; nothing here names prometheus.
//!
//! Counters only go up; gauges (`connections_open`, `streams_open`, `in_flight`) go up and
//! down. All are relaxed atomics: a snapshot is not a consistent cut, which metrics do not
//! need.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sluice_proto::wire::{ErrorCode, RequestKind, CONNECTION_ERROR_SHUTDOWN};

/// Upper bounds (inclusive, microseconds) of the request latency histogram buckets; one
/// more bucket above the last holds the rest (prometheus' `+Inf`).
pub const LATENCY_BUCKET_BOUNDS_US: [u64; 19] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

const BUCKETS: usize = LATENCY_BUCKET_BOUNDS_US.len() + 1;
const KINDS: usize = RequestKind::ALL.len();
const CODES: usize = ErrorCode::ALL.len();
/// Stream error codes are 0..=CONNECTION_ERROR_SHUTDOWN (the shutdown code is also used
/// to refuse streams during a drain).
const STREAM_CODES: usize = CONNECTION_ERROR_SHUTDOWN as usize + 1;

// Bucket bounds strictly increase (the `partition_point` lookup relies on it).
const _: () = {
    let mut rest: &[u64] = &LATENCY_BUCKET_BOUNDS_US;
    while let [a, b, ..] = rest {
        assert!(*a < *b);
        if let [_, tail @ ..] = rest {
            rest = tail;
        }
    }
};

fn kind_index(kind: RequestKind) -> usize {
    RequestKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

fn code_index(code: ErrorCode) -> usize {
    // `ErrorCode::ALL` is in number order without gaps (asserted in sluice-proto).
    usize::from(code.number()).saturating_sub(1).min(CODES - 1)
}

#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKET_BOUNDS_US.partition_point(|bound| *bound < us);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            bucket_counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_us: self.sum_us.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

/// Live counters of one gateway; see [`Gateway::stats`](crate::Gateway::stats).
#[derive(Debug)]
pub struct GatewayStats {
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    handshakes_failed: AtomicU64,
    connections_closed_protocol: AtomicU64,
    streams_open: AtomicU64,
    streams_total: AtomicU64,
    in_flight: AtomicU64,
    in_flight_peak: AtomicU64,
    interrupted: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    requests: [AtomicU64; KINDS],
    errors: [AtomicU64; CODES],
    stream_resets: [AtomicU64; STREAM_CODES],
    latency: [Histogram; KINDS],
}

impl Default for GatewayStats {
    fn default() -> Self {
        GatewayStats {
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            connections_closed_protocol: AtomicU64::new(0),
            streams_open: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            in_flight_peak: AtomicU64::new(0),
            interrupted: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            stream_resets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| Histogram::new()),
        }
    }
}

/// A copy of every counter, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Gauge: connections past the handshake and not yet closed.
    pub connections_open: u64,
    /// Connections that completed the handshake (with ALPN `sluice/1`).
    pub connections_total: u64,
    /// Connection attempts refused: over `connections_max`, or during a shutdown.
    pub connections_refused: u64,
    /// Handshakes that failed or timed out (a wrong ALPN or an untrusted certificate).
    pub handshakes_failed: u64,
    /// Connections the gateway closed with `CONNECTION_ERROR_PROTOCOL`.
    pub connections_closed_protocol: u64,
    /// Gauge: streams being read, handled or answered.
    pub streams_open: u64,
    pub streams_total: u64,
    /// Gauge: requests handed to the service whose response is not yet written. (A
    /// shutdown also waits for the client's acknowledgement of each response.)
    pub in_flight: u64,
    /// The largest `in_flight` seen.
    pub in_flight_peak: u64,
    /// Requests answered `Interrupted`/`ShuttingDown` because a shutdown's grace ran out.
    pub interrupted: u64,
    /// Request stream bytes read (prefixes included).
    pub bytes_in: u64,
    /// Response bytes written (prefixes and payloads included).
    pub bytes_out: u64,
    /// Requests dispatched to the service, by kind (every kind present).
    pub requests: BTreeMap<RequestKind, u64>,
    /// Responses that carried an error, by code (every code present): the gateway's own
    /// answers to bad frames and the service's errors.
    pub errors: BTreeMap<ErrorCode, u64>,
    /// Streams the gateway reset or stopped, by QUIC application error code
    /// (`STREAM_ERROR_*`; `CONNECTION_ERROR_SHUTDOWN` for streams refused by a drain).
    pub stream_resets: BTreeMap<u32, u64>,
    /// Dispatch-to-response-written latency by kind (every kind present).
    pub latency: BTreeMap<RequestKind, LatencySnapshot>,
}

/// One kind's latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LatencySnapshot {
    /// Counts per bucket (not cumulative): bucket `i` counts latencies `<=`
    /// `LATENCY_BUCKET_BOUNDS_US[i]` and above the previous bound; the last counts the rest.
    pub bucket_counts: Vec<u64>,
    pub sum_us: u64,
    pub count: u64,
}

impl GatewayStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections_open: self.connections_open.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            handshakes_failed: self.handshakes_failed.load(Relaxed),
            connections_closed_protocol: self.connections_closed_protocol.load(Relaxed),
            streams_open: self.streams_open.load(Relaxed),
            streams_total: self.streams_total.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            in_flight_peak: self.in_flight_peak.load(Relaxed),
            interrupted: self.interrupted.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            requests: RequestKind::ALL
                .iter()
                .zip(&self.requests)
                .map(|(k, n)| (*k, n.load(Relaxed)))
                .collect(),
            errors: ErrorCode::ALL
                .iter()
                .zip(&self.errors)
                .map(|(c, n)| (*c, n.load(Relaxed)))
                .collect(),
            stream_resets: self
                .stream_resets
                .iter()
                .enumerate()
                .map(|(code, n)| (code as u32, n.load(Relaxed)))
                .collect(),
            latency: RequestKind::ALL
                .iter()
                .zip(&self.latency)
                .map(|(k, h)| (*k, h.snapshot()))
                .collect(),
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn handshake_failed(&self) {
        self.handshakes_failed.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed_protocol(&self) {
        self.connections_closed_protocol.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_opened(&self) {
        self.streams_open.fetch_add(1, Relaxed);
        self.streams_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_closed(&self) {
        self.streams_open.fetch_sub(1, Relaxed);
    }

    pub(crate) fn dispatched(&self, kind: RequestKind) {
        if let Some(n) = self.requests.get(kind_index(kind)) {
            n.fetch_add(1, Relaxed);
        }
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.in_flight_peak.fetch_max(now, Relaxed);
    }

    pub(crate) fn answered(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub(crate) fn interrupted(&self) {
        self.interrupted.fetch_add(1, Relaxed);
    }

    pub(crate) fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        if let Some(n) = self.errors.get(code_index(code)) {
            n.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn stream_reset(&self, code: u32) {
        let i = (code as usize).min(STREAM_CODES - 1);
        if let Some(n) = self.stream_resets.get(i) {
            n.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn latency(&self, kind: RequestKind, elapsed: Duration) {
        if let Some(h) = self.latency.get(kind_index(kind)) {
            h.record(elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_its_bucket() {
        let stats = GatewayStats::default();
        stats.latency(RequestKind::Fetch, Duration::from_micros(50));
        stats.latency(RequestKind::Fetch, Duration::from_micros(51));
        stats.latency(RequestKind::Fetch, Duration::from_secs(3600));
        let snap = stats.snapshot();
        let fetch = &snap.latency[&RequestKind::Fetch];
        assert_eq!(fetch.count, 3);
        assert_eq!(fetch.bucket_counts.len(), BUCKETS);
        assert_eq!(fetch.bucket_counts[0], 1);
        assert_eq!(fetch.bucket_counts[1], 1);
        assert_eq!(fetch.bucket_counts[BUCKETS - 1], 1);
        assert_eq!(snap.latency[&RequestKind::Produce].count, 0);
    }

    #[test]
    fn every_code_and_kind_has_a_counter() {
        let stats = GatewayStats::default();
        for code in ErrorCode::ALL {
            stats.error(code);
        }
        for kind in RequestKind::ALL {
            stats.dispatched(kind);
        }
        let snap = stats.snapshot();
        assert!(snap.errors.values().all(|n| *n == 1));
        assert_eq!(snap.errors.len(), ErrorCode::ALL.len());
        assert!(snap.requests.values().all(|n| *n == 1));
        assert_eq!(snap.in_flight, RequestKind::ALL.len() as u64);
        assert_eq!(snap.in_flight_peak, RequestKind::ALL.len() as u64);
    }
}
