//! Replica placement: which nodes host each partition of a new topic.
//!
//! Greedy, one partition at a time, over the load of every node across all topics
//! (including the partitions placed earlier in the same call):
//!
//! 1. the preferred leader is the node with the fewest preferred leaderships, ties
//!    broken by the fewest replicas, then the lowest id;
//! 2. the other `rf - 1` replicas are the nodes with the fewest replicas, ties broken by
//!    ring order after the leader (ids ascending, wrapping), so that the followers of
//!    successive leaders rotate instead of piling onto the lowest ids.
//!
//! With a fixed set of nodes and creates only, this keeps leader counts within 1 of each
//! other, and replica counts within 1 when every topic has the same replication factor
//! (checked exhaustively for up to 16 nodes in the tests). Deletes and nodes added
//! later unbalance it; nothing is ever moved.

use crate::command::NodeId;
use crate::state::{NodeLoad, PartitionAssignment};

/// Places `partitions` partitions of `rf` replicas on `nodes` (sorted by id, unique),
/// adding the new replicas to their loads.
pub(crate) fn place(
    nodes: &mut [(NodeId, NodeLoad)],
    rf: usize,
    partitions: u32,
) -> Vec<PartitionAssignment> {
    let n = nodes.len();
    assert!(
        (1..=n).contains(&rf),
        "controller: replication factor {rf} for {n} nodes"
    );
    assert!(
        nodes.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)),
        "controller: placement nodes are not sorted and unique"
    );
    let mut out = Vec::with_capacity(partitions as usize);
    let mut ring: Vec<usize> = Vec::with_capacity(n);
    for _ in 0..partitions {
        let leader = nodes
            .iter()
            .enumerate()
            .min_by_key(|(_, (id, load))| (load.leaders, load.replicas, *id))
            .map_or(0, |(i, _)| i);
        ring.clear();
        ring.extend((1..n).map(|d| (leader + d) % n));
        // Stable: nodes with equal replica counts stay in ring order.
        ring.sort_by_key(|&i| nodes.get(i).map_or(u64::MAX, |(_, load)| load.replicas));

        let mut replicas = Vec::with_capacity(rf);
        if let Some((id, load)) = nodes.get_mut(leader) {
            load.leaders += 1;
            load.replicas += 1;
            replicas.push(*id);
        }
        for &i in ring.iter().take(rf - 1) {
            if let Some((id, load)) = nodes.get_mut(i) {
                load.replicas += 1;
                replicas.push(*id);
            }
        }
        assert!(
            replicas.len() == rf,
            "controller: placed {} replicas, wanted {rf}",
            replicas.len()
        );
        out.push(PartitionAssignment { replicas });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> Vec<(NodeId, NodeLoad)> {
        (1..=n).map(|id| (id, NodeLoad::default())).collect()
    }

    fn spread(nodes: &[(NodeId, NodeLoad)], f: impl Fn(&NodeLoad) -> u64) -> u64 {
        let max = nodes.iter().map(|(_, l)| f(l)).max().unwrap_or(0);
        let min = nodes.iter().map(|(_, l)| f(l)).min().unwrap_or(0);
        max - min
    }

    /// Placement depends only on the loads, so "any sequence of creates with a uniform
    /// replication factor on a fixed set of nodes" is one stream of partitions: checking
    /// every prefix of that stream covers every such sequence.
    #[test]
    fn every_prefix_is_balanced_up_to_16_nodes() {
        for n in 1..=16u64 {
            for rf in 1..=n as usize {
                let mut ns = nodes(n);
                for p in 0..600 {
                    let placed = place(&mut ns, rf, 1);
                    let r = &placed[0].replicas;
                    let mut sorted = r.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    assert_eq!(sorted.len(), rf, "n={n} rf={rf} p={p}: {r:?}");
                    assert!(spread(&ns, |l| l.leaders) <= 1, "n={n} rf={rf} p={p}");
                    assert!(spread(&ns, |l| l.replicas) <= 1, "n={n} rf={rf} p={p}");
                }
            }
        }
    }

    #[test]
    fn followers_rotate_around_the_ring() {
        let mut ns = nodes(3);
        let placed: Vec<Vec<NodeId>> = place(&mut ns, 2, 3)
            .into_iter()
            .map(|p| p.replicas)
            .collect();
        assert_eq!(placed, vec![vec![1, 2], vec![3, 1], vec![2, 3]]);
    }

    #[test]
    fn leaders_first_then_fewest_replicas() {
        // Node 1 already leads one partition; 2 and 3 lead none but 2 holds more.
        let mut ns = vec![
            (
                1,
                NodeLoad {
                    leaders: 1,
                    replicas: 1,
                },
            ),
            (
                2,
                NodeLoad {
                    leaders: 0,
                    replicas: 5,
                },
            ),
            (
                3,
                NodeLoad {
                    leaders: 0,
                    replicas: 2,
                },
            ),
        ];
        let placed = place(&mut ns, 2, 1);
        // Leader 3 (fewest leaderships, then fewer replicas than 2); follower 1 (fewest).
        assert_eq!(placed[0].replicas, vec![3, 1]);
    }
}
