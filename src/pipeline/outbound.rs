//! Every outbound HTTP call of the pipeline (forwards, replies, the LLM
//! classifier) goes through [`Outbound::send`], which owns what they share:
//!
//! - pooled `reqwest` clients: HTTP/1.1 only by default; HTTP/2 when an
//!   action opts in (ALPN over TLS, prior knowledge over cleartext);
//!   redirects are not followed (a redirected POST would silently become a
//!   GET or go somewhere the user did not configure);
//! - a circuit breaker per destination ([`super::breaker`]): while it is
//!   open the call is not made and the job is deferred without being
//!   charged an attempt;
//! - a concurrency limit per destination (`max_in_flight`), so one slow
//!   endpoint cannot take every connection;
//! - a timeout per call, covering connect, request and response body;
//! - the mapping of SPEC §4: 2xx succeeds; 408, 429, 5xx, timeouts and
//!   connection errors are retryable (with `Retry-After`); any other status
//!   is permanent. Retryable failures count against the breaker; a 4xx does
//!   not, since the destination answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::ActionError;
use super::breaker::{Breakers, Verdict};

/// Per-call settings; `Default` suits a caller with no opinion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// Bounds the whole call: connect, request, and the response body.
    pub timeout: Duration,
    /// Opt in to HTTP/2 (HTTP/1.1 otherwise).
    pub http2: bool,
    /// Calls in flight at once to this destination. The first caller of a
    /// destination fixes its limit; callers sharing one should agree.
    pub max_in_flight: usize,
}

/// Default per-call timeout of actions (SPEC §2 `timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `max_in_flight` of an action.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            http2: false,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub status: u16,
    /// The response body, cut at [`MAX_RESPONSE_BYTES`].
    pub body: Bytes,
    /// `scheme://host:port`, as the breaker and `/health` name it.
    pub destination: String,
}

/// Whether a failed request may have reached the destination; the reply
/// action needs this to keep replies at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Certainly not acted upon: the call was not made, the connection
    /// could not be opened, or the destination answered with an error.
    No,
    /// The request may have been received: a timeout or a broken
    /// connection after it was written.
    Maybe,
}

/// A failed call with what it means for at-most-once senders.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: ActionError,
    pub reached: Reached,
}

impl From<Failure> for ActionError {
    fn from(f: Failure) -> Self {
        f.error
    }
}

/// Response bodies are read up to this size; the rest is dropped.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Opening a connection (TCP and TLS) gives up after this, reported as a
/// connection error: the request was certainly not sent. Calls with a
/// shorter timeout are cut by that timeout first.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a call waits for a free slot of its destination's limit before
/// the job is deferred.
const SLOT_RETRY: Duration = Duration::from_millis(200);

