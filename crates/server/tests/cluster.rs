//! Three real `sluice-server` processes in cluster mode on loopback: the controller
//! elects a leader, topics are created with three replicas, acks=all writes land on
//! each partition's leader (other nodes answer `NotLeader` with the leader, or forward
//! in proxy mode), killing a leader elects another that keeps every acknowledged
//! record, and all three restart with their data.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_client::wire::{Acks, ErrorCode, ErrorDetail, TopicConfig};
use sluice_client::wire::{Request, Response, ALPN};
use sluice_client::{Client, ClientError, ClientOptions, ClientTls};
use sluice_proto::{batches, Limits};
use sluice_test_support::cluster::{expected_records, values_batch, TestCluster};
use sluice_test_support::eventually;
use sluice_test_support::raw::{frame, raw_connect, raw_exchange, RawAnswer};

/// How long the cluster may take to settle (elect, create, hand leadership over).
const SETTLE: Duration = Duration::from_secs(20);
/// How often a test looks again while it waits for the cluster.
const POLL: Duration = Duration::from_millis(100);

const BIN: &str = env!("CARGO_BIN_EXE_sluice-server");

/// One client per node, by node id.
struct Clients {
    by_node: BTreeMap<u32, Client>,
}

impl Clients {
    /// The clients of nodes `ids` only.
    fn only(&self, ids: &[u32]) -> Clients {
        Clients {
            by_node: ids
                .iter()
                .map(|id| (*id, self.by_node[id].clone()))
                .collect(),
        }
    }

