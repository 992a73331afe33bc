//! `/health` (from memory only), `/ready` (the store accepts writes) and
//! `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};

/// Never touches the store or the network: it must answer while the
/// database is locked or the disk stalls.
pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    let q = st.store.gauges().snapshot();
    Json(json!({
        "status": "ok",
        "queue": q,
        "workers": st.workers,
        "breakers": st.outbound.breakers().snapshot(),
        "uptime_s": st.started.elapsed().as_secs(),
    }))
    .into_response()
}

/// 200 when a write transaction can be opened and committed in time.
pub async fn ready(State(st): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), st.store.probe()).await {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => ApiError::from(crate::store::StoreError::Unavailable(
            "store did not answer within 2s".into(),
        ))
        .into_response(),
    }
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let q = st.store.gauges().snapshot();
    metrics::gauge!("inlet_queue_jobs", "status" => "pending").set(q.pending as f64);
    metrics::gauge!("inlet_queue_jobs", "status" => "in_flight").set(q.in_flight as f64);
    metrics::gauge!("inlet_queue_jobs", "status" => "dead").set(q.dead as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}