pub struct Outbound {
    http1: reqwest::Client,
    /// HTTP/2 negotiated by ALPN (https), falling back to HTTP/1.1.
    h2: reqwest::Client,
    /// HTTP/2 with prior knowledge (cleartext `http://`).
    h2c: reqwest::Client,
    breakers: Arc<Breakers>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Outbound {
    /// Builds the shared clients; breakers open after `breaker_failures`
    /// consecutive failures and half-open after `breaker_cooldown`.
    pub fn new(breaker_failures: u32, breaker_cooldown: Duration) -> Result<Self, reqwest::Error> {
        let base = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_idle_timeout(Duration::from_secs(60))
                .user_agent(concat!("inlet/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Self {
            http1: base().http1_only().build()?,
            h2: base().build()?,
            h2c: base().http2_prior_knowledge().build()?,
            breakers: Breakers::new(breaker_failures, breaker_cooldown),
            limits: Mutex::new(HashMap::new()),
        })
    }

    /// From `[workers]` (`breaker_failures`, `breaker_cooldown`).
    pub fn from_config(w: &crate::config::WorkersConfig) -> Result<Self, reqwest::Error> {
        Self::new(w.breaker_failures, w.breaker_cooldown.0)
    }

    pub fn breakers(&self) -> &Arc<Breakers> {
        &self.breakers
    }

    /// Makes one call to `url`: `build` gets the pooled client to use and
    /// returns the request (method, URL, headers, body); the timeout is
    /// applied here. See the module docs for how outcomes map to
    /// [`ActionError`].
    pub async fn send(
        &self,
        url: &str,
        opts: &SendOptions,
        build: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Delivered, ActionError> {
        self.try_send(url, opts, build).await.map_err(|f| f.error)
    }

    /// [`Outbound::send`], also saying whether a failed request may have
    /// reached the destination.
    pub async fn try_send(
        &self,
        url: &str,
        opts: &SendOptions,
        build: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Delivered, Failure> {
        let not_sent = |error: ActionError| Failure {
            error,
            reached: Reached::No,
        };
        let parsed = url::Url::parse(url)
            .map_err(|e| not_sent(permanent(format!("invalid URL {url:?}: {e}"), None, None)))?;
        let Some(destination) = destination(&parsed) else {
            return Err(not_sent(permanent(
                format!("URL {url:?} has no host"),
                None,
                None,
            )));
        };
        let client = match (opts.http2, parsed.scheme()) {
            (false, _) => &self.http1,
            (true, "http") => &self.h2c,
            (true, _) => &self.h2,
        };
        let request = build(client).build().map_err(|e| {
            not_sent(permanent(
                format!("cannot build the request: {}", error_chain(&e)),
                Some(destination.clone()),
                None,
            ))
        })?;
        if self::destination(request.url()).as_deref() != Some(destination.as_str()) {
            return Err(not_sent(permanent(
                format!(
                    "the request goes to {} but was sent as a call to {destination}",
                    request.url()
                ),
                Some(destination),
                None,
            )));
        }

        let permit = self
            .breakers
            .admit(&destination, Instant::now())
            .map_err(|after| {
                not_sent(ActionError::Defer {
                    reason: format!("circuit breaker of {destination} is open"),
                    after,
                })
            })?;
        let limit = self.limit(&destination, opts.max_in_flight);
        let Ok(Ok(_slot)) = tokio::time::timeout(opts.timeout, limit.acquire_owned()).await else {
            // The permit drops unresolved: an abandoned call, no verdict.
            return Err(not_sent(ActionError::Defer {
                reason: format!(
                    "{destination} already has {} calls in flight",
                    opts.max_in_flight
                ),
                after: SLOT_RETRY,
            }));
        };

        let call = async {
            let resp = client.execute(request).await?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = read_capped(resp).await?;
            Ok::<_, reqwest::Error>((status, retry_after, body))
        };
        match tokio::time::timeout(opts.timeout, call).await {
            Ok(Ok((status, retry_after, body))) => {
                let (verdict, result) = map_status(status, retry_after, &destination, &body);
                permit.finish(verdict);
                result.map(|()| Delivered {
                    status,
                    body,
                    destination,
                })
            }
            Ok(Err(e)) => {
                permit.finish(Verdict::Down);
                let reached = if e.is_connect() {
                    Reached::No
                } else {
                    Reached::Maybe
                };
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                Err(Failure {
                    error: retryable(
                        format!("{what}: {}", error_chain(&e)),
                        None,
                        Some(destination),
                        None,
                    ),
                    reached,
                })
            }
            Err(_) => {
                permit.finish(Verdict::Down);
                Err(Failure {
                    error: retryable(
                        format!("timed out after {:?}", opts.timeout),
                        None,
                        Some(destination),
                        None,
                    ),
                    reached: Reached::Maybe,
                })
            }
        }
    }

    fn limit(&self, destination: &str, max: usize) -> Arc<Semaphore> {
        let mut map = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(destination.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(max.max(1))))
            .clone()
    }
}

impl Outbound {
    /// How long calls to `destination` (see [`destination_of`]) are held
    /// back by its breaker, if they are.
    pub fn blocked_for(&self, destination: &str) -> Option<Duration> {
        self.breakers()
            .blocked_for(destination, std::time::Instant::now())
    }
}

/// [`destination`] of a URL string; `None` when it does not parse.
pub fn destination_of(url: &str) -> Option<String> {
    url::Url::parse(url).ok().as_ref().and_then(destination)
}

/// `scheme://host:port` with the scheme's default port filled in.
pub fn destination(url: &url::Url) -> Option<String> {
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!("{}://{}:{}", url.scheme(), host, port))
}

/// What a status means: the breaker's verdict and the call's result.
fn map_status(
    status: u16,
    retry_after: Option<Duration>,
    destination: &str,
    body: &[u8],
) -> (Verdict, Result<(), Failure>) {
    let error = || {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]);
        let snippet = snippet.trim();
        if snippet.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {snippet}")
        }
    };
    let dest = Some(destination.to_string());
    let failed = |error| {
        Err(Failure {
            error,
            // The destination answered: it says it did not act on it.
            reached: Reached::No,
        })
    };
    match status {
        200..=299 => (Verdict::Up, Ok(())),
        408 | 429 | 500..=599 => (
            Verdict::Down,
            failed(retryable(error(), retry_after, dest, Some(status))),
        ),
        _ => (Verdict::Up, failed(permanent(error(), dest, Some(status)))),
    }
}

