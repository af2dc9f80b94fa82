//! Connecting to a standalone server, a cluster or through Sentinel, and finding the primaries.

use fred::prelude::*;
use fred::types::config::{Config, ServerConfig};

use crate::error::RedisError;

/// How long to wait for a server that is loading its dataset.
const LOADING_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisEndpoint {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…`, or for Sentinel
    /// `redis-sentinel://host:port/db?sentinelServiceName=mymaster`.
    pub url: String,
    /// Treat the URL as one node of a cluster (discover the others).
    pub cluster: bool,
}

/// A connected client and what it talks to.
pub struct Connection {
    /// The client (cluster-aware when the endpoint is a cluster: commands go to the key's node).
    pub client: Client,
    /// The primaries: one for a standalone server or Sentinel, every primary of a cluster.
    pub primaries: Vec<fred::types::config::Server>,
    /// Whether it is a cluster.
    pub cluster: bool,
    /// `redis_version` of the server (the first primary's).
    pub version: String,
    /// The database selected (always 0 in a cluster).
    pub db: u8,
}

impl RedisEndpoint {
    /// Connects.
    pub async fn connect(&self) -> Result<Connection, RedisError> {
        let err = |e: fred::error::Error| RedisError::connect(&self.url, e);
        let config = if self.cluster {
            let url = self
                .url
                .replacen("redis://", "redis-cluster://", 1)
                .replacen("rediss://", "rediss-cluster://", 1);
            Config::from_url(&url).map_err(err)?
        } else {
            Config::from_url(&self.url).map_err(err)?
        };
        let db = match &config.server {
            ServerConfig::Clustered { .. } => 0,
            _ => config.database.unwrap_or(0),
        };
        let cluster = config.server.is_clustered();
        // Concurrent commands are pipelined on each connection (fred's default).
        let client = Builder::from_config(config).build().map_err(err)?;
        // A server that is loading its dataset refuses commands for a while: wait for it.
        let deadline = std::time::Instant::now() + LOADING_WAIT;
        loop {
            match client.init().await {
                Ok(_) => break,
                Err(e)
                    if e.details().contains("LOADING") && std::time::Instant::now() < deadline =>
                {
                    tracing::info!(url = %crate::source::redact(&self.url), "server is loading its dataset; waiting");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(err(e)),
            }
        }
        let primaries = if cluster {
            client
                .cached_cluster_state()
                .map(|s| s.unique_primary_nodes())
                .unwrap_or_default()
        } else {
            client.active_connections()
        };
        if primaries.is_empty() {
            return Err(RedisError::Setup(format!(
                "{}: no primary found{}",
                self.url,
                if cluster { " in the cluster" } else { "" }
            )));
        }
        let info: String = client
            .with_cluster_node(primaries[0].clone())
            .info(Some(fred::types::InfoKind::Server))
            .await
            .map_err(err)?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        Ok(Connection {
            client,
            primaries,
            cluster,
            version,
            db,
        })
    }
}

/// The newest RDB format a server version reads (`RESTORE` refuses newer payloads).
pub fn max_rdb_version(server_version: &str) -> Option<u16> {
    let mut parts = server_version.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next()??, parts.next().flatten().unwrap_or(0));
    Some(match (major, minor) {
        (0..=3, _) => 7,
        (4, _) => 8,
        (5 | 6, _) => 9,
        (7, 0) => 10,
        (7, 1..=3) => 11,
        (7, _) => 12,
        _ => 12,
    })
}

#[cfg(test)]
mod tests {
    use super::max_rdb_version;

    #[test]
    fn rdb_versions_by_server() {
        assert_eq!(max_rdb_version("6.2.14"), Some(9));
        assert_eq!(max_rdb_version("7.0.15"), Some(10));
        assert_eq!(max_rdb_version("7.2.4"), Some(11));
        assert_eq!(max_rdb_version("nonsense"), None);
    }
}
