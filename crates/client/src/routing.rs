//! The client's picture of the cluster, as plain data: which node leads each partition,
//! where each node is, which nodes failed to answer a dial lately, and when a metadata
//! refresh is due. No I/O and no clock: the transport passes `now` in and does the
//! dialing, the requests and the spawning (see [`Client`](crate::Client) for the model).
//!
//! Nodes are named by their client address (`host:port`, as a broker advertises it in
//! `BrokerInfo::addr`, or a bootstrap `SocketAddr` rendered with `to_string`): that is
//! the key of the transport's connection pool too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_proto::wire::{ErrorCode, MetadataOk};

/// How long a node whose dial failed is skipped when another node can serve instead.
pub(crate) const DEAD_FOR: Duration = Duration::from_secs(1);
/// At most one metadata refresh starts per this interval.
pub(crate) const REFRESH_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// How many times one partition-addressed call follows `NotLeader { leader: Some(..) }`
/// to the named leader before giving the error to the caller.
pub(crate) const REDIRECTS_MAX: usize = 2;

/// Whether a broker's advertised address can be dialed from here: not empty, and not an
/// unspecified IP or port (a broker that advertises its `0.0.0.0` listen address). A
/// partition led by a node with no usable address is sent to any node instead.
pub(crate) fn usable_addr(addr: &str) -> bool {
    if addr.is_empty() {
        return false;
    }
    match addr.parse::<SocketAddr>() {
        Ok(sa) => !sa.ip().is_unspecified() && sa.port() != 0,
        // host:port: checked when it is resolved.
        Err(_) => addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        }),
    }
}

/// Where a partition-addressed request goes ([`Routes::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// To the leader at this address.
    Leader(&'a str),
    /// To any node, and look the leader up: none is known, its address is not, or it is
    /// on a node marked dead.
    LookUp,
    /// To any node: the leader is known but advertises an address that cannot be
    /// dialed, which a refresh will not change.
    Anywhere,
}

/// Metadata-refresh bookkeeping: single flight, bounded rate.
#[derive(Debug, Default)]
struct Refresh {
    /// A refresher is running (or about to).
    in_flight: bool,
    /// Another refresh was asked for while one was in flight.
    again: bool,
    last_started: Option<Instant>,
    /// Topics to look up in the next refresh besides those already cached.
    wanted: BTreeSet<String>,
}

/// The routing cache. See the module docs.
#[derive(Debug)]
pub(crate) struct Routes {
    /// Bootstrap addresses, in the order given.
    bootstrap: Vec<String>,
    /// Node id → client address, from metadata and `NotLeader` details.
    brokers: BTreeMap<u32, String>,
    /// Topic → partition → leader node id. Every topic here (even with no leader known)
    /// is included in each refresh.
    leaders: HashMap<String, BTreeMap<u32, u32>>,
    /// Address → until when it is considered unreachable.
    dead: HashMap<String, Instant>,
    refresh: Refresh,
}

impl Routes {
    pub(crate) fn new(bootstrap: Vec<String>) -> Routes {
        Routes {
            bootstrap,
            brokers: BTreeMap::new(),
            leaders: HashMap::new(),
            dead: HashMap::new(),
            refresh: Refresh::default(),
        }
    }

    /// Takes in a metadata answer: the broker list is replaced (when it is not empty) and
    /// each topic answered without error gets its partitions' leaders. A topic answered
    /// `UnknownTopic` is kept as looked up, with no leaders.
    pub(crate) fn apply_metadata(&mut self, meta: &MetadataOk) {
        if !meta.brokers.is_empty() {
            self.brokers = meta
                .brokers
                .iter()
                .map(|b| (b.node_id, b.addr.clone()))
                .collect();
        }
        for topic in &meta.topics {
            match &topic.error {
                None => {
                    let leaders = topic
                        .partitions
                        .iter()
                        .filter_map(|p| p.leader.map(|l| (p.partition, l)))
                        .collect();
                    self.leaders.insert(topic.name.clone(), leaders);
                }
                Some(e) if e.code == ErrorCode::UnknownTopic => {
                    self.leaders.insert(topic.name.clone(), BTreeMap::new());
                }
                Some(_) => {}
            }
        }
    }

