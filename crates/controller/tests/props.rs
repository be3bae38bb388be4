//! Property tests: determinism, validate/apply agreement, placement balance, and
//! hostile record bytes.

use proptest::prelude::*;
use sluice_controller::{
    decode, encode, Applied, ClusterState, Command, NodeId, NodeInfo, NodeLoad, TopicConfig,
    TopicMeta,
};

/// Commands over a small universe, so that they collide: few ids, addresses and names,
/// invalid values mixed in.
fn command() -> impl Strategy<Value = Command> {
    // Mostly a node's own addresses (sometimes moved: an update); sometimes a pick from
    // a shared few, empty or unprintable ones (conflicts and refusals).
    let addr = prop_oneof![
        (0u8..6).prop_map(|i| format!("h{i}:7000")),
        Just(String::new()),
        Just("bad addr".to_string()),
    ];
    let own = (1u64..6, any::<bool>()).prop_map(|(id, moved)| {
        let host = if moved {
            format!("m{id}")
        } else {
            format!("n{id}")
        };
        Command::RegisterNode(NodeInfo {
            id,
            addr: format!("{host}:7000"),
            peer_addr: format!("{host}:7001"),
        })
    });
    let odd = (0u64..6, addr.clone(), addr).prop_map(|(id, addr, peer_addr)| {
        Command::RegisterNode(NodeInfo {
            id,
            addr,
            peer_addr,
        })
    });
    let register = prop_oneof![3 => own, 1 => odd];
    let name = prop_oneof![
        8 => (0u8..5).prop_map(|i| format!("t{i}")),
        1 => Just("__cluster".to_string()),
        1 => Just("bad name".to_string()),
        1 => Just(String::new()),
    ];
    let partitions = prop_oneof![8 => 0u32..12, 1 => Just(4097u32)];
    let rf = prop_oneof![3 => Just(None), 4 => (0u32..6).prop_map(Some)];
    let config = prop_oneof![
        4 => Just(TopicConfig::default()),
        1 => (proptest::option::of(0u64..3), proptest::option::of(0u64..3),
              proptest::option::of(prop_oneof![Just(1u64), Just(1 << 20)]))
            .prop_map(|(retention_bytes, retention_ms, segment_bytes)| TopicConfig {
                retention_bytes, retention_ms, segment_bytes,
            }),
    ];
    let create = (name.clone(), partitions, rf, config).prop_map(
        |(name, partitions, replication_factor, config)| Command::CreateTopic {
            name,
            partitions,
            replication_factor,
            config,
        },
    );
    let delete = name.prop_map(|name| Command::DeleteTopic { name });
    prop_oneof![2 => register, 4 => create, 2 => delete]
}

/// Any command at all, for the codec: arbitrary strings and numbers.
fn any_command() -> impl Strategy<Value = Command> {
    let config = (
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(retention_bytes, retention_ms, segment_bytes)| TopicConfig {
                retention_bytes,
                retention_ms,
                segment_bytes,
            },
        );
    prop_oneof![
        (any::<u64>(), any::<String>(), any::<String>()).prop_map(|(id, addr, peer_addr)| {
            Command::RegisterNode(NodeInfo {
                id,
                addr,
                peer_addr,
            })
        }),
        (any::<String>(), any::<u32>(), any::<Option<u32>>(), config).prop_map(
            |(name, partitions, replication_factor, config)| Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                config,
            }
        ),
        any::<String>().prop_map(|name| Command::DeleteTopic { name }),
    ]
}

type Contents = (Vec<NodeInfo>, Vec<TopicMeta>, Vec<(NodeId, NodeLoad)>, u64);

fn contents(s: &ClusterState) -> Contents {
    (
        s.nodes().cloned().collect(),
        s.topics().cloned().collect(),
        s.loads().collect(),
        s.replicas_total(),
    )
}

fn spread(s: &ClusterState, f: impl Fn(&NodeLoad) -> u64) -> u64 {
    let v: Vec<u64> = s.loads().map(|(_, l)| f(&l)).collect();
    v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0)
}

