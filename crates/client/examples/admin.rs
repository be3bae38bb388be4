//! Topic administration and cluster status.
//!
//! ```text
//! cargo run -p sluice-client --example admin -- \
//!     --server 127.0.0.1:7878 --ca sluice-data/tls/ca.pem \
//!     list | create NAME PARTITIONS | describe NAME | delete NAME | cluster
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use sluice_client::wire::TopicConfig;
use sluice_client::{Client, ClientTls};

const USAGE: &str = "usage: admin --server ADDR --ca PATH \
                     list | create NAME PARTITIONS | describe NAME | delete NAME | cluster";

struct Args {
    server: SocketAddr,
    ca: String,
    command: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        server: "127.0.0.1:7878".parse().map_err(|e| format!("{e}"))?,
        ca: "sluice-data/tls/ca.pem".to_owned(),
        command: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--server" => {
                let v = it.next().ok_or("--server needs a value")?;
                args.server = v.parse().map_err(|e| format!("--server {v}: {e}"))?;
            }
            "--ca" => args.ca = it.next().ok_or("--ca needs a value")?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => args.command.push(other.to_owned()),
        }
    }
    if args.command.is_empty() {
        args.command.push("list".to_owned());
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
    let words: Vec<&str> = args.command.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["list"] => {
            for t in client.list_topics().await? {
                println!("{}\t{} partitions", t.name, t.partitions);
            }
        }
        ["create", name, partitions] => {
            let partitions: u32 = partitions.parse()?;
            let t = client
                .create_topic(name, partitions, TopicConfig::default())
                .await?;
            println!("created {} with {} partitions", t.name, t.partitions);
        }
        ["describe", name] => {
            let d = client.describe_topic(name).await?;
            println!("{} (config {:?})", d.name, d.config);
            println!("partition\tleader\tlog_start\thigh_watermark");
            for p in d.partitions {
                let leader = p.leader.map_or("-".to_owned(), |l| l.to_string());
                println!(
                    "{}\t{leader}\t{}\t{}",
                    p.partition, p.log_start, p.high_watermark
                );
            }
        }
        ["delete", name] => {
            client.delete_topic(name).await?;
            println!("deleted {name}");
        }
        ["cluster"] => {
            let c = client.describe_cluster().await?;
            println!(
                "cluster {} answered by node {} (controller {:?}): {} topics, {} partitions",
                c.cluster_id, c.node_id, c.controller, c.topics, c.partitions
            );
            for b in c.brokers {
                println!("  node {} at {}", b.node_id, b.addr);
            }
        }
        _ => return Err(USAGE.into()),
    }
    client.close().await;
    Ok(())
}
