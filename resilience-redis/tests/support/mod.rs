//! Throw-away redis-servers for the adapter's tests, on free loopback ports, killed when
//! dropped, and an in-memory repository to back them up into. A missing `redis-server` fails the
//! test, loudly.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::MemorySink;

pub use resilience_redis::testing::{ServerOptions, TestServer as Server};

/// A standalone redis-server without persistence, its directory `dir`, accepting connections.
pub fn start_server(dir: &Path) -> Server {
    resilience_redis::testing::start_server(dir, &ServerOptions::default())
}

/// An in-memory repository.
pub async fn repo() -> Repository {
    Repository::init(
        Arc::new(MemorySink::new()),
        &KeyFileProvider::from_key([5; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap()
}
