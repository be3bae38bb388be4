//! The `sluice` binary against a real `sluice-server` process (see `support`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::{run_command, sluice_bare, start_broker, SluiceCli};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn lines(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("{prefix}-{i}\n")).collect()
}

/// The `value` strings of consumed JSON records.
fn values(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["value"].as_str().expect("a UTF-8 value").to_owned())
        .collect()
}

#[test]
fn topic_create_list_describe_delete_round_trip() {
    let broker = start_broker();
    let created = broker.ok(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--retention-ms",
            "3600000",
            "--segment-bytes",
            "1048576",
            "--output",
            "json",
        ],
        b"",
    );
    let created = &created.json_lines()[0];
    assert_eq!(created["name"], "orders");
    assert_eq!(created["partitions"], 3);
    broker.ok(&["topic", "create", "audit", "--partitions", "1"], b"");

    let again = broker.run(&["topic", "create", "orders", "--partitions", "3"], b"");
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(again.stderr.contains("TopicExists"), "{}", again.stderr);

    let listed = broker.ok(&["topic", "list", "--output", "json"], b"");
    let names: BTreeMap<String, u64> = listed
        .json_lines()
        .iter()
        .map(|t| {
            let name = t["name"].as_str().expect("name").to_owned();
            (name, t["partitions"].as_u64().expect("partitions"))
        })
        .collect();
    assert_eq!(
        names,
        BTreeMap::from([("audit".to_owned(), 1), ("orders".to_owned(), 3)])
    );
    let text = broker.ok(&["topic", "list"], b"").stdout;
    assert!(text.starts_with("TOPIC"), "{text}");
    assert!(text.contains("orders"), "{text}");

    broker.ok(&["produce", "orders", "--partition", "1"], b"a\nb\n");
    let described = broker.ok(&["topic", "describe", "orders", "--output", "json"], b"");
    let d = &described.json_lines()[0];
    assert_eq!(d["name"], "orders");
    assert_eq!(d["config"]["retention_ms"], 3_600_000);
    assert_eq!(d["config"]["segment_bytes"], 1_048_576);
    assert!(d["config"]["retention_bytes"].is_null());
    let partitions = d["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 3);
    for (i, p) in partitions.iter().enumerate() {
        assert_eq!(p["partition"], i);
        assert_eq!(p["log_start"], 0);
        assert_eq!(p["high_watermark"], if i == 1 { 2 } else { 0 });
        // The engine's log size: one 2-record batch on partition 1, nothing elsewhere.
        let log_bytes = p["log_bytes"].as_u64().expect("log_bytes");
        if i == 1 {
            assert!((64..1024).contains(&log_bytes), "{p}");
        } else {
            assert_eq!(log_bytes, 0, "{p}");
        }
        assert!(p["leader"].is_u64(), "{p}");
    }
    let text = broker.ok(&["topic", "describe", "orders"], b"").stdout;
    assert!(text.contains("HIGH_WATERMARK"), "{text}");

    let deleted = broker.ok(&["topic", "delete", "orders"], b"").stdout;
    assert_eq!(deleted.trim(), "deleted topic orders");
    let listed = broker.ok(&["topic", "list", "--output", "json"], b"");
    let names: Vec<Value> = listed
        .json_lines()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("audit")]);
    let gone = broker.run(&["topic", "describe", "orders"], b"");
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    assert!(gone.stderr.contains("'orders'"), "{}", gone.stderr);
}

