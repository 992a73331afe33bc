//! The outbound half of the pipeline against the real binary: forwards,
//! retries with backoff, the dead-letter queue, circuit breakers, timeouts
//! and auto-replies through each provider's send API. Every destination is
//! a local axum server on 127.0.0.1 that records what it receives; tests
//! wait by polling a condition with a deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::helpers::{TestApp, config, sms, sms_from};

// ---------------------------------------------------------------------------
// A recording stand-in for destinations and provider send APIs.

#[derive(Debug, Clone)]
struct Hit {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// What the fake answers.
enum Reply {
    Status(u16),
    /// Answers with this status after a delay.
    Slow(Duration, u16),
    /// Never answers.
    Hang,
}

type Script = dyn Fn(usize, &Hit) -> Reply + Send + Sync;

struct Fake {
    base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Fake {
    /// Starts a server answering request `n` (0-based) as `script` says.
    async fn start(script: impl Fn(usize, &Hit) -> Reply + Send + Sync + 'static) -> Fake {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let recorded = hits.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (hits, script) = (recorded.clone(), script.clone());
                async move {
                    let hit = Hit {
                        method,
                        path: uri.path().to_string(),
                        headers,
                        body,
                        at: Instant::now(),
                    };
                    let reply = {
                        let mut hits = hits.lock().unwrap();
                        let reply = script(hits.len(), &hit);
                        hits.push(hit);
                        reply
                    };
                    let answer = |status: u16| -> Response {
                        let status = StatusCode::from_u16(status).unwrap();
                        (status, axum::Json(json!({"id": "remote-1", "sid": "SM1"})))
                            .into_response()
                    };
                    match reply {
                        Reply::Status(s) => answer(s),
                        Reply::Slow(d, s) => {
                            tokio::time::sleep(d).await;
                            answer(s)
                        }
                        Reply::Hang => std::future::pending().await,
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fake { base, hits }
    }

    async fn always(status: u16) -> Fake {
        Fake::start(move |_, _| Reply::Status(status)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `scheme://host:port`, as `/health` names the destination.
    fn destination(&self) -> String {
        self.base.clone()
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    /// Waits (bounded) until at least `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Hit> {
        eventually(&format!("{n} requests at {}", self.base), || async {
            let hits = self.hits();
            (hits.len() >= n).then_some(hits)
        })
        .await
    }
}

/// Polls `check` every 20 ms until it yields a value; panics after 15 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Config and app helpers.

fn forward_source(name: &str, actions: &[(&str, &str)]) -> String {
    let mut s = format!("[[sources]]\nname = \"{name}\"\nprovider = \"sms-gateway\"\n");
    for (action, url) in actions {
        s.push_str(&format!(
            "[[sources.actions]]\ntype = \"forward\"\nname = \"{action}\"\nurl = \"{url}\"\n"
        ));
    }
    s
}

async fn post_ok(app: &TestApp, source: &str, body: &str) {
    let (status, resp) = app.post_json(source, body).await;
    assert_eq!(status, 200, "{resp}");
}

/// The admin detail (with attempts) of a listed message.
async fn detail_of(app: &TestApp, message: &Value) -> Value {
    let id = message["id"].as_str().unwrap();
    app.admin(&format!("/v1/messages/{id}")).await
}

async fn only_message(app: &TestApp) -> Value {
    let msgs = app.all_messages().await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    detail_of(app, &msgs[0]).await
}

/// The one dead letter `path` lists.
async fn only_dead_letter(app: &TestApp, path: &str) -> Value {
    let dead = app.admin(path).await;
    let items = dead["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dead}");
    items[0].clone()
}

/// The outcomes of `action`'s attempts, in order.
fn outcomes_of(detail: &Value, action: &str) -> Vec<String> {
    attempts_of(detail, action)
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_string())
        .collect()
}

fn attempts_of(detail: &Value, action: &str) -> Vec<Value> {
    detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == action)
        .cloned()
        .collect()
}

async fn breaker_state(app: &TestApp, destination: &str) -> Option<String> {
    app.health().await["breakers"][destination]
        .as_str()
        .map(str::to_string)
}

// ---------------------------------------------------------------------------
// Forward.

#[tokio::test]
async fn forward_posts_the_normalized_message_with_a_valid_standard_webhooks_signature() {
    let key = b"inlet-test-signing-key-0123456789";
    let secret = format!("whsec_{}", STANDARD.encode(key));
    let dest = Fake::always(200).await;
    let app = TestApp::spawn(&config(
        "",
        &format!(
            "[[sources]]\nname = \"sms\"\nprovider = \"sms-gateway\"\n\
             [[sources.actions]]\ntype = \"forward\"\nurl = \"{}\"\nsecret = \"{secret}\"\n",
            dest.url("/inbound")
        ),
    ))
    .await;
    post_ok(&app, "sms", &sms("fw-1", "YES").to_string()).await;
    let hit = dest.wait_for(1).await.remove(0);

    assert_eq!(hit.method, Method::POST);
    assert_eq!(hit.path, "/inbound");
    assert_eq!(hit.header("content-type"), "application/json");
    let body = hit.json();
    assert_eq!(body["external_id"], "fw-1");
    assert_eq!(body["source"], "sms");
    assert_eq!(body["from"], "+15551234567");
    assert_eq!(body["text"], "YES");
    assert_eq!(body["intent"]["label"], "affirmative");
    assert_eq!(body["raw"]["guid"], "fw-1");

    let id = hit.header("webhook-id");
    assert_eq!(
        id,
        body["id"].as_str().unwrap(),
        "webhook-id is the message id"
    );
    let ts: i64 = hit.header("webhook-timestamp").parse().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - ts).abs() < 60, "timestamp {ts} vs now {now}");

    // An independent Standard Webhooks verification: HMAC-SHA256 over
    // "{id}.{timestamp}.{body}" with the base64-decoded whsec_ key.
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&hit.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let sigs: Vec<&str> = hit.header("webhook-signature").split(' ').collect();
    assert!(
        sigs.contains(&expected.as_str()),
        "{sigs:?} lacks {expected}"
    );

    app.wait_idle().await;
    let detail = only_message(&app).await;
    assert_eq!(detail["status"], "done");
    let fwd = attempts_of(&detail, "forward");
    assert_eq!(fwd.len(), 1, "{detail}");
    assert_eq!(fwd[0]["outcome"], "success");
    assert_eq!(fwd[0]["status_code"], 200);
    assert_eq!(fwd[0]["destination"], dest.destination());
}

#[tokio::test]
async fn failing_destination_is_retried_with_backoff_and_delivered_once() {
    let dest = Fake::start(|n, _| Reply::Status(if n < 3 { 503 } else { 200 })).await;
    let app = TestApp::spawn(&config(
        "backoff_base = \"50ms\"\nbackoff_max = \"400ms\"\nmax_attempts = 10\n",
        &forward_source("sms", &[("forward", &dest.url("/in"))]),
    ))
    .await;
    post_ok(&app, "sms", &sms("retry-1", "hello").to_string()).await;
    dest.wait_for(4).await;
    app.wait_idle().await;

    let hits = dest.hits();
    assert_eq!(hits.len(), 4, "delivered once, after three failures");
    let ids: Vec<&str> = hits.iter().map(|h| h.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "webhook-id is stable: {ids:?}"
    );
    for pair in hits.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(50),
            "retry came after only {gap:?}"
        );
    }

