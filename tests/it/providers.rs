//! Each provider end to end over HTTP: a signed delivery is accepted, the
//! same provider message delivered again is a duplicate, events count in
//! neither number, and a bad credential is a 401 with nothing stored.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::helpers::{TestApp, config_with};

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn post(
    app: &TestApp,
    source: &str,
    ct: &str,
    headers: HeaderMap,
    body: &str,
) -> (u16, Value) {
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
        h.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
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
            (
                "webhook-signature",
                inlet::providers::standard_webhooks::sign(&key, id, ts, body.as_bytes()),
            ),
        ])
    };
    assert_eq!(
        post(
            &app,
            "sw",
            "application/json",
            signed("msg_1", now()),
            &body
        )
        .await,
        (200, received(1, 0))
    );
    // The sender's retry carries the same webhook-id (and a new timestamp).
    assert_eq!(
        post(
            &app,
            "sw",
            "application/json",
            signed("msg_1", now() + 1),
            &body
        )
        .await,
        (200, received(0, 1))
    );
    let (status, err) = post(
        &app,
        "sw",
        "application/json",
        signed("msg_2", now() - 3600),
        &body,
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("invalid_signature"))
    );
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
    assert_eq!(
        post(&app, "evo", "application/json", none.clone(), &msg).await,
        (200, received(1, 0))
    );
    // Evolution is known to deliver the same message several times.
    assert_eq!(
        post(&app, "evo", "application/json", none.clone(), &msg).await,
        (200, received(0, 1))
    );
    let upper = fixture("evolution/messages-upsert-uppercase-event.json");
    assert_eq!(
        post(&app, "evo", "application/json", none.clone(), &upper)
            .await
            .1["duplicates"],
        1
    );
    let from_me = fixture("evolution/messages-upsert-from-me.json");
    assert_eq!(
        post(&app, "evo", "application/json", none.clone(), &from_me).await,
        (200, received(0, 0))
    );
    let wrong = msg.replace("EVO-INSTANCE-TOKEN-0001", "guess");
    let (status, _) = post(&app, "evo", "application/json", none, &wrong).await;
    assert_eq!(status, 401);
    let rej = app.admin("/v1/rejections?source=evo").await;
    let logged = rej["items"][0]["body"].as_str().unwrap();
    assert!(
        !logged.contains("guess"),
        "the apikey never reaches the rejections log: {logged}"
    );
    app.wait_idle().await;
    assert_eq!(app.all_messages().await.len(), 1);
}

#[tokio::test]
async fn android_sms_gateway_signed_delivery_is_accepted_and_redelivery_is_a_duplicate() {
    let secret = "T0p-Secret-Signing-Key";
    let extra = format!(
        "[[sources]]\nname = \"android\"\nprovider = \"android-sms-gateway\"\nsecret = \"{secret}\"\n"
    );
    let app = TestApp::spawn(&config_with(&extra)).await;
    let body = fixture("android-sms-gateway/sms-received.json");
    let signed = |body: &str, ts: i64| {
        let mac = inlet::providers::signature::hmac(
            inlet::config::HmacAlgorithm::Sha256,
            secret.as_bytes(),
            &[body.as_bytes(), ts.to_string().as_bytes()],
        );
        headers(&[
            ("x-signature", hex::encode(mac)),
            ("x-timestamp", ts.to_string()),
        ])
    };
    assert_eq!(
        post(
            &app,
            "android",
            "application/json",
            signed(&body, now()),
            &body
        )
        .await,
        (200, received(1, 0))
    );
    assert_eq!(
        post(
            &app,
            "android",
            "application/json",
            signed(&body, now()),
            &body
        )
        .await,
        (200, received(0, 1))
    );
    let ping = fixture("android-sms-gateway/system-ping.json");
    assert_eq!(
        post(
            &app,
            "android",
            "application/json",
            signed(&ping, now()),
            &ping
        )
        .await,
        (200, received(0, 0))
    );
    let (status, _) = post(
        &app,
        "android",
        "application/json",
        signed(&body, now() - 600),
        &body,
    )
    .await;
    assert_eq!(status, 401, "stale timestamp");
}

/// The form as (name, value) pairs, as Twilio signs them.
fn form_pairs(body: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(body).unwrap()
}

