//! `POST /hooks/{source}`: keep the raw bytes, let the provider adapter
//! verify and normalize them, hand the result to the store's group commit,
//! and answer only once it is durable. The handler never waits on an
//! action, only on the commit. `GET /hooks/{source}` is Meta's handshake.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::{BodyExt, Either, Full};
use serde_json::{Map, Value};

use crate::config::OnInvalid;
use crate::domain::{InboundEvent, ReceivedAt, now_rfc3339};
use crate::providers::{ParseContext, Parsed, ProviderError, WebhookRequest};
use crate::store::{IngestBatch, Rejection, now_millis};

use super::{ApiError, AppState, Source};

/// How much of a rejected body the rejections log keeps.
const REJECTED_BODY_BYTES: usize = 64 * 1024;

/// Headers whose values never reach the rejections log or logs.
pub const REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "x-twilio-signature",
    "x-hub-signature-256",
    "x-webhook-signature",
    "webhook-signature",
    "apikey",
    "x-signature",
];

pub async fn receive(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    handle(&st, &name, &parts, body).await.map(Body::new)
}

/// A webhook answer's body: the success body as it is (a static or
/// provider-made text, not boxed: that was an allocation on every ACK), or
/// an error's.
pub type AckBody = Either<Full<Bytes>, Body>;

/// A webhook, whichever way it was routed (`server` calls this directly).
/// The request parts by reference: extractors for method, URI and headers
/// would each clone them.
pub async fn handle<B>(st: &AppState, name: &str, parts: &Parts, body: B) -> Response<AckBody>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let headers = &parts.headers;
    let source = st.sources.get(name);
    let (label, result) = match source {
        None => (
            "unknown",
            Err((ApiError::unknown_source(name), Bytes::new())),
        ),
        Some(source) => (
            source.config.name.as_str(),
            accept(st, source, &parts.method, &parts.uri, headers, body).await,
        ),
    };
    let response = match result {
        Ok(resp) => {
            st.ack_seconds.record(started.elapsed().as_secs_f64());
            resp
        }
        Err((err, body)) => {
            log_rejection(st, name, source, &err, headers, &body).await;
            err.into_response().map(Either::Right)
        }
    };
    match source {
        Some(source) if response.status() == StatusCode::OK => source.metrics.ok.increment(1),
        _ => metrics::counter!(
            "inlet_ingest_requests_total",
            "source" => label.to_string(),
            "status" => response.status().as_str().to_string()
        )
        .increment(1),
    }
    response
}

/// The checks of SPEC §3 in their order (413, 415, 401, 400), then the
/// commit. Errors carry whatever body was read, for the rejections log.
async fn accept<B>(
    st: &AppState,
    source: &Source,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: B,
) -> Result<Response<AckBody>, (ApiError, Bytes)>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = st.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err((ApiError::too_large(limit), Bytes::new()));
    }
    let body = match read_body(http_body_util::Limited::new(body, limit)).await {
        Ok(b) => b,
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err((ApiError::too_large(limit), Bytes::new()));
        }
        Err(e) => {
            return Err((
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_payload",
                    format!("cannot read body: {e}"),
                ),
                Bytes::new(),
            ));
        }
    };
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    let now = now_millis();
    let req = WebhookRequest {
        method,
        path_and_query,
        headers,
        body: &body,
        public_url: &st.public_url,
        now: now / 1000,
    };
    let provider = &source.provider;
    let fail = |e: ProviderError| (ApiError::from(e), body.clone());
    provider.check_content_type(&req).map_err(fail)?;
    let verified = provider.verify(req).map_err(fail)?;
    let ctx = ParseContext {
        source: &source.config.name,
        // The request's one clock reading, to the second.
        received_at: ReceivedAt::from_unix(now / 1000),
    };
    let parsed = match provider.parse(verified, ctx) {
        Ok(p) => p,
        Err(ProviderError::InvalidPayload(why))
            if source.config.on_invalid == OnInvalid::Accept =>
        {
            tracing::warn!(source = %source.config.name, error = %why, "Quarantined an unparseable body.");
            quarantine(&body, &why)
        }
        Err(e) => return Err(fail(e)),
    };
    let batch = IngestBatch::new(
        source.name.clone(),
        parsed.messages,
        parsed.events,
        now - st.dedup_window.as_millis() as i64,
        now,
    );
    let outcome = st
        .store
        .ingest(batch)
        .await
        .map_err(|e| (ApiError::from(e), body.clone()))?;
    source.metrics.accepted.increment(outcome.accepted as u64);
    source
        .metrics
        .duplicates
        .increment(outcome.duplicates as u64);
    let ok = provider.success_body(outcome.accepted, outcome.duplicates);
    // Built by hand: the extractor-style tuple validated and copied the
    // content type into a new header value on every ACK.
    let body = match ok.body {
        Cow::Borrowed(text) => Bytes::from_static(text.as_bytes()),
        Cow::Owned(text) => Bytes::from(text),
    };
    let mut resp = Response::new(Either::Left(Full::new(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ok.content_type),
    );
    Ok(resp)
}