#[test]
fn produce_1000_lines_then_consume_them_all() {
    let broker = start_broker();
    broker.ok(&["topic", "create", "events", "--partitions", "4"], b"");
    let input = lines("line", 1000);
    let produced = broker.ok(&["produce", "events", "--output", "json"], input.as_bytes());
    let acks = produced.json_lines();
    assert_eq!(acks.len(), 1000, "{}", produced.stderr);
    let mut acked: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for ack in &acks {
        assert_eq!(ack["topic"], "events");
        let p = ack["partition"].as_u64().expect("partition");
        acked
            .entry(p)
            .or_default()
            .push(ack["offset"].as_u64().expect("offset"));
    }
    // Every offset printed once, each partition's offsets dense from 0 in print order
    // (one request in flight per partition), and round-robin spreads lines evenly.
    assert_eq!(acked.len(), 4);
    for offsets in acked.values() {
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, &expected);
        assert_eq!(offsets.len(), 250);
    }

    let consumed = broker.ok(
        &[
            "consume", "events", "--from", "earliest", "--count", "1000", "--output", "json",
        ],
        b"",
    );
    let records = consumed.json_lines();
    assert_eq!(records.len(), 1000, "{}", consumed.stderr);
    let mut by_partition: BTreeMap<u64, Vec<(u64, usize)>> = BTreeMap::new();
    for r in &records {
        assert_eq!(r["topic"], "events");
        assert!(r["key"].is_null(), "{r}");
        assert!(r["timestamp"].as_i64().expect("timestamp") > 1_600_000_000_000);
        let value = r["value"].as_str().expect("value");
        let line: usize = value
            .strip_prefix("line-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected value {value:?}"));
        by_partition
            .entry(r["partition"].as_u64().expect("partition"))
            .or_default()
            .push((r["offset"].as_u64().expect("offset"), line));
    }
    let mut seen = BTreeSet::new();
    for (p, records) in &by_partition {
        // Offsets as acked, and the partition's lines in input order.
        let offsets: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(Some(&offsets), acked.get(p), "partition {p}");
        assert!(
            records.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {p} out of order"
        );
        for &(_, line) in records {
            assert!(seen.insert(line), "line {line} consumed twice");
        }
    }
    assert_eq!(seen, (0..1000).collect::<BTreeSet<_>>());

    // Without --count, consume stops at the high watermark seen at start.
    let all = broker.ok(&["consume", "events", "--output", "json"], b"");
    assert_eq!(all.json_lines().len(), 1000);
    // Text output: one readable line per record.
    let text = broker.ok(
        &["consume", "events", "--partition", "2", "--count", "3"],
        b"",
    );
    let text_lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(text_lines.len(), 3, "{}", text.stdout);
    assert!(text_lines[0].starts_with("2:0  "), "{}", text_lines[0]);
    assert!(text_lines[0].ends_with("  line-2"), "{}", text_lines[0]);
}

#[test]
fn produce_keyed_empty_and_binary_lines() {
    let broker = start_broker();
    broker.ok(&["topic", "create", "keyed", "--partitions", "5"], b"");
    let mut input = b"first\n\n".to_vec();
    input.extend_from_slice(&[0xff, 0x00, 0xfe, b'\n']);
    input.extend_from_slice(b"last without newline");
    let produced = broker.ok(&["produce", "keyed", "--key", "user-7"], &input);
    let acks: Vec<(u64, u64)> = produced
        .stdout
        .lines()
        .map(|l| {
            let (p, o) = l.split_once(' ').expect("PARTITION OFFSET");
            (p.parse().expect("partition"), o.parse().expect("offset"))
        })
        .collect();
    let partition = acks[0].0;
    assert_eq!(acks, (0..4).map(|o| (partition, o)).collect::<Vec<_>>());

    let consumed = broker.ok(
        &[
            "consume",
            "keyed",
            "--partition",
            &partition.to_string(),
            "--output",
            "json",
        ],
        b"",
    );
    let records = consumed.json_lines();
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r["key"], "user-7");
    }
    assert_eq!(records[0]["value"], "first");
    assert_eq!(records[1]["value"], "");
    assert!(records[2].get("value").is_none(), "{}", records[2]);
    assert_eq!(records[2]["value_base64"], "/wD+");
    assert_eq!(records[3]["value"], "last without newline");
}

