//! The optional LLM classifier: asked only for `other`, and never able to
//! hold a message back (timeout or error -> `other` by `fallback`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::helpers::{TestApp, batch, config_with, sms};

#[derive(Clone, Default)]
struct Fake {
    /// What the fake answers: Ok(content) or Err(status); `None` hangs.
    answer: Arc<Mutex<Option<Result<String, u16>>>>,
    asked: Arc<Mutex<Vec<Value>>>,
}

async fn completions(State(f): State<Fake>, Json(body): Json<Value>) -> axum::response::Response {
    f.asked.lock().unwrap().push(body);
    let answer = f.answer.lock().unwrap().clone();
    match answer {
        Some(Ok(content)) => {
            Json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]}))
                .into_response()
        }
        Some(Err(status)) => StatusCode::from_u16(status).unwrap().into_response(),
        None => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
    }
}

async fn fake_llm(answer: Option<Result<String, u16>>) -> (String, Fake) {
    let fake = Fake {
        answer: Arc::new(Mutex::new(answer)),
        ..Default::default()
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), fake)
}

fn llm_config(base: &str, timeout: &str) -> String {
    config_with(&format!(
        "[classifier.llm]\nbase_url = \"{base}\"\napi_key = \"sk-test\"\nmodel = \"tiny\"\n\
         labels = [\"question\", \"complaint\", \"other\"]\ntimeout = \"{timeout}\"\n"
    ))
}

async fn intents(app: &TestApp) -> Vec<(String, Value)> {
    app.all_messages()
        .await
        .into_iter()
        .map(|m| {
            (
                m["external_id"].as_str().unwrap().to_string(),
                m["intent"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn llm_is_asked_only_when_rules_say_other() {
    let (base, fake) = fake_llm(Some(Ok(" Question \n".into()))).await;
    let app = TestApp::spawn(&llm_config(&base, "2s")).await;
    app.post_json(
        "sms",
        &batch(&[sms("q1", "what are your opening hours"), sms("y1", "yes")]),
    )
    .await;
    app.wait_idle().await;
    let got = intents(&app).await;
    let q = &got.iter().find(|(g, _)| g == "q1").unwrap().1;
    assert_eq!(q["label"], "question");
    assert_eq!(q["by"], "llm");
    let y = &got.iter().find(|(g, _)| g == "y1").unwrap().1;
    assert_eq!(y["label"], "affirmative");
    assert_eq!(y["by"], "rules");
    let asked = fake.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "only the `other` message reaches the LLM");
    assert_eq!(asked[0]["model"], "tiny");
    assert_eq!(
        asked[0]["messages"][1]["content"],
        "what are your opening hours"
    );
}

#[tokio::test]
async fn llm_label_outside_the_list_is_other_by_llm() {
    let (base, _fake) = fake_llm(Some(Ok("banana".into()))).await;
    let app = TestApp::spawn(&llm_config(&base, "2s")).await;
    app.post_json("sms", &sms("b1", "hmm").to_string()).await;
    app.wait_idle().await;
    let got = intents(&app).await;
    assert_eq!(got[0].1["label"], "other");
    assert_eq!(got[0].1["by"], "llm");
}

#[tokio::test]
async fn llm_error_or_timeout_falls_back_without_losing_the_message() {
    let (base, _fake) = fake_llm(Some(Err(500))).await;
    let app = TestApp::spawn(&llm_config(&base, "2s")).await;
    app.post_json("sms", &sms("e1", "hmm").to_string()).await;
    app.wait_idle().await;
    let got = intents(&app).await;
    assert_eq!(got[0].1["label"], "other");
    assert_eq!(got[0].1["by"], "fallback");

    let (base, _fake) = fake_llm(None).await;
    let app = TestApp::spawn(&llm_config(&base, "300ms")).await;
    app.post_json("sms", &sms("t1", "hmm").to_string()).await;
    app.wait_idle().await;
    let all = app.all_messages().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["intent"]["label"], "other");
    assert_eq!(all[0]["intent"]["by"], "fallback");
    assert_eq!(all[0]["status"], "done");
}
