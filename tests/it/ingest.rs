//! Acceptance and dedup over real HTTP against the real binary.

use std::collections::HashMap;

use serde_json::json;

use crate::helpers::{TestApp, batch, config_with, sms};

#[tokio::test]
async fn single_message_is_accepted_stored_and_classified() {
    let app = TestApp::spawn(&config_with("")).await;
    let (status, body) = app.post_json("sms", &sms("g-1", "STOP").to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "received", "accepted": 1, "duplicates": 0})
    );
    app.wait_idle().await;
    let msgs = app.all_messages().await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m["external_id"], "g-1");
    assert_eq!(m["source"], "sms");
    assert_eq!(m["provider"], "sms-gateway");
    assert_eq!(m["channel"], "sms");
    assert_eq!(m["from"], "+15551234567");
    assert_eq!(m["text"], "STOP");
    assert_eq!(m["status"], "done");
    assert_eq!(m["intent"]["label"], "opt_out");
    assert_eq!(m["intent"]["by"], "rules");
    assert_eq!(m["raw"]["guid"], "g-1");
    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    let detail = app
        .admin(&format!("/v1/messages/{}", m["id"].as_str().unwrap()))
        .await;
    assert_eq!(detail["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(detail["attempts"][0]["action"], "classify");
    assert_eq!(detail["attempts"][0]["outcome"], "success");
}

#[tokio::test]
async fn batch_counts_each_message_and_a_guid_repeated_inside_it_once() {
    let app = TestApp::spawn(&config_with("")).await;
    let body = batch(&[
        sms("a", "hi"),
        sms("b", "yes"),
        sms("a", "hi again"),
        sms("c", "no"),
        sms("a", "x"),
    ]);
    let (status, resp) = app.post_json("sms", &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        resp,
        json!({"status": "received", "accepted": 3, "duplicates": 2})
    );
    app.wait_idle().await;
    let texts: HashMap<String, String> = app
        .all_messages()
        .await
        .iter()
        .map(|m| {
            (
                m["external_id"].as_str().unwrap().into(),
                m["text"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(texts.len(), 3);
    assert_eq!(texts["a"], "hi", "the first occurrence is the one kept");
}

#[tokio::test]
async fn duplicate_across_two_requests_is_counted_as_duplicate() {
    let app = TestApp::spawn(&config_with("")).await;
    let one = sms("dup-1", "hello").to_string();
    assert_eq!(app.post_json("sms", &one).await.1["accepted"], 1);
    let (status, resp) = app.post_json("sms", &one).await;
    assert_eq!(status, 200);
    assert_eq!(
        resp,
        json!({"status": "received", "accepted": 0, "duplicates": 1})
    );
    app.wait_idle().await;
    assert_eq!(app.all_messages().await.len(), 1);
}

#[tokio::test]
async fn key_older_than_the_dedup_window_is_accepted_again() {
    let app =
        TestApp::spawn(&config_with("").replace("[store]\n", "[store]\ndedup_window = \"2s\"\n"))
            .await;
    let one = sms("w-1", "hello").to_string();
    assert_eq!(app.post_json("sms", &one).await.1["accepted"], 1);
    assert_eq!(app.post_json("sms", &one).await.1["duplicates"], 1);
    // The window is wide enough that a stalled machine does not end it
    // between the first two posts.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(app.post_json("sms", &one).await.1["accepted"], 1);
}

#[tokio::test]
async fn sixty_four_concurrent_clients_get_exact_counts() {
    let app = TestApp::spawn(&config_with("")).await;
    let mut tasks = Vec::new();
    for client in 0..64 {
        let url = app.url("/hooks/sms");
        tasks.push(tokio::spawn(async move {
            // Each client has its own connection, like 64 provider retries.
            let http = reqwest::Client::new();
            // Five own messages plus one every client shares.
            let mut items: Vec<_> = (0..5)
                .map(|i| sms(&format!("c{client}-{i}"), "hi"))
                .collect();
            items.push(sms("shared", "hi"));
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(batch(&items))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        let (a, d) = (
            r["accepted"].as_u64().unwrap(),
            r["duplicates"].as_u64().unwrap(),
        );
        assert!(a == 6 && d == 0 || a == 5 && d == 1, "{r}");
        accepted += a;
        duplicates += d;
    }
    assert_eq!(accepted, 64 * 5 + 1);
    assert_eq!(duplicates, 63);
    app.wait_idle().await;
    assert_eq!(app.all_messages().await.len(), 64 * 5 + 1);
}

#[tokio::test]
async fn extra_rules_from_config_classify_first() {
    let app = TestApp::spawn(&config_with(
        "[classifier]\nrules = [ { pattern = \"(?i)^\\\\s*reschedule\", intent = \"reschedule\" } ]\n",
    ))
    .await;
    app.post_json(
        "sms",
        &batch(&[sms("r1", "Reschedule to Monday"), sms("r2", "yes")]),
    )
    .await;
    app.wait_idle().await;
    let labels: HashMap<String, String> = app
        .all_messages()
        .await
        .iter()
        .map(|m| {
            (
                m["external_id"].as_str().unwrap().into(),
                m["intent"]["label"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(labels["r1"], "reschedule");
    assert_eq!(labels["r2"], "affirmative");
}

#[tokio::test]
async fn embedded_defaults_serve_the_sms_source() {
    // `inlet serve` with no config: only the listen address is overridden.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inlet"))
        .arg("serve")
        .current_dir(dir.path())
        .env("INLET_SERVER__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .next()
            .unwrap()
            .unwrap()
    })
    .await
    .unwrap();
    let addr = line
        .strip_prefix("inlet listening on ")
        .unwrap()
        .to_string();
    let r = reqwest::Client::new()
        .post(format!("{addr}/hooks/sms"))
        .json(&sms("d-1", "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.path().join("inlet-data/inlet.db").exists());
    let _ = child.kill();
    let _ = child.wait();
}

/// A client that speaks HTTP/2 in the clear from its first byte is served
/// too, on the webhook path and on the router's.
#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let app = TestApp::spawn(&config_with("")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(app.url("/hooks/sms"))
        .header("content-type", "application/json")
        .body(sms("h2-1", "hello").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["accepted"], 1);
    let r = h2.get(app.url("/health")).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
}