#[test]
fn consume_from_a_timestamp() {
    let broker = start_broker();
    broker.ok(&["topic", "create", "clock", "--partitions", "2"], b"");
    broker.ok(&["produce", "clock"], lines("old", 6).as_bytes());
    std::thread::sleep(Duration::from_millis(30));
    let cut_ms = now_ms();
    std::thread::sleep(Duration::from_millis(30));
    broker.ok(&["produce", "clock"], lines("new", 6).as_bytes());

    let from_ms = format!("ts:{cut_ms}");
    let newer = broker.ok(
        &["consume", "clock", "--from", &from_ms, "--output", "json"],
        b"",
    );
    let mut got = values(&newer.json_lines());
    got.sort();
    let mut expected: Vec<String> = (0..6).map(|i| format!("new-{i}")).collect();
    expected.sort();
    assert_eq!(got, expected);

    // The RFC 3339 form, taken from the text output of the first new record.
    let text = broker
        .ok(&["consume", "clock", "--partition", "0"], b"")
        .stdout;
    let first_new = text
        .lines()
        .find(|l| l.ends_with("new-0"))
        .unwrap_or_else(|| panic!("no new-0 in {text}"));
    let rfc3339 = first_new.split("  ").nth(1).expect("timestamp column");
    assert!(rfc3339.ends_with('Z') && rfc3339.contains('T'), "{rfc3339}");
    let newer = broker.ok(
        &[
            "consume",
            "clock",
            "--partition",
            "0",
            "--from",
            rfc3339,
            "--output",
            "json",
        ],
        b"",
    );
    assert_eq!(values(&newer.json_lines()), ["new-0", "new-2", "new-4"]);

    // A time after every record: nothing, exit 0.
    let future = format!("ts:{}", now_ms() + 3_600_000);
    let none = broker.ok(&["consume", "clock", "--from", &future], b"");
    assert_eq!(none.stdout, "");
}

#[test]
fn consume_of_an_unknown_topic_fails_naming_it() {
    let broker = start_broker();
    let run = broker.run(&["consume", "no-such-topic", "--from", "earliest"], b"");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("no-such-topic"), "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    let run = broker.run(&["produce", "no-such-topic"], b"x\n");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("no-such-topic"), "{}", run.stderr);
}

#[test]
fn consume_out_of_range_offset_names_the_valid_range() {
    let broker = start_broker();
    broker.ok(&["topic", "create", "short", "--partitions", "1"], b"");
    broker.ok(&["produce", "short"], lines("r", 10).as_bytes());
    let run = broker.run(&["consume", "short", "--from", "50"], b"");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("0..=10"), "{}", run.stderr);
    let tail = broker.ok(
        &["consume", "short", "--from", "7", "--output", "json"],
        b"",
    );
    assert_eq!(values(&tail.json_lines()), ["r-7", "r-8", "r-9"]);
    let nothing = broker.ok(&["consume", "short", "--from", "latest"], b"");
    assert_eq!(nothing.stdout, "");
    let run = broker.run(&["consume", "short", "--partition", "3"], b"");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
}