    let detail = only_message(&app).await;
    assert_eq!(detail["status"], "done");
    let fwd = attempts_of(&detail, "forward");
    let outcomes = outcomes_of(&detail, "forward");
    assert_eq!(outcomes, ["retry", "retry", "retry", "success"], "{detail}");
    assert_eq!(fwd[0]["status_code"], 503);
    assert_eq!(fwd[3]["status_code"], 200);
}

#[tokio::test]
async fn a_400_from_the_destination_goes_to_dead_letters_without_retry() {
    let dest = Fake::always(400).await;
    let app = TestApp::spawn(&config(
        "backoff_base = \"10ms\"\nbackoff_max = \"50ms\"\n",
        &forward_source("sms", &[("app", &dest.url("/in"))]),
    ))
    .await;
    post_ok(&app, "sms", &sms("bad-1", "hello").to_string()).await;
    app.wait_idle().await;

    assert_eq!(dest.count(), 1, "a 4xx is not retried");
    let detail = only_message(&app).await;
    assert_eq!(detail["status"], "dead");
    let fwd = attempts_of(&detail, "app");
    assert_eq!(fwd.len(), 1);
    assert_eq!(fwd[0]["outcome"], "dead");
    assert_eq!(fwd[0]["status_code"], 400);

    let dead = only_dead_letter(&app, "/v1/dead-letters").await;
    assert_eq!(dead["action"], "app");
    assert_eq!(dead["source"], "sms");
    assert_eq!(dead["message_id"], detail["id"]);
    assert!(dead["error"].as_str().unwrap().contains("400"), "{dead}");
}