#[tokio::test]
async fn twilio_signed_webhook_gets_twiml_and_its_retry_is_a_duplicate_and_status_is_an_event() {
    let extra = "[[sources]]\nname = \"tw\"\nprovider = \"twilio\"\nsecret = \"tw-token\"\n";
    let app = TestApp::spawn(&config_with(extra)).await;
    // No public_url is configured: Twilio's URL is http://<listen>/hooks/tw.
    let url = app.url("/hooks/tw");
    let send = |body: String, signature: String| {
        let (client, url) = (app.client.clone(), url.clone());
        async move {
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let body = fixture("twilio/inbound_sms.form");
    let sig = inlet::providers::twilio::sign(b"tw-token", &url, &form_pairs(&body));
    let r = send(body.clone(), sig.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    let twiml = r.text().await.unwrap();
    assert_eq!(
        twiml,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#
    );
    // Twilio retries with the same MessageSid.
    assert_eq!(send(body.clone(), sig).await.status(), 200);
    let status = fixture("twilio/status_callback.form");
    let status_sig = inlet::providers::twilio::sign(b"tw-token", &url, &form_pairs(&status));
    assert_eq!(send(status, status_sig).await.status(), 200);
    let r = send(body.replace("Body=Yes", "Body=No"), "bogus".into()).await;
    assert_eq!(r.status(), 401);
    app.wait_idle().await;
    let msgs = app.all_messages().await;
    assert_eq!(
        msgs.len(),
        1,
        "the retry was a duplicate and the status callback an event"
    );
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"inlet_messages_total{source="tw",result="duplicate"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn whatsapp_cloud_handshake_and_a_redelivered_wamid_is_a_duplicate() {
    let extra = "[[sources]]\nname = \"wa\"\nprovider = \"whatsapp-cloud\"\nsecret = \"app-secret\"\nverify_token = \"meatyhamhock\"\n";
    let app = TestApp::spawn(&config_with(extra)).await;
    let hs = |token: &str| {
        app.url(&format!(
            "/hooks/wa?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
        ))
    };
    let r = app.client.get(hs("meatyhamhock")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "1158201444");
    let r = app.client.get(hs("wrong")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "verification_failed");
    let rej = app.admin("/v1/rejections?source=wa").await;
    assert!(
        !rej["items"][0]["body"].as_str().unwrap().contains("wrong"),
        "verify token is redacted"
    );

    let body = fixture("whatsapp-cloud/batch.json");
    let sig = inlet::providers::signature::sign_body(
        &inlet::providers::whatsapp_cloud::signature_config(),
        b"app-secret",
        body.as_bytes(),
    );
    let h = headers(&[("x-hub-signature-256", sig)]);
    let (status, first) = post(&app, "wa", "application/json", h.clone(), &body).await;
    assert_eq!(status, 200);
    let accepted = first["accepted"].as_u64().unwrap();
    assert!(accepted >= 2, "a batch carries several messages: {first}");
    assert_eq!(
        post(&app, "wa", "application/json", h, &body).await,
        (200, received(0, accepted))
    );
    let (status, _) = post(
        &app,
        "wa",
        "application/json",
        headers(&[("x-hub-signature-256", "sha256=00".into())]),
        &body,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn respondio_signed_webhook_is_accepted_once() {
    let extra = "[[sources]]\nname = \"rio\"\nprovider = \"respondio\"\nsecret = \"rio-key\"\n";
    let app = TestApp::spawn(&config_with(extra)).await;
    let body = fixture("respondio/message_received.json");
    let sig = inlet::providers::signature::sign_body(
        &inlet::providers::respondio::signature_config(),
        b"rio-key",
        body.as_bytes(),
    );
    let h = headers(&[("x-webhook-signature", sig)]);
    assert_eq!(
        post(&app, "rio", "application/json", h.clone(), &body).await,
        (200, received(1, 0))
    );
    assert_eq!(
        post(&app, "rio", "application/json", h, &body).await,
        (200, received(0, 1))
    );
    let tampered = body.replacen('}', " }", 1);
    let (status, _) = post(
        &app,
        "rio",
        "application/json",
        headers(&[("x-webhook-signature", "AAAA".into())]),
        &tampered,
    )
    .await;
    assert_eq!(status, 401);
}
