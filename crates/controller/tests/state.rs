//! `ClusterState`: validation, apply, placement examples, queries.

use std::collections::BTreeMap;

use sluice_controller::{
    encode, Applied, ClusterState, Command, CommandError, DecodeError, NodeId, NodeInfo, NodeLoad,
    TopicConfig, ADDR_BYTES_MAX, NODES_MAX, PARTITIONS_MAX, REPLICAS_MAX, TOPICS_MAX,
};
use sluice_proto::wire::ErrorCode;

/// A state plus the next offset, applying and checking invariants after every command.
struct Log {
    state: ClusterState,
    next: u64,
}

impl Log {
    fn new() -> Self {
        Log {
            state: ClusterState::new(),
            next: 0,
        }
    }

    fn with_nodes(n: u64) -> Self {
        let mut log = Log::new();
        for id in 1..=n {
            log.ok(Command::RegisterNode(node(id)));
        }
        log
    }

    fn apply(&mut self, cmd: Command) -> Applied {
        let offset = self.next;
        self.next += 1;
        let validated = self.state.validate(&cmd);
        let applied = self.state.apply(offset, cmd);
        assert_eq!(self.state.last_applied(), Some(offset));
        self.state.verify().unwrap();
        match (&validated, &applied) {
            (Err(e), Applied::Rejected(r)) => assert_eq!(e, r),
            (Ok(()), Applied::Rejected(r)) => panic!("validated, then rejected: {r}"),
            (Err(e), _) => panic!("refused by validate ({e}), applied anyway"),
            (Ok(()), _) => {}
        }
        applied
    }

    fn ok(&mut self, cmd: Command) -> Applied {
        let applied = self.apply(cmd);
        assert!(!matches!(applied, Applied::Rejected(_)), "{applied:?}");
        applied
    }

    /// Applies `cmd`, expecting `want`, and checks that nothing but `last_applied` moved.
    fn rejected(&mut self, cmd: Command, want: CommandError) {
        let before = contents(&self.state);
        assert_eq!(self.apply(cmd), Applied::Rejected(want));
        assert_eq!(contents(&self.state), before);
    }

    fn create(&mut self, name: &str, partitions: u32, rf: Option<u32>) -> Applied {
        self.apply(create(name, partitions, rf))
    }
}

type Contents = (
    Vec<NodeInfo>,
    Vec<sluice_controller::TopicMeta>,
    Vec<(NodeId, NodeLoad)>,
    u64,
);

fn contents(s: &ClusterState) -> Contents {
    (
        s.nodes().cloned().collect(),
        s.topics().cloned().collect(),
        s.loads().collect(),
        s.replicas_total(),
    )
}

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        addr: format!("node{id}:7000"),
        peer_addr: format!("node{id}:7001"),
    }
}

fn create(name: &str, partitions: u32, rf: Option<u32>) -> Command {
    Command::CreateTopic {
        name: name.into(),
        partitions,
        replication_factor: rf,
        config: TopicConfig::default(),
    }
}

fn delete(name: &str) -> Command {
    Command::DeleteTopic { name: name.into() }
}

fn loads(s: &ClusterState) -> BTreeMap<NodeId, (u64, u64)> {
    s.loads()
        .map(|(id, l)| (id, (l.leaders, l.replicas)))
        .collect()
}

#[test]
fn three_nodes_rf3_eight_partitions_split_leaders_3_3_2() {
    let mut log = Log::with_nodes(3);
    let Applied::TopicCreated(meta) = log.create("t", 8, None) else {
        panic!()
    };
    assert_eq!(meta.replication_factor, 3);
    assert_eq!(meta.created_at, 3);
    let mut leaders: Vec<u64> = log.state.loads().map(|(_, l)| l.leaders).collect();
    leaders.sort_unstable();
    assert_eq!(leaders, vec![2, 3, 3]);
    assert!(log.state.loads().all(|(_, l)| l.replicas == 8));
    assert_eq!(log.state.replicas_total(), 24);
}

#[test]
fn three_nodes_rf1_nine_partitions_three_each() {
    let mut log = Log::with_nodes(3);
    log.create("t", 9, Some(1));
    assert_eq!(
        loads(&log.state),
        BTreeMap::from([(1, (3, 3)), (2, (3, 3)), (3, (3, 3))])
    );
}

#[test]
fn three_nodes_rf2_every_node_holds_two_thirds() {
    let mut log = Log::with_nodes(3);
    log.create("t", 9, Some(2));
    assert_eq!(
        loads(&log.state),
        BTreeMap::from([(1, (3, 6)), (2, (3, 6)), (3, (3, 6))])
    );
    for id in 1..=3 {
        assert_eq!(log.state.replicas_on(id).len(), 6);
    }
}

