//! `topic create|list|describe|delete` and `cluster status`.

use serde::Serialize;
use sluice_client::transport::Client;
use sluice_proto::wire::{ErrorCode, PartitionMetadata, TopicConfig};

use crate::cli::Output;
use crate::encode::{or_dash, table};
use crate::fail::Fail;

/// Prints one line (or a block of text) to stdout.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

fn emit_json<T: Serialize>(value: &T) -> Result<(), Fail> {
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
    config: TopicConfig,
    output: Output,
) -> Result<(), Fail> {
    if partitions == 0 {
        return Err(Fail::usage("--partitions must be at least 1"));
    }
    let created = client
        .create_topic(name, partitions, config)
        .await
        .map_err(|e| Fail::client(&format!("create topic '{name}'"), &e))?;
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
struct BrokerJson<'a> {
    node_id: u32,
    addr: &'a str,
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
    brokers: Vec<BrokerJson<'a>>,
    topic_count: u32,
    partition_count: u32,
    topics: Vec<TopicLeadersJson<'a>>,
}

pub async fn cluster_status(client: &Client, output: Output) -> Result<(), Fail> {
    let cluster = client
        .describe_cluster()
        .await
        .map_err(|e| Fail::client("describe cluster", &e))?;
    let mut metadata = client
        .metadata(None)
        .await
        .map_err(|e| Fail::client("metadata", &e))?;
    metadata.topics.sort_by(|a, b| a.name.cmp(&b.name));
    match output {
        Output::Text => {
            let mut text = format!(
                "cluster {} (answered by node {}, controller {})\n\nbrokers: {}\n",
                cluster.cluster_id,
                cluster.node_id,
                or_dash(cluster.controller),
                cluster.brokers.len(),
            );
            let rows: Vec<Vec<String>> = cluster
                .brokers
                .iter()
                .map(|b| vec![b.node_id.to_string(), b.addr.clone()])
                .collect();
            text.push_str(&table(&["NODE", "ADDRESS"], &rows));
            text.push_str(&format!(
                "\ntopics: {}, partitions: {}\n",
                cluster.topics, cluster.partitions
            ));
            let rows: Vec<Vec<String>> = metadata
                .topics
                .iter()
                .map(|t| {
                    let mut leaders: Vec<u32> =
                        t.partitions.iter().filter_map(|p| p.leader).collect();
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
            text.push_str(&table(
                &["TOPIC", "PARTITIONS", "LEADERS", "WITHOUT_LEADER"],
                &rows,
            ));
            emit(&text);
        }
        Output::Json => emit_json(&ClusterJson {
            cluster_id: &cluster.cluster_id,
            node_id: cluster.node_id,
            controller: cluster.controller,
            brokers: cluster
                .brokers
                .iter()
                .map(|b| BrokerJson {
                    node_id: b.node_id,
                    addr: &b.addr,
                })
                .collect(),
            topic_count: cluster.topics,
            partition_count: cluster.partitions,
            topics: metadata
                .topics
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
                .collect(),
        })?,
    }
    Ok(())
}
