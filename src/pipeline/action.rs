//! The action interface every job runs through, and the built-in
//! `classify` action. Later actions (forward, reply, LLM) implement the
//! same trait; the worker needs no change for them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::Intent;
use crate::store::{CLASSIFY, ClaimedJob, Lane};

use super::RulesClassifier;
use super::conversations::Conversations;

/// What a successful run changes besides finishing the job; committed in
/// the same transaction as the attempt.
#[derive(Debug, Clone, Default)]
pub struct ActionOutput {
    pub set_intent: Option<Intent>,
    pub set_conversation: Option<String>,
    /// Jobs to enqueue for the same message.
    pub follow_ups: Vec<String>,
    /// `scheme://host:port` called, for the attempts log.
    pub destination: Option<String>,
    pub status_code: Option<u16>,
    /// Set when the action deliberately did nothing (no template, contact
    /// opted out): recorded as outcome `skipped` with this reason.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ActionError {
    /// Worth another attempt (timeouts, 5xx, 408, 429, connection errors).
    #[error("{error}")]
    Retryable {
        error: String,
        retry_after: Option<Duration>,
        destination: Option<String>,
        status_code: Option<u16>,
    },
    /// Never going to work (other 4xx, bad config): dead at once.
    #[error("{error}")]
    Permanent {
        error: String,
        destination: Option<String>,
        status_code: Option<u16>,
    },
    /// Not now, and not the job's fault (an open breaker, an earlier
    /// message still unclassified): run again after `after` without
    /// charging an attempt.
    #[error("deferred: {reason}")]
    Defer { reason: String, after: Duration },
}

#[async_trait]
pub trait Action: Send + Sync {
    async fn run(&self, job: &ClaimedJob) -> Result<ActionOutput, ActionError>;

    /// `Some(wait)` while this action cannot run at all (its destination's
    /// breaker is open): workers then leave its jobs untouched instead of
    /// claiming and deferring each of them.
    fn blocked_for(&self) -> Option<Duration> {
        None
    }
}

/// A classifier consulted when the rules find nothing (the LLM). It never
/// fails: on error it answers `other` with `by = fallback`.
#[async_trait]
pub trait FallbackClassifier: Send + Sync {
    async fn classify(&self, text: &str) -> Intent;
}

/// Classifies the message (rules, then the LLM for `other`), assigns its
/// conversation, and on success enqueues the source's actions.
pub struct ClassifyAction {
    pub rules: RulesClassifier,
    /// Asked only when the rules say `other`.
    pub llm: Option<Arc<dyn FallbackClassifier>>,
    pub conversations: Option<Conversations>,
    /// Action names to enqueue after classification, per source.
    pub follow_ups: HashMap<String, Vec<String>>,
}

#[async_trait]
impl Action for ClassifyAction {
    async fn run(&self, job: &ClaimedJob) -> Result<ActionOutput, ActionError> {
        let text = job.message.get("text").and_then(|t| t.as_str());
        let mut intent = self.rules.classify(text);
        if intent.label == "other"
            && let (Some(llm), Some(text)) = (&self.llm, text.filter(|t| !t.trim().is_empty()))
        {
            intent = llm.classify(text).await;
        }
        let contact = job.message.get("from").and_then(|f| f.as_str());
        // A replayed message stays in the conversation it was given.
        let assigned = job.message.get("conversation_id").and_then(|c| c.as_str());
        let conversation = match (assigned, &self.conversations, contact) {
            (Some(given), _, _) => Some(given.to_string()),
            (None, Some(convs), Some(contact)) => {
                let at = received_millis(&job.message);
                Some(convs.assign(&job.source, contact, at).await.map_err(|e| {
                    ActionError::Retryable {
                        error: format!("conversation lookup failed: {e}"),
                        retry_after: None,
                        destination: None,
                        status_code: None,
                    }
                })?)
            }
            _ => None,
        };
        Ok(ActionOutput {
            set_intent: Some(intent),
            set_conversation: conversation,
            follow_ups: self
                .follow_ups
                .get(&job.source)
                .cloned()
                .unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// The message's `received_at` in Unix milliseconds (now if unreadable).
fn received_millis(message: &serde_json::Value) -> crate::store::Millis {
    message
        .get("received_at")
        .and_then(|v| v.as_str())
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or_else(crate::store::now_millis)
}

/// The registry the workers look actions up in: `classify`, then
/// `(source, action name)` for configured actions.
#[derive(Clone, Default)]
pub struct Actions {
    pub classify: Option<Arc<dyn Action>>,
    pub by_source: HashMap<(String, String), Arc<dyn Action>>,
    /// Every configured source: each has a `classify` lane.
    pub sources: Vec<String>,
}

impl Actions {
    /// The lanes to claim from now, each allowed up to `limit` jobs, and
    /// the soonest a held-back lane opens again. A lane whose breaker is
    /// half-open gets one job (the trial); one that is open gets none.
    pub fn lanes(&self, limit: usize) -> (Vec<Lane>, Option<Duration>) {
        let mut lanes = Vec::new();
        let mut reopen: Option<Duration> = None;
        if self.classify.is_some() {
            for s in &self.sources {
                lanes.push(Lane {
                    source: s.clone(),
                    action: CLASSIFY.into(),
                    limit,
                });
            }
        }
        for ((source, action), a) in &self.by_source {
            match a.blocked_for() {
                Some(wait) => reopen = Some(reopen.map_or(wait, |r| r.min(wait))),
                None => lanes.push(Lane {
                    source: source.clone(),
                    action: action.clone(),
                    limit,
                }),
            }
        }
        (lanes, reopen)
    }

    /// Every configured lane, held back or not.
    pub fn all_lanes(&self) -> Vec<Lane> {
        let classify = self
            .sources
            .iter()
            .map(|s| (s.clone(), CLASSIFY.to_string()));
        let actions = self.by_source.keys().cloned();
        classify
            .chain(actions)
            .map(|(source, action)| Lane {
                source,
                action,
                limit: 0,
            })
            .collect()
    }

    pub fn get(&self, source: &str, action: &str) -> Option<Arc<dyn Action>> {
        if action == CLASSIFY {
            return self.classify.clone();
        }
        self.by_source
            .get(&(source.to_string(), action.to_string()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replayed_message_keeps_its_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(
            &dir.path().join("inlet.db"),
            Duration::from_secs(1),
            10,
        )
        .unwrap();
        let action = ClassifyAction {
            rules: RulesClassifier::new(&[]).unwrap(),
            llm: None,
            // With nothing stored for the contact, a lookup would open a
            // new conversation.
            conversations: Some(Conversations::new(Arc::new(store), Duration::from_secs(60))),
            follow_ups: HashMap::new(),
        };
        let job = ClaimedJob {
            job_id: 1,
            message_id: "msg_1".into(),
            source: "sms".into(),
            action: CLASSIFY.into(),
            attempts: 1,
            message: serde_json::json!({
                "text": "hi", "from": "+15550001", "conversation_id": "conv_given",
                "received_at": "2026-01-01T00:00:00Z"
            }),
        };
        let out = action.run(&job).await.unwrap();
        assert_eq!(out.set_conversation.as_deref(), Some("conv_given"));
    }
}