#[tokio::test]
async fn exhausting_max_attempts_goes_to_dead_letters() {
    let dest = Fake::always(503).await;
    let app = TestApp::spawn(&config(
        "max_attempts = 3\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\n",
        &forward_source("sms", &[("forward", &dest.url("/in"))]),
    ))
    .await;
    post_ok(&app, "sms", &sms("dead-1", "hello").to_string()).await;
    app.wait_idle().await;

    assert_eq!(dest.count(), 3);
    let detail = only_message(&app).await;
    assert_eq!(detail["status"], "dead");
    let outcomes = outcomes_of(&detail, "forward");
    assert_eq!(outcomes, ["retry", "retry", "dead"]);
    let dead = only_dead_letter(&app, "/v1/dead-letters?source=sms").await;
    assert!(
        dead["error"].as_str().unwrap().contains("3 attempts"),
        "{dead}"
    );
}

// ---------------------------------------------------------------------------
// Breakers and timeouts.

#[tokio::test]
async fn a_down_destination_opens_its_breaker_while_others_keep_flowing() {
    let down = Arc::new(AtomicBool::new(true));
    let flag = down.clone();
    let flaky = Fake::start(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Reply::Status(503)
        } else {
            // Slow enough for /health to catch the half-open trial.
            Reply::Slow(Duration::from_millis(400), 200)
        }
    })
    .await;
    let healthy = Fake::always(200).await;
    let app = TestApp::spawn(&config(
        "breaker_failures = 3\nbreaker_cooldown = \"500ms\"\nmax_attempts = 100\n\
         backoff_base = \"20ms\"\nbackoff_max = \"100ms\"\n",
        &forward_source(
            "sms",
            &[
                ("flaky", &flaky.url("/in")),
                ("healthy", &healthy.url("/in")),
            ],
        ),
    ))
    .await;
    for i in 0..5 {
        post_ok(&app, "sms", &sms(&format!("br-{i}"), "hello").to_string()).await;
    }

    let (f, h) = (flaky.destination(), healthy.destination());
    eventually("the flaky breaker to open", || async {
        (breaker_state(&app, &f).await.as_deref() == Some("open")).then_some(())
    })
    .await;
    let metrics = app.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("inlet_breaker_state{") && l.contains(&f)),
        "{metrics}"
    );

    // The healthy destination gets every message while the other is open.
    healthy.wait_for(5).await;
    assert_ne!(breaker_state(&app, &f).await.as_deref(), Some("closed"));
    assert_eq!(breaker_state(&app, &h).await.as_deref(), Some("closed"));

    // While open, calls stop: after the breaker opened, the flaky
    // destination sees one trial per cooldown, never a burst.
    let before = flaky.count();
    let hits = flaky.wait_for(before + 2).await;
    let after_open = &hits[before - 1..];
    for pair in after_open.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(400),
            "calls while open came {gap:?} apart"
        );
    }

    // The destination recovers: the next trial half-opens, then closes.
    down.store(false, Ordering::SeqCst);
    eventually("the breaker to half-open", || async {
        (breaker_state(&app, &f).await.as_deref() == Some("half_open")).then_some(())
    })
    .await;
    eventually("the breaker to close", || async {
        (breaker_state(&app, &f).await.as_deref() == Some("closed")).then_some(())
    })
    .await;
    app.wait_idle().await;
    assert_eq!(
        app.metric("inlet_breaker_state{", &f).await,
        Some(0.0),
        "gauge back to closed"
    );
    let msgs = app.all_messages().await;
    assert_eq!(msgs.len(), 5);
    for m in msgs {
        assert_eq!(m["status"], "done", "every message reached both: {m}");
    }
}

