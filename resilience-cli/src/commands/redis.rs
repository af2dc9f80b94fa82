//! `redis backup`, `redis backup-rdb`, `redis restore`, `redis compare`.

use resilience_core::ops::restore::RestoreOptions;
use resilience_redis::connect::RedisEndpoint;
use resilience_redis::rdb::RdbFileSource;
use resilience_redis::source::RedisSource;
use resilience_redis::target::{RedisTarget, RestoreSettings};
use resilience_redis::verify::CompareTarget;
use serde_json::json;

use crate::access;
use crate::cli::{Global, RedisCommand, RedisConnectArgs};
use crate::commands::backup::{back_up, parse_labels, print_report};
use crate::output::print_json;
use crate::CliError;

fn endpoint(c: &RedisConnectArgs) -> RedisEndpoint {
    RedisEndpoint {
        url: c.url.clone(),
        cluster: c.cluster,
    }
}

/// `N` keys per second, or `N` with a byte unit (`B`, `KB`, `MB`, `GB`): bytes per second.
fn parse_rate(s: &str) -> Result<(Option<u64>, Option<u64>), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--max-rate {s:?}: expected N (keys/s) or N with B, KB, MB or GB"
        ))
    };
    let upper = s.trim().to_ascii_uppercase();
    let digits = upper.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = &upper[digits.len()..];
    let scale = match unit {
        "" => return Ok((Some(n.max(1)), None)),
        "B" => 1,
        "KB" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        _ => return Err(bad()),
    };
    Ok((None, Some((n * scale).max(1))))
}

fn redis_err(e: resilience_redis::RedisError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Runs a `redis` command.
pub async fn run(g: &Global, command: &RedisCommand) -> Result<(), CliError> {
    match command {
        RedisCommand::Backup {
            connect,
            pattern,
            scan_count,
            source,
            labels,
        } => {
            let labels = parse_labels(labels)?;
            let repo = access::open(g).await?;
            let mut src = RedisSource::new(endpoint(connect));
            src.scan_count = *scan_count;
            if let Some(p) = pattern {
                src = src.with_pattern(p);
            }
            if let Some(id) = source {
                src = src.with_id(id);
            }
            let report = back_up(g, &repo, &src, labels).await?;
            let mut extra = serde_json::Map::new();
            for key in ["keys", "redis_version", "primaries", "vanished_during_scan"] {
                if let Some(v) = report.record.source_metadata.get(key) {
                    extra.insert(key.into(), v.clone());
                }
            }
            print_report(g, &report, extra);
            Ok(())
        }
        RedisCommand::BackupRdb { file, source } => {
            let repo = access::open(g).await?;
            let mut src = RdbFileSource::new(file);
            if let Some(id) = source {
                src = src.with_id(id);
            }
            let report = back_up(g, &repo, &src, Default::default()).await?;
            print_report(g, &report, serde_json::Map::new());
            Ok(())
        }
        RedisCommand::Restore {
            snapshot,
            connect,
            replace,
            pattern,
            max_rate,
            pipeline,
        } => {
            let (keys, bytes) = match max_rate {
                Some(r) => parse_rate(r)?,
                None => (None, None),
            };
            let repo = access::open(g).await?;
            let record = repo.resolve_snapshot(snapshot, None).await?;
            if record.source.kind != "redis" {
                return Err(CliError::Usage(format!(
                    "snapshot {} is a {} backup, not a Redis keyspace backup",
                    record.id, record.source.kind
                )));
            }
            let conn = endpoint(connect).connect().await.map_err(redis_err)?;
            let target = RedisTarget::new(
                conn,
                RestoreSettings {
                    replace: *replace,
                    pattern: pattern.clone(),
                    max_keys_per_second: keys,
                    max_bytes_per_second: bytes,
                    pipeline: *pipeline,
                },
            );
            let result = repo
                .restore(&record.id, &target, RestoreOptions::default())
                .await;
            let tally = target.tally();
            if g.json {
                print_json(&json!({
                    "snapshot": record.id,
                    "ok": result.is_ok(),
                    "restored": tally.restored,
                    "expired": tally.expired,
                    "filtered": tally.filtered,
                    "identical": tally.identical,
                    "refused_count": tally.refused_count,
                    "refused": tally.refused,
                }));
            } else {
                eprintln!(
                    "{} keys restored, {} already identical, {} expired (not restored), {} filtered out, {} refused",
                    tally.restored, tally.identical, tally.expired, tally.filtered, tally.refused_count
                );
                for r in tally.refused.iter().take(10) {
                    eprintln!("refused: {}: {}", r.key, r.reason);
                }
            }
            result.map(|_| ()).map_err(CliError::from)
        }
        RedisCommand::Compare {
            snapshot,
            connect,
            sample_every,
            pattern,
        } => {
            let repo = access::open(g).await?;
            let record = repo.resolve_snapshot(snapshot, None).await?;
            let conn = endpoint(connect).connect().await.map_err(redis_err)?;
            let target = CompareTarget::new(conn, *sample_every, pattern.clone());
            repo.restore(&record.id, &target, RestoreOptions::default())
                .await?;
            let c = target.result();
            if g.json {
                print_json(&serde_json::to_value(&c).expect("serializes"));
            } else {
                eprintln!(
                    "snapshot {} keys, server {} keys; {} checked: {} missing, {} differing, {} with another expiry",
                    c.snapshot_keys,
                    c.server_keys,
                    c.checked,
                    c.missing.len(),
                    c.differing.len(),
                    c.expiry_differs.len()
                );
            }
            if c.is_ok() {
                Ok(())
            } else {
                Err(CliError::Damaged(
                    c.missing.len() + c.differing.len() + c.expiry_differs.len(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20000").unwrap(), (Some(20000), None));
        assert_eq!(parse_rate("50MB").unwrap(), (None, Some(50 << 20)));
        assert_eq!(parse_rate("512kb").unwrap(), (None, Some(512 << 10)));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5TB").is_err());
    }
}
