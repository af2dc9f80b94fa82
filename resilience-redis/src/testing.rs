//! Throw-away redis-servers for tests (feature `testing`): standalone or cluster nodes, with
//! TLS or a password, on free loopback ports, killed when dropped. A missing `redis-server`
//! fails the test, loudly. For this crate's tests, the CLI's, and a service's own integration
//! tests.
//!
//! ```no_run
//! use resilience_redis::testing::{start_server, ServerOptions};
//! # fn demo(dir: &std::path::Path) {
//! let server = start_server(dir, &ServerOptions::default());
//! println!("{}", server.url());
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port whose cluster bus port (`port + 10000`) is free too.
pub fn free_port() -> u16 {
    loop {
        let p = resilience_core::drill::free_loopback_port().expect("a free loopback port");
        if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

/// A redis-server, killed when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// The process.
    pub child: Child,
    /// The plain TCP port.
    pub port: u16,
    /// The TLS port, when started with TLS.
    pub tls_port: Option<u16>,
}

impl TestServer {
    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files of a TLS listener; clients must present a certificate signed by `ca`.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs server and client certificates (PEM).
    pub ca: PathBuf,
}

/// How to start a redis-server.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// As a cluster node (`--cluster-enabled yes`).
    pub cluster: bool,
    /// Also listen with TLS.
    pub tls: Option<ServerTls>,
    /// `requirepass`.
    pub password: Option<String>,
}

/// A redis-server without persistence, in directory `dir`, as `options` say, started and
/// accepting connections (within 10 s).
pub fn start_server(dir: &Path, options: &ServerOptions) -> TestServer {
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
    let mut tls_port = None;
    if let Some(tls) = &options.tls {
        let p = free_port();
        tls_port = Some(p);
        cmd.arg("--tls-port")
            .arg(p.to_string())
            .arg("--tls-cert-file")
            .arg(&tls.cert)
            .arg("--tls-key-file")
            .arg(&tls.key)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca)
            .args(["--tls-auth-clients", "yes"]);
    }
    if let Some(password) = &options.password {
        cmd.args(["--requirepass", password]);
    }
    if options.cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
        ]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (Debian package redis-server)");
    let server = TestServer {
        child,
        port,
        tls_port,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// A cluster of `primaries` primaries (no replicas) in directory `dir`, its slots spread over
/// them by `redis-cli --cluster create`, every node reporting `cluster_state:ok` (within 20 s).
pub fn start_cluster(dir: &Path, primaries: usize) -> Vec<TestServer> {
    let options = ServerOptions {
        cluster: true,
        ..Default::default()
    };
    let nodes: Vec<TestServer> = (0..primaries)
        .map(|_| start_server(dir, &options))
        .collect();
    let mut create = Command::new("redis-cli");
    create.args(["--cluster", "create"]);
    for n in &nodes {
        create.arg(format!("127.0.0.1:{}", n.port));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli must be installed (Debian package redis-tools)");
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .expect("redis-cli must be installed (Debian package redis-tools)");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    nodes
}