#[test]
fn balance_carries_across_topics() {
    let mut log = Log::with_nodes(3);
    // One partition per topic: each create sees the leaderships of the ones before.
    for i in 0..6 {
        log.create(&format!("t{i}"), 1, Some(1));
    }
    assert_eq!(
        loads(&log.state),
        BTreeMap::from([(1, (2, 2)), (2, (2, 2)), (3, (2, 2))])
    );
}

#[test]
fn placement_is_the_documented_rule() {
    let mut log = Log::with_nodes(3);
    let Applied::TopicCreated(meta) = log.create("t", 3, Some(2)) else {
        panic!()
    };
    let replicas: Vec<Vec<NodeId>> = meta.partitions.iter().map(|p| p.replicas.clone()).collect();
    assert_eq!(replicas, vec![vec![1, 2], vec![3, 1], vec![2, 3]]);
    assert_eq!(
        log.state.partition("t", 1).unwrap().preferred_leader(),
        Some(3)
    );
    assert_eq!(log.state.partition("t", 3), None);
    assert_eq!(log.state.partition("u", 0), None);
}

#[test]
fn default_replication_factor_is_min_3_nodes() {
    let mut log = Log::new();
    assert_eq!(log.state.default_replication_factor(), 0);
    for (id, want) in [(1, 1), (2, 2), (3, 3), (4, 3), (5, 3)] {
        log.ok(Command::RegisterNode(node(id)));
        assert_eq!(log.state.default_replication_factor(), want);
        let Applied::TopicCreated(meta) = log.create(&format!("t{id}"), 1, None) else {
            panic!()
        };
        assert_eq!(meta.replication_factor, want);
    }
}

#[test]
fn replicas_on_lists_what_a_node_hosts() {
    let mut log = Log::with_nodes(3);
    log.create("b", 3, Some(1));
    log.create("a", 2, Some(3));
    let hosted: Vec<(String, u32)> = log
        .state
        .replicas_on(2)
        .iter()
        .map(|h| (h.topic.name.clone(), h.partition))
        .collect();
    // By topic name, then partition: all of "a"; the one "b" partition node 2 leads.
    let b_on_2: Vec<u32> = (0..3)
        .filter(|&p| log.state.partition("b", p).unwrap().contains(2))
        .collect();
    let mut want = vec![("a".to_string(), 0), ("a".to_string(), 1)];
    want.extend(b_on_2.iter().map(|&p| ("b".to_string(), p)));
    assert_eq!(hosted, want);
    assert_eq!(b_on_2.len(), 1);
    for h in log.state.replicas_on(2) {
        assert!(h.assignment.contains(2));
        assert_eq!(h.topic.partition(h.partition), Some(h.assignment));
    }
    assert!(log.state.replicas_on(9).is_empty());
}

#[test]
fn create_is_validated() {
    let mut log = Log::new();
    log.rejected(create("t", 1, None), CommandError::NoNodes);
    log.rejected(create("t", 1, Some(1)), CommandError::NoNodes);

    let mut log = Log::with_nodes(3);
    log.rejected(
        create("t", 1, Some(0)),
        CommandError::InvalidReplicationFactor {
            requested: 0,
            nodes: 3,
        },
    );
    log.rejected(
        create("t", 1, Some(4)),
        CommandError::InvalidReplicationFactor {
            requested: 4,
            nodes: 3,
        },
    );
    log.rejected(
        create("t", 1, Some(u32::MAX)),
        CommandError::InvalidReplicationFactor {
            requested: u32::MAX,
            nodes: 3,
        },
    );
    log.rejected(create("t", 0, None), CommandError::InvalidPartitions(0));
    log.rejected(
        create("t", PARTITIONS_MAX + 1, None),
        CommandError::InvalidPartitions(PARTITIONS_MAX + 1),
    );
    for name in ["__cluster", "__", "__x"] {
        log.rejected(
            create(name, 1, None),
            CommandError::ReservedName(name.into()),
        );
    }
    for (name, reason) in [
        ("", "empty"),
        (".", "'.' and '..' are reserved"),
        ("..", "'.' and '..' are reserved"),
        ("a b", "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"),
        ("a/b", "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"),
        ("é", "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"),
    ] {
        log.rejected(
            create(name, 1, None),
            CommandError::InvalidTopicName {
                name: name.into(),
                reason,
            },
        );
    }
    let long = "x".repeat(250);
    log.rejected(
        create(&long, 1, None),
        CommandError::InvalidTopicName {
            name: long.clone(),
            reason: "longer than name_bytes_max",
        },
    );
    let config = |c: TopicConfig| Command::CreateTopic {
        name: "t".into(),
        partitions: 1,
        replication_factor: None,
        config: c,
    };
    for bad in [
        TopicConfig {
            segment_bytes: Some((64 << 10) - 1),
            ..TopicConfig::default()
        },
        TopicConfig {
            segment_bytes: Some((1 << 31) + 1),
            ..TopicConfig::default()
        },
        TopicConfig {
            retention_bytes: Some(0),
            ..TopicConfig::default()
        },
    ] {
        let cmd = config(bad);
        assert!(matches!(
            log.state.validate(&cmd),
            Err(CommandError::InvalidConfig { .. })
        ));
        log.apply(cmd);
    }
    log.ok(config(TopicConfig {
        retention_bytes: Some(1),
        retention_ms: Some(0),
        segment_bytes: Some(64 << 10),
    }));
    log.rejected(create("t", 1, None), CommandError::TopicExists("t".into()));
    // The longest valid name, and names that merely contain underscores, are fine.
    log.ok(create(&"x".repeat(249), 1, None));
    log.ok(create("a__b", 1, None));
    log.ok(create("_a", 1, None));
}

