//! The `__cluster/0` record format: golden bytes, round trips, bounded refusals.

use sluice_controller::{
    decode, encode, Command, DecodeError, NodeInfo, TopicConfig, ADDR_BYTES_MAX, COMMAND_BYTES_MAX,
};

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        addr: format!("10.0.0.{id}:7000"),
        peer_addr: format!("10.0.0.{id}:7001"),
    }
}

/// The format is a contract between node versions: these bytes must not change
/// without a version bump.
#[test]
fn golden_bytes() {
    let cases = [
        (
            Command::RegisterNode(node(1)),
            r#"{"v":1,"cmd":{"register_node":{"id":1,"addr":"10.0.0.1:7000","peer_addr":"10.0.0.1:7001"}}}"#,
        ),
        (
            Command::CreateTopic {
                name: "orders".into(),
                partitions: 8,
                replication_factor: None,
                config: TopicConfig::default(),
            },
            r#"{"v":1,"cmd":{"create_topic":{"name":"orders","partitions":8,"replication_factor":null,"config":{}}}}"#,
        ),
        (
            Command::CreateTopic {
                name: "logs".into(),
                partitions: 1,
                replication_factor: Some(3),
                config: TopicConfig {
                    retention_bytes: Some(1 << 30),
                    retention_ms: Some(86_400_000),
                    segment_bytes: Some(1 << 20),
                },
            },
            r#"{"v":1,"cmd":{"create_topic":{"name":"logs","partitions":1,"replication_factor":3,"config":{"retention_bytes":1073741824,"retention_ms":86400000,"segment_bytes":1048576}}}}"#,
        ),
        (
            Command::DeleteTopic {
                name: "orders".into(),
            },
            r#"{"v":1,"cmd":{"delete_topic":{"name":"orders"}}}"#,
        ),
    ];
    for (cmd, golden) in cases {
        assert_eq!(String::from_utf8(encode(&cmd)).unwrap(), golden);
        assert_eq!(decode(golden.as_bytes()).unwrap(), cmd);
    }
}

#[test]
fn optional_fields_may_be_absent() {
    let cmd = decode(br#"{"v":1,"cmd":{"create_topic":{"name":"t","partitions":2}}}"#).unwrap();
    assert_eq!(
        cmd,
        Command::CreateTopic {
            name: "t".into(),
            partitions: 2,
            replication_factor: None,
            config: TopicConfig::default(),
        }
    );
}

#[test]
fn unknown_versions_are_refused_before_the_command_is_read() {
    for v in [0u64, 2, u64::MAX] {
        let bytes = format!(r#"{{"v":{v},"cmd":{{"some_future_command":{{"x":1}}}}}}"#);
        assert_eq!(
            decode(bytes.as_bytes()),
            Err(DecodeError::UnsupportedVersion { version: v })
        );
    }
}

#[test]
fn malformed_records_are_refused() {
    let cases: &[&[u8]] = &[
        b"",
        b"   ",
        b"null",
        b"[1]",
        b"\xff\xfe",
        br#"{"cmd":{"delete_topic":{"name":"t"}}}"#,
        br#"{"v":"1","cmd":{"delete_topic":{"name":"t"}}}"#,
        br#"{"v":1}"#,
        br#"{"v":1,"cmd":{"delete_topic":{"name":"t"}}} trailing"#,
        br#"{"v":1,"cmd":{"delete_topic":{"name":"t"}},"extra":0}"#,
        br#"{"v":1,"cmd":{"delete_topic":{"name":"t","force":true}}}"#,
        br#"{"v":1,"cmd":{"drop_everything":{}}}"#,
        br#"{"v":1,"cmd":{"create_topic":{"name":"t","partitions":-1}}}"#,
        br#"{"v":1,"cmd":{"create_topic":{"name":"t","partitions":4294967296}}}"#,
        br#"{"v":1,"cmd":{"register_node":{"id":1,"addr":"a:1"}}}"#,
        br#"{"v":1,"v":1,"cmd":{"delete_topic":{"name":"t"}}}"#,
    ];
    for bytes in cases {
        assert!(
            matches!(decode(bytes), Err(DecodeError::Malformed { .. })),
            "{:?}: {:?}",
            String::from_utf8_lossy(bytes),
            decode(bytes)
        );
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let mut bytes = br#"{"v":1,"cmd":"#.to_vec();
    bytes.extend(std::iter::repeat_n(b'[', 20_000));
    assert!(matches!(decode(&bytes), Err(DecodeError::Malformed { .. })));
}

#[test]
fn oversized_records_are_refused_unparsed() {
    let mut bytes = encode(&Command::DeleteTopic { name: "t".into() });
    bytes.resize(COMMAND_BYTES_MAX + 1, b' ');
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::TooLarge {
            bytes: COMMAND_BYTES_MAX + 1,
            max: COMMAND_BYTES_MAX
        })
    );
    // Padding up to the limit is still a command.
    bytes.truncate(COMMAND_BYTES_MAX);
    assert!(decode(&bytes).is_ok());
}

/// The largest commands `validate` accepts, with every byte escaped, fit the record limit.
#[test]
fn the_largest_valid_commands_fit_the_record_limit() {
    let worst = "\"".repeat(ADDR_BYTES_MAX);
    let register = Command::RegisterNode(NodeInfo {
        id: u64::MAX,
        addr: worst.clone(),
        peer_addr: worst,
    });
    let create = Command::CreateTopic {
        name: "x".repeat(249),
        partitions: u32::MAX,
        replication_factor: Some(u32::MAX),
        config: TopicConfig {
            retention_bytes: Some(u64::MAX),
            retention_ms: Some(u64::MAX),
            segment_bytes: Some(u64::MAX),
        },
    };
    for cmd in [register, create] {
        let bytes = encode(&cmd);
        assert!(bytes.len() <= COMMAND_BYTES_MAX, "{}", bytes.len());
        assert_eq!(decode(&bytes).unwrap(), cmd);
    }
}
