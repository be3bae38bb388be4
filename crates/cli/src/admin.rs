//! `topic create|list|describe|delete` and `cluster status`.

use serde::Serialize;
use sluice_client::transport::Client;
use sluice_proto::wire::{
    ClusterStatus, ErrorCode, NodeStatus, PartitionMetadata, TopicConfig, TopicMetadata,
};

use crate::cli::Output;
use crate::encode::{or_dash, table};
use crate::fail::Fail;

/// Prints one line (or a block of text) to stdout.
pub(crate) fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Prints `value` as one JSON line.
pub(crate) fn emit_json<T: Serialize>(value: &T) -> Result<(), Fail> {
    let line = serde_json::to_string(value)
        .map_err(|e| Fail::broker(format!("cannot encode JSON output: {e}")))?;
    emit(&line);
    Ok(())
}

/// The partitions of `topic` per the broker's metadata; an unknown topic is an error
/// that names it.
pub async fn topic_partitions(
    client: &Client,
    topic: &str,
) -> Result<Vec<PartitionMetadata>, Fail> {
    let metadata = client
        .metadata(Some(vec![topic.to_owned()]))
        .await
        .map_err(|e| Fail::client(&format!("metadata of topic '{topic}'"), &e))?;
    let Some(t) = metadata.topics.into_iter().find(|t| t.name == topic) else {
        return Err(Fail::broker(format!(
            "topic '{topic}': the broker's metadata does not mention it"
        )));
    };
    if let Some(e) = t.error {
        return Err(match e.code {
            ErrorCode::UnknownTopic => Fail::broker(format!(
                "topic '{topic}' does not exist (UnknownTopic); see `sluice topic list`"
            )),
            _ => Fail::broker(format!("topic '{topic}': {}", crate::fail::explain(&e))),
        });
    }
    if t.partitions.is_empty() {
        return Err(Fail::broker(format!("topic '{topic}' has no partitions")));
    }
    Ok(t.partitions)
}

/// `None` (broker default) as `default`, `u64::MAX` as `unlimited`.
fn limit_text(value: Option<u64>) -> String {
    match value {
        None => "default".to_owned(),
        Some(u64::MAX) => "unlimited".to_owned(),
        Some(v) => v.to_string(),
    }
}

#[derive(Serialize)]
struct TopicJson<'a> {
    name: &'a str,
    partitions: u32,
}

pub async fn create(
    client: &Client,
    name: &str,
    partitions: u32,
    replication_factor: Option<u32>,
    config: TopicConfig,
    output: Output,
) -> Result<(), Fail> {
    if partitions == 0 {
        return Err(Fail::usage("--partitions must be at least 1"));
    }
    let context = format!("create topic '{name}'");
    let created = match replication_factor {
        None => client.create_topic(name, partitions, config).await,
        Some(rf) => {
            client
                .create_topic_replicated(name, partitions, Some(rf), config)
                .await
        }
    }
    .map_err(|e| Fail::client(&context, &e))?;
    match output {
        Output::Text => emit(&format!(
            "created topic {} with {} partitions",
            created.name, created.partitions
        )),
        Output::Json => emit_json(&TopicJson {
            name: &created.name,
            partitions: created.partitions,
        })?,
    }
    Ok(())
}