#[tokio::test]
async fn a_destination_that_never_answers_is_cut_at_its_timeout() {
    let silent = Fake::start(|_, _| Reply::Hang).await;
    let healthy = Fake::always(200).await;
    let app = TestApp::spawn(&config(
        "concurrency = 1\nmax_attempts = 1\n",
        &format!(
            "[[sources]]\nname = \"slow\"\nprovider = \"sms-gateway\"\n\
             [[sources.actions]]\ntype = \"forward\"\nurl = \"{}\"\ntimeout = \"300ms\"\n\
             [[sources]]\nname = \"fast\"\nprovider = \"sms-gateway\"\n\
             [[sources.actions]]\ntype = \"forward\"\nurl = \"{}\"\n",
            silent.url("/in"),
            healthy.url("/in")
        ),
    ))
    .await;
    post_ok(&app, "slow", &sms("slow-1", "hello").to_string()).await;
    silent.wait_for(1).await;
    let sent = Instant::now();
    post_ok(&app, "fast", &sms("fast-1", "hello").to_string()).await;
    healthy.wait_for(1).await;
    let waited = sent.elapsed();
    // The only worker was busy with the silent destination; it is freed
    // by the 300 ms call timeout, well before the 2.4 s run limit.
    assert!(waited < Duration::from_millis(1500), "waited {waited:?}");

    app.wait_idle().await;
    let slow = app
        .all_messages()
        .await
        .into_iter()
        .find(|m| m["source"] == "slow")
        .unwrap();
    let detail = detail_of(&app, &slow).await;
    let fwd = attempts_of(&detail, "forward");
    assert_eq!(fwd.len(), 1, "{detail}");
    assert_eq!(fwd[0]["outcome"], "dead");
    assert!(
        fwd[0]["error"].as_str().unwrap().contains("timed out"),
        "{detail}"
    );
    assert!(fwd[0]["duration_ms"].as_u64().unwrap() < 1000, "{detail}");
    assert_eq!(silent.count(), 1);
}

// ---------------------------------------------------------------------------
// Auto-replies.

fn reply_action(via_keys: &str, templates: &str) -> String {
    format!("[[sources.actions]]\ntype = \"reply\"\n{via_keys}\ntemplates = {{ {templates} }}\n")
}

fn sms_source(name: &str) -> String {
    format!("[[sources]]\nname = \"{name}\"\nprovider = \"sms-gateway\"\n")
}

#[tokio::test]
async fn auto_replies_go_through_each_providers_send_api() {
    let api = Fake::always(201).await;
    let base = api.base.clone();
    let sources = [
        sms_source("tw")
            + &reply_action(
                &format!(
                    "via = \"twilio\"\nbase_url = \"{base}\"\naccount_sid = \"AC123\"\n\
                     auth_token = \"tw-token\"\nfrom = \"+15550001111\""
                ),
                "greeting = \"Hi from twilio\"",
            ),
        sms_source("wa")
            + &reply_action(
                &format!(
                    "via = \"whatsapp-cloud\"\nbase_url = \"{base}\"\n\
                     phone_number_id = \"PNID\"\ntoken = \"wa-token\""
                ),
                "greeting = \"Hi from whatsapp\"",
            ),
        sms_source("evo")
            + &reply_action(
                &format!(
                    "via = \"evolution\"\nbase_url = \"{base}\"\ninstance = \"inst1\"\n\
                     api_key = \"evo-key\""
                ),
                "greeting = \"Hi from evolution\"",
            ),
        sms_source("gw")
            + &reply_action(
                &format!("via = \"sms-gateway\"\nurl = \"{base}/send\""),
                "greeting = \"Hi from the gateway\"",
            ),
    ];
    let app = TestApp::spawn(&config("", &sources.concat())).await;
    for s in ["tw", "wa", "evo", "gw"] {
        post_ok(&app, s, &sms(&format!("{s}-1"), "Hello there").to_string()).await;
    }
    api.wait_for(4).await;
    app.wait_idle().await;

    let hits: BTreeMap<String, Hit> = api
        .hits()
        .into_iter()
        .map(|h| (h.path.clone(), h))
        .collect();
    assert_eq!(hits.len(), 4, "{:?}", hits.keys());
    for h in hits.values() {
        assert_eq!(h.method, Method::POST);
    }

    let tw = &hits["/2010-04-01/Accounts/AC123/Messages.json"];
    assert_eq!(
        tw.header("authorization"),
        format!("Basic {}", STANDARD.encode("AC123:tw-token"))
    );
    assert_eq!(
        tw.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&tw.body).unwrap();
    assert_eq!(
        form,
        BTreeMap::from([
            ("To".to_string(), "+15551234567".to_string()),
            ("From".to_string(), "+15550001111".to_string()),
            ("Body".to_string(), "Hi from twilio".to_string()),
        ])
    );

    let wa = &hits["/v21.0/PNID/messages"];
    assert_eq!(wa.header("authorization"), "Bearer wa-token");
    assert_eq!(
        wa.json(),
        json!({"messaging_product": "whatsapp", "to": "15551234567", "type": "text",
               "text": {"body": "Hi from whatsapp"}})
    );

    let evo = &hits["/message/sendText/inst1"];
    assert_eq!(evo.header("apikey"), "evo-key");
    assert_eq!(evo.header("authorization"), "");
    assert_eq!(
        evo.json(),
        json!({"number": "15551234567", "text": "Hi from evolution"})
    );

    let gw = &hits["/send"];
    assert_eq!(gw.header("content-type"), "application/json");
    assert_eq!(
        gw.json(),
        json!({"to": "+15551234567", "message": "Hi from the gateway"})
    );

    for m in app.all_messages().await {
        assert_eq!(m["status"], "done", "{m}");
        let detail = detail_of(&app, &m).await;
        let reply = attempts_of(&detail, "reply");
        assert_eq!(reply.len(), 1, "{detail}");
        assert_eq!(reply[0]["outcome"], "success");
        assert_eq!(reply[0]["status_code"], 201);
        assert_eq!(reply[0]["destination"], api.destination());
    }
}