fn retryable(
    error: String,
    retry_after: Option<Duration>,
    destination: Option<String>,
    status_code: Option<u16>,
) -> ActionError {
    ActionError::Retryable {
        error,
        retry_after,
        destination,
        status_code,
    }
}

fn permanent(error: String, destination: Option<String>, status_code: Option<u16>) -> ActionError {
    ActionError::Permanent {
        error,
        destination,
        status_code,
    }
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Bytes, reqwest::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_RESPONSE_BYTES - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(buf.freeze())
}

/// reqwest's own message is terse ("error sending request"); the cause
/// chain says what happened ("Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3),
/// relative to `now`; a date in the past is zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), which senders must use,
/// and the obsolete asctime form. RFC 850 dates (two-digit years) are not
/// read: nothing current sends them, and a `Retry-After` we cannot read
/// only means the backoff schedule decides alone.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    use time::PrimitiveDateTime;
    use time::macros::format_description;
    let imf = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let asctime = format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    let at = PrimitiveDateTime::parse(value, imf)
        .or_else(|_| PrimitiveDateTime::parse(value, asctime))
        .ok()?
        .assume_utc();
    let since_epoch = Duration::try_from(at - time::OffsetDateTime::UNIX_EPOCH).ok()?;
    Some(SystemTime::UNIX_EPOCH + since_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn retry_after_reads_seconds() {
        assert_eq!(
            parse_retry_after("120", at(0)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", at(0)), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-5", at(0)), None);
        assert_eq!(parse_retry_after("1.5", at(0)), None);
        assert_eq!(parse_retry_after("", at(0)), None);
    }

    #[test]
    fn retry_after_reads_http_dates_relative_to_now() {
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777.
        let now = at(784_111_777 - 90);
        for v in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(
                parse_retry_after(v, now),
                Some(Duration::from_secs(90)),
                "{v}"
            );
        }
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(784_111_777 + 10)),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn destination_fills_in_default_ports() {
        let d = |u: &str| destination(&url::Url::parse(u).unwrap()).unwrap();
        assert_eq!(
            d("https://api.twilio.com/2010-04-01/x"),
            "https://api.twilio.com:443"
        );
        assert_eq!(d("http://127.0.0.1:8081/hook?x=1"), "http://127.0.0.1:8081");
        assert_eq!(d("http://Example.COM/"), "http://example.com:80");
    }

    fn outcome(status: u16) -> (Verdict, Option<&'static str>) {
        let (v, r) = map_status(status, None, "http://h:1", b"nope");
        let kind = match r {
            Ok(()) => None,
            Err(Failure {
                error: ActionError::Retryable { .. },
                ..
            }) => Some("retryable"),
            Err(Failure {
                error: ActionError::Permanent { .. },
                ..
            }) => Some("permanent"),
            Err(_) => Some("other"),
        };
        (v, kind)
    }

    #[test]
    fn statuses_map_as_the_spec_says() {
        for s in [200, 201, 204, 299] {
            assert_eq!(outcome(s), (Verdict::Up, None), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(outcome(s), (Verdict::Down, Some("retryable")), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 410, 422, 301, 302] {
            assert_eq!(outcome(s), (Verdict::Up, Some("permanent")), "{s}");
        }
    }

    #[test]
    fn errors_carry_status_destination_body_and_retry_after() {
        let (_, r) = map_status(
            503,
            Some(Duration::from_secs(7)),
            "http://h:1",
            b"  busy, come back later ",
        );
        match r.unwrap_err().error {
            ActionError::Retryable {
                error,
                retry_after,
                destination,
                status_code,
            } => {
                assert_eq!(error, "HTTP 503: busy, come back later");
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert_eq!(destination.as_deref(), Some("http://h:1"));
                assert_eq!(status_code, Some(503));
            }
            other => panic!("{other:?}"),
        }
    }

    fn opts(timeout_ms: u64, max_in_flight: usize) -> SendOptions {
        SendOptions {
            timeout: Duration::from_millis(timeout_ms),
            http2: false,
            max_in_flight,
        }
    }

    /// A loopback port nothing listens on.
    async fn closed_port() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        drop(l);
        url
    }

    #[tokio::test]
    async fn connection_refused_is_retryable_and_certainly_not_sent() {
        let out = Outbound::new(10, Duration::from_secs(10)).unwrap();
        let url = closed_port().await;
        let f = out
            .try_send(&url, &opts(2000, 8), |c| c.post(&url))
            .await
            .unwrap_err();
        assert_eq!(f.reached, Reached::No);
        assert!(
            matches!(&f.error, ActionError::Retryable { destination: Some(d), .. } if url.starts_with(d.as_str())),
            "{:?}",
            f.error
        );
    }

    #[tokio::test]
    async fn a_silent_destination_is_cut_at_the_timeout_and_may_have_received_it() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        // Accept and never answer.
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let out = Outbound::new(10, Duration::from_secs(10)).unwrap();
        let started = Instant::now();
        let f = out
            .try_send(&url, &opts(200, 8), |c| c.post(&url).body("x"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(f.reached, Reached::Maybe);
        assert!(
            matches!(f.error, ActionError::Retryable { .. }),
            "{:?}",
            f.error
        );
    }

    #[tokio::test]
    async fn an_open_breaker_defers_without_calling() {
        let out = Outbound::new(2, Duration::from_secs(10)).unwrap();
        let url = closed_port().await;
        for _ in 0..2 {
            let e = out.send(&url, &opts(2000, 8), |c| c.post(&url)).await;
            assert!(matches!(e, Err(ActionError::Retryable { .. })));
        }
        let dest = destination(&url::Url::parse(&url).unwrap()).unwrap();
        assert_eq!(out.breakers().snapshot()[&dest], "open");
        let mut built = false;
        let e = out
            .send(&url, &opts(2000, 8), |c| {
                built = true;
                c.post(&url)
            })
            .await;
        match e {
            Err(ActionError::Defer { after, .. }) => {
                assert!(after > Duration::from_secs(9) && after <= Duration::from_secs(10))
            }
            other => panic!("{other:?}"),
        }
        assert!(built, "the request is built (cheap) but never sent");
    }

    #[tokio::test]
    async fn max_in_flight_bounds_concurrent_calls_per_destination() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (n, p) = (now.clone(), peak.clone());
        let app = axum::Router::new().fallback(move || {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(cur, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        let out = Outbound::new(10, Duration::from_secs(10)).unwrap();
        let o = opts(5000, 2);
        let calls = (0..6).map(|_| out.send(&url, &o, |c| c.post(&url)));
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap().status, 200);
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    /// A server speaking HTTP/1.1 and HTTP/2 (prior knowledge) that
    /// answers with the protocol version it was asked with.
    async fn version_echo() -> String {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                        let v = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(v)),
                        ))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn http1_by_default_and_http2_when_the_action_opts_in() {
        let url = version_echo().await;
        let out = Outbound::new(10, Duration::from_secs(10)).unwrap();
        let ask = |http2| {
            let o = SendOptions {
                http2,
                ..SendOptions::default()
            };
            let (out, url) = (&out, &url);
            async move { out.send(url, &o, |c| c.get(url)).await.unwrap().body }
        };
        assert_eq!(&ask(false).await[..], b"HTTP/1.1");
        assert_eq!(&ask(true).await[..], b"HTTP/2.0");
    }
}
