//! Throw-away redis-server instances for tests, on free loopback ports, without persistence.
//! A missing redis-server fails the test, loudly.

#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A free loopback port whose cluster bus port (port + 10000) is free too.
pub fn free_port() -> u16 {
    // Cluster bus ports are port + 10000: keep below 55535.
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

/// A running redis-server, killed when dropped.
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

/// Starts a server whose files go to `dir` (a cluster node when `cluster`).
pub fn start_server(dir: &std::path::Path, cluster: bool) -> Server {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args([
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
    .arg(dir);
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
        ]);
    }
    let child = cmd
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
