//! The optional OpenAI-compatible classifier, asked only when the rules say
//! `other`. It has its own timeout and breaker (through [`Outbound`]); on
//! any failure the message keeps `other` with `by = fallback`, and
//! processing goes on — the LLM can never hold a message back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::LlmConfig;
use crate::domain::{Intent, IntentBy};

use super::action::FallbackClassifier;
use super::outbound::{Outbound, SendOptions};

/// Confidence given to an LLM label: below the keyword rules'.
const LLM_CONFIDENCE: f64 = 0.7;

pub struct LlmClassifier {
    url: String,
    api_key: Option<String>,
    model: String,
    labels: Vec<String>,
    timeout: Duration,
    outbound: Arc<Outbound>,
}

impl LlmClassifier {
    pub fn new(config: &LlmConfig, outbound: Arc<Outbound>) -> Self {
        Self {
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
            api_key: config.api_key.as_ref().map(|k| k.expose().to_string()),
            model: config.model.clone(),
            labels: config.labels.clone(),
            timeout: config.timeout.0,
            outbound,
        }
    }

    fn request_body(&self, text: &str) -> Value {
        json!({
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": format!(
                    "Classify the intent of the user's message. Answer with exactly one of these labels and nothing else: {}.",
                    self.labels.join(", "))},
                {"role": "user", "content": text},
            ],
        })
    }

    /// The label from `choices[0].message.content`, trimmed and matched
    /// case-insensitively against `labels`; anything else is `other`.
    fn label_from(&self, answer: &Value) -> Option<String> {
        let content = answer
            .pointer("/choices/0/message/content")?
            .as_str()?
            .trim();
        Some(
            self.labels
                .iter()
                .find(|l| l.eq_ignore_ascii_case(content))
                .cloned()
                .unwrap_or_else(|| "other".to_string()),
        )
    }
}

#[async_trait::async_trait]
impl FallbackClassifier for LlmClassifier {
    async fn classify(&self, text: &str) -> Intent {
        let body = self.request_body(text);
        let api_key = self.api_key.clone();
        let sent = self
            .outbound
            .send(
                &self.url,
                &SendOptions {
                    timeout: self.timeout,
                    ..Default::default()
                },
                move |client| {
                    let req = client.post(self.url.as_str()).json(&body);
                    match &api_key {
                        Some(k) => req.bearer_auth(k),
                        None => req,
                    }
                },
            )
            .await;
        let label = match sent {
            Ok(delivered) => serde_json::from_slice::<Value>(&delivered.body)
                .ok()
                .and_then(|v| self.label_from(&v)),
            Err(e) => {
                tracing::info!(error = %e, "LLM classifier unavailable; keeping `other`.");
                None
            }
        };
        match label {
            Some(label) => Intent {
                label,
                confidence: LLM_CONFIDENCE,
                by: IntentBy::Llm,
            },
            None => Intent {
                label: "other".into(),
                confidence: 0.0,
                by: IntentBy::Fallback,
            },
        }
    }
}