#[test]
fn two_valid_proposals_can_conflict_once_ordered() {
    let mut log = Log::with_nodes(1);
    let first = create("t", 2, None);
    let second = create("t", 5, None);
    // The leader validated both against the same state before either committed.
    assert_eq!(log.state.validate(&first), Ok(()));
    assert_eq!(log.state.validate(&second), Ok(()));
    log.ok(first);
    log.rejected(second, CommandError::TopicExists("t".into()));
    assert_eq!(log.state.topic("t").unwrap().partition_count(), 2);
}

#[test]
fn delete_is_validated() {
    let mut log = Log::with_nodes(1);
    log.rejected(delete("t"), CommandError::UnknownTopic("t".into()));
    log.rejected(
        delete("__cluster"),
        CommandError::ReservedName("__cluster".into()),
    );
    log.rejected(
        delete(""),
        CommandError::InvalidTopicName {
            name: String::new(),
            reason: "empty",
        },
    );
}

#[test]
fn delete_then_recreate() {
    let mut log = Log::with_nodes(3);
    log.create("other", 2, Some(1));
    let Applied::TopicCreated(first) = log.create("t", 4, None) else {
        panic!()
    };
    let before_delete = contents(&log.state);
    let Applied::TopicDeleted(gone) = log.apply(delete("t")) else {
        panic!()
    };
    assert_eq!(gone, first);
    assert_eq!(log.state.topic("t"), None);
    assert!(log.state.replicas_on(1).iter().all(|h| h.topic.name != "t"));
    assert_eq!(log.state.replicas_total(), 2);
    log.rejected(delete("t"), CommandError::UnknownTopic("t".into()));

    let Applied::TopicCreated(second) = log.create("t", 4, None) else {
        panic!()
    };
    assert!(second.created_at > first.created_at);
    // Same loads before the create, so the same placement: the state matches the one
    // before the delete except for the creation offset.
    assert_eq!(second.partitions, first.partitions);
    let mut now = contents(&log.state);
    for t in &mut now.1 {
        if t.name == "t" {
            t.created_at = first.created_at;
        }
    }
    assert_eq!(now, before_delete);
}

#[test]
fn register_adds_and_updates() {
    let mut log = Log::new();
    assert_eq!(
        log.ok(Command::RegisterNode(node(7))),
        Applied::NodeRegistered(node(7))
    );
    log.create("t", 2, None);
    let moved = NodeInfo {
        id: 7,
        addr: "10.1.1.1:9000".into(),
        peer_addr: "10.1.1.1:9001".into(),
    };
    assert_eq!(
        log.ok(Command::RegisterNode(moved.clone())),
        Applied::NodeRegistered(moved.clone())
    );
    assert_eq!(log.state.node(7), Some(&moved));
    assert_eq!(log.state.node_count(), 1);
    // Its placement load survives the update.
    assert_eq!(loads(&log.state), BTreeMap::from([(7, (2, 2))]));
    // Re-registering the same addresses is a no-op that succeeds.
    log.ok(Command::RegisterNode(moved.clone()));
    // Ids come out in order, whatever the registration order.
    log.ok(Command::RegisterNode(node(3)));
    let ids: Vec<NodeId> = log.state.nodes().map(|n| n.id).collect();
    assert_eq!(ids, vec![3, 7]);
}