    async fn connect(c: &TestCluster) -> Clients {
        let mut by_node = BTreeMap::new();
        for a in &c.addrs {
            // A dead node costs a dial its whole connect timeout: keep it short.
            let options = ClientOptions {
                connect_timeout: Duration::from_millis(500),
                ..ClientOptions::default()
            };
            // The node is up, but on a loaded machine its first handshake can take longer
            // than that: dial again rather than fail.
            let client = eventually(SETTLE, POLL, async || {
                Client::connect_with(a.quic, ClientTls::ca_file(c.ca_path()), options.clone())
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            by_node.insert(a.id as u32, client);
        }
        Clients { by_node }
    }

    fn any(&self) -> &Client {
        self.by_node.values().next().unwrap()
    }

    /// Creates a topic through any node, retrying while the controller elects.
    async fn create(&self, name: &str, partitions: u32) {
        eventually(SETTLE, POLL, async || {
            let mut last = None;
            for c in self.by_node.values() {
                match c
                    .create_topic(name, partitions, TopicConfig::default())
                    .await
                {
                    Ok(_) => return Ok(()),
                    // An earlier attempt that timed out on its way back did create it.
                    Err(ClientError::Broker(b)) if b.code == ErrorCode::TopicExists => {
                        return Ok(())
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(format!("create {name}: {last:?}"))
        })
        .await
    }

    /// Produces one batch with acks=all, following `NotLeader` hints; retries other
    /// errors (nothing here needs exactly-once: every value is unique and the reader
    /// checks it sees each acked one at least once and never twice via duplicates
    /// counted separately).
    async fn produce(&self, topic: &str, partition: u32, values: &[String]) -> Result<u64, String> {
        let payload = values_batch(values);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut target: u32 = *self.by_node.keys().next().unwrap();
        loop {
            let client = &self.by_node[&target];
            match client
                .produce(topic, partition, &payload, Acks::All, 5_000)
                .await
            {
                Ok(ok) => return Ok(ok.base_offset),
                Err(ClientError::Broker(body)) if body.code == ErrorCode::NotLeader => {
                    if let ErrorDetail::NotLeader {
                        leader: Some(l), ..
                    } = body.detail
                    {
                        if self.by_node.contains_key(&l) {
                            target = l;
                            continue;
                        }
                    }
                    target = next_node(&self.by_node, target);
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    target = next_node(&self.by_node, target);
                }
                Err(e) => return Err(e.to_string()),
            }
            if Instant::now() > deadline {
                return Err("no leader accepted the write in time".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Batches `range` of five values `{tag}-{i}-{j}`, batch `i` to partition
    /// `i % partitions`, each acknowledged (acks=all) before the next; appended to
    /// `acked` as (partition, base offset, values).
    async fn produce_fives(
        &self,
        topic: &str,
        partitions: u32,
        range: std::ops::Range<u32>,
        tag: &str,
        acked: &mut Vec<(u32, u64, Vec<String>)>,
    ) {
        for i in range {
            let values: Vec<String> = (0..5).map(|j| format!("{tag}-{i}-{j}")).collect();
            let p = i % partitions;
            acked.push((p, self.produce(topic, p, &values).await.unwrap(), values));
        }
    }

    /// Every committed value of a partition, read from its leader.
    async fn read_all(&self, topic: &str, partition: u32) -> Vec<(u64, String)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "no leader served {topic}/{partition}"
            );
            'node: for client in self.by_node.values() {
                let mut out = Vec::new();
                let mut offset = 0;
                loop {
                    let (ok, payload) =
                        match client.fetch(topic, partition, offset, 1 << 20, 0).await {
                            Ok(r) => r,
                            Err(_) => continue 'node,
                        };
                    for b in batches(&payload, &Limits::default()) {
                        let b = b.unwrap();
                        for r in b.records() {
                            if r.offset >= offset {
                                out.push((
                                    r.offset,
                                    String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                                ));
                            }
                        }
                    }
                    if ok.next_offset >= ok.high_watermark || ok.batches == 0 {
                        return out;
                    }
                    offset = ok.next_offset;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn next_node(nodes: &BTreeMap<u32, Client>, after: u32) -> u32 {
    nodes
        .keys()
        .copied()
        .find(|&k| k > after)
        .unwrap_or_else(|| *nodes.keys().next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_route_to_leaders() {
    let _ = BIN;
    let cluster = TestCluster::start(3, false);
    let clients = Clients::connect(&cluster).await;
    clients.create("events", 3).await;
    let meta = clients
        .any()
        .metadata(Some(vec!["events".into()]))
        .await
        .unwrap();
    assert_eq!(meta.brokers.len(), 3);
    let t = &meta.topics[0];
    assert_eq!(t.partitions.len(), 3);
    for p in &t.partitions {
        assert_eq!(p.replicas.len(), 3, "{p:?}");
    }
    let mut acked = Vec::new();
    for i in 0..30u32 {
        let p = i % 3;
        let values: Vec<String> = (0..10).map(|j| format!("v-{i}-{j}")).collect();
        let base = clients.produce("events", p, &values).await.unwrap();
        acked.push((p, base, values));
    }
    for p in 0..3 {
        let read = clients.read_all("events", p).await;
        let want = expected_records(&acked, p);
        assert_eq!(read, want, "partition {p}");
    }
}

/// Leader of `topic`/`partition` per node `via`'s metadata.
async fn leader(clients: &Clients, topic: &str, partition: u32) -> Option<u32> {
    for c in clients.by_node.values() {
        if let Ok(m) = c.metadata(Some(vec![topic.into()])).await {
            if let Some(l) = m
                .topics
                .first()
                .and_then(|t| t.partitions.get(partition as usize))
                .and_then(|p| p.leader)
            {
                return Some(l);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_keeps_every_acked_write() {
    let mut cluster = TestCluster::start(3, false);
    let mut clients = Clients::connect(&cluster).await;
    clients.create("fo", 1).await;
    let mut acked: Vec<(u32, u64, Vec<String>)> = Vec::new();
    clients.produce_fives("fo", 1, 0..20, "a", &mut acked).await;
    let old = leader(&clients, "fo", 0).await.expect("a leader");
    cluster.node(u64::from(old)).kill();
    clients.by_node.remove(&old);
    let t0 = Instant::now();
    let first = clients
        .produce("fo", 0, &["first".to_owned()])
        .await
        .unwrap();
    eprintln!("first write acknowledged {:?} after the kill", t0.elapsed());
    acked.push((0, first, vec!["first".to_owned()]));
    clients
        .produce_fives("fo", 1, 20..40, "a", &mut acked)
        .await;
    eprintln!("20 more writes by {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(20));
    let new = leader(&clients, "fo", 0).await.expect("a new leader");
    assert_ne!(new, old);
    let read = clients.read_all("fo", 0).await;
    eprintln!("read back by {:?}", t0.elapsed());
    assert_eq!(read, expected_records(&acked, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_restart_and_keep_their_data() {
    let mut cluster = TestCluster::start(3, false);
    let clients = Clients::connect(&cluster).await;
    clients.create("kept", 2).await;
    let mut acked = Vec::new();
    clients
        .produce_fives("kept", 2, 0..10, "k", &mut acked)
        .await;
    drop(clients);
    for n in &mut cluster.nodes {
        let status = n.terminate();
        assert!(status.success(), "{status}");
    }
    for n in &mut cluster.nodes {
        n.restart();
    }
    let clients = Clients::connect(&cluster).await;
    for p in 0..2 {
        let read = clients.read_all("kept", p).await;
        let want = expected_records(&acked, p);
        assert_eq!(read, want, "partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_minority_accepts_no_writes() {
    let cluster = TestCluster::start_with(3, false, true);
    let clients = Clients::connect(&cluster).await;
    clients.create("split", 3).await;
    // Wait for node 3 to lead some partition (the preferred leaders spread 1/1/1).
    let p3 = eventually(SETTLE, POLL, async || {
        for p in 0..3 {
            if leader(&clients, "split", p).await == Some(3) {
                return Ok(p);
            }
        }
        Err("node 3 leads no partition".to_owned())
    })
    .await;
    clients
        .produce("split", p3, &["before".to_owned()])
        .await
        .unwrap();
    cluster.isolate(3);
    // Node 3 alone: every write sent to it for the next seconds fails (it cannot reach
    // a quorum), whatever it answers.
    // Raw frames to node 3 itself: the SDK would re-route to the majority's leader.
    let node3 = cluster.addrs.iter().find(|a| a.id == 3).unwrap().quic;
    let minority = raw_connect(node3, cluster.ca_path(), &[ALPN])
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut attempts = 0;
    let mut refused = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let v = format!("minority-{attempts}");
        let request = Request::Produce {
            topic: "split".into(),
            partition: p3,
            acks: Acks::All,
            timeout_ms: 500,
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            raw_exchange(
                &minority,
                &frame(attempts, &request, &values_batch(&[v])),
                true,
            ),
        )
        .await;
        if let Ok(RawAnswer::Response(_, r)) = &answer {
            assert!(
                !matches!(r, Response::Produce(Ok(_))),
                "the isolated node acknowledged a write: {r:?}"
            );
            refused += 1;
        }
        attempts += 1;
    }
    // It answered (NotLeader or RequestTimedOut), it did not just go silent.
    assert!(refused > 0, "{attempts} attempts, none answered");
    // The majority elects a new leader for the partition and takes writes.
    let majority = clients.only(&[1, 2]);
    majority
        .produce("split", p3, &["after".to_owned()])
        .await
        .unwrap();
    cluster.heal();
    // Healed: node 3 rejoins; what it took while alone was never committed.
    let read = majority.read_all("split", p3).await;
    let values: Vec<&str> = read.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, vec!["before", "after"]);
}

/// Not a test: the failover measurement quoted in the issue notes. Run with
/// `cargo nextest run -p sluice-server --test cluster failover_time --run-ignored all
/// --no-capture` (`FAILOVER_TRIALS`, default 20): SIGKILL the leader of a one-partition
/// RF=3 topic, then time until one SDK client (default options, connected to every
/// node) gets a write acknowledged, retrying at once on every error; restart the killed
/// node and let it catch up; repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run explicitly"]
async fn failover_time() {
    if std::env::var_os("FAILOVER_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("sluice_client=debug"))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let trials: usize = std::env::var("FAILOVER_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut cluster = TestCluster::start(3, false);
    let clients = Clients::connect(&cluster).await;
    clients.create("failover", 1).await;
    let sdk = Client::connect_cluster(
        &cluster.client_addrs(),
        ClientTls::ca_file(cluster.ca_path()),
    )
    .await
    .unwrap();
    let warm = values_batch(&["warm".to_owned()]);
    sdk.produce("failover", 0, &warm, Acks::All, 5_000)
        .await
        .unwrap();
    let mut times = Vec::new();
    for trial in 0..trials {
        let old = leader(&clients, "failover", 0).await.expect("a leader");
        eprintln!(
            "trial {trial}: killing node {old} at {:?}",
            std::time::SystemTime::now()
        );
        cluster.node(u64::from(old)).kill();
        let t0 = Instant::now();
        let payload = values_batch(&[format!("trial-{trial}")]);
        let mut errors = 0;
        loop {
            match sdk.produce("failover", 0, &payload, Acks::All, 5_000).await {
                Ok(_) => break,
                Err(_) => errors += 1,
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no new leader");
        }
        let took = t0.elapsed();
        eprintln!(
            "trial {trial}: killed node {old}, first ack after {took:?} ({errors} failed attempts)"
        );
        times.push(took);
        cluster.node(u64::from(old)).restart();
        // Let the restarted node rejoin before the next kill (`FAILOVER_REST_MS`,
        // default 1500: shorter than the SDK's idle timeout, so the client still holds
        // a stale connection to the restarted node — the harder case).
        let rest = std::env::var("FAILOVER_REST_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1500);
        tokio::time::sleep(Duration::from_millis(rest)).await;
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    eprintln!(
        "failover over {} trials: p50 {p50:?}, max {max:?}",
        times.len()
    );
}

/// Leader of every partition of `topic` (0..n), once each has one.
async fn leaders_of(clients: &Clients, topic: &str, n: u32) -> BTreeMap<u32, u32> {
    eventually(SETTLE, POLL, async || {
        let mut all = BTreeMap::new();
        for p in 0..n {
            if let Some(l) = leader(clients, topic, p).await {
                all.insert(p, l);
            }
        }
        if all.len() == n as usize {
            Ok(all)
        } else {
            Err(format!("{topic}: leaders {all:?}"))
        }
    })
    .await
}

/// After a failover the survivors lead everything; the preferred leader, restarted and
/// caught up, is handed its partition back (`leader_rebalance_ms`), and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_preferred_leader_is_handed_its_partition_back() {
    let mut cluster = TestCluster::start(3, false);
    let mut clients = Clients::connect(&cluster).await;
    clients.create("pref", 3).await;
    // New groups elect their preferred leaders: one partition per node.
    let first = leaders_of(&clients, "pref", 3).await;
    let victim = first[&0];
    let mut acked = vec![(
        0,
        clients.produce("pref", 0, &["a".into()]).await.unwrap(),
        vec!["a".to_owned()],
    )];
    cluster.node(u64::from(victim)).kill();
    let survivor = clients.by_node.remove(&victim).unwrap();
    eventually(SETTLE, POLL, async || {
        match leader(&clients, "pref", 0).await {
            Some(l) if l != victim => Ok(()),
            other => Err(format!("no new leader for pref/0: {other:?}")),
        }
    })
    .await;
    acked.push((
        0,
        clients.produce("pref", 0, &["b".into()]).await.unwrap(),
        vec!["b".to_owned()],
    ));
    cluster.node(u64::from(victim)).restart();
    clients.by_node.insert(victim, survivor);
    let t0 = Instant::now();
    while leader(&clients, "pref", 0).await != Some(victim) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "node {victim} never got pref/0 back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "pref/0 back on node {victim} {:?} after its restart",
        t0.elapsed()
    );
    let transfers: u64 = cluster
        .nodes
        .iter()
        .filter_map(|n| n.admin_get("/metrics"))
        .filter_map(|(_, page)| metric(&page, "sluice_leader_transfers_total", ""))
        .sum();
    assert!(transfers > 0, "no node counted a leadership transfer");
    acked.push((
        0,
        clients.produce("pref", 0, &["c".into()]).await.unwrap(),
        vec!["c".to_owned()],
    ));
    assert_eq!(
        clients.read_all("pref", 0).await,
        expected_records(&acked, 0)
    );
}

/// The value of the metric line `name{labels}` in a Prometheus text page, if present.
fn metric(page: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{name}{{{labels}}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Waits (30 s at most) until node `node`'s high watermark of each of `topic`'s
/// `partitions` counts every record of `acked` there: it caught up.
async fn catch_up(
    cluster: &mut TestCluster,
    node: u64,
    topic: &str,
    partitions: u32,
    acked: &[(u32, u64, Vec<String>)],
) {
    let want: BTreeMap<u32, u64> = (0..partitions)
        .map(|p| (p, expected_records(acked, p).len() as u64))
        .collect();
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let page = cluster
                .node(node)
                .admin_get("/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            let got: BTreeMap<u32, u64> = (0..partitions)
                .filter_map(|p| {
                    metric(
                        &page,
                        "sluice_high_watermark",
                        &format!("topic=\"{topic}\",partition=\"{p}\""),
                    )
                    .map(|v| (p, v))
                })
                .collect();
            if got == want {
                return Ok(());
            }
            Err(format!(
                "node {node} did not catch up: {got:?}, want {want:?}\n{}",
                cluster.node(node).log_text()
            ))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_an_empty_data_dir_catches_up() {
    let mut cluster = TestCluster::start(3, false);
    let clients = Clients::connect(&cluster).await;
    clients.create("wiped", 2).await;
    let mut acked = Vec::new();
    clients
        .produce_fives("wiped", 2, 0..10, "w", &mut acked)
        .await;
    // Node 3 loses its disk: stopped, its data directory removed, started empty.
    let status = cluster.node(3).terminate();
    assert!(status.success(), "{status}");
    let dir = cluster.node(3).data_dir().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    // Writes go on meanwhile (two of three replicas are a quorum).
    clients
        .produce_fives("wiped", 2, 10..14, "w", &mut acked)
        .await;
    cluster.node(3).restart();
    // Node 3 learns the topic from the controller log, reopens its replicas empty and
    // is brought up to date by their leaders: its committed end matches every acked
    // record.
    catch_up(&mut cluster, 3, "wiped", 2, &acked).await;
    // And it holds the data: with node 1 gone, nodes 2 and 3 serve every acked record.
    cluster.node(1).kill();
    let rest = clients.only(&[2, 3]);
    rest.produce("wiped", 0, &["after".to_owned()])
        .await
        .map(|base| acked.push((0, base, vec!["after".to_owned()])))
        .unwrap();
    for p in 0..2 {
        assert_eq!(rest.read_all("wiped", p).await, expected_records(&acked, p));
    }
}

/// `line` without its ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `new_group` field of each "replica open" line of `log` for `tp` ("topic/p"),
/// in order.
fn opened_as_new(log: &str, tp: &str) -> Vec<bool> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("cluster: replica open") && l.contains(tp))
        .filter_map(|l| {
            if l.contains("new_group=true") {
                Some(true)
            } else if l.contains("new_group=false") {
                Some(false)
            } else {
                None
            }
        })
        .collect()
}

/// Waits (`within` at most) until node `node` has logged `count` "replica open" lines
/// for `tp`, and returns their `new_group` fields.
async fn opens(
    cluster: &mut TestCluster,
    node: u64,
    tp: &str,
    count: usize,
    within: Duration,
) -> Vec<bool> {
    eventually(within, POLL, async || {
        let log = cluster.node(node).log_text();
        let opened = opened_as_new(&log, tp);
        if opened.len() >= count {
            Ok(opened)
        } else {
            Err(log)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_directory_lost_on_a_node_that_kept_its_join_point_comes_back_guarded() {
    let mut cluster = TestCluster::start(3, false);
    let clients = Clients::connect(&cluster).await;
    clients.create("lost", 1).await;
    let mut acked = Vec::new();
    clients
        .produce_fives("lost", 1, 0..6, "l", &mut acked)
        .await;
    // Made in this run, after node 3 joined: a new group, opened without a guard.
    assert_eq!(
        opens(&mut cluster, 3, "lost/0", 1, Duration::from_secs(10)).await,
        [true],
        "{}",
        cluster.node(3).log_text()
    );
    // Node 3 loses that partition's directory only: it keeps `cluster.joined` and its
    // controller log, which already holds the topic's creation.
    let status = cluster.node(3).terminate();
    assert!(status.success(), "{status}");
    let dir = sluice_node::topics::partition_dir(
        cluster.node(3).data_dir(),
        &sluice_engine::TopicPartition::new("lost".to_owned(), 0),
    );
    assert!(dir.is_dir(), "{dir:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(cluster.node(3).data_dir().join("cluster.joined").exists());
    cluster.node(3).restart();
    // The replica it reopens empty may have acknowledged records before: guarded.
    assert_eq!(
        opens(&mut cluster, 3, "lost/0", 2, Duration::from_secs(20)).await,
        [true, false],
        "{}",
        cluster.node(3).log_text()
    );
    // It still catches up and serves: with node 1 gone, nodes 2 and 3 hold every acked
    // record.
    clients
        .produce_fives("lost", 1, 6..8, "l", &mut acked)
        .await;
    catch_up(&mut cluster, 3, "lost", 1, &acked).await;
    cluster.node(1).kill();
    let rest = clients.only(&[2, 3]);
    assert_eq!(rest.read_all("lost", 0).await, expected_records(&acked, 0));
}
