//! `/health`, `/ready`, `/metrics`, `/openapi.json`.

use crate::helpers::{TestApp, config_with, sms};

#[tokio::test]
async fn health_has_the_documented_shape() {
    let app = TestApp::spawn(&config_with("")).await;
    let h = app.health().await;
    assert_eq!(h["status"], "ok");
    for k in ["pending", "in_flight", "dead"] {
        assert!(h["queue"][k].is_u64(), "{h}");
    }
    assert_eq!(h["workers"], 16);
    assert!(h["breakers"].is_object());
    assert!(h["uptime_s"].is_u64());
    assert_eq!(app.ready_status().await, 200);
}

#[tokio::test]
async fn metrics_expose_the_documented_series() {
    let app = TestApp::spawn(&config_with("")).await;
    app.post_json("sms", &sms("m1", "hi").to_string()).await;
    app.post_json("sms", &sms("m1", "hi").to_string()).await;
    app.post_json("nope", "{}").await;
    app.wait_idle().await;
    let text = app.metrics_text().await;
    for needle in [
        r#"inlet_ingest_requests_total{source="sms",status="200"} 2"#,
        r#"inlet_ingest_requests_total{source="unknown",status="404"} 1"#,
        r#"inlet_messages_total{source="sms",result="accepted"} 1"#,
        r#"inlet_messages_total{source="sms",result="duplicate"} 1"#,
        "inlet_ack_seconds_bucket",
        r#"inlet_queue_jobs{status="pending"}"#,
        r#"inlet_job_attempts_total{action="classify",outcome="success"} 1"#,
        r#"inlet_stage_seconds_bucket{stage="commit""#,
        // Both 200s waited for the journal thread; the 404 never reached it.
        r#"inlet_stage_seconds_count{stage="journal_wait"} 2"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let app = TestApp::spawn(&config_with("")).await;
    let doc: serde_json::Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/hooks/{source}",
        "/health",
        "/ready",
        "/metrics",
        "/v1/messages",
        "/v1/messages/{id}",
        "/v1/messages/{id}/replay",
        "/v1/dead-letters",
        "/v1/dead-letters/replay",
        "/v1/rejections",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["paths"]["/hooks/{source}"]["get"].is_object());
    assert!(doc["paths"]["/hooks/{source}"]["post"].is_object());
}
