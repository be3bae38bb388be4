//! Produces records and prints where each was stored.
//!
//! ```text
//! cargo run -p sluice-client --example produce -- \
//!     --server 127.0.0.1:7878 --ca sluice-data/tls/ca.pem \
//!     --topic events [--key KEY] [--count 10] [VALUE ...]
//! ```
//!
//! With values on the command line, produces those; otherwise `--count` generated ones.
//! Every record is acknowledged with `acks = all` (fsynced on the broker) before its
//! offset is printed.

use std::net::SocketAddr;
use std::process::ExitCode;

use sluice_client::{Client, ClientTls, ProducerConfig, ProducerRecord};

struct Args {
    server: SocketAddr,
    ca: String,
    topic: String,
    key: Option<String>,
    count: u64,
    values: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        server: "127.0.0.1:7878".parse().map_err(|e| format!("{e}"))?,
        ca: "sluice-data/tls/ca.pem".to_owned(),
        topic: "events".to_owned(),
        key: None,
        count: 10,
        values: Vec::new(),
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
            "--key" => args.key = Some(value("--key")?),
            "--count" => {
                let v = value("--count")?;
                args.count = v.parse().map_err(|e| format!("--count {v}: {e}"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: produce --server ADDR --ca PATH --topic NAME [--key KEY] \
                            [--count N] [VALUE ...]"
                        .to_owned(),
                )
            }
            other if other.starts_with("--") => return Err(format!("unknown flag {other}")),
            other => args.values.push(other.to_owned()),
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
    let producer = client.producer(ProducerConfig::default())?;
    let values: Vec<String> = if args.values.is_empty() {
        (0..args.count).map(|i| format!("message {i}")).collect()
    } else {
        args.values
    };
    let mut deliveries = Vec::with_capacity(values.len());
    for value in values {
        let mut record = ProducerRecord::new(args.topic.as_str(), value.clone().into_bytes());
        if let Some(key) = &args.key {
            record = record.key(key.as_bytes());
        }
        deliveries.push((value, producer.send(record).await?));
    }
    let mut failed = 0;
    for (value, delivery) in deliveries {
        match delivery.await {
            Ok(m) => println!("{}/{} offset {}: {value}", m.topic, m.partition, m.offset),
            Err(e) => {
                failed += 1;
                eprintln!("not stored: {value}: {e}");
            }
        }
    }
    producer.close().await;
    client.close().await;
    if failed > 0 {
        return Err(format!("{failed} records failed").into());
    }
    Ok(())
}