#[tokio::test]
async fn opt_out_stops_auto_replies_until_opt_in_and_yes_does_not_lift_it() {
    let api = Fake::always(200).await;
    let app = TestApp::spawn(&config(
        "",
        &(sms_source("sms")
            + &reply_action(
                &format!("via = \"sms-gateway\"\nurl = \"{}\"", api.url("/send")),
                "greeting = \"Hi!\", opt_out = \"Unsubscribed.\", \
                 opt_in = \"Welcome back.\", affirmative = \"Great!\"",
            )),
    ))
    .await;
    let me = "+15551234567";
    let other = "+15550000002";
    let script = [
        (me, "Hello there"),
        (me, "STOP"),
        (me, "Hello there"),
        (other, "Hello there"),
        (me, "YES"),
        (me, "START"),
        (me, "Hello there"),
    ];
    for (i, (from, text)) in script.iter().enumerate() {
        post_ok(
            &app,
            "sms",
            &sms_from(&format!("opt-{i}"), from, text).to_string(),
        )
        .await;
    }
    app.wait_idle().await;

    let mut got: Vec<(String, String)> = api
        .hits()
        .iter()
        .map(|h| {
            let b = h.json();
            (
                b["to"].as_str().unwrap().to_string(),
                b["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        (me, "Hi!"),
        (me, "Unsubscribed."),
        (other, "Hi!"),
        (me, "Welcome back."),
        (me, "Hi!"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    want.sort();
    assert_eq!(got, want);

    // The skipped ones say why.
    let mut skipped = Vec::new();
    for m in app.all_messages().await {
        let detail = detail_of(&app, &m).await;
        for a in attempts_of(&detail, "reply") {
            if a["outcome"] == "skipped" {
                skipped.push((m["text"].as_str().unwrap().to_string(), a["error"].clone()));
            }
        }
    }
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        skipped,
        [
            ("Hello there".to_string(), json!("contact opted out")),
            ("YES".to_string(), json!("contact opted out")),
        ]
    );
}

#[tokio::test]
async fn a_reply_refused_by_the_provider_is_retried_and_sent_once() {
    let api = Fake::start(|n, _| Reply::Status(if n == 0 { 503 } else { 201 })).await;
    let app = TestApp::spawn(&config(
        "backoff_base = \"20ms\"\nbackoff_max = \"100ms\"\n",
        &(sms_source("sms")
            + &reply_action(
                &format!("via = \"sms-gateway\"\nurl = \"{}\"", api.url("/send")),
                "greeting = \"Hi!\"",
            )),
    ))
    .await;
    post_ok(&app, "sms", &sms("rr-1", "Hello there").to_string()).await;
    api.wait_for(2).await;
    app.wait_idle().await;
    assert_eq!(api.count(), 2);
    let detail = only_message(&app).await;
    assert_eq!(detail["status"], "done");
    let outcomes = outcomes_of(&detail, "reply");
    assert_eq!(outcomes, ["retry", "success"]);
    let keys: Vec<String> = api
        .hits()
        .iter()
        .map(|h| h.header("idempotency-key").to_string())
        .collect();
    assert_eq!(keys[0], keys[1], "the same idempotency key on every try");
    assert_eq!(keys[0], format!("{}:reply", detail["id"].as_str().unwrap()));
}

#[tokio::test]
async fn a_reply_that_times_out_after_sending_is_never_sent_again() {
    let api = Fake::start(|_, _| Reply::Hang).await;
    let app = TestApp::spawn(&config(
        "backoff_base = \"20ms\"\nbackoff_max = \"100ms\"\nmax_attempts = 5\n",
        &(sms_source("sms")
            + &format!(
                "[[sources.actions]]\ntype = \"reply\"\nvia = \"sms-gateway\"\nurl = \"{}\"\n\
                 timeout = \"300ms\"\ntemplates = {{ greeting = \"Hi!\" }}\n",
                api.url("/send")
            )),
    ))
    .await;
    post_ok(&app, "sms", &sms("to-1", "Hello there").to_string()).await;
    app.wait_idle().await;
    assert_eq!(
        api.count(),
        1,
        "at most once: a timed-out send is not repeated"
    );
    let detail = only_message(&app).await;
    assert_eq!(detail["status"], "dead");
    let reply = attempts_of(&detail, "reply");
    assert_eq!(reply.len(), 1, "{detail}");
    assert_eq!(reply[0]["outcome"], "dead");
    assert!(
        reply[0]["error"].as_str().unwrap().contains("not retried"),
        "{detail}"
    );

    // Replaying the dead letter does not send it either.
    let r = app
        .client
        .post(app.url("/v1/dead-letters/replay"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    app.wait_idle().await;
    assert_eq!(api.count(), 1);
}

#[tokio::test]
async fn a_retry_storm_of_one_provider_message_forwards_and_replies_once() {
    let dest = Fake::always(200).await;
    let api = Fake::always(200).await;
    let app = TestApp::spawn(&config(
        "",
        &(sms_source("sms")
            + &format!(
                "[[sources.actions]]\ntype = \"forward\"\nurl = \"{}\"\n",
                dest.url("/in")
            )
            + &reply_action(
                &format!("via = \"sms-gateway\"\nurl = \"{}\"", api.url("/send")),
                "greeting = \"Hi!\"",
            )),
    ))
    .await;
    let body = sms("storm-1", "Hello there").to_string();
    let results = futures::future::join_all((0..100).map(|_| app.post_json("sms", &body))).await;
    let mut accepted = 0;
    for (status, resp) in &results {
        assert_eq!(*status, 200, "{resp}");
        accepted += resp["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 1);
    app.wait_idle().await;
    assert_eq!(dest.count(), 1, "one forward");
    assert_eq!(api.count(), 1, "one reply");
}

// ---------------------------------------------------------------------------
// Replay.

async fn admin_post(app: &TestApp, path: &str, body: Option<Value>) -> Value {
    let mut req = app
        .client
        .post(app.url(path))
        .bearer_auth(crate::helpers::ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "POST {path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn dead_letters_replay_delivers_once_the_destination_is_fixed_and_message_replay_reruns_actions()
 {
    // Refuses the first delivery (a 4xx: dead at once), accepts the rest.
    let dest = Fake::start(|n, _| Reply::Status(if n == 0 { 400 } else { 200 })).await;
    let app = TestApp::spawn(&config(
        "",
        &forward_source("sms", &[("app", &dest.url("/in"))]),
    ))
    .await;
    post_ok(&app, "sms", &sms("rp-1", "hello").to_string()).await;
    app.wait_idle().await;
    let dead = only_dead_letter(&app, "/v1/dead-letters?source=sms").await;
    assert_eq!(dead["action"], "app");
    assert_eq!(app.health().await["queue"]["dead"], 1);

    let r = admin_post(
        &app,
        "/v1/dead-letters/replay",
        Some(json!({"source": "sms", "action": "app"})),
    )
    .await;
    assert_eq!(r, json!({"replayed": 1}));
    let hits = dest.wait_for(2).await;
    app.wait_idle().await;
    let detail = only_message(&app).await;
    assert_eq!(detail["status"], "done");
    assert!(
        app.admin("/v1/dead-letters").await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.health().await["queue"]["dead"], 0);

    // Nothing failed any more, so only_failed replays nothing...
    let id = detail["id"].as_str().unwrap();
    let r = admin_post(
        &app,
        &format!("/v1/messages/{id}/replay"),
        Some(json!({"only_failed": true})),
    )
    .await;
    assert_eq!(r, json!({"replayed": 0}));
    // ...and a full replay runs classify and the forward again, without
    // doubling the forward job: one more delivery, same webhook-id.
    let r = admin_post(&app, &format!("/v1/messages/{id}/replay"), None).await;
    assert_eq!(r, json!({"replayed": 2}));
    let again = dest.wait_for(3).await;
    app.wait_idle().await;
    assert_eq!(dest.count(), 3);
    assert_eq!(
        again[2].headers["webhook-id"],
        hits[1].headers["webhook-id"]
    );
    let r = app
        .client
        .post(app.url("/v1/messages/msg_nope/replay"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn jobs_waiting_on_an_open_breaker_are_left_untouched() {
    let down = Fake::always(503).await;
    let log = Fake::always(200).await;
    let app = TestApp::spawn(&config(
        "breaker_failures = 1\nbreaker_cooldown = \"30s\"\nmax_attempts = 100\n\
         backoff_base = \"10ms\"\nbackoff_max = \"20ms\"\n",
        &forward_source(
            "sms",
            &[("app", &down.url("/in")), ("log", &log.url("/in"))],
        ),
    ))
    .await;
    // The first message opens the breaker of `app`...
    post_ok(&app, "sms", &sms("first", "hello").to_string()).await;
    eventually("the breaker to open", || async {
        (breaker_state(&app, &down.destination()).await.as_deref() == Some("open")).then_some(())
    })
    .await;
    // ...then 200 more and a last one. Claims take the earliest due jobs
    // first across lanes, so once `log` has the last message, every `app`
    // job before it would have been claimed too, had its lane been open.
    let items: Vec<_> = (0..200).map(|i| sms(&format!("w-{i}"), "hello")).collect();
    post_ok(&app, "sms", &crate::helpers::batch(&items)).await;
    post_ok(&app, "sms", &sms("last", "hello").to_string()).await;
    log.wait_for(202).await;
    app.wait_for_metric(
        "inlet_job_attempts_total{",
        "action=\"log\",outcome=\"success\"",
        202.0,
    )
    .await;

    // Waiting jobs were left alone: not claimed, deferred and rewritten one
    // by one (a write each, per cooldown, for the whole outage).
    let deferred = app
        .metric("inlet_job_deferrals_total{", "\"app\"")
        .await
        .unwrap_or(0.0);
    assert!(
        deferred <= 1.0,
        "{deferred} jobs were claimed only to be deferred"
    );
    assert_eq!(down.count(), 1, "no call while open");
    assert_eq!(app.health().await["queue"]["pending"], 202);
}

// Multi-threaded: `terminate` blocks its thread while the fake destination,
// on this same runtime, must still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_job_finish_and_it_is_not_run_again() {
    let dest = Fake::start(|_, _| Reply::Slow(Duration::from_millis(800), 200)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("", &forward_source("sms", &[("app", &dest.url("/in"))]));
    let mut app = TestApp::spawn_in(dir.path(), &cfg).await;
    post_ok(&app, "sms", &sms("term-1", "hello").to_string()).await;
    // The forward is in flight when the signal comes.
    dest.wait_for(1).await;
    let status = app.terminate();
    assert!(status.success(), "exit status {status:?}: {}", app.stderr());

    // After a restart the job is done, with one attempt: it was finished
    // and recorded before exit, not cut off and run again.
    let app = TestApp::spawn_in(dir.path(), &cfg).await;
    app.wait_idle().await;
    let detail = only_message(&app).await;
    assert_eq!(detail["status"], "done");
    assert_eq!(outcomes_of(&detail, "app"), ["success"], "{detail}");
    assert_eq!(dest.count(), 1);
}
