//! Conversations: a sliding `session_ttl` window per contact, looked up
//! through a coalescing cache.

use std::collections::HashSet;

use crate::helpers::{TestApp, batch, config_with};

fn from(guid: &str, number: &str) -> serde_json::Value {
    serde_json::json!({"message": "hi", "number": number, "guid": guid})
}

async fn lookups(app: &TestApp) -> u64 {
    // Exported from its first increment on.
    let n = app.metric("inlet_conversation_lookups_total", "").await;
    n.unwrap_or(0.0) as u64
}

#[tokio::test]
async fn a_burst_of_1000_messages_from_one_contact_is_one_conversation_with_few_lookups() {
    let app = TestApp::spawn(&config_with("")).await;
    for chunk in 0..10 {
        let items: Vec<_> = (0..100)
            .map(|i| from(&format!("b{chunk}-{i}"), "+15550001111"))
            .collect();
        assert_eq!(
            app.post_json("sms", &batch(&items)).await.1["accepted"],
            100
        );
    }
    app.wait_idle().await;
    let msgs = app.all_messages().await;
    assert_eq!(msgs.len(), 1000);
    let convs: HashSet<&str> = msgs
        .iter()
        .map(|m| m["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(convs.len(), 1, "one conversation");
    assert!(convs.iter().next().unwrap().starts_with("conv_"));
    // None for the first transaction (a contact not seen before), at most
    // one for each later one.
    let n = lookups(&app).await;
    assert!(n <= 10, "{n} store lookups for 1000 messages");
}

#[tokio::test]
async fn contacts_new_or_returning_cost_no_lookup_and_a_restart_continues_their_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with("");
    let mut app = TestApp::spawn_in(dir.path(), &config).await;
    let items: Vec<_> = (0..50)
        .map(|i| from(&format!("n{i}"), &format!("+1555000{i:04}")))
        .collect();
    for item in &items {
        let body = serde_json::to_string(item).unwrap();
        assert_eq!(app.post_json("sms", &body).await.1["accepted"], 1);
    }
    app.wait_idle().await;
    assert_eq!(lookups(&app).await, 0, "50 contacts never seen before");
    let first = app.all_messages().await;
    let convs: HashSet<&str> = first
        .iter()
        .map(|m| m["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(convs.len(), 50, "one conversation each");
    // A returning contact, in a later transaction: known in memory.
    app.post_json("sms", &batch(&[from("back", "+15550000003")]))
        .await;
    app.wait_idle().await;
    assert_eq!(lookups(&app).await, 0, "a returning contact");
    let first = app.all_messages().await;
    let conv_of = |msgs: &[serde_json::Value], guid: &str| {
        msgs.iter().find(|m| m["external_id"] == guid).unwrap()["conversation_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(conv_of(&first, "back"), conv_of(&first, "n3"));
    app.terminate();

    // After a restart the contacts and their conversations are known again
    // (from the file): their next messages continue them, still without a
    // lookup.
    let app = TestApp::spawn_in(dir.path(), &config).await;
    app.post_json(
        "sms",
        &batch(&[from("again", "+15550000007"), from("new", "+15559999999")]),
    )
    .await;
    app.wait_idle().await;
    assert_eq!(lookups(&app).await, 0);
    let after = app.all_messages().await;
    assert_eq!(conv_of(&after, "again"), conv_of(&first, "n7"));
    assert!(!convs.contains(conv_of(&after, "new").as_str()));
}

#[tokio::test]
async fn contacts_get_their_own_conversations_and_a_gap_past_the_ttl_opens_a_new_one() {
    let app = TestApp::spawn(&config_with("[conversations]\nsession_ttl = \"1s\"\n")).await;
    app.post_json(
        "sms",
        &batch(&[from("a1", "+15550000001"), from("b1", "+15550000002")]),
    )
    .await;
    app.wait_idle().await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    app.post_json("sms", &batch(&[from("a2", "+15550000001")]))
        .await;
    app.wait_idle().await;
    let msgs = app.all_messages().await;
    let conv = |g: &str| {
        msgs.iter().find(|m| m["external_id"] == g).unwrap()["conversation_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(conv("a1"), conv("b1"), "different contacts");
    assert_ne!(conv("a1"), conv("a2"), "gap longer than session_ttl");
}