#[test]
fn register_is_validated() {
    let mut log = Log::with_nodes(1);
    let bad = |id, reason| CommandError::InvalidNode { id, reason };
    let with = |addr: &str, peer: &str| {
        Command::RegisterNode(NodeInfo {
            id: 5,
            addr: addr.into(),
            peer_addr: peer.into(),
        })
    };
    log.rejected(
        Command::RegisterNode(NodeInfo { id: 0, ..node(5) }),
        bad(0, "node id 0 is reserved"),
    );
    log.rejected(with("", "b:1"), bad(5, "empty address"));
    log.rejected(with("a:1", ""), bad(5, "empty address"));
    let long = "a".repeat(ADDR_BYTES_MAX + 1);
    log.rejected(
        with(&long, "b:1"),
        bad(5, "address longer than ADDR_BYTES_MAX"),
    );
    for odd in ["a :1", "a:1\n", "ä:1", "a\0:1"] {
        log.rejected(
            with(odd, "b:1"),
            bad(5, "address has a byte that is not printable ASCII"),
        );
    }
    log.rejected(
        with("node1:7000", "b:1"),
        bad(5, "address registered to another node"),
    );
    log.rejected(
        with("a:1", "node1:7001"),
        bad(5, "address registered to another node"),
    );
    log.ok(with(&"a".repeat(ADDR_BYTES_MAX), "b:1"));
}

#[test]
fn undecodable_records_are_rejected_and_change_nothing() {
    let mut s = ClusterState::new();
    s.apply_record(10, &encode(&Command::RegisterNode(node(1))));
    let before = contents(&s);
    for (offset, bytes) in [
        (11u64, &b"garbage"[..]),
        (12, b""),
        (13, br#"{"v":9,"cmd":0}"#),
    ] {
        let Applied::Rejected(CommandError::Decode(_)) = s.apply_record(offset, bytes) else {
            panic!()
        };
        assert_eq!(s.last_applied(), Some(offset));
        assert_eq!(contents(&s), before);
    }
    assert_eq!(
        s.apply_record(14, br#"{"v":2,"cmd":0}"#),
        Applied::Rejected(CommandError::Decode(DecodeError::UnsupportedVersion {
            version: 2
        }))
    );
}

#[test]
#[should_panic(expected = "controller: applied offset 5 after 5")]
fn offsets_must_increase() {
    let mut s = ClusterState::new();
    s.apply(5, Command::RegisterNode(node(1)));
    s.apply(5, Command::RegisterNode(node(2)));
}

#[test]
fn offsets_may_skip() {
    let mut s = ClusterState::new();
    s.apply(0, Command::RegisterNode(node(1)));
    s.apply(100, create("t", 1, None));
    assert_eq!(s.topic("t").unwrap().created_at, 100);
    assert_eq!(s.last_applied(), Some(100));
}

#[test]
fn node_limit() {
    let mut log = Log::with_nodes(NODES_MAX as u64);
    log.rejected(
        Command::RegisterNode(node(NODES_MAX as u64 + 1)),
        CommandError::TooManyNodes,
    );
    // Updating a registered node is not adding one.
    log.ok(Command::RegisterNode(NodeInfo {
        addr: "elsewhere:1".into(),
        ..node(1)
    }));
}

#[test]
fn topic_limit() {
    let mut log = Log::with_nodes(1);
    for i in 0..TOPICS_MAX {
        log.state
            .apply(i as u64 + 1, create(&format!("t{i}"), 1, None));
    }
    log.next = TOPICS_MAX as u64 + 1;
    log.state.verify().unwrap();
    log.rejected(create("one-more", 1, None), CommandError::TooManyTopics);
    log.ok(delete("t0"));
    log.ok(create("one-more", 1, None));
}

#[test]
fn replica_limit() {
    let mut log = Log::with_nodes(4);
    let per_topic = u64::from(PARTITIONS_MAX) * 4;
    let topics = REPLICAS_MAX / per_topic;
    for i in 0..topics {
        log.ok(create(&format!("t{i}"), PARTITIONS_MAX, Some(4)));
    }
    assert_eq!(log.state.replicas_total(), topics * per_topic);
    let room = REPLICAS_MAX - log.state.replicas_total();
    log.rejected(
        create("big", PARTITIONS_MAX, Some(4)),
        CommandError::TooManyReplicas {
            requested: per_topic,
            existing: topics * per_topic,
        },
    );
    assert_eq!(room, 0);
    log.ok(delete("t0"));
    log.ok(create("big", PARTITIONS_MAX, Some(4)));
}

#[test]
fn errors_map_to_wire_codes() {
    assert_eq!(
        CommandError::TopicExists("t".into()).code(),
        ErrorCode::TopicExists
    );
    assert_eq!(
        CommandError::UnknownTopic("t".into()).code(),
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        CommandError::ReservedName("__t".into()).code(),
        ErrorCode::InvalidTopicName
    );
    assert_eq!(
        CommandError::InvalidPartitions(0).code(),
        ErrorCode::InvalidConfig
    );
    assert_eq!(CommandError::NoNodes.code(), ErrorCode::InvalidConfig);
}
