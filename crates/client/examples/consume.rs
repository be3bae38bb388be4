//! Consumes every partition of a topic and prints the records.
//!
//! ```text
//! cargo run -p sluice-client --example consume -- \
//!     --server 127.0.0.1:7878 --ca sluice-data/tls/ca.pem \
//!     --topic events [--from earliest|latest|OFFSET] [--count N] [--idle-ms 5000]
//! ```
//!
//! Stops after `--count` records (default: no limit) or when nothing has arrived for
//! `--idle-ms`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use sluice_client::{Client, ClientTls, ConsumerConfig, SeekTo};

struct Args {
    server: SocketAddr,
    ca: String,
    topic: String,
    from: SeekTo,
    count: Option<u64>,
    idle_ms: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        server: "127.0.0.1:7878".parse().map_err(|e| format!("{e}"))?,
        ca: "sluice-data/tls/ca.pem".to_owned(),
        topic: "events".to_owned(),
        from: SeekTo::Earliest,
        count: None,
        idle_ms: 5_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--server" => {
                let v = value("--server")?;
                args.server = v.parse().map_err(|e| format!("--server {v}: {e}"))?;
            }
            "--ca" => args.ca = value("--ca")?,
            "--topic" => args.topic = value("--topic")?,
            "--from" => {
                args.from = match value("--from")?.as_str() {
                    "earliest" => SeekTo::Earliest,
                    "latest" => SeekTo::Latest,
                    n => SeekTo::Offset(n.parse().map_err(|e| format!("--from {n}: {e}"))?),
                }
            }
            "--count" => {
                let v = value("--count")?;
                args.count = Some(v.parse().map_err(|e| format!("--count {v}: {e}"))?);
            }
            "--idle-ms" => {
                let v = value("--idle-ms")?;
                args.idle_ms = v.parse().map_err(|e| format!("--idle-ms {v}: {e}"))?;
            }
            _ => {
                return Err("usage: consume --server ADDR --ca PATH --topic NAME \
                            [--from earliest|latest|OFFSET] [--count N] [--idle-ms MS]"
                    .to_owned())
            }
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(args.server, ClientTls::ca_file(&args.ca)).await?;
    let mut consumer = client.consumer(ConsumerConfig::default())?;
    let partitions = consumer.assign_all(&args.topic).await?;
    for p in 0..partitions {
        consumer.seek(&args.topic, p, args.from).await?;
    }
    let mut seen = 0u64;
    while args.count.is_none_or(|c| seen < c) {
        let records = consumer.poll(Duration::from_millis(args.idle_ms)).await?;
        if records.is_empty() {
            eprintln!("nothing new for {} ms", args.idle_ms);
            break;
        }
        for r in records {
            let value = r
                .value
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            println!(
                "{}/{} offset {} ts {}: {value}",
                r.topic, r.partition, r.offset, r.timestamp
            );
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                break;
            }
        }
    }
    client.close().await;
    Ok(())
}