/// The whole body. `collect()` would queue its frames in a `VecDeque`,
/// an allocation a request; a webhook's body usually comes in one frame,
/// which is then handed on as it is (no copy).
async fn read_body<B>(body: B) -> Result<Bytes, B::Error>
where
    B: hyper::body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers carry nothing a webhook needs.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(one) => {
                rest.extend_from_slice(&one);
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// `on_invalid = "accept"`: the whole body kept as one event, nothing processed.
fn quarantine(body: &[u8], why: &str) -> Parsed {
    let mut payload = Map::new();
    payload.insert("error".into(), Value::String(why.to_string()));
    payload.insert(
        "body".into(),
        Value::String(String::from_utf8_lossy(body).into_owned()),
    );
    Parsed {
        messages: Vec::new(),
        events: vec![InboundEvent {
            kind: "quarantined".into(),
            external_id: None,
            payload: Value::Object(payload),
        }],
    }
}

/// Records a rejected request with every credential blanked: the standard
/// signature headers, the source's own signature header, and whatever the
/// provider marks as secret in the body.
async fn log_rejection(
    st: &AppState,
    name: &str,
    source: Option<&Source>,
    err: &ApiError,
    headers: &HeaderMap,
    body: &[u8],
) {
    let extra_redact = source.map(|s| s.redact.as_slice()).unwrap_or(&[]);
    let body = match source {
        Some(s) => s.provider.redact_body(body),
        None => std::borrow::Cow::Borrowed(body),
    };
    let mut map = Map::new();
    for (name, value) in headers {
        let n = name.as_str();
        let secret =
            REDACTED_HEADERS.contains(&n) || extra_redact.iter().any(|r| r.eq_ignore_ascii_case(n));
        let shown = if secret {
            "[redacted]".to_string()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        // Repeated headers are joined, as HTTP allows.
        match map.get_mut(n) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&shown);
            }
            _ => {
                map.insert(n.to_string(), Value::String(shown));
            }
        }
    }
    let body = String::from_utf8_lossy(&body[..body.len().min(REJECTED_BODY_BYTES)]).into_owned();
    tracing::info!(source = name, status = err.status.as_u16(), code = err.code, reason = %err.message, "Rejected webhook.");
    let rejection = Rejection {
        at: now_rfc3339(),
        source: name.to_string(),
        status: err.status.as_u16(),
        code: err.code.to_string(),
        headers: map,
        body,
    };
    // Bounded: a stalled store must not hold error answers for long.
    match tokio::time::timeout(
        std::time::Duration::from_secs(1),
        st.store.reject(rejection),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "Cannot record a rejection."),
        Err(_) => tracing::warn!(
            "Recording a rejection timed out; it is written when the store frees up."
        ),
    }
}

pub async fn handshake(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = match st.sources.get(&name) {
        None => Err(ApiError::unknown_source(&name)),
        Some(source) => source
            .provider
            .handshake(query.as_deref().unwrap_or(""))
            .map_err(ApiError::from),
    };
    match result {
        Ok(challenge) => ([(header::CONTENT_TYPE, "text/plain")], challenge).into_response(),
        Err(e) => {
            // The query carries hub.verify_token: never log it.
            let query = redact_query(query.as_deref().unwrap_or(""));
            log_rejection(
                &st,
                &name,
                st.sources.get(&name),
                &e,
                &headers,
                query.as_bytes(),
            )
            .await;
            e.into_response()
        }
    }
}

/// The handshake query with `hub.verify_token` blanked.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k == "hub.verify_token" || k == "hub%2Everify_token" => {
                format!("{k}=[redacted]")
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
    use hyper::body::Frame;

    use super::read_body;

    fn frames(
        parts: &[&'static str],
    ) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_reads_whole_in_one_frame_or_many() {
        let one = Bytes::from_static(b"{\"guid\":\"g\"}");
        let read = read_body(Full::new(one.clone())).await.unwrap();
        assert_eq!(read, one);
        assert_eq!(
            read.as_ptr(),
            one.as_ptr(),
            "one frame is handed on, not copied"
        );
        for parts in [
            &["{\"a\":", "1}"][..],
            &["", "{", "\"a\"", ":1}"],
            &["{\"a\":1}", ""],
        ] {
            let read = read_body(frames(parts)).await.unwrap();
            assert_eq!(read, parts.concat(), "{parts:?}");
        }
        assert!(read_body(frames(&[])).await.unwrap().is_empty());
        assert!(read_body(Full::new(Bytes::new())).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_an_error_whichever_frame_passes_it() {
        let err = read_body(Limited::new(frames(&["12345", "67890", "x"]), 10))
            .await
            .unwrap_err();
        assert!(err.is::<http_body_util::LengthLimitError>(), "{err}");
        let ok = read_body(Limited::new(frames(&["12345", "67890"]), 10)).await;
        assert_eq!(ok.unwrap(), "1234567890");
        // Trailers are skipped.
        let with_trailers = Full::new(Bytes::from_static(b"ab"))
            .with_trailers(async { Some(Ok::<_, Infallible>(hyper::HeaderMap::new())) });
        assert_eq!(read_body(with_trailers).await.unwrap(), "ab");
    }
}
