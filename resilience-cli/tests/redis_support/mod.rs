//! Throw-away redis-servers for tests (standalone, cluster nodes, TLS, a password) on free
//! loopback ports, and a repository to back them up into with the built CLI.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use fred::prelude::*;
use serde_json::Value as Json;

pub const BIN: &str = env!("CARGO_BIN_EXE_resilience");

pub use resilience_redis::testing::TestServer as Server;

/// How to start a redis-server.
#[derive(Default)]
pub struct ServerOptions<'a> {
    /// As a cluster node.
    pub cluster: bool,
    /// Also listen with TLS (server certificate and CA from this PKI; clients must present a
    /// certificate signed by its CA).
    pub tls: Option<&'a crate::tls_support::Pki>,
    /// `requirepass`.
    pub password: Option<&'a str>,
}

pub fn start_server(dir: &std::path::Path, cluster: bool) -> Server {
    start_server_with(
        dir,
        &ServerOptions {
            cluster,
            ..Default::default()
        },
    )
}

/// A redis-server as `options` say, started and accepting connections.
pub fn start_server_with(dir: &std::path::Path, options: &ServerOptions) -> Server {
    let tls = options.tls.map(|pki| resilience_redis::testing::ServerTls {
        cert: pki.server_cert(),
        key: pki.server_key(),
        ca: pki.ca(),
    });
    resilience_redis::testing::start_server(
        dir,
        &resilience_redis::testing::ServerOptions {
            cluster: options.cluster,
            tls,
            password: options.password.map(str::to_owned),
        },
    )
}

/// Servers and a repository.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub servers: Vec<Server>,
}

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab {
            dir,
            servers: Vec::new(),
        };
        lab.ok(&["init", "--key-file", lab.key().to_str().unwrap()]);
        lab
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--repo")
            .arg(self.dir.path().join("repo"))
            .arg("--key-file")
            .arg(self.key())
            .args(args)
            .env_remove("RESILIENCE_PASSWORD")
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Json {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// A standalone server; returns its URL.
    pub fn standalone(&mut self) -> String {
        let s = start_server(self.dir.path(), false);
        let url = format!("redis://127.0.0.1:{}", s.port);
        self.servers.push(s);
        url
    }

    /// A cluster of three primaries; returns the URL of one node.
    pub fn cluster(&mut self) -> String {
        let nodes = resilience_redis::testing::start_cluster(self.dir.path(), 3);
        let url = format!("redis://127.0.0.1:{}", nodes[0].port);
        self.servers.extend(nodes);
        url
    }
}

pub async fn client(url: &str, cluster: bool) -> Client {
    let url = if cluster {
        url.replacen("redis://", "redis-cluster://", 1)
    } else {
        url.to_owned()
    };
    let c = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

/// Every key (across primaries) with its DUMP payload and absolute expiry.
pub async fn snapshot_of(c: &Client) -> std::collections::BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let mut out = std::collections::BTreeMap::new();
    let nodes = match c.cached_cluster_state() {
        Some(s) => s.unique_primary_nodes(),
        None => c.active_connections(),
    };
    for node in nodes {
        let on = c.with_cluster_node(node);
        let mut cursor = "0".to_owned();
        loop {
            let page: fred::types::Value =
                on.scan_page(cursor, "*", Some(500), None).await.unwrap();
            let fred::types::Value::Array(mut parts) = page else {
                panic!()
            };
            let keys = parts.pop().unwrap();
            cursor = parts.pop().unwrap().as_string().unwrap();
            let fred::types::Value::Array(keys) = keys else {
                panic!()
            };
            for k in keys {
                let k = k.as_bytes().unwrap().to_vec();
                let dump: Option<bytes::Bytes> = c.dump(k.as_slice()).await.unwrap();
                let at: i64 = c.pexpire_time(k.as_slice()).await.unwrap();
                out.insert(k, (dump.unwrap().to_vec(), at));
            }
            if cursor == "0" {
                break;
            }
        }
    }
    out
}

pub async fn fill_every_type(c: &Client, n: usize) {
    let in_an_hour = chrono::Utc::now().timestamp_millis() + 3_600_000;
    for i in 0..n {
        let _: () = c
            .set(format!("str:{i}"), format!("value {i}"), None, None, false)
            .await
            .unwrap();
        let _: () = c
            .rpush(format!("list:{i}"), vec!["a", "b", "c"])
            .await
            .unwrap();
        let _: () = c.sadd(format!("set:{i}"), vec!["x", "y"]).await.unwrap();
        let _: () = c
            .zadd(
                format!("zset:{i}"),
                None,
                None,
                false,
                false,
                vec![(1.5, "one"), (2.5, "two")],
            )
            .await
            .unwrap();
        let _: () = c
            .hset(format!("hash:{i}"), vec![("f1", "v1"), ("f2", "v2")])
            .await
            .unwrap();
        let _: () = c
            .custom(
                fred::cmd!("XADD"),
                vec![
                    format!("stream:{i}"),
                    "*".into(),
                    "field".into(),
                    format!("{i}"),
                ],
            )
            .await
            .unwrap();
        let _: () = c
            .custom(
                fred::cmd!("SETBIT"),
                vec![format!("bits:{i}"), "77".into(), "1".into()],
            )
            .await
            .unwrap();
        let _: () = c
            .custom(
                fred::cmd!("PFADD"),
                vec![format!("hll:{i}"), "a".into(), "b".into(), "c".into()],
            )
            .await
            .unwrap();
        if i % 3 == 0 {
            let _: () = c
                .pexpire_at(format!("str:{i}"), in_an_hour + i as i64, None)
                .await
                .unwrap();
            let _: () = c
                .pexpire_at(format!("hash:{i}"), in_an_hour + 7, None)
                .await
                .unwrap();
        }
    }
    // A big one: a hash of 20,000 fields and a 3 MiB string.
    let fields: Vec<(String, String)> = (0..20_000)
        .map(|i| (format!("f{i}"), format!("v{i}")))
        .collect();
    let _: () = c.hset("big:hash", fields).await.unwrap();
    let _: () = c
        .set("big:string", "z".repeat(3 << 20), None, None, false)
        .await
        .unwrap();
}
