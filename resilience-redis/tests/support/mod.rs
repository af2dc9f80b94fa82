//! Throw-away redis-servers for the adapter's tests, on free loopback ports, killed when
//! dropped, and an in-memory repository to back them up into. A missing `redis-server` fails the
//! test, loudly.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::MemorySink;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server, killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standalone redis-server without persistence, its directory `dir`, accepting connections.
pub fn start_server(dir: &Path) -> Server {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server must be installed (Debian package redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, port }
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
