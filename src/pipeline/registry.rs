//! Builds the configured `forward` and `reply` actions of every source,
//! keyed the way the workers look them up: (source name, action name).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{ActionConfig, ActionKind, Config};
use crate::providers::standard_webhooks::SigningKey;
use crate::store::{ClaimedJob, Store};

use super::forward::ForwardAction;
use super::outbound::destination_of;
use super::outbound::{DEFAULT_TIMEOUT, Outbound, SendOptions};
use super::reply::{ReplyAction, Sender};
use super::{Action, ActionError, ActionOutput};

/// Every configured action, by (source name, action name from
/// [`crate::config::SourceConfig::action_names`]).
pub fn build_actions(
    config: &Config,
    store: Arc<dyn Store>,
    outbound: Arc<Outbound>,
) -> HashMap<(String, String), Arc<dyn Action>> {
    let mut out: HashMap<(String, String), Arc<dyn Action>> = HashMap::new();
    for source in &config.sources {
        for (a, name) in source.actions.iter().zip(source.action_names()) {
            let action = build_one(a, store.clone(), outbound.clone()).unwrap_or_else(|error| {
                // Config validation rejects these first; if one slips
                // through, its jobs go dead with the reason instead of the
                // whole gateway refusing to start.
                tracing::error!(source = %source.name, action = %name, error = %error, "Action is misconfigured.");
                Arc::new(Misconfigured(error))
            });
            out.insert((source.name.clone(), name), action);
        }
    }
    out
}

/// The per-call options an action's config asks for.
pub fn send_options(a: &ActionConfig) -> SendOptions {
    SendOptions {
        timeout: a.timeout.map(|d| d.0).unwrap_or(DEFAULT_TIMEOUT),
        http2: a.http2,
        max_in_flight: a.max_in_flight(),
    }
}

fn build_one(
    a: &ActionConfig,
    store: Arc<dyn Store>,
    outbound: Arc<Outbound>,
) -> Result<Arc<dyn Action>, String> {
    let options = send_options(a);
    Ok(match a.kind {
        ActionKind::Forward => {
            let url = a.url.clone().ok_or("url is required for forward")?;
            Arc::new(ForwardAction {
                destination: destination_of(&url),
                url,
                key: a
                    .secret
                    .as_ref()
                    .map(|s| SigningKey::parse(s.expose()))
                    .transpose()
                    .map_err(|e| format!("secret: {e}"))?,
                options,
                outbound,
            })
        }
        ActionKind::Reply => {
            let sender = Sender::from_config(a).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|(k, m)| format!("{k}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            Arc::new(ReplyAction {
                templates: a.templates.clone(),
                destination: destination_of(&sender.url()),
                sender,
                options,
                store,
                outbound,
            })
        }
    })
}

struct Misconfigured(String);

#[async_trait]
impl Action for Misconfigured {
    async fn run(&self, _job: &ClaimedJob) -> Result<ActionOutput, ActionError> {
        Err(ActionError::Permanent {
            error: format!("misconfigured action: {}", self.0),
            destination: None,
            status_code: None,
        })
    }
}
