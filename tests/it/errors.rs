//! Every malformed, oversized or unroutable request gets its documented
//! status and JSON error, and a rejections-log entry.

use serde_json::Value;

use crate::helpers::{TestApp, config_with, sms};

async fn assert_rejected(app: &TestApp, resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status().as_u16(), status);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "error bodies are JSON"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    let latest = app.admin("/v1/rejections?limit=1").await;
    assert_eq!(latest["items"][0]["code"], code);
    assert_eq!(latest["items"][0]["status"], status);
}

async fn post(
    app: &TestApp,
    source: &str,
    ct: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(&format!("/hooks/{source}")))
        .body(body);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn malformed_json_is_400_invalid_payload() {
    let app = TestApp::spawn(&config_with("")).await;
    let r = post(&app, "sms", JSON, "{\"guid\": ").await;
    assert_rejected(&app, r, 400, "invalid_payload").await;
    let rej = app.admin("/v1/rejections?limit=1").await;
    assert_eq!(rej["items"][0]["body"], "{\"guid\": ");
    assert_eq!(rej["items"][0]["source"], "sms");
}

#[tokio::test]
async fn wrong_field_type_is_400_naming_the_field() {
    let app = TestApp::spawn(&config_with("")).await;
    let r = post(
        &app,
        "sms",
        JSON,
        r#"{"guid":"g","number":15551234567,"message":"x"}"#,
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("number"),
        "{body}"
    );
    let r = post(
        &app,
        "sms",
        JSON,
        r#"{"guid":"g","number":15551234567,"message":"x"}"#,
    )
    .await;
    assert_rejected(&app, r, 400, "invalid_payload").await;
}

