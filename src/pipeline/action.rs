//! The action interface every job runs through, and the built-in
//! `classify` action. Later actions (forward, reply, LLM) implement the
//! same trait; the worker needs no change for them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::Intent;
use crate::store::{CLASSIFY, ClaimedJob};

use super::RulesClassifier;

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
}

/// Classifies the message and, on success, enqueues the source's actions.
pub struct ClassifyAction {
    pub rules: RulesClassifier,
    /// Action names to enqueue after classification, per source.
    pub follow_ups: HashMap<String, Vec<String>>,
}

#[async_trait]
impl Action for ClassifyAction {
    async fn run(&self, job: &ClaimedJob) -> Result<ActionOutput, ActionError> {
        let text = job.message.get("text").and_then(|t| t.as_str());
        Ok(ActionOutput {
            set_intent: Some(self.rules.classify(text)),
            follow_ups: self
                .follow_ups
                .get(&job.source)
                .cloned()
                .unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// The registry the workers look actions up in: `classify`, then
/// `(source, action name)` for configured actions.
#[derive(Clone, Default)]
pub struct Actions {
    pub classify: Option<Arc<dyn Action>>,
    pub by_source: HashMap<(String, String), Arc<dyn Action>>,
}

impl Actions {
    pub fn get(&self, source: &str, action: &str) -> Option<Arc<dyn Action>> {
        if action == CLASSIFY {
            return self.classify.clone();
        }
        self.by_source
            .get(&(source.to_string(), action.to_string()))
            .cloned()
    }
}
