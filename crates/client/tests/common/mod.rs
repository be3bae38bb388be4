//! A real `sluice-server` process for the SDK's integration tests (the shared harness,
//! `sluice-test-support`), plus SDK clients aimed at it.
#![allow(dead_code)]

use sluice_client::{Client, ClientOptions, ClientTls};
pub use sluice_test_support::Broker;

/// SDK clients for a [`Broker`].
pub trait BrokerClients {
    /// A client with default options.
    async fn client(&self) -> Client;
    /// A client with `options`.
    async fn client_with(&self, options: ClientOptions) -> Client;
}

impl BrokerClients for Broker {
    async fn client(&self) -> Client {
        self.client_with(ClientOptions::default()).await
    }

    async fn client_with(&self, options: ClientOptions) -> Client {
        Client::connect_with(self.addr(), ClientTls::ca_file(self.ca_path()), options)
            .await
            .expect("connect to the broker")
    }
}