#[tokio::test]
async fn missing_guid_is_400_and_rejects_the_whole_batch() {
    let app = TestApp::spawn(&config_with("")).await;
    let body = format!(
        r#"{{"messages":[{},{{"number":"+1","message":"x"}}]}}"#,
        sms("ok-1", "hi")
    );
    let r = post(&app, "sms", JSON, body).await;
    let resp: Value = r.json().await.unwrap();
    assert!(
        resp["error"]["message"].as_str().unwrap().contains("guid"),
        "{resp}"
    );
    let r = post(&app, "sms", JSON, r#"{"number":"+1","message":"x"}"#).await;
    assert_rejected(&app, r, 400, "invalid_payload").await;
    assert!(
        app.all_messages().await.is_empty(),
        "nothing of a rejected batch is stored"
    );
}

#[tokio::test]
async fn empty_batch_is_400() {
    let app = TestApp::spawn(&config_with("")).await;
    let r = post(&app, "sms", JSON, r#"{"messages":[]}"#).await;
    assert_rejected(&app, r, 400, "invalid_payload").await;
}

#[tokio::test]
async fn body_over_max_body_bytes_is_413() {
    let app =
        TestApp::spawn(&config_with("").replace("[server]\n", "[server]\nmax_body_bytes = 1024\n"))
            .await;
    let big = sms("big", &"x".repeat(2000)).to_string();
    let r = post(&app, "sms", JSON, big).await;
    assert_rejected(&app, r, 413, "payload_too_large").await;
    // Without Content-Length (chunked), the limit is enforced while reading.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..10).map(|_| Ok("x".repeat(500))).collect();
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let r = post(&app, "sms", JSON, stream).await;
    assert_rejected(&app, r, 413, "payload_too_large").await;
}

#[tokio::test]
async fn wrong_content_type_is_415_and_json_variants_are_accepted() {
    let app = TestApp::spawn(&config_with("")).await;
    let r = post(&app, "sms", Some("text/plain"), sms("t1", "x").to_string()).await;
    assert_rejected(&app, r, 415, "unsupported_media_type").await;
    for (i, ct) in [
        Some("application/json; charset=utf-8"),
        Some("application/vnd.sms+json"),
        None,
    ]
    .iter()
    .enumerate()
    {
        let r = post(&app, "sms", *ct, sms(&format!("ok-{i}"), "x").to_string()).await;
        assert_eq!(r.status(), 200, "{ct:?}");
    }
}

#[tokio::test]
async fn unknown_source_is_404_and_logged() {
    let app = TestApp::spawn(&config_with("")).await;
    let r = post(&app, "nope", JSON, sms("u1", "x").to_string()).await;
    assert_rejected(&app, r, 404, "unknown_source").await;
    let rej = app.admin("/v1/rejections?source=nope").await;
    assert_eq!(rej["items"].as_array().unwrap().len(), 1);
}

/// Webhook paths the server's fast path leaves to the router (it takes only
/// a plain `/hooks/NAME`) are answered as the router always did.
#[tokio::test]
async fn webhook_paths_left_to_the_router_are_decoded_or_refused_as_before() {
    let app = TestApp::spawn(&config_with("")).await;
    // Percent-escaped `sms`: decoded by the router, then stored.
    let r = post(&app, "%73ms", JSON, sms("p1", "x").to_string()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 1);
    let r = post(&app, "n%6Fpe", JSON, sms("p2", "x").to_string()).await;
    assert_rejected(&app, r, 404, "unknown_source").await;
    // No source, or more than one segment: no such route.
    for path in ["/hooks/", "/hooks/sms/", "/hooks/sms/x"] {
        let r = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(sms("p3", "x").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
    // The plain path, for contrast: the same source, the fast path.
    let r = post(&app, "sms", JSON, sms("p1", "x").to_string()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["duplicates"], 1);
}

#[tokio::test]
async fn unknown_source_wins_over_oversize_and_oversize_over_content_type() {
    let app =
        TestApp::spawn(&config_with("").replace("[server]\n", "[server]\nmax_body_bytes = 16\n"))
            .await;
    let r = post(&app, "nope", Some("text/plain"), "x".repeat(100)).await;
    assert_eq!(r.status(), 404);
    let r = post(&app, "sms", Some("text/plain"), "x".repeat(100)).await;
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn signed_source_rejects_bad_signatures_with_401_and_redacts_them() {
    let extra = "[[sources]]\nname = \"signed\"\nprovider = \"sms-gateway\"\nsecret = \"s3cret\"\n";
    let app = TestApp::spawn(&config_with(extra)).await;
    let body = sms("s1", "hi").to_string();
    let r = app
        .client
        .post(app.url("/hooks/signed"))
        .header("content-type", "application/json")
        .header("x-signature", "sha256=00")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_rejected(&app, r, 401, "invalid_signature").await;
    let rej = app.admin("/v1/rejections?limit=1").await;
    assert_eq!(rej["items"][0]["headers"]["x-signature"], "[redacted]");
    let sig =
        inlet::providers::signature::sign_body(&Default::default(), b"s3cret", body.as_bytes());
    let r = app
        .client
        .post(app.url("/hooks/signed"))
        .header("content-type", "application/json")
        .header("x-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_api_requires_the_token() {
    let app = TestApp::spawn(&config_with("")).await;
    let r = app
        .client
        .get(app.url("/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .get(app.url("/v1/messages"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn on_invalid_accept_quarantines_an_unparseable_body_but_never_a_bad_signature() {
    let extra = "[[sources]]\nname = \"lenient\"\nprovider = \"sms-gateway\"\non_invalid = \"accept\"\n\
                 [[sources]]\nname = \"lenient-signed\"\nprovider = \"sms-gateway\"\nsecret = \"k\"\non_invalid = \"accept\"\n";
    let app = TestApp::spawn(&config_with(extra)).await;
    let (status, body) = app.post_json("lenient", "{\"guid\": [not json").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "received", "accepted": 0, "duplicates": 0})
    );
    let r = app
        .client
        .post(app.url("/hooks/lenient-signed"))
        .header("content-type", "application/json")
        .header("x-signature", "sha256=00")
        .body("{\"guid\": [not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a bad signature is never quarantined");
    app.wait_idle().await;
    assert!(
        app.all_messages().await.is_empty(),
        "a quarantined body starts no processing"
    );
    let db = rusqlite::Connection::open(app.db_path()).unwrap();
    let (kind, payload): (String, String) = db
        .query_row(
            "SELECT kind, payload FROM events WHERE source = 'lenient'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(kind, "quarantined");
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload["body"], "{\"guid\": [not json",
        "the body is kept whole"
    );
}
