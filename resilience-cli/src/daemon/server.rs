//! `/metrics` (Prometheus text format) and `/health` (JSON, 200 or 503).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resilience_core::time::stop::StopSignal;

use resilience_core::health::Monitor;

#[derive(Clone)]
struct AppState {
    monitor: Arc<Monitor>,
    metrics: PrometheusHandle,
}

/// Serves until `shutdown` is given.
pub async fn serve(listener: tokio::net::TcpListener, monitor: Arc<Monitor>, shutdown: StopSignal) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!(
            "a metrics recorder was already installed; /metrics shows only this daemon's gauges"
        );
    }
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .with_state(AppState {
            monitor,
            metrics: handle,
        });
    let stop = shutdown.clone();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await
    {
        tracing::error!(error = %e, "the metrics server failed");
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    state.monitor.publish_metrics().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (ok, body) = state.monitor.health_document().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
