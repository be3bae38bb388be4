//! `/metrics`: prometheus-client families built at scrape time from the plain stats
//! structs the engine and the gateway keep (STYLE §8: metrics live with their module
//! as plain counters; this edge maps them). Every name starts with `sluice_`; the
//! list is in `docs/OPERATIONS.md`.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sluice_gateway::StatsSnapshot;
use sluice_node::{EngineStats, LATENCY_BOUNDS_US};

type Labels = Vec<(&'static str, String)>;

/// One scrape's worth of stats.
#[derive(Debug)]
struct Snapshot {
    engine: EngineStats,
    gateway: StatsSnapshot,
}

/// The text exposition of the current stats.
pub fn render(engine: EngineStats, gateway: StatsSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot { engine, gateway }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

fn counter_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A histogram from per-bucket counts (not cumulative) over `bounds_us`, plus +Inf.
fn histogram_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    bounds_us: &[u64],
    series: &[(Labels, Vec<u64>, u64, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, counts, sum_us, count) in series {
        // Per-bucket counts as they are: `encode_histogram` writes the running sum.
        let buckets: Vec<(f64, u64)> = bounds_us
            .iter()
            .map(|b| *b as f64 / 1e6)
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().copied())
            .collect();
        m.encode_family(labels)?.encode_histogram::<Labels>(
            *sum_us as f64 / 1e6,
            *count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn u(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &self.engine;
        let g = &self.gateway;
        // Per topic sums of the per-partition counters.
        let mut by_topic: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
        for p in e.partitions() {
            let t = by_topic.entry(p.tp.topic.as_str()).or_default();
            t[0] += p.produce_requests;
            t[1] += p.produce_bytes;
            t[2] += p.fetch_requests;
            t[3] += p.fetch_bytes;
        }
        let topic_series = |i: usize| -> Vec<(Labels, u64)> {
            by_topic
                .iter()
                .map(|(t, v)| {
                    (
                        vec![("topic", t.to_string())],
                        v.get(i).copied().unwrap_or(0),
                    )
                })
                .collect()
        };
        counter_family(
            &mut enc,
            "sluice_produce_requests",
            "Produce requests by topic.",
            &topic_series(0),
        )?;
        counter_family(
            &mut enc,
            "sluice_produce_bytes",
            "Produced batch bytes by topic.",
            &topic_series(1),
        )?;
        counter_family(
            &mut enc,
            "sluice_fetch_requests",
            "Fetch requests by topic.",
            &topic_series(2),
        )?;
        counter_family(
            &mut enc,
            "sluice_fetch_bytes",
            "Fetched batch bytes by topic.",
            &topic_series(3),
        )?;

        let part = |f: &dyn Fn(&sluice_node::PartitionStats) -> u64| -> Vec<(Labels, i64)> {
            e.partitions()
                .map(|p| {
                    (
                        vec![
                            ("topic", p.tp.topic.clone()),
                            ("partition", p.tp.partition.to_string()),
                        ],
                        u(f(p)),
                    )
                })
                .collect()
        };
        gauge_family(
            &mut enc,
            "sluice_log_bytes",
            "Bytes of a partition's log segments.",
            &part(&|p| p.log_bytes),
        )?;
        gauge_family(
            &mut enc,
            "sluice_log_segments",
            "Segments of a partition's log.",
            &part(&|p| p.segments),
        )?;
        gauge_family(
            &mut enc,
            "sluice_high_watermark",
            "Committed end offset of a partition.",
            &part(&|p| p.high_watermark),
        )?;
        gauge_family(
            &mut enc,
            "sluice_log_start_offset",
            "First retained offset of a partition.",
            &part(&|p| p.log_start),
        )?;
        gauge_family(
            &mut enc,
            "sluice_log_end_offset",
            "End of a partition's local log: appended, not necessarily committed.",
            &part(&|p| p.log_end),
        )?;
        gauge_family(
            &mut enc,
            "sluice_raft_term",
            "Raft term of a partition's group on this node.",
            &part(&|p| p.raft_term),
        )?;
        gauge_family(
            &mut enc,
            "sluice_raft_leader",
            "1 when this node leads the partition's Raft group, else 0.",
            &part(&|p| u64::from(p.is_leader)),
        )?;

        let shards: Vec<_> = e.shards.iter().collect();
        histogram_family(
            &mut enc,
            "sluice_fsync_duration_seconds",
            "Group-commit flushes per shard: the fdatasyncs of every partition appended to since its last one and not syncing, issued together (appends go on meanwhile; groups on different partitions overlap).",
            &LATENCY_BOUNDS_US,
            &shards
                .iter()
                .map(|s| {
                    (
                        vec![("shard", s.shard.to_string())],
                        s.flush_latency.buckets.clone(),
                        s.flush_latency.sum_us,
                        s.flush_latency.count,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        gauge_family(
            &mut enc,
            "sluice_shard_queue_length",
            "Requests waiting in a shard's queue.",
            &shards
                .iter()
                .map(|s| (vec![("shard", s.shard.to_string())], s.queue_len as i64))
                .collect::<Vec<_>>(),
        )?;
        counter_family(
            &mut enc,
            "sluice_shard_queue_full_waits",
            "Times a request waited for room in a full shard queue (backpressure).",
            &[(vec![], e.queue_full_waits)],
        )?;
        let core = e.core_total();
        counter_family(
            &mut enc,
            "sluice_segments_deleted",
            "Log segments deleted by retention.",
            &[(vec![], core.segments_deleted)],
        )?;
        counter_family(
            &mut enc,
            "sluice_leader_transfers",
            "Partition leaderships this node handed back to their preferred leader.",
            &[(vec![], core.leader_transfers)],
        )?;

        counter_family(
            &mut enc,
            "sluice_requests",
            "Requests by kind.",
            &g.requests
                .iter()
                .map(|(k, v)| (vec![("kind", k.as_str().to_string())], *v))
                .collect::<Vec<_>>(),
        )?;
        counter_family(
            &mut enc,
            "sluice_errors",
            "Error responses by code.",
            &g.errors
                .iter()
                .map(|(c, v)| (vec![("code", c.name().to_string())], *v))
                .collect::<Vec<_>>(),
        )?;
        histogram_family(
            &mut enc,
            "sluice_request_duration_seconds",
            "Request latency by kind, from the frame read to the response written.",
            &sluice_gateway::LATENCY_BUCKET_BOUNDS_US,
            &g.latency
                .iter()
                .map(|(k, l)| {
                    (
                        vec![("kind", k.as_str().to_string())],
                        l.bucket_counts.clone(),
                        l.sum_us,
                        l.count,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        gauge_family(
            &mut enc,
            "sluice_connections",
            "Open client connections.",
            &[(vec![], u(g.connections_open))],
        )?;
        counter_family(
            &mut enc,
            "sluice_connections_accepted",
            "Client connections accepted.",
            &[(vec![], g.connections_total)],
        )?;
        gauge_family(
            &mut enc,
            "sluice_in_flight_requests",
            "Requests being handled.",
            &[(vec![], u(g.in_flight))],
        )?;
        counter_family(
            &mut enc,
            "sluice_network_received_bytes",
            "Request frame bytes received.",
            &[(vec![], g.bytes_in)],
        )?;
        counter_family(
            &mut enc,
            "sluice_network_sent_bytes",
            "Response frame bytes sent.",
            &[(vec![], g.bytes_out)],
        )?;
        Ok(())
    }
}

/// Names of every family in an exposition (for the docs test).
#[cfg(test)]
pub fn family_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family the broker exports is listed in docs/OPERATIONS.md.
    #[test]
    fn every_metric_is_documented() {
        let text = render(EngineStats::default(), StatsSnapshot::default()).unwrap();
        let names = family_names(&text);
        assert!(names.len() >= 15, "{names:?}");
        let docs = include_str!("../../../docs/OPERATIONS.md");
        for n in names {
            assert!(n.starts_with("sluice_"), "{n}");
            let documented =
                docs.contains(&format!("`{n}`")) || docs.contains(&format!("`{n}_total`"));
            assert!(documented, "{n} is not in docs/OPERATIONS.md");
        }
    }

    /// Histogram buckets are cumulative once, as Prometheus reads them: each `le`
    /// bucket counts the observations at or below it and `+Inf` equals the count (they
    /// were summed twice, so `+Inf` was many times the count).
    #[test]
    fn histogram_buckets_count_each_observation_once() {
        let mut flush = sluice_node::LatencyHistogram::default();
        for us in [40, 90, 90, 3_000, 10_000_000] {
            flush.record(us);
        }
        let shard = sluice_node::ShardSnapshot {
            shard: 0,
            cpu: None,
            core: Default::default(),
            queue_len: 0,
            queue_depth: 1,
            cycles: 0,
            requests: 0,
            cycle_requests_seen_max: 0,
            flush_latency: flush,
            partitions: vec![],
        };
        let stats = EngineStats {
            shards: vec![shard],
            queue_full_waits: 0,
        };
        let text = render(stats, StatsSnapshot::default()).unwrap();
        let bucket = |le: &str| -> u64 {
            let prefix =
                format!("sluice_fsync_duration_seconds_bucket{{le=\"{le}\",shard=\"0\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .parse()
                .unwrap()
        };
        assert_eq!(bucket("0.00005"), 1);
        assert_eq!(bucket("0.0001"), 3);
        assert_eq!(bucket("0.0025"), 3);
        assert_eq!(bucket("0.005"), 4);
        assert_eq!(bucket("5.0"), 4);
        assert_eq!(bucket("+Inf"), 5);
        assert!(text.contains("sluice_fsync_duration_seconds_count{shard=\"0\"} 5"));
    }

    /// The shipped Grafana dashboard only queries families the broker exports.
    #[test]
    fn the_dashboard_uses_real_metrics() {
        let text = render(EngineStats::default(), StatsSnapshot::default()).unwrap();
        let names = family_names(&text);
        let dash = include_str!("../../../docs/grafana/sluice-dashboard.json");
        let mut used = 0;
        for (i, _) in dash.match_indices("sluice_") {
            let rest = &dash[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let token = &rest[..end];
            let family = ["_bucket", "_total", "_sum", "_count"]
                .iter()
                .find_map(|s| token.strip_suffix(s))
                .unwrap_or(token);
            assert!(
                names.iter().any(|n| n == family),
                "dashboard queries unknown {token}"
            );
            used += 1;
        }
        assert!(used >= 12);
    }
}