#[test]
fn cluster_status_json_parses() {
    let broker = start_broker();
    broker.ok(&["topic", "create", "a", "--partitions", "2"], b"");
    broker.ok(&["topic", "create", "b", "--partitions", "3"], b"");
    let status = broker.ok(&["cluster", "status", "--output", "json"], b"");
    let lines = status.json_lines();
    assert_eq!(lines.len(), 1);
    let s = &lines[0];
    assert!(s["cluster_id"].is_string(), "{s}");
    let nodes = s["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0]["addr"].is_string(), "{s}");
    assert_eq!(nodes[0]["alive"], true, "{s}");
    assert_eq!(s["healthy"], true, "{s}");
    assert_eq!(s["leaderless"], 0, "{s}");
    assert_eq!(s["topic_count"], 2);
    assert_eq!(s["partition_count"], 5);
    let topics = s["topics"].as_array().expect("topics");
    assert_eq!(topics[0]["name"], "a");
    assert_eq!(
        topics[1]["partitions"]
            .as_array()
            .expect("partitions")
            .len(),
        3
    );
    let text = broker.ok(&["cluster", "status", "--check"], b"").stdout;
    assert!(text.contains("nodes: 1, alive: 1"), "{text}");
    assert!(text.contains("ALIVE"), "{text}");
}

#[test]
fn replication_factor_goes_to_the_broker() {
    let broker = start_broker();
    let created = broker.ok(
        &[
            "topic",
            "create",
            "one",
            "--partitions",
            "2",
            "--replication-factor",
            "1",
            "--output",
            "json",
        ],
        b"",
    );
    assert_eq!(created.json_lines()[0]["partitions"], 2);
    // A single-node broker keeps one replica: the broker's refusal, exit 1.
    let three = broker.run(
        &[
            "topic",
            "create",
            "three",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
        b"",
    );
    assert_eq!(three.status.code(), Some(1), "{three:?}");
    assert!(three.stderr.contains("InvalidConfig"), "{}", three.stderr);
    // 0 is a usage error (clap, exit 2), refused before connecting.
    let zero = broker.run(
        &[
            "topic",
            "create",
            "zero",
            "--partitions",
            "1",
            "--replication-factor",
            "0",
        ],
        b"",
    );
    assert_eq!(zero.status.code(), Some(2), "{zero:?}");
}

#[test]
fn follow_waits_for_new_records_and_ctrl_c_exits_0() {
    let broker = start_broker();
    broker.ok(&["topic", "create", "live", "--partitions", "2"], b"");

    // --follow --count: long-polls until the records arrive, then exits.
    let mut follow = broker.sluice();
    follow.args([
        "consume", "live", "--from", "0", "--follow", "--count", "3", "--output", "json",
    ]);
    let waiter = std::thread::spawn(move || run_command(&mut follow, b""));
    std::thread::sleep(Duration::from_millis(300));
    broker.ok(&["produce", "live", "--partition", "1"], b"x\ny\nz\n");
    let run = waiter.join().expect("follow thread");
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(values(&run.json_lines()), ["x", "y", "z"]);

    // --follow alone: runs until SIGINT, which ends it with exit 0.
    let mut child = broker
        .sluice()
        .args(["consume", "live", "--from", "earliest", "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("stdout line")).is_err() {
                return;
            }
        }
    });
    // Its first line means the signal handler is installed (it is set up before printing).
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(10)).expect("a record");
    }
    broker.ok(&["produce", "live", "--partition", "0"], b"later\n");
    let later = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the later record");
    assert!(later.ends_with("  later"), "{later}");
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(killed.success());
    let status = child.wait().expect("wait for follow");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn cannot_connect_and_usage_exit_codes() {
    let broker = start_broker();
    let server = broker.addr().to_string();
    let ca = broker.ca_path().to_str().expect("UTF-8 CA path").to_owned();
    // A port with no broker behind it: the QUIC handshake never completes.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let nobody = silent.local_addr().expect("addr").to_string();
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &[
                "--server",
                &nobody,
                "--ca",
                &ca,
                "--connect-timeout-ms",
                "300",
                "topic",
                "list",
            ],
            3,
            "cannot connect",
        ),
        (
            &[
                "--server",
                &server,
                "--ca",
                "/nonexistent/ca.pem",
                "topic",
                "list",
            ],
            3,
            "/nonexistent/ca.pem",
        ),
        (
            &[
                "--server",
                &server,
                "--ca",
                &ca,
                "--tls-server-name",
                "elsewhere",
                "topic",
                "list",
            ],
            3,
            "TLS",
        ),
        (
            &["--server", "no-port", "--ca", &ca, "topic", "list"],
            2,
            "HOST:PORT",
        ),
        (
            &[
                "--server",
                &server,
                "--ca",
                &ca,
                "consume",
                "t",
                "--from",
                "yesterday",
            ],
            2,
            "--from",
        ),
        (
            &["--server", &server, "--ca", &ca, "topic", "create", "t"],
            2,
            "--partitions",
        ),
    ];
    for (args, code, needle) in cases {
        let run = run_command(sluice_bare().args(args), b"");
        assert_eq!(run.status.code(), Some(code), "{args:?}: {run:?}");
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
    // The environment variables stand in for the flags.
    let run = run_command(
        sluice_bare()
            .env("SLUICE_SERVER", &server)
            .env("SLUICE_CA", &ca)
            .args(["topic", "list"]),
        b"",
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
}

#[test]
fn produce_reports_the_write_outcome_when_the_broker_dies() {
    let mut broker = start_broker();
    broker.ok(&["topic", "create", "doomed", "--partitions", "1"], b"");
    let mut child = broker
        .sluice()
        .args([
            "--request-timeout-ms",
            "1000",
            "produce",
            "doomed",
            "--timeout-ms",
            "1000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn produce");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdin.write_all(b"one\n").expect("write a line");
    let mut ack = String::new();
    stdout.read_line(&mut ack).expect("read the ack");
    assert_eq!(ack, "0 0\n");

    broker.kill();
    stdin.write_all(b"two\n").expect("write a line");
    let output = child.wait_with_output().expect("wait for produce");
    drop(stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        matches!(output.status.code(), Some(1 | 3)),
        "{:?}: {stderr}",
        output.status
    );
    assert!(
        stderr.contains("the write is INDETERMINATE") || stderr.contains("the write is DEFINITE"),
        "{stderr}"
    );
    assert!(stderr.contains("1 records were acked"), "{stderr}");
}