pub async fn list(client: &Client, output: Output) -> Result<(), Fail> {
    let mut topics = client
        .list_topics()
        .await
        .map_err(|e| Fail::client("list topics", &e))?;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    match output {
        Output::Text => {
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| vec![t.name.clone(), t.partitions.to_string()])
                .collect();
            emit(&table(&["TOPIC", "PARTITIONS"], &rows));
        }
        Output::Json => {
            for t in &topics {
                emit_json(&TopicJson {
                    name: &t.name,
                    partitions: t.partitions,
                })?;
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct ConfigJson {
    /// `null` is the broker default; `u64::MAX` is unlimited.
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    segment_bytes: Option<u64>,
}

#[derive(Serialize)]
struct PartitionJson<'a> {
    partition: u32,
    leader: Option<u32>,
    replicas: &'a [u32],
    log_start: u64,
    high_watermark: u64,
    log_bytes: u64,
}

#[derive(Serialize)]
struct DescriptionJson<'a> {
    name: &'a str,
    config: ConfigJson,
    partitions: Vec<PartitionJson<'a>>,
}

pub async fn describe(client: &Client, name: &str, output: Output) -> Result<(), Fail> {
    let d = client
        .describe_topic(name)
        .await
        .map_err(|e| Fail::client(&format!("describe topic '{name}'"), &e))?;
    match output {
        Output::Text => {
            let mut text = format!(
                "topic {}: {} partitions, retention_ms {}, retention_bytes {}, segment_bytes {}\n",
                d.name,
                d.partitions.len(),
                limit_text(d.config.retention_ms),
                limit_text(d.config.retention_bytes),
                limit_text(d.config.segment_bytes),
            );
            let rows: Vec<Vec<String>> = d
                .partitions
                .iter()
                .map(|p| {
                    let replicas: Vec<String> = p.replicas.iter().map(u32::to_string).collect();
                    vec![
                        p.partition.to_string(),
                        or_dash(p.leader),
                        replicas.join(","),
                        p.log_start.to_string(),
                        p.high_watermark.to_string(),
                        p.log_bytes.to_string(),
                    ]
                })
                .collect();
            text.push_str(&table(
                &[
                    "PARTITION",
                    "LEADER",
                    "REPLICAS",
                    "LOG_START",
                    "HIGH_WATERMARK",
                    "LOG_BYTES",
                ],
                &rows,
            ));
            emit(&text);
        }
        Output::Json => emit_json(&DescriptionJson {
            name: &d.name,
            config: ConfigJson {
                retention_ms: d.config.retention_ms,
                retention_bytes: d.config.retention_bytes,
                segment_bytes: d.config.segment_bytes,
            },
            partitions: d
                .partitions
                .iter()
                .map(|p| PartitionJson {
                    partition: p.partition,
                    leader: p.leader,
                    replicas: &p.replicas,
                    log_start: p.log_start,
                    high_watermark: p.high_watermark,
                    log_bytes: p.log_bytes,
                })
                .collect(),
        })?,
    }
    Ok(())
}

#[derive(Serialize)]
struct DeletedJson<'a> {
    deleted: &'a str,
}

pub async fn delete(client: &Client, name: &str, output: Output) -> Result<(), Fail> {
    client
        .delete_topic(name)
        .await
        .map_err(|e| Fail::client(&format!("delete topic '{name}'"), &e))?;
    match output {
        Output::Text => emit(&format!("deleted topic {name}")),
        Output::Json => emit_json(&DeletedJson { deleted: name })?,
    }
    Ok(())
}

#[derive(Serialize)]
struct NodeJson<'a> {
    node_id: u32,
    addr: &'a str,
    peer_addr: &'a str,
    alive: bool,
    last_heard_ms: Option<u64>,
    leaders: u32,
    replicas: u32,
}

#[derive(Serialize)]
struct PartitionLeaderJson<'a> {
    partition: u32,
    leader: Option<u32>,
    replicas: &'a [u32],
}

#[derive(Serialize)]
struct TopicLeadersJson<'a> {
    name: &'a str,
    partitions: Vec<PartitionLeaderJson<'a>>,
}

#[derive(Serialize)]
struct ClusterJson<'a> {
    cluster_id: &'a str,
    node_id: u32,
    controller: Option<u32>,
    nodes: Vec<NodeJson<'a>>,
    topic_count: u32,
    partition_count: u32,
    /// Partitions hosted by the answering node whose group has no known leader.
    leaderless: u32,
    /// `null` when the metadata request failed (a warning went to stderr).
    topics: Option<Vec<TopicLeadersJson<'a>>>,
    /// Whether every node is alive, there is a controller and no partition is leaderless.
    healthy: bool,
}

