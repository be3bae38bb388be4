//! Field rules checked after decoding and before encoding (`PROTOCOL.md`, "Validation").
//! Structure is bincode's business; these are the rules and limits bincode cannot express.

use super::{
    BrokerInfo, ErrorBody, ErrorDetail, FrameError, FrameLimits, PartitionDescription,
    PartitionMetadata, Request, RequestHeader, Response, TopicDescription, TopicMetadata,
    TopicSummary,
};

const fn invalid(reason: &'static str) -> FrameError {
    FrameError::Invalid { reason }
}

const fn bad_name(reason: &'static str) -> FrameError {
    FrameError::InvalidTopicName { reason }
}

fn over(len: usize, max: u32) -> bool {
    len as u64 > u64::from(max)
}

/// Checks a topic name: 1 to `name_bytes_max` bytes of `A-Z a-z 0-9 . _ -`, and neither `.`
/// nor `..` (the names are directory names on the broker).
pub fn validate_topic_name(name: &str, limits: &FrameLimits) -> Result<(), FrameError> {
    if name.is_empty() {
        return Err(bad_name("empty"));
    }
    if over(name.len(), limits.name_bytes_max) {
        return Err(bad_name("longer than name_bytes_max"));
    }
    if name == "." || name == ".." {
        return Err(bad_name("'.' and '..' are reserved"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if !name.bytes().all(allowed) {
        return Err(bad_name("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

fn partition(p: u32, limits: &FrameLimits) -> Result<(), FrameError> {
    if p >= limits.partitions_max {
        return Err(invalid("partition number not below partitions_max"));
    }
    Ok(())
}

fn string(s: &str, limits: &FrameLimits) -> Result<(), FrameError> {
    if over(s.len(), limits.string_bytes_max) {
        return Err(invalid("string longer than string_bytes_max"));
    }
    Ok(())
}

pub(super) fn request_header(h: &RequestHeader, limits: &FrameLimits) -> Result<(), FrameError> {
    if over(h.client_id.len(), limits.client_id_bytes_max) {
        return Err(invalid("client_id longer than client_id_bytes_max"));
    }
    Ok(())
}

pub(super) fn request(r: &Request, limits: &FrameLimits) -> Result<(), FrameError> {
    match r {
        Request::Metadata { topics } => {
            if let Some(topics) = topics {
                if over(topics.len(), limits.topics_max) {
                    return Err(invalid("more topics than topics_max"));
                }
                for t in topics {
                    validate_topic_name(t, limits)?;
                }
            }
        }
        Request::CreateTopic {
            name, partitions, ..
        }
        | Request::CreateTopicReplicated {
            name, partitions, ..
        } => {
            if let Request::CreateTopicReplicated {
                replication_factor: Some(rf),
                ..
            } = r
            {
                if *rf == 0 || *rf > limits.nodes_max {
                    return Err(invalid("replication_factor not in 1..=nodes_max"));
                }
            }
            validate_topic_name(name, limits)?;
            if *partitions == 0 || *partitions > limits.partitions_max {
                return Err(invalid("partitions not in 1..=partitions_max"));
            }
        }
        Request::DeleteTopic { name } | Request::DescribeTopic { name } => {
            validate_topic_name(name, limits)?;
        }
        Request::ListTopics
        | Request::DescribeCluster
        | Request::InitProducer
        | Request::ClusterStatus => {}
        Request::Produce {
            topic,
            partition: p,
            timeout_ms,
            ..
        } => {
            validate_topic_name(topic, limits)?;
            partition(*p, limits)?;
            if *timeout_ms == 0 || *timeout_ms > limits.wait_ms_max {
                return Err(invalid("timeout_ms not in 1..=wait_ms_max"));
            }
        }
        Request::Fetch {
            topic,
            partition: p,
            max_bytes,
            max_wait_ms,
            ..
        } => {
            validate_topic_name(topic, limits)?;
            partition(*p, limits)?;
            if *max_bytes == 0 {
                return Err(invalid("max_bytes is 0"));
            }
            if *max_wait_ms > limits.wait_ms_max {
                return Err(invalid("max_wait_ms above wait_ms_max"));
            }
        }
        Request::ListOffsets {
            topic,
            partition: p,
            ..
        } => {
            validate_topic_name(topic, limits)?;
            partition(*p, limits)?;
        }
    }
    Ok(())
}

fn error_body(e: &ErrorBody, limits: &FrameLimits) -> Result<(), FrameError> {
    string(&e.message, limits)?;
    match &e.detail {
        ErrorDetail::None | ErrorDetail::Throttled { .. } => {}
        ErrorDetail::NotLeader { addr, .. } => {
            if let Some(addr) = addr {
                string(addr, limits)?;
            }
        }
        ErrorDetail::OffsetOutOfRange { log_start, log_end } => {
            if log_start > log_end {
                return Err(invalid("offset range with log_start above log_end"));
            }
        }
        ErrorDetail::Batch { code } => {
            if !(100..=199).contains(code) {
                return Err(invalid("batch error code outside 100..=199"));
            }
        }
        ErrorDetail::Duplicate {
            base_offset,
            last_offset,
        } => {
            if base_offset > last_offset {
                return Err(invalid("duplicate with base_offset above last_offset"));
            }
        }
    }
    Ok(())
}

fn brokers(b: &[BrokerInfo], limits: &FrameLimits) -> Result<(), FrameError> {
    if over(b.len(), limits.nodes_max) {
        return Err(invalid("more brokers than nodes_max"));
    }
    b.iter().try_for_each(|b| string(&b.addr, limits))
}

fn replicas(r: &[u32], limits: &FrameLimits) -> Result<(), FrameError> {
    if over(r.len(), limits.nodes_max) {
        return Err(invalid("more replicas than nodes_max"));
    }
    Ok(())
}

fn partition_count(n: usize, limits: &FrameLimits) -> Result<(), FrameError> {
    if over(n, limits.partitions_max) {
        return Err(invalid("more partitions than partitions_max"));
    }
    Ok(())
}

fn topic_count(n: usize, limits: &FrameLimits) -> Result<(), FrameError> {
    if over(n, limits.topics_max) {
        return Err(invalid("more topics than topics_max"));
    }
    Ok(())
}

fn topic_metadata(t: &TopicMetadata, limits: &FrameLimits) -> Result<(), FrameError> {
    validate_topic_name(&t.name, limits)?;
    partition_count(t.partitions.len(), limits)?;
    for PartitionMetadata {
        partition: p,
        replicas: r,
        ..
    } in &t.partitions
    {
        partition(*p, limits)?;
        replicas(r, limits)?;
    }
    if let Some(e) = &t.error {
        error_body(e, limits)?;
    }
    Ok(())
}

fn topic_summary(t: &TopicSummary, limits: &FrameLimits) -> Result<(), FrameError> {
    validate_topic_name(&t.name, limits)?;
    if t.partitions > limits.partitions_max {
        return Err(invalid("more partitions than partitions_max"));
    }
    Ok(())
}

fn topic_description(t: &TopicDescription, limits: &FrameLimits) -> Result<(), FrameError> {
    validate_topic_name(&t.name, limits)?;
    partition_count(t.partitions.len(), limits)?;
    for PartitionDescription {
        partition: p,
        replicas: r,
        log_start,
        high_watermark,
        ..
    } in &t.partitions
    {
        partition(*p, limits)?;
        replicas(r, limits)?;
        if log_start > high_watermark {
            return Err(invalid("log_start above high_watermark"));
        }
    }
    Ok(())
}

/// The result's error body, or `ok`'s check of the success value.
fn result<T>(
    r: &Result<T, ErrorBody>,
    limits: &FrameLimits,
    ok: impl FnOnce(&T) -> Result<(), FrameError>,
) -> Result<(), FrameError> {
    match r {
        Ok(v) => ok(v),
        Err(e) => error_body(e, limits),
    }
}

pub(super) fn response(r: &Response, limits: &FrameLimits) -> Result<(), FrameError> {
    match r {
        Response::Error(e) => error_body(e, limits),
        Response::Metadata(r) => result(r, limits, |m| {
            brokers(&m.brokers, limits)?;
            topic_count(m.topics.len(), limits)?;
            m.topics.iter().try_for_each(|t| topic_metadata(t, limits))
        }),
        Response::CreateTopic(r) => result(r, limits, |t| topic_summary(t, limits)),
        Response::DeleteTopic(r) => result(r, limits, |()| Ok(())),
        Response::ListTopics(r) => result(r, limits, |topics| {
            topic_count(topics.len(), limits)?;
            topics.iter().try_for_each(|t| topic_summary(t, limits))
        }),
        Response::DescribeTopic(r) => result(r, limits, |t| topic_description(t, limits)),
        Response::Produce(r) => result(r, limits, |ok| {
            if ok.base_offset > ok.last_offset {
                return Err(invalid("base_offset above last_offset"));
            }
            Ok(())
        }),
        Response::Fetch(r) => result(r, limits, |ok| {
            if ok.log_start > ok.high_watermark {
                return Err(invalid("log_start above high_watermark"));
            }
            Ok(())
        }),
        Response::ListOffsets(r) => result(r, limits, |_| Ok(())),
        Response::DescribeCluster(r) => result(r, limits, |c| {
            string(&c.cluster_id, limits)?;
            brokers(&c.brokers, limits)
        }),
        Response::InitProducer(r) => result(r, limits, |ok| {
            if ok.producer_id < 0 || ok.producer_epoch < 0 {
                return Err(invalid("negative producer id or epoch"));
            }
            Ok(())
        }),
        Response::ClusterStatus(r) => result(r, limits, |c| {
            string(&c.cluster_id, limits)?;
            if over(c.nodes.len(), limits.nodes_max) {
                return Err(invalid("more nodes than nodes_max"));
            }
            c.nodes.iter().try_for_each(|n| {
                string(&n.addr, limits)?;
                string(&n.peer_addr, limits)
            })
        }),
    }
}