    /// Where a request for the partition goes.
    pub(crate) fn route(&self, topic: &str, partition: u32, now: Instant) -> Route<'_> {
        let Some(id) = self.leader(topic, partition) else {
            return Route::LookUp;
        };
        match self.brokers.get(&id) {
            None => Route::LookUp,
            Some(addr) if !usable_addr(addr) => Route::Anywhere,
            Some(addr) if self.is_dead(addr, now) => Route::LookUp,
            Some(addr) => Route::Leader(addr),
        }
    }

    /// The address of the partition's leader, when it is known, has a usable address
    /// and is not marked dead.
    pub(crate) fn leader_addr(&self, topic: &str, partition: u32, now: Instant) -> Option<&str> {
        match self.route(topic, partition, now) {
            Route::Leader(addr) => Some(addr),
            Route::LookUp | Route::Anywhere => None,
        }
    }

    /// The cached leader's node id.
    pub(crate) fn leader(&self, topic: &str, partition: u32) -> Option<u32> {
        self.leaders.get(topic)?.get(&partition).copied()
    }

    /// Whether the topic has never been looked up.
    #[cfg(test)]
    pub(crate) fn is_unseen(&self, topic: &str) -> bool {
        !self.leaders.contains_key(topic)
    }

    /// Takes in `NotLeader { leader, addr }` for a partition and returns where to resend
    /// (the new leader's address, when it is known, usable and not dead). `leader: None`
    /// forgets the partition's leader.
    pub(crate) fn apply_not_leader(
        &mut self,
        topic: &str,
        partition: u32,
        leader: Option<u32>,
        addr: Option<&str>,
        now: Instant,
    ) -> Option<String> {
        let Some(id) = leader else {
            self.invalidate(topic, partition);
            return None;
        };
        if let Some(addr) = addr {
            if usable_addr(addr) || !self.brokers.contains_key(&id) {
                self.brokers.insert(id, addr.to_owned());
            }
        }
        self.leaders
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, id);
        self.leader_addr(topic, partition, now).map(str::to_owned)
    }

    /// Forgets the partition's leader.
    pub(crate) fn invalidate(&mut self, topic: &str, partition: u32) {
        if let Some(partitions) = self.leaders.get_mut(topic) {
            partitions.remove(&partition);
        }
    }

    /// A dial to `addr` failed: skip it for [`DEAD_FOR`] when another node can serve,
    /// and forget every partition leader at that address.
    pub(crate) fn node_failed(&mut self, addr: &str, now: Instant) {
        self.dead.insert(addr.to_owned(), now + DEAD_FOR);
        let ids: Vec<u32> = self
            .brokers
            .iter()
            .filter(|(_, a)| a.as_str() == addr)
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        for partitions in self.leaders.values_mut() {
            partitions.retain(|_, leader| !ids.contains(leader));
        }
    }

    /// A dial to `addr` succeeded.
    pub(crate) fn node_ok(&mut self, addr: &str) {
        self.dead.remove(addr);
    }

    pub(crate) fn is_dead(&self, addr: &str, now: Instant) -> bool {
        self.dead.get(addr).is_some_and(|until| now < *until)
    }

    /// Nodes to send a request that any node can serve, best first: the bootstrap
    /// addresses in order, then the known brokers by node id, without duplicates,
    /// without those in `tried` and without those marked dead. When that leaves none and
    /// nothing was tried yet, every node, dead or not (a client whose only node was down
    /// a moment ago must still be able to reach it when it is back).
    pub(crate) fn candidates(&self, now: Instant, tried: &[String]) -> Vec<String> {
        let mut all: Vec<&String> = Vec::with_capacity(self.bootstrap.len() + self.brokers.len());
        let brokers = self.brokers.values().filter(|a| usable_addr(a));
        for addr in self.bootstrap.iter().chain(brokers) {
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
        let live: Vec<String> = all
            .iter()
            .filter(|a| !tried.contains(a) && !self.is_dead(a, now))
            .map(|a| (*a).clone())
            .collect();
        if live.is_empty() && tried.is_empty() {
            all.into_iter().cloned().collect()
        } else {
            live
        }
    }

    /// Asks for a metadata refresh (including `topic`, if given). Returns true when the
    /// caller must start a refresher (none is in flight); otherwise the one in flight
    /// runs once more when it is done.
    pub(crate) fn request_refresh(&mut self, topic: Option<&str>) -> bool {
        if let Some(topic) = topic {
            if !self.refresh.wanted.contains(topic) {
                self.refresh.wanted.insert(topic.to_owned());
            }
        }
        if self.refresh.in_flight {
            self.refresh.again = true;
            false
        } else {
            self.refresh.in_flight = true;
            true
        }
    }

    /// How long the refresher must wait before it may start (the rate bound).
    pub(crate) fn refresh_wait(&self, now: Instant) -> Duration {
        self.refresh.last_started.map_or(Duration::ZERO, |t| {
            (t + REFRESH_INTERVAL_MIN).saturating_duration_since(now)
        })
    }

    /// The refresher starts: the topics to ask about (those cached and those wanted; the
    /// wanted ones now count as looked up).
    pub(crate) fn start_refresh(&mut self, now: Instant) -> Vec<String> {
        self.refresh.last_started = Some(now);
        self.refresh.again = false;
        for topic in std::mem::take(&mut self.refresh.wanted) {
            self.leaders.entry(topic).or_default();
        }
        let mut topics: Vec<String> = self.leaders.keys().cloned().collect();
        topics.sort_unstable();
        topics
    }

    /// The refresher finished one round. Returns true when it must run another (asked
    /// for meanwhile); otherwise it is no longer in flight.
    pub(crate) fn finish_refresh(&mut self) -> bool {
        if self.refresh.again {
            true
        } else {
            self.refresh.in_flight = false;
            false
        }
    }

    /// The refresher stopped without finishing (the client is gone or closed).
    pub(crate) fn abandon_refresh(&mut self) {
        self.refresh.in_flight = false;
        self.refresh.again = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::wire::{BrokerInfo, ErrorBody, PartitionMetadata, TopicMetadata};

    fn meta(brokers: &[(u32, &str)], topics: &[(&str, &[Option<u32>])]) -> MetadataOk {
        MetadataOk {
            brokers: brokers
                .iter()
                .map(|(id, addr)| BrokerInfo {
                    node_id: *id,
                    addr: (*addr).to_owned(),
                })
                .collect(),
            topics: topics
                .iter()
                .map(|(name, leaders)| TopicMetadata {
                    name: (*name).to_owned(),
                    partitions: leaders
                        .iter()
                        .enumerate()
                        .map(|(i, leader)| PartitionMetadata {
                            partition: i as u32,
                            leader: *leader,
                            replicas: vec![1, 2, 3],
                        })
                        .collect(),
                    error: None,
                })
                .collect(),
        }
    }

    fn routes() -> Routes {
        Routes::new(vec!["10.0.0.1:7010".to_owned()])
    }

    const B1: &str = "10.0.0.1:7010";
    const B2: &str = "10.0.0.2:7010";
    const B3: &str = "10.0.0.3:7010";

    #[test]
    fn metadata_fills_leaders_and_brokers() {
        let mut r = routes();
        let now = Instant::now();
        assert!(r.is_unseen("t"));
        assert_eq!(r.leader_addr("t", 0, now), None);
        r.apply_metadata(&meta(
            &[(1, B1), (2, B2), (3, B3)],
            &[("t", &[Some(2), None, Some(3)])],
        ));
        assert!(!r.is_unseen("t"));
        assert_eq!(r.leader_addr("t", 0, now), Some(B2));
        assert_eq!(r.leader_addr("t", 1, now), None, "an election: no leader");
        assert_eq!(r.route("t", 1, now), Route::LookUp);
        assert_eq!(r.route("t", 0, now), Route::Leader(B2));
        assert_eq!(r.leader_addr("t", 2, now), Some(B3));
        assert_eq!(r.leader_addr("t", 3, now), None, "no such partition");
        // A later answer moves a leader.
        r.apply_metadata(&meta(&[(1, B1), (2, B2), (3, B3)], &[("t", &[Some(1)])]));
        assert_eq!(r.leader_addr("t", 0, now), Some(B1));
        assert_eq!(r.leader_addr("t", 2, now), None);
    }

    #[test]
    fn unknown_topics_count_as_looked_up_and_other_errors_keep_the_cache() {
        let mut r = routes();
        let mut m = meta(&[(1, B1)], &[("gone", &[]), ("t", &[Some(1)])]);
        r.apply_metadata(&m);
        m.topics[0].error = Some(ErrorBody::new(ErrorCode::UnknownTopic, "no"));
        r.apply_metadata(&m);
        assert!(!r.is_unseen("gone"));
        m.topics[1].partitions.clear();
        m.topics[1].error = Some(ErrorBody::new(ErrorCode::Unauthorized, "no"));
        r.apply_metadata(&m);
        assert_eq!(r.leader("t", 0), Some(1), "kept");
    }

    #[test]
    fn unusable_advertised_addresses_are_not_routed_to() {
        assert!(usable_addr("10.0.0.1:7010"));
        assert!(usable_addr("[::1]:7010"));
        assert!(usable_addr("node-1.sluice:7010"));
        assert!(!usable_addr("0.0.0.0:7010"));
        assert!(!usable_addr("[::]:7010"));
        assert!(!usable_addr("10.0.0.1:0"));
        assert!(!usable_addr("node-1"));
        assert!(!usable_addr(":7010"));
        assert!(!usable_addr(""));
        let mut r = routes();
        r.apply_metadata(&meta(&[(1, "0.0.0.0:7010")], &[("t", &[Some(1)])]));
        assert_eq!(r.leader("t", 0), Some(1));
        assert_eq!(
            r.route("t", 0, Instant::now()),
            Route::Anywhere,
            "no refresh storm"
        );
        assert_eq!(
            r.leader_addr("t", 0, Instant::now()),
            None,
            "any node instead"
        );
        assert_eq!(r.candidates(Instant::now(), &[]), vec![B1.to_owned()]);
        // A NotLeader does not replace a usable address with an unusable one.
        r.apply_not_leader("t", 1, Some(2), Some(B2), Instant::now());
        r.apply_not_leader("t", 1, Some(2), Some("0.0.0.0:7010"), Instant::now());
        assert_eq!(r.route("t", 1, Instant::now()), Route::Leader(B2));
    }

    #[test]
    fn not_leader_with_a_leader_records_it_and_names_where_to_resend() {
        let mut r = routes();
        let now = Instant::now();
        r.apply_metadata(&meta(&[(1, B1), (2, B2)], &[("t", &[Some(1), Some(1)])]));
        // A leader with a new address: learned.
        let next = r.apply_not_leader("t", 0, Some(3), Some(B3), now);
        assert_eq!(next.as_deref(), Some(B3));
        assert_eq!(r.leader_addr("t", 0, now), Some(B3));
        assert_eq!(
            r.leader_addr("t", 1, now),
            Some(B1),
            "other partitions unchanged"
        );
        // A known leader without an address: its known address.
        assert_eq!(
            r.apply_not_leader("t", 1, Some(2), None, now).as_deref(),
            Some(B2)
        );
        // An unknown leader without an address: recorded, but nowhere to go.
        assert_eq!(r.apply_not_leader("t", 1, Some(9), None, now), None);
        assert_eq!(r.leader("t", 1), Some(9));
        // No leader: forgotten.
        assert_eq!(r.apply_not_leader("t", 0, None, None, now), None);
        assert_eq!(r.leader("t", 0), None);
        // For a topic never seen.
        assert_eq!(
            r.apply_not_leader("u", 4, Some(2), Some(B2), now)
                .as_deref(),
            Some(B2)
        );
        // To a node marked dead: no resend.
        r.node_failed(B3, now);
        assert_eq!(r.apply_not_leader("t", 0, Some(3), Some(B3), now), None);
    }

    #[test]
    fn a_failed_node_is_skipped_for_a_while_and_its_partitions_forgotten() {
        let mut r = Routes::new(vec![B1.to_owned(), B2.to_owned()]);
        let now = Instant::now();
        r.apply_metadata(&meta(
            &[(1, B1), (2, B2), (3, B3)],
            &[("t", &[Some(2), Some(3)]), ("u", &[Some(2)])],
        ));
        assert_eq!(r.candidates(now, &[]), vec![B1, B2, B3]);
        r.node_failed(B2, now);
        assert_eq!(r.leader("t", 0), None);
        assert_eq!(r.leader("u", 0), None);
        assert_eq!(r.leader("t", 1), Some(3));
        assert!(r.is_dead(B2, now));
        assert_eq!(r.candidates(now, &[]), vec![B1, B3]);
        assert_eq!(r.candidates(now, &[B1.to_owned()]), vec![B3]);
        // Relearned (a stale answer), but still dead: not routed to.
        r.apply_not_leader("t", 0, Some(2), None, now);
        assert_eq!(
            r.route("t", 0, now),
            Route::LookUp,
            "sent elsewhere, looked up"
        );
        // After DEAD_FOR it is tried again; a good dial clears it at once.
        let later = now + DEAD_FOR;
        assert!(!r.is_dead(B2, later));
        assert_eq!(r.leader_addr("t", 0, later), Some(B2));
        r.node_failed(B2, later);
        r.node_ok(B2);
        assert!(!r.is_dead(B2, later));
    }

    #[test]
    fn when_every_node_is_dead_all_are_candidates_once() {
        let mut r = Routes::new(vec![B1.to_owned()]);
        let now = Instant::now();
        r.apply_metadata(&meta(&[(2, B2)], &[]));
        r.node_failed(B1, now);
        r.node_failed(B2, now);
        assert_eq!(r.candidates(now, &[]), vec![B1, B2]);
        // Once one was tried in this call, the dead ones are not fallen back to.
        assert!(r.candidates(now, &[B1.to_owned()]).is_empty());
    }

    #[test]
    fn bootstrap_and_broker_addresses_are_not_duplicated() {
        let mut r = Routes::new(vec![B2.to_owned(), B1.to_owned()]);
        r.apply_metadata(&meta(&[(1, B1), (2, B2), (3, B3)], &[]));
        assert_eq!(r.candidates(Instant::now(), &[]), vec![B2, B1, B3]);
        // An empty broker list (a confused node) does not wipe what is known.
        r.apply_metadata(&meta(&[], &[]));
        assert_eq!(r.candidates(Instant::now(), &[]), vec![B2, B1, B3]);
    }

    #[test]
    fn refreshes_are_single_flight_and_rate_bounded() {
        let mut r = routes();
        let t0 = Instant::now();
        assert_eq!(r.refresh_wait(t0), Duration::ZERO);
        assert!(r.request_refresh(Some("a")), "start a refresher");
        assert!(!r.request_refresh(Some("b")), "one is in flight");
        assert_eq!(r.start_refresh(t0), vec!["a", "b"]);
        assert!(!r.is_unseen("a"), "looked up now");
        assert!(!r.finish_refresh(), "nothing asked meanwhile: done");
        // Asked again 10 ms later: must wait for the rest of the interval.
        let t1 = t0 + Duration::from_millis(10);
        assert!(r.request_refresh(None));
        assert_eq!(r.refresh_wait(t1), Duration::from_millis(90));
        let t2 = t0 + REFRESH_INTERVAL_MIN;
        assert_eq!(r.refresh_wait(t2), Duration::ZERO);
        assert_eq!(r.start_refresh(t2), vec!["a", "b"], "the cached topics");
        // Asked while in flight: one more round, then done.
        assert!(!r.request_refresh(Some("c")));
        assert!(!r.request_refresh(None));
        assert!(r.finish_refresh());
        assert_eq!(
            r.start_refresh(t2 + REFRESH_INTERVAL_MIN),
            vec!["a", "b", "c"]
        );
        assert!(!r.finish_refresh());
        assert!(r.request_refresh(None));
        r.abandon_refresh();
        assert!(
            r.request_refresh(None),
            "an abandoned refresher can be replaced"
        );
    }
}
