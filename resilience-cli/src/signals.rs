//! Stopping long-running commands (the daemon, `replicate --follow`) on SIGINT or SIGTERM.

use resilience_core::time::stop::StopSignal;

/// Waits for SIGINT or SIGTERM and fires `stop` with the reason `reason` makes of the signal's
/// name.
pub async fn stop_on_signal(stop: StopSignal, reason: impl FnOnce(&str) -> String) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop this process with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    stop.stop(reason(name));
}
