//! The accept loop: connections served by hyper directly. A webhook
//! (`POST /hooks/{source}`) goes straight to its handler; every other
//! request goes through the axum router.
//!
//! Why not `axum::serve`: per request it boxes the body, wraps the router
//! in three service adapters and matches the route. On the path every
//! provider hits, that was about a sixth of the connection task's
//! instructions (`scripts/bench-instr.sh`, BENCHMARKS.md).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::serve::Listener;
use hyper::Method;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::AppState;
use super::ingest::{self, AckBody};

/// The source name of a webhook path that the fast path can take as it
/// is: `/hooks/NAME` with NAME non-empty, one segment, nothing to decode.
/// Anything else (percent-escapes, a trailing slash, `/hooks/`) is left to
/// the router, which decodes, matches or answers 404 as before.
fn hook_source(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/hooks/")?;
    (!name.is_empty() && !name.contains(['/', '%'])).then_some(name)
}

async fn route(
    st: Arc<AppState>,
    router: Router,
    req: hyper::Request<Incoming>,
) -> Result<Response<AckBody>, Infallible> {
    let (parts, body) = req.into_parts();
    if parts.method == Method::POST
        && let Some(name) = hook_source(parts.uri.path())
    {
        return Ok(ingest::handle(&st, name, &parts, body).await);
    }
    let response = router
        .oneshot(hyper::Request::from_parts(parts, Body::new(body)))
        .await;
    response.map(|r| r.map(http_body_util::Either::Right))
}

/// Serves `listener` until `stop` is cancelled, then stops accepting and
/// waits for the open connections: each finishes the request it is
/// serving and closes (idle keep-alive connections close at once).
pub async fn serve(
    listener: TcpListener,
    st: Arc<AppState>,
    router: Router,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 keep-alive, and HTTP/2 in the clear for a client that
    // starts with its preface, as `axum::serve` offered.
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut listener = listener;
    loop {
        let tcp = tokio::select! {
            // axum's accept retries what a busy server sees (too many
            // open files, a connection reset before it was accepted).
            (tcp, _) = Listener::accept(&mut listener) => tcp,
            _ = stop.cancelled() => break,
        };
        // ACKs are small; don't let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let (st, router) = (st.clone(), router.clone());
        let service = hyper::service::service_fn(move |req| route(st.clone(), router.clone(), req));
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::hook_source;

    #[test]
    fn only_plain_webhook_paths_take_the_fast_path() {
        assert_eq!(hook_source("/hooks/sms"), Some("sms"));
        assert_eq!(hook_source("/hooks/my-source_1"), Some("my-source_1"));
        for other in [
            "/hooks/",
            "/hooks",
            "/hooks/sms/",
            "/hooks/a/b",
            "/hooks/s%20ms",
            "/v1/messages",
            "/hooksx/sms",
        ] {
            assert_eq!(hook_source(other), None, "{other}");
        }
    }
}
