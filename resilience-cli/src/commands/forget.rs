//! `forget`: apply a retention policy — expire backups, move old ones to the cold tier.

use resilience_core::catalog::{Catalog, CatalogQuery};
use resilience_core::error::error_chain;
use resilience_core::retention::{self, KeepRules, RetentionDuration, StandardPolicy};
use serde_json::{json, Value};

use crate::access;
use crate::cli::{ForgetArgs, Global};
use crate::output::outln;
use crate::output::print_json;
use crate::CliError;

/// Plans retention, prints the plan, and (unless `--dry-run`) applies it.
pub async fn run(g: &Global, args: &ForgetArgs) -> Result<(), CliError> {
    let policy = policy_from(args)?;
    let repo = access::open(g).await?;
    let records = repo.catalog().list(&CatalogQuery::default()).await?;
    let plan = retention::plan(&policy, &records, repo.clock().now());
    if g.json {
        print_json(&Value::Array(
            plan.decisions
                .iter()
                .map(|d| {
                    json!({
                        "id": d.id,
                        "source": d.source,
                        "action": d.action,
                        "reasons": d.reasons,
                    })
                })
                .collect(),
        ));
    } else {
        for d in &plan.decisions {
            outln!(
                "{:<6} {}  {}  ({})",
                format!("{:?}", d.action).to_lowercase(),
                d.id,
                d.source,
                d.reasons.join("; ")
            );
        }
    }
    if args.dry_run {
        return Ok(());
    }
    let report = repo.forget(&plan).await?;
    // The AWS side of expired RDS backups (their snapshots), after the catalog's: a run
    // stopped in between is finished by the next forget.
    let aws = super::rds::expire_aws(g, &repo).await;
    if !g.json {
        eprintln!(
            "expired {}, moved to cold {}",
            report.expired.len(),
            report.moved_cold.len()
        );
        if !report.cold_pending.is_empty() {
            eprintln!(
                "{} backup(s) are due for the cold tier: give --cold-repo to move them",
                report.cold_pending.len()
            );
        }
        for id in &report.manifests_left {
            eprintln!(
                "warning: backup {id} is recorded as not restorable but its manifest is there: \
                 marked expired, its manifest and data left in place for review"
            );
        }
    }
    // Kept against the plan: said even with --json (on stderr), since the plan printed above
    // says they go.
    for id in &report.kept_held {
        eprintln!(
            "warning: backup {id} kept: a revision of its record places a legal hold \
             (release it with `resilience hold --release {id}` if that is meant)"
        );
    }
    for id in &report.kept_disagreeing {
        eprintln!(
            "warning: backup {id} kept: its catalog record disagrees with its manifest on what \
             was backed up or when (a forged or damaged revision); see the log, and verify"
        );
    }
    for kept in &report.kept_locked {
        eprintln!(
            "backup {} stays until {}: its manifest is under object lock; it stays restorable, \
             with its data, and a forget after that date expires it",
            kept.id, kept.until
        );
    }
    aws
}

/// A duration flag (`90d`, `24h`, `0s`).
fn duration(flag: &str, v: &Option<String>) -> Result<Option<RetentionDuration>, CliError> {
    v.as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e| CliError::Usage(format!("{flag}: {e}")))
        })
        .transpose()
}

/// The policy from `--policy FILE` (TOML, or JSON by extension) or from the flags.
fn policy_from(args: &ForgetArgs) -> Result<StandardPolicy, CliError> {
    if let Some(path) = &args.policy {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read policy {}: {e}", path.display())))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            StandardPolicy::from_json(&text)
        } else {
            StandardPolicy::from_toml(&text)
        };
        return parsed.map_err(|e| CliError::Usage(error_chain(&e)));
    }
    let policy = StandardPolicy {
        default: KeepRules {
            keep_last: args.keep_last,
            keep_hourly: args.keep_hourly,
            keep_daily: args.keep_daily,
            keep_weekly: args.keep_weekly,
            keep_monthly: args.keep_monthly,
            keep_yearly: args.keep_yearly,
            keep_within: duration("--keep-within", &args.keep_within)?,
            hot: duration("--hot", &args.hot)?,
            cold: duration("--cold", &args.cold)?,
        },
        timezone: args.tz.clone(),
        ..Default::default()
    };
    policy
        .validate()
        .map_err(|e| CliError::Usage(error_chain(&e)))?;
    if policy.default == KeepRules::default() {
        return Err(CliError::Usage(
            "no retention rule given: use --keep-* flags, --hot/--cold, or --policy FILE".into(),
        ));
    }
    Ok(policy)
}
