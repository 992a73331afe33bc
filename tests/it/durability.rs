//! What survives restarts, crashes and a locked database.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestApp, config_with, sms};

#[tokio::test]
async fn duplicate_after_a_restart_is_still_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with("");
    let mut app = TestApp::spawn_in(dir.path(), &config).await;
    let one = sms("r-1", "hello").to_string();
    assert_eq!(app.post_json("sms", &one).await.1["accepted"], 1);
    assert!(app.terminate().success());
    let app = TestApp::spawn_in(dir.path(), &config).await;
    let (status, resp) = app.post_json("sms", &one).await;
    assert_eq!(status, 200);
    assert_eq!(
        resp,
        json!({"status": "received", "accepted": 0, "duplicates": 1})
    );
}

#[tokio::test]
async fn kill_9_while_streaming_loses_no_acknowledged_message_and_runs_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with("");
    let mut app = TestApp::spawn_in(dir.path(), &config).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let url = app.url("/hooks/sms");
    let mut clients = Vec::new();
    for c in 0..8 {
        let (acked, url) = (acked.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..100_000 {
                let guid = format!("k{c}-{i}");
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(sms(&guid, "yes").to_string())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(guid),
                    // Killed mid-request: not acknowledged, may or may not be stored.
                    _ => return,
                }
            }
        }));
    }
    // Let the stream run until a few hundred messages are acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 400 {
        assert!(std::time::Instant::now() < deadline, "stream too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.kill9();
    for c in clients {
        c.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();

    let app = TestApp::spawn_in(dir.path(), &config).await;
    app.wait_idle().await;
    let stored = app.all_messages().await;
    let stored_ids: HashSet<&str> = stored
        .iter()
        .map(|m| m["external_id"].as_str().unwrap())
        .collect();
    for guid in &acked {
        assert!(
            stored_ids.contains(guid.as_str()),
            "acknowledged {guid} was lost"
        );
    }
    for m in &stored {
        assert_eq!(m["intent"]["label"], "affirmative", "{m}");
        assert_eq!(m["status"], "done");
        let detail = app
            .admin(&format!("/v1/messages/{}", m["id"].as_str().unwrap()))
            .await;
        let classify: Vec<_> = detail["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "classify")
            .collect();
        assert_eq!(classify.len(), 1, "classified exactly once: {detail}");
    }
    // A retry of any acknowledged message after the crash is a duplicate.
    let (_, resp) = app
        .post_json("sms", &sms(&acked[0], "yes").to_string())
        .await;
    assert_eq!(resp["duplicates"], 1);
}

#[tokio::test]
async fn health_answers_while_another_connection_holds_the_database_locked() {
    // Acknowledged messages wait in the journal while SQLite is locked, up
    // to `store.max_backlog` of them; past that, ingest is refused.
    let app = TestApp::spawn(&config_with("").replace(
        "busy_timeout = \"500ms\"",
        "busy_timeout = \"200ms\"\nmax_backlog = 2",
    ))
    .await;
    assert_eq!(
        app.post_json("sms", &sms("before", "hi").to_string())
            .await
            .0,
        200
    );
    app.wait_idle().await;

    let db = app.db_path();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();

    // Durable in the journal: acknowledged although SQLite cannot take them.
    for guid in ["during-1", "during-2"] {
        let (status, body) = app.post_json("sms", &sms(guid, "hi").to_string()).await;
        assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    }
    // Dedup holds for messages only the journal has.
    let (_, dup) = app
        .post_json("sms", &sms("during-1", "hi").to_string())
        .await;
    assert_eq!(dup["duplicates"], 1, "{dup}");

    // /health never touches the store: it answers, and counts the backlog.
    let h = app
        .client
        .get(app.url("/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("/health must answer while the store is locked");
    assert_eq!(h.status(), 200);
    let h: serde_json::Value = h.json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["workers"], 16);
    assert_eq!(h["queue"]["pending"], 2, "{h}");

    // The backlog is full: refused with 503 and Retry-After, not acknowledged.
    let r = app
        .client
        .post(app.url("/hooks/sms"))
        .header("content-type", "application/json")
        .body(sms("during-3", "hi").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_backlog"),
        "{body}"
    );
    assert_eq!(app.ready_status().await, 503);

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    app.wait_idle().await;
    assert_eq!(app.ready_status().await, 200);
    let (status, resp) = app
        .post_json("sms", &sms("during-3", "hi").to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(resp["accepted"], 1, "the refused message was not stored");
    app.wait_idle().await;
    let stored: Vec<String> = app
        .all_messages()
        .await
        .iter()
        .map(|m| m["external_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, ["during-3", "during-2", "during-1", "before"]);
}

#[tokio::test]
async fn sigterm_finishes_and_exits_zero() {
    let mut app = TestApp::spawn(&config_with("")).await;
    assert_eq!(
        app.post_json("sms", &sms("t-1", "hi").to_string()).await.0,
        200
    );
    let status = app.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; stderr: {}",
        app.stderr()
    );
}

#[tokio::test]
async fn a_second_instance_on_the_same_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with("");
    let _first = TestApp::spawn_in(dir.path(), &config).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inlet"))
        .args(["serve", "--config", "inlet.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another inlet"));
}
