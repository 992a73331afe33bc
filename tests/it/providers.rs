//! Each provider end to end over HTTP: a signed delivery is accepted, the
//! same provider message delivered again is a duplicate, events count in
//! neither number, and a bad credential is a 401 with nothing stored.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::helpers::{TestApp, config_with};

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn post(app: &TestApp, source: &str, ct: &str, headers: HeaderMap, body: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(&format!("/hooks/{source}")))
        .header("content-type", ct)
        .headers(headers)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    h
}

fn received(accepted: u64, duplicates: u64) -> Value {
    json!({"status": "received", "accepted": accepted, "duplicates": duplicates})
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn standard_webhooks_delivery_is_accepted_once_and_its_retry_is_a_duplicate() {
    let extra = format!(
        "[[sources]]\nname = \"sw\"\nprovider = \"standard-webhooks\"\nsecret = \"{WHSEC}\"\n\
         text_pointer = \"/data/text\"\nfrom_pointer = \"/data/from\"\n"
    );
    let app = TestApp::spawn(&config_with(&extra)).await;
    let body = fixture("standard-webhooks/message-received.json");
    let key = inlet::providers::standard_webhooks::SigningKey::parse(WHSEC).unwrap();
    let signed = |id: &str, ts: i64| {
        headers(&[
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", inlet::providers::standard_webhooks::sign(&key, id, ts, body.as_bytes())),
        ])
    };
    assert_eq!(post(&app, "sw", "application/json", signed("msg_1", now()), &body).await, (200, received(1, 0)));
    // The sender's retry carries the same webhook-id (and a new timestamp).
    assert_eq!(post(&app, "sw", "application/json", signed("msg_1", now() + 1), &body).await, (200, received(0, 1)));
    let (status, err) = post(&app, "sw", "application/json", signed("msg_2", now() - 3600), &body).await;
    assert_eq!((status, err["error"]["code"].as_str()), (401, Some("invalid_signature")));
    app.wait_idle().await;
    let msgs = app.all_messages().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["external_id"], "msg_1");
    assert_eq!(msgs[0]["channel"], "other");
}

#[tokio::test]
async fn evolution_repeated_delivery_is_a_duplicate_and_from_me_is_an_event() {
    let extra = "[[sources]]\nname = \"evo\"\nprovider = \"evolution\"\nsecret = \"EVO-INSTANCE-TOKEN-0001\"\n";
    let app = TestApp::spawn(&config_with(extra)).await;
    let msg = fixture("evolution/messages-upsert-conversation.json");
    let none = HeaderMap::new();
    assert_eq!(post(&app, "evo", "application/json", none.clone(), &msg).await, (200, received(1, 0)));
    // Evolution is known to deliver the same message several times.
    assert_eq!(post(&app, "evo", "application/json", none.clone(), &msg).await, (200, received(0, 1)));
    let upper = fixture("evolution/messages-upsert-uppercase-event.json");
    assert_eq!(post(&app, "evo", "application/json", none.clone(), &upper).await.1["duplicates"], 1);
    let from_me = fixture("evolution/messages-upsert-from-me.json");
    assert_eq!(post(&app, "evo", "application/json", none.clone(), &from_me).await, (200, received(0, 0)));
    let wrong = msg.replace("EVO-INSTANCE-TOKEN-0001", "guess");
    let (status, _) = post(&app, "evo", "application/json", none, &wrong).await;
    assert_eq!(status, 401);
    let rej = app.admin("/v1/rejections?source=evo").await;
    let logged = rej["items"][0]["body"].as_str().unwrap();
    assert!(!logged.contains("guess"), "the apikey never reaches the rejections log: {logged}");
    app.wait_idle().await;
    assert_eq!(app.all_messages().await.len(), 1);
}

#[tokio::test]
async fn android_sms_gateway_signed_delivery_is_accepted_and_redelivery_is_a_duplicate() {
    let secret = "T0p-Secret-Signing-Key";
    let extra = format!("[[sources]]\nname = \"android\"\nprovider = \"android-sms-gateway\"\nsecret = \"{secret}\"\n");
    let app = TestApp::spawn(&config_with(&extra)).await;
    let body = fixture("android-sms-gateway/sms-received.json");
    let signed = |body: &str, ts: i64| {
        let mac = inlet::providers::signature::hmac(
            inlet::config::HmacAlgorithm::Sha256,
            secret.as_bytes(),
            &[body.as_bytes(), ts.to_string().as_bytes()],
        );
        headers(&[("x-signature", hex::encode(mac)), ("x-timestamp", ts.to_string())])
    };
    assert_eq!(post(&app, "android", "application/json", signed(&body, now()), &body).await, (200, received(1, 0)));
    assert_eq!(post(&app, "android", "application/json", signed(&body, now()), &body).await, (200, received(0, 1)));
    let ping = fixture("android-sms-gateway/system-ping.json");
    assert_eq!(post(&app, "android", "application/json", signed(&ping, now()), &ping).await, (200, received(0, 0)));
    let (status, _) = post(&app, "android", "application/json", signed(&body, now() - 600), &body).await;
    assert_eq!(status, 401, "stale timestamp");
}