/// `last_heard_ms` in words: `self` for the answering node, `never`, `850ms`, `12.3s`.
pub fn heard_text(node: &NodeStatus, answering: u32) -> String {
    match node.last_heard_ms {
        None if node.node_id == answering => "self".to_owned(),
        None => "never".to_owned(),
        Some(ms) if ms < 1000 => format!("{ms}ms ago"),
        Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
    }
}

/// Partitions without a leader in the metadata.
fn leaderless_in(topics: &[TopicMetadata]) -> usize {
    topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.leader.is_none())
        .count()
}

/// What `--check` tests: every node alive, a controller, no leaderless partition (on
/// the answering node, nor in the metadata).
fn healthy(status: &ClusterStatus, topics: Option<&[TopicMetadata]>) -> bool {
    status.nodes.iter().all(|n| n.alive)
        && status.controller.is_some()
        && status.leaderless == 0
        && topics.is_none_or(|t| leaderless_in(t) == 0)
}

pub async fn cluster_status(client: &Client, check: bool, output: Output) -> Result<(), Fail> {
    let status = client
        .cluster_status()
        .await
        .map_err(|e| Fail::client("cluster status", &e))?;
    // The per-topic leaders come from metadata; a cluster without a controller may not
    // answer it, and the node table is still worth printing.
    let topics = match client.metadata(None).await {
        Ok(mut m) => {
            m.topics.sort_by(|a, b| a.name.cmp(&b.name));
            Some(m.topics)
        }
        Err(e) => {
            eprintln!("sluice: warning: {}", Fail::client("metadata", &e));
            None
        }
    };
    let ok = healthy(&status, topics.as_deref());
    match output {
        Output::Text => emit(&status_text(&status, topics.as_deref(), ok)),
        Output::Json => emit_json(&ClusterJson {
            cluster_id: &status.cluster_id,
            node_id: status.node_id,
            controller: status.controller,
            nodes: status
                .nodes
                .iter()
                .map(|n| NodeJson {
                    node_id: n.node_id,
                    addr: &n.addr,
                    peer_addr: &n.peer_addr,
                    alive: n.alive,
                    last_heard_ms: n.last_heard_ms,
                    leaders: n.leaders,
                    replicas: n.replicas,
                })
                .collect(),
            topic_count: status.topics,
            partition_count: status.partitions,
            leaderless: status.leaderless,
            topics: topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|t| TopicLeadersJson {
                        name: &t.name,
                        partitions: t
                            .partitions
                            .iter()
                            .map(|p| PartitionLeaderJson {
                                partition: p.partition,
                                leader: p.leader,
                                replicas: &p.replicas,
                            })
                            .collect(),
                    })
                    .collect()
            }),
            healthy: ok,
        })?,
    }
    if check && !ok {
        return Err(Fail::broker(
            "cluster not healthy: a node is down, there is no controller, or a partition has \
             no leader (see the status above)",
        ));
    }
    Ok(())
}

