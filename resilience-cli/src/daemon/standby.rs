//! Watching a warm standby (`[[standby]]`): its replay lag, whether it is still in recovery,
//! and whether it answers, as gauges in `/metrics`.

use std::time::Duration;

use metrics::gauge;
use resilience_core::time::stop::StopSignal;

use crate::config::StandbyConfig;

/// Asks the standby where it stands every `every` (default 5 s) until `shutdown`, and sets
/// `resilience_standby_up`, `resilience_standby_in_recovery` and
/// `resilience_standby_replay_lag_seconds` (seconds since the last commit it replayed, by its
/// own clock) with the label `standby`.
pub async fn watch(standby: StandbyConfig, shutdown: StopSignal) {
    let every = Duration::from_secs(standby.every.map_or(5, |e| e.as_secs().max(1) as u64));
    let name = standby.name.clone();
    loop {
        match resilience_pg::standby::status(&standby.dsn).await {
            Ok(status) => {
                gauge!("resilience_standby_up", "standby" => name.clone()).set(1.0);
                gauge!("resilience_standby_in_recovery", "standby" => name.clone())
                    .set(f64::from(u8::from(status.in_recovery)));
                if let Some(lag) = status.lag_seconds {
                    gauge!("resilience_standby_replay_lag_seconds", "standby" => name.clone())
                        .set(lag);
                }
            }
            Err(e) => {
                tracing::warn!(standby = %name, error = %e, "the standby does not answer");
                gauge!("resilience_standby_up", "standby" => name.clone()).set(0.0);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.stopped() => return,
        }
    }
}
