//! Connections and the topic: connecting with a clear message when it cannot be done,
//! creating the topic if asked, and the partitions' offsets.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use sluice_client::wire::{ErrorCode, TopicConfig, TopicDescription};
use sluice_client::{Client, ClientError, ClientOptions, ClientTls};

use crate::cli::Plan;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A new connection to the broker, with a message that says what to do when it fails.
pub async fn connect(plan: &Plan, role: &str) -> Result<Client> {
    let ca = &plan.opts.ca;
    if !ca.is_file() {
        bail!(
            "CA certificate {} does not exist; pass the broker's CA with --ca PATH or \
             SLUICE_CA (a dev broker writes it to <data-dir>/tls/ca.pem)",
            ca.display()
        );
    }
    let tls = ClientTls::ca_file(ca).with_server_name(&plan.opts.tls_server_name);
    let options = ClientOptions {
        client_id: format!("sluice-bench-{role}"),
        connect_timeout: CONNECT_TIMEOUT,
        ..ClientOptions::default()
    };
    Client::connect_with(plan.addr, tls, options)
        .await
        .map_err(|e| match e {
            ClientError::Connect {
                addr,
                reason,
                retriable: false,
            } => anyhow!(
                "cannot connect to {addr}: TLS handshake failed: {reason}; the broker's \
                 certificate must be signed by the CA given with --ca and be valid for \
                 --tls-server-name"
            ),
            ClientError::Connect { addr, reason, .. } => anyhow!(
                "cannot connect to {addr}: {reason}; is a broker listening there? (start \
                 one with `cargo run --release -p sluice-server`, or set --server)"
            ),
            other => anyhow!("cannot connect to {}: {other}", plan.addr),
        })
}

/// The topic's description, creating it first when it is missing and `plan.create`.
pub async fn ensure_topic(admin: &Client, plan: &Plan) -> Result<TopicDescription> {
    let topic = &plan.opts.topic;
    match admin.describe_topic(topic).await {
        Ok(d) => return Ok(d),
        Err(e) if is_code(&e, ErrorCode::UnknownTopic) => {
            if !plan.create {
                bail!(
                    "topic {topic} does not exist{}",
                    if plan.mode == crate::cli::Mode::Consume {
                        "; fill it first, e.g. `sluice-bench produce --topic ...`"
                    } else {
                        " (and --no-create was given)"
                    }
                );
            }
        }
        Err(e) => return Err(anyhow!("describe topic {topic}: {e}")),
    }
    match admin
        .create_topic(topic, plan.opts.partitions, TopicConfig::default())
        .await
    {
        Ok(_) => {}
        // Someone else created it meanwhile: use theirs.
        Err(e) if is_code(&e, ErrorCode::TopicExists) => {}
        Err(e) => return Err(anyhow!("create topic {topic}: {e}")),
    }
    admin
        .describe_topic(topic)
        .await
        .with_context(|| format!("describe topic {topic} after creating it"))
}

fn is_code(e: &ClientError, code: ErrorCode) -> bool {
    e.broker_error().is_some_and(|b| b.code == code)
}

/// Per partition (indexed by partition number): `(log_start, high_watermark)`.
pub fn offsets(d: &TopicDescription) -> Result<Vec<(u64, u64)>> {
    let n = d.partitions.len();
    let mut out = vec![None; n];
    for p in &d.partitions {
        let slot = out
            .get_mut(p.partition as usize)
            .ok_or_else(|| anyhow!("topic {}: partition {} of {n}", d.name, p.partition))?;
        *slot = Some((p.log_start, p.high_watermark));
    }
    out.into_iter()
        .enumerate()
        .map(|(i, o)| o.ok_or_else(|| anyhow!("topic {}: partition {i} not described", d.name)))
        .collect()
}