fn register(s: &mut ClusterState, offset: &mut u64, n: u64) {
    for id in 1..=n {
        let info = NodeInfo {
            id,
            addr: format!("n{id}:1"),
            peer_addr: format!("n{id}:2"),
        };
        assert!(matches!(
            s.apply(*offset, Command::RegisterNode(info)),
            Applied::NodeRegistered(_)
        ));
        *offset += 1;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Two nodes applying the same log reach the same state after every record, whether
    /// they decode records or are handed commands; `validate` predicts `apply`; a
    /// rejected command changes nothing; the invariants hold throughout.
    #[test]
    fn replicas_of_the_log_agree(cmds in proptest::collection::vec(command(), 1..60)) {
        let mut a = ClusterState::new();
        let mut b = ClusterState::new();
        for (offset, cmd) in (0u64..).zip(cmds) {
            let predicted = a.validate(&cmd);
            let before = contents(&a);
            let record = encode(&cmd);
            let applied_a = a.apply(offset, cmd);
            let applied_b = b.apply_record(offset, &record);
            prop_assert_eq!(&applied_a, &applied_b);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.last_applied(), Some(offset));
            a.verify().map_err(|e| TestCaseError::fail(e.to_string()))?;
            match (predicted, &applied_a) {
                (Err(e), Applied::Rejected(r)) => {
                    prop_assert_eq!(&e, r);
                    prop_assert_eq!(contents(&a), before);
                }
                (Ok(()), Applied::Rejected(r)) => {
                    return Err(TestCaseError::fail(format!("validated, then rejected: {r}")));
                }
                (Err(e), _) => {
                    return Err(TestCaseError::fail(format!("refused ({e}), then applied")));
                }
                (Ok(()), Applied::NodeRegistered(_)) => {}
                (Ok(()), _) => prop_assert_ne!(contents(&a), before.clone()),
            }
            // Every replica set: distinct, registered nodes (also in `verify`).
            for t in a.topics() {
                for p in &t.partitions {
                    let mut ids = p.replicas.clone();
                    ids.sort_unstable();
                    ids.dedup();
                    prop_assert_eq!(ids.len(), t.replication_factor as usize);
                    prop_assert!(p.replicas.iter().all(|id| a.node(*id).is_some()));
                }
            }
        }
    }

    /// With every node registered first and one replication factor for every topic,
    /// leader counts and replica counts stay within 1 across nodes after every create.
    #[test]
    fn uniform_creates_stay_balanced(
        nodes in 1u64..=9,
        rf_pick in any::<prop::sample::Index>(),
        sizes in proptest::collection::vec(1u32..40, 1..25),
    ) {
        let mut s = ClusterState::new();
        let mut offset = 0;
        register(&mut s, &mut offset, nodes);
        let rf = rf_pick.index(nodes as usize) as u32 + 1;
        for (i, partitions) in sizes.into_iter().enumerate() {
            let cmd = Command::CreateTopic {
                name: format!("t{i}"),
                partitions,
                replication_factor: Some(rf),
                config: TopicConfig::default(),
            };
            let applied = s.apply(offset, cmd);
            prop_assert!(matches!(applied, Applied::TopicCreated(_)), "{:?}", applied);
            offset += 1;
            prop_assert!(spread(&s, |l| l.leaders) <= 1);
            prop_assert!(spread(&s, |l| l.replicas) <= 1);
        }
    }

    /// Leader counts stay within 1 even when topics differ in replication factor.
    #[test]
    fn mixed_rf_creates_keep_leaders_balanced(
        nodes in 1u64..=9,
        topics in proptest::collection::vec((1u32..40, any::<prop::sample::Index>()), 1..25),
    ) {
        let mut s = ClusterState::new();
        let mut offset = 0;
        register(&mut s, &mut offset, nodes);
        for (i, (partitions, rf_pick)) in topics.into_iter().enumerate() {
            let cmd = Command::CreateTopic {
                name: format!("t{i}"),
                partitions,
                replication_factor: Some(rf_pick.index(nodes as usize) as u32 + 1),
                config: TopicConfig::default(),
            };
            prop_assert!(matches!(s.apply(offset, cmd), Applied::TopicCreated(_)));
            offset += 1;
            prop_assert!(spread(&s, |l| l.leaders) <= 1);
        }
        s.verify().map_err(|e| TestCaseError::fail(e.to_string()))?;
    }

    #[test]
    fn every_command_round_trips(cmd in any_command()) {
        let bytes = encode(&cmd);
        prop_assert_eq!(encode(&cmd), bytes.clone());
        prop_assert_eq!(decode(&bytes), Ok(cmd));
    }

    /// Random bytes never panic the decoder, and applying them changes nothing.
    #[test]
    fn random_bytes_are_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut s = ClusterState::new();
        let mut offset = 0;
        register(&mut s, &mut offset, 2);
        let before = contents(&s);
        match s.apply_record(offset, &bytes) {
            Applied::Rejected(_) => prop_assert_eq!(contents(&s), before),
            other => prop_assert!(decode(&bytes).is_ok(), "{:?}", other),
        }
        prop_assert_eq!(s.last_applied(), Some(offset));
    }

    /// Damaged valid records (a byte changed, a cut) decode to some command or to an
    /// error, never a panic; a decoded command re-encodes to a decodable record.
    #[test]
    fn damaged_records_never_panic(
        cmd in command(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let mut bytes = encode(&cmd);
        let i = at.index(bytes.len());
        if cut {
            bytes.truncate(i);
        } else {
            bytes[i] = byte;
        }
        if let Ok(c) = decode(&bytes) {
            prop_assert_eq!(decode(&encode(&c)), Ok(c));
        }
    }
}
