//! A forward destination for the end-to-end benchmark: it accepts Inlet's
//! forwards and records, per message, the time from the client's send
//! (`raw.time_received`, Unix ms, put there by `inlet bench --stamp`) to
//! the forward's arrival. `GET /stats` answers the percentiles as JSON;
//! `POST /reset` clears them.
//!
//! `cargo run --release --example forward_sink -- --listen 127.0.0.1:18090`

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

type Shared = Arc<Mutex<Histogram<u64>>>;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn receive(State(h): State<Shared>, body: Bytes) -> &'static str {
    let arrived = now_us();
    let sent_ms = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.pointer("/raw/time_received")?
            .as_str()?
            .parse::<u64>()
            .ok()
    });
    if let Some(sent_ms) = sent_ms {
        let micros = arrived.saturating_sub(sent_ms * 1000).max(1);
        let _ = h.lock().unwrap().record(micros);
    }
    "ok"
}

async fn stats(State(h): State<Shared>) -> Json<Value> {
    let h = h.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Json(
        json!({"count": h.len(), "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
                "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0}),
    )
}

async fn reset(State(h): State<Shared>) -> &'static str {
    h.lock().unwrap().reset();
    "ok"
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:18090".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--listen" {
            listen = args.next().expect("--listen ADDR");
        }
    }
    let hist: Shared = Arc::new(Mutex::new(
        Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let app = axum::Router::new()
        .route("/inbound", post(receive))
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .with_state(hist);
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}
