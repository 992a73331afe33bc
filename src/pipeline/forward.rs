//! The `forward` action: POST the normalized message (SPEC §4) to the
//! user's endpoint with Standard Webhooks headers. `webhook-id` is the
//! message id, the same on every retry, so the receiver can deduplicate;
//! `webhook-timestamp` is the time of this attempt; `webhook-signature` is
//! sent when the action has a `whsec_` secret.

use std::sync::Arc;

use async_trait::async_trait;

use crate::providers::standard_webhooks::{SigningKey, sign};
use crate::store::ClaimedJob;

use super::outbound::{Outbound, SendOptions};
use super::{Action, ActionError, ActionOutput};

pub struct ForwardAction {
    pub url: String,
    /// `scheme://host:port` of `url`, worked out once for breaker checks.
    pub destination: Option<String>,
    /// Signs deliveries when set.
    pub key: Option<SigningKey>,
    pub options: SendOptions,
    pub outbound: Arc<Outbound>,
}

#[async_trait]
impl Action for ForwardAction {
    fn blocked_for(&self) -> Option<std::time::Duration> {
        self.outbound.blocked_for(self.destination.as_deref()?)
    }

    async fn run(&self, job: &ClaimedJob) -> Result<ActionOutput, ActionError> {
        let body = serde_json::to_vec(&job.message).map_err(|e| ActionError::Permanent {
            error: format!("cannot serialize the message: {e}"),
            destination: None,
            status_code: None,
        })?;
        let id = job
            .message
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or(&job.message_id)
            .to_string();
        let timestamp = unix_now();
        let signature = self.key.as_ref().map(|k| sign(k, &id, timestamp, &body));
        let delivered = self
            .outbound
            .send(&self.url, &self.options, |client| {
                let req = client
                    .post(&self.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", timestamp.to_string());
                match signature {
                    Some(sig) => req.header("webhook-signature", sig),
                    None => req,
                }
                .body(body)
            })
            .await?;
        Ok(ActionOutput {
            destination: Some(delivered.destination),
            status_code: Some(delivered.status),
            ..Default::default()
        })
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