/// The text form of `cluster status`.
pub fn status_text(status: &ClusterStatus, topics: Option<&[TopicMetadata]>, ok: bool) -> String {
    let alive = status.nodes.iter().filter(|n| n.alive).count();
    let mut text = format!(
        "cluster {} (answered by node {}, controller {}): {}\n\nnodes: {}, alive: {}\n",
        status.cluster_id,
        status.node_id,
        or_dash(status.controller),
        if ok { "healthy" } else { "NOT HEALTHY" },
        status.nodes.len(),
        alive,
    );
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.addr.clone(),
                if n.peer_addr.is_empty() {
                    "-".to_owned()
                } else {
                    n.peer_addr.clone()
                },
                if n.alive { "yes" } else { "NO" }.to_owned(),
                heard_text(n, status.node_id),
                n.leaders.to_string(),
                n.replicas.to_string(),
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "NODE",
            "ADDRESS",
            "PEER_ADDRESS",
            "ALIVE",
            "LAST_HEARD",
            "LEADERS",
            "REPLICAS",
        ],
        &rows,
    ));
    text.push_str(&format!(
        "\ntopics: {}, partitions: {}, leaderless on node {}: {}\n",
        status.topics, status.partitions, status.node_id, status.leaderless
    ));
    let Some(topics) = topics else {
        text.push_str("(per-topic leaders unavailable: the metadata request failed)\n");
        return text;
    };
    if topics.is_empty() {
        return text;
    }
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            let mut leaders: Vec<u32> = t.partitions.iter().filter_map(|p| p.leader).collect();
            leaders.sort_unstable();
            leaders.dedup();
            let leaderless = t.partitions.iter().filter(|p| p.leader.is_none()).count();
            let leaders: Vec<String> = leaders.iter().map(u32::to_string).collect();
            vec![
                t.name.clone(),
                t.partitions.len().to_string(),
                if leaders.is_empty() {
                    "-".to_owned()
                } else {
                    leaders.join(",")
                },
                leaderless.to_string(),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &["TOPIC", "PARTITIONS", "LEADERS", "WITHOUT_LEADER"],
        &rows,
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::wire::PartitionMetadata;

    fn node(id: u32, alive: bool, heard: Option<u64>) -> NodeStatus {
        NodeStatus {
            node_id: id,
            addr: format!("127.0.0.1:700{id}"),
            peer_addr: format!("127.0.0.1:710{id}"),
            alive,
            last_heard_ms: heard,
            leaders: 1,
            replicas: 3,
        }
    }

    fn status(nodes: Vec<NodeStatus>, controller: Option<u32>, leaderless: u32) -> ClusterStatus {
        ClusterStatus {
            cluster_id: "sluice".into(),
            node_id: 1,
            controller,
            nodes,
            topics: 1,
            partitions: 3,
            leaderless,
        }
    }

    #[test]
    fn status_text_shows_liveness_and_health() {
        let s = status(
            vec![
                node(1, true, None),
                node(2, true, Some(120)),
                node(3, false, Some(12_345)),
            ],
            Some(2),
            0,
        );
        let topics = vec![TopicMetadata {
            name: "demo".into(),
            error: None,
            partitions: vec![
                PartitionMetadata {
                    partition: 0,
                    leader: Some(2),
                    replicas: vec![1, 2, 3],
                },
                PartitionMetadata {
                    partition: 1,
                    leader: None,
                    replicas: vec![1, 2, 3],
                },
            ],
        }];
        assert!(!healthy(&s, Some(&topics)));
        let text = status_text(&s, Some(&topics), false);
        assert!(text.contains("controller 2): NOT HEALTHY"), "{text}");
        assert!(text.contains("nodes: 3, alive: 2"), "{text}");
        assert!(text.contains("self"), "{text}");
        assert!(text.contains("120ms ago"), "{text}");
        assert!(text.contains("12.3s ago"), "{text}");
        let row3 = text
            .lines()
            .find(|l| l.starts_with("3 "))
            .expect("row of node 3");
        assert!(row3.contains(" NO "), "{row3}");
        let demo = text
            .lines()
            .find(|l| l.starts_with("demo"))
            .expect("demo row");
        assert_eq!(
            demo.split_whitespace().collect::<Vec<_>>(),
            ["demo", "2", "2", "1"]
        );

        let all_up = status(
            vec![node(1, true, None), node(2, true, Some(5))],
            Some(1),
            0,
        );
        assert!(healthy(&all_up, None));
        assert!(!healthy(&status(vec![node(1, true, None)], None, 0), None));
        assert!(!healthy(
            &status(vec![node(1, true, None)], Some(1), 1),
            None
        ));
        assert_eq!(heard_text(&node(2, false, None), 1), "never");
    }
}
