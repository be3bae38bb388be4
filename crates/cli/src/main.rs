//! `sluice`: the command-line tool of the Sluice broker. It speaks to one broker through
//! the SDK's QUIC transport (`sluice_client::transport::Client`): raw requests, batches
//! built here with `BatchBuilder`, fetched batches read with `sluice_proto::batches`. It
//! does not use the SDK's high-level producer or consumer; `produce` has its own small
//! per-partition batcher with one request in flight per partition (see `produce.rs`).
//!
//! Model: parse the command line (clap; a usage error exits 2 before anything else), dial
//! the broker (failure exits 3), run one command on a single-threaded tokio runtime, print
//! results to stdout and one error line to stderr. Exit codes are in `fail.rs` and the
//! crate README. `cluster certs` and `cluster up` need no broker (`local.rs`); their pure
//! parts are the library's `layout` module.

mod admin;
mod cli;
mod consume;
mod encode;
mod fail;
mod local;
mod produce;
mod time;

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;
use sluice_client::transport::{Client, ClientOptions, ClientTls};

use crate::cli::{Cli, ClusterCommand, Command, TopicCommand};
use crate::fail::{Fail, EXIT_OK};

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let code = match runtime {
        Ok(runtime) => match runtime.block_on(run(cli)) {
            Ok(()) => EXIT_OK,
            Err(fail) => {
                eprintln!("sluice: {fail}");
                fail.code
            }
        },
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            fail::EXIT_BROKER
        }
    };
    let _ = std::io::stdout().flush();
    // `exit`, not a return: produce's stdin reader thread may still be blocked in a read.
    std::process::exit(i32::from(code));
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let output = cli.output;
    match &cli.command {
        Command::Cluster {
            command: ClusterCommand::Certs(args),
        } => return local::certs(args, output),
        Command::Cluster {
            command: ClusterCommand::Up(args),
        } => return local::up(args, output).await,
        _ => {}
    }
    let client = connect(&cli).await?;
    let result = match cli.command {
        Command::Topic { command } => match command {
            TopicCommand::Create {
                name,
                partitions,
                retention_ms,
                retention_bytes,
                segment_bytes,
                replication_factor,
            } => {
                let config = sluice_proto::wire::TopicConfig {
                    retention_bytes,
                    retention_ms,
                    segment_bytes,
                };
                admin::create(
                    &client,
                    &name,
                    partitions,
                    replication_factor,
                    config,
                    output,
                )
                .await
            }
            TopicCommand::List => admin::list(&client, output).await,
            TopicCommand::Describe { name } => admin::describe(&client, &name, output).await,
            TopicCommand::Delete { name } => admin::delete(&client, &name, output).await,
        },
        Command::Cluster {
            command: ClusterCommand::Status { check },
        } => admin::cluster_status(&client, check, output).await,
        Command::Cluster {
            command: ClusterCommand::Certs(_) | ClusterCommand::Up(_),
        } => Ok(()), // handled above, without a connection
        Command::Produce(args) => produce::run(&client, args, output).await,
        Command::Consume(args) => consume::run(&client, args, output).await,
    };
    client.close().await;
    result
}

/// `HOST:PORT` to one socket address. A malformed value is a usage error (2); a name that
/// does not resolve is a connection failure (3).
fn resolve(server: &str) -> Result<SocketAddr, Fail> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port_ok = server
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(Fail::usage(format!(
            "--server {server:?}: expected HOST:PORT, e.g. 127.0.0.1:7878"
        )));
    }
    let mut addrs = server
        .to_socket_addrs()
        .map_err(|e| Fail::connect(format!("cannot resolve --server {server:?}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| Fail::connect(format!("--server {server:?} resolves to no address")))
}

async fn connect(cli: &Cli) -> Result<Client, Fail> {
    let addr = resolve(&cli.server)?;
    if !cli.ca.is_file() {
        return Err(Fail::connect(format!(
            "CA certificate {} does not exist; pass the broker's CA with --ca PATH or \
             SLUICE_CA (a dev broker writes it to <data-dir>/tls/ca.pem)",
            cli.ca.display()
        )));
    }
    let tls = ClientTls::ca_file(&cli.ca).with_server_name(&cli.tls_server_name);
    let options = ClientOptions {
        client_id: "sluice-cli".to_owned(),
        connect_timeout: Duration::from_millis(cli.connect_timeout_ms.max(1)),
        request_timeout: Duration::from_millis(cli.request_timeout_ms.max(1)),
        ..ClientOptions::default()
    };
    Client::connect_with(addr, tls, options)
        .await
        .map_err(|e| Fail::client("connect", &e))
}
