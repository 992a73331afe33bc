//! The HTTP surface: the router, shared state, and one module per group of
//! routes. Only this module knows status codes (mapped once, in [`error`]).

pub mod admin;
pub mod error;
pub mod ingest;
pub mod openapi;
pub mod ops;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{Secret, SourceConfig};
use crate::providers::Provider;
use crate::store::Store;

pub use error::ApiError;

/// A configured source with its adapter.
pub struct Source {
    pub config: SourceConfig,
    /// `config.name`, shared by every request's batch rather than copied.
    pub name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    /// Header names whose values are redacted in the rejections log.
    pub redact: Vec<String>,
    pub metrics: SourceMetrics,
}

impl Source {
    pub fn new(config: SourceConfig, provider: Arc<dyn Provider>) -> Self {
        let redact = config
            .signature
            .iter()
            .map(|sig| sig.header.to_ascii_lowercase())
            .collect();
        let metrics = SourceMetrics::new(&config.name);
        Self {
            name: config.name.as_str().into(),
            config,
            provider,
            redact,
            metrics,
        }
    }
}

/// Metric handles of the success path, registered once per source so an
/// ACK does not build label sets.
pub struct SourceMetrics {
    pub ok: metrics::Counter,
    pub accepted: metrics::Counter,
    pub duplicates: metrics::Counter,
}

impl SourceMetrics {
    fn new(source: &str) -> Self {
        let s = source.to_string();
        Self {
            ok: metrics::counter!("inlet_ingest_requests_total", "source" => s.clone(), "status" => "200"),
            accepted: metrics::counter!("inlet_messages_total", "source" => s.clone(), "result" => "accepted"),
            duplicates: metrics::counter!("inlet_messages_total", "source" => s, "result" => "duplicate"),
        }
    }
}

/// Everything handlers share; built once by `app`.
pub struct AppState {
    pub sources: HashMap<String, Source>,
    pub store: Arc<dyn Store>,
    pub public_url: String,
    pub max_body_bytes: usize,
    pub dedup_window: Duration,
    pub admin_token: Secret,
    pub started: Instant,
    pub workers: usize,
    pub metrics: PrometheusHandle,
    /// Outbound calls; `/health` shows its breakers.
    pub outbound: Arc<crate::pipeline::Outbound>,
    /// `inlet_ack_seconds`, registered once rather than looked up per ACK.
    pub ack_seconds: metrics::Histogram,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/hooks/{source}",
            post(ingest::receive).get(ingest::handshake),
        )
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/messages", get(admin::list_messages))
        .route("/v1/messages/{id}", get(admin::get_message))
        .route("/v1/messages/{id}/replay", post(admin::replay_message))
        .route("/v1/dead-letters", get(admin::list_dead_letters))
        .route("/v1/dead-letters/replay", post(admin::replay_dead_letters))
        .route("/v1/rejections", get(admin::list_rejections))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}
