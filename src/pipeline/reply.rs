//! The `reply` action: an auto-reply per intent (`templates`), sent through
//! the provider's send API (`via`: twilio, whatsapp-cloud, evolution,
//! sms-gateway).
//!
//! Opt-out (SPEC §4): the message that opts out still gets the `opt_out`
//! template and an `opt_in` message gets the `opt_in` template; every other
//! message is judged by the store against the contact's earlier messages.
//! While an earlier one is unclassified the job is deferred, so the order
//! of arrival, not of processing, decides.
//!
//! At most once per inbound message and action. Jobs run at least once, so
//! the send is fenced by the store: `begin_reply` records the intent to
//! send before the request leaves and `finish_reply` its result.
//! - Sent: later runs skip.
//! - Failed (the provider answered with an error, or the connection could
//!   not be opened): nothing was sent; the job is retried as usual.
//! - Unknown (a timeout or a broken connection after the request was
//!   written, or a crash between the two records): the contact may have
//!   the reply. It is not sent again; the job goes to the dead-letter queue
//!   with a note saying so, and replaying it will not resend either.
//!
//! The trade-off is deliberate: a lost auto-reply is cheaper than a
//! doubled one (and far cheaper than a doubled opt-out confirmation). The
//! window left is the time between the provider accepting the request and
//! us reading its answer; a timeout there loses the reply rather than
//! risking a second one. Closing it needs provider-side idempotency, and
//! none of the four APIs has it: Twilio's Messages API takes no
//! idempotency key (its `I-Twilio-Idempotency-Token` header is only on the
//! webhooks Twilio sends), Meta's Cloud API `/{phone-number-id}/messages`
//! has none (`biz_opaque_callback_data` is only echoed in status
//! webhooks), and Evolution API has none. For `sms-gateway`, a generic
//! endpoint often run by the user, we send `Idempotency-Key:
//! <message id>:<action>` so a receiver that honours it closes the window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::config::{ActionConfig, Secret};
use crate::store::{ClaimedJob, OptState, ReplyClaim, ReplyResult, Store, StoreError};

use super::outbound::{Failure, Outbound, Reached, SendOptions};
use super::{Action, ActionError, ActionOutput};

/// How long a reply waits for an earlier message of the same contact to be
/// classified before asking again.
const UNDECIDED_RETRY: Duration = Duration::from_secs(1);

pub const TWILIO_BASE_URL: &str = "https://api.twilio.com";
pub const WHATSAPP_CLOUD_BASE_URL: &str = "https://graph.facebook.com";
pub const WHATSAPP_CLOUD_API_VERSION: &str = "v21.0";

/// A provider send API and its credentials.
#[derive(Debug, Clone)]
pub enum Sender {
    Twilio {
        base_url: String,
        account_sid: String,
        auth_token: Secret,
        /// Default: the number the inbound message was sent to.
        from: Option<String>,
    },
    WhatsappCloud {
        base_url: String,
        api_version: String,
        phone_number_id: String,
        token: Secret,
    },
    Evolution {
        base_url: String,
        instance: String,
        api_key: Secret,
    },
    SmsGateway {
        url: String,
    },
}

/// The `via` values and the keys each requires (checked by config
/// validation, which calls [`Sender::from_config`]).
pub const VIAS: &[&str] = &["twilio", "whatsapp-cloud", "evolution", "sms-gateway"];

impl Sender {
    /// Reads `via` and its keys; `Err` lists `(key, problem)` pairs.
    pub fn from_config(a: &ActionConfig) -> Result<Self, Vec<(&'static str, String)>> {
        let mut missing = Vec::new();
        let mut need = |key: &'static str, v: Option<String>| {
            if v.as_deref().is_none_or(|s| s.trim().is_empty()) {
                missing.push((
                    key,
                    format!("required for via = {:?}", a.via.as_deref().unwrap_or("")),
                ));
            }
            v.unwrap_or_default()
        };
        let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
        let base = |v: &Option<String>, default: &str| {
            v.clone()
                .unwrap_or_else(|| default.to_string())
                .trim_end_matches('/')
                .to_string()
        };
        let sender = match a.via.as_deref() {
            Some("twilio") => Sender::Twilio {
                base_url: base(&a.base_url, TWILIO_BASE_URL),
                account_sid: need("account_sid", a.account_sid.clone()),
                auth_token: Secret::new(need("auth_token", secret(&a.auth_token))),
                from: a.from.clone(),
            },
            Some("whatsapp-cloud") => Sender::WhatsappCloud {
                base_url: base(&a.base_url, WHATSAPP_CLOUD_BASE_URL),
                api_version: a
                    .api_version
                    .clone()
                    .unwrap_or_else(|| WHATSAPP_CLOUD_API_VERSION.to_string()),
                phone_number_id: need("phone_number_id", a.phone_number_id.clone()),
                token: Secret::new(need("token", secret(&a.token))),
            },
            Some("evolution") => Sender::Evolution {
                base_url: need("base_url", a.base_url.clone())
                    .trim_end_matches('/')
                    .to_string(),
                instance: need("instance", a.instance.clone()),
                api_key: Secret::new(need("api_key", secret(&a.api_key))),
            },
            Some("sms-gateway") => Sender::SmsGateway {
                url: need("url", a.url.clone()),
            },
            Some(other) => {
                return Err(vec![(
                    "via",
                    format!(
                        "unknown sender {other:?}; expected one of {}",
                        VIAS.join(", ")
                    ),
                )]);
            }
            None => return Err(vec![("via", "required for reply".to_string())]),
        };
        if !missing.is_empty() {
            return Err(missing);
        }
        let url_key = match &sender {
            Sender::SmsGateway { .. } => "url",
            _ => "base_url",
        };
        if url::Url::parse(&sender.url()).is_err() {
            return Err(vec![(url_key, "not a URL".to_string())]);
        }
        Ok(sender)
    }

    /// The send endpoint.
    pub fn url(&self) -> String {
        match self {
            Sender::Twilio {
                base_url,
                account_sid,
                ..
            } => format!("{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json"),
            Sender::WhatsappCloud {
                base_url,
                api_version,
                phone_number_id,
                ..
            } => format!("{base_url}/{api_version}/{phone_number_id}/messages"),
            Sender::Evolution {
                base_url, instance, ..
            } => format!("{base_url}/message/sendText/{instance}"),
            Sender::SmsGateway { url } => url.clone(),
        }
    }
}

/// Who the reply goes to, worked out before anything is recorded.
struct Recipient {
    /// E.164, as the inbound `from`.
    number: String,
    whatsapp: bool,
    /// The number the inbound message was sent to, if known.
    inbound_to: Option<String>,
}

impl Recipient {
    fn digits(&self) -> String {
        self.number.chars().filter(|c| c.is_ascii_digit()).collect()
    }
}

pub struct ReplyAction {
    pub templates: BTreeMap<String, String>,
    pub sender: Sender,
    /// `scheme://host:port` of the send API, worked out once for breaker checks.
    pub destination: Option<String>,
    pub options: SendOptions,
    pub store: Arc<dyn Store>,
    pub outbound: Arc<Outbound>,
}

fn skipped(reason: impl Into<String>) -> Result<ActionOutput, ActionError> {
    Ok(ActionOutput {
        skipped: Some(reason.into()),
        ..Default::default()
    })
}

fn store_error(e: StoreError) -> ActionError {
    ActionError::Retryable {
        error: format!("store: {e}"),
        retry_after: None,
        destination: None,
        status_code: None,
    }
}

#[async_trait]
impl Action for ReplyAction {
    fn blocked_for(&self) -> Option<Duration> {
        self.outbound.blocked_for(self.destination.as_deref()?)
    }

    async fn run(&self, job: &ClaimedJob) -> Result<ActionOutput, ActionError> {
        let m = &job.message;
        let label = m
            .pointer("/intent/label")
            .and_then(Value::as_str)
            .unwrap_or("other");
        let Some(template) = self.templates.get(label) else {
            return skipped(format!("no template for intent {label}"));
        };
        let Some(from) = m
            .get("from")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return skipped("the message has no sender to reply to");
        };
        let recipient = Recipient {
            number: from.to_string(),
            whatsapp: m.get("channel").and_then(Value::as_str) == Some("whatsapp"),
            inbound_to: m
                .get("to")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        };
        let url = self.sender.url();
        let idempotency_key = format!("{}:{}", job.message_id, job.action);
        let request = send_request(&self.sender, &recipient, template, idempotency_key)?;

        if label != "opt_out" && label != "opt_in" {
            match self
                .store
                .opt_state(&job.source, from, &job.message_id)
                .await
                .map_err(store_error)?
            {
                OptState::Active => {}
                OptState::OptedOut => return skipped("contact opted out"),
                OptState::Undecided => {
                    return Err(ActionError::Defer {
                        reason: "an earlier message of this contact is not classified yet".into(),
                        after: UNDECIDED_RETRY,
                    });
                }
            }
        }

        match self
            .store
            .begin_reply(&job.message_id, &job.action)
            .await
            .map_err(store_error)?
        {
            ReplyClaim::Proceed => {}
            ReplyClaim::AlreadySent => return skipped("reply already sent"),
            ReplyClaim::Unknown => {
                return Err(ActionError::Permanent {
                    error: "an earlier attempt may have sent this reply (it crashed or timed out \
                            mid-send); not sending again, replies are at most once"
                        .into(),
                    destination: None,
                    status_code: None,
                });
            }
        }

        let result = self
            .outbound
            .try_send(&url, &self.options, |client| request.build(client, &url))
            .await;
        match result {
            Ok(d) => {
                let detail = provider_message_id(&d.body)
                    .map(|id| format!("HTTP {} id {id}", d.status))
                    .unwrap_or_else(|| format!("HTTP {}", d.status));
                self.finish(job, ReplyResult::Sent, detail).await;
                Ok(ActionOutput {
                    destination: Some(d.destination),
                    status_code: Some(d.status),
                    ..Default::default()
                })
            }
            Err(Failure {
                error,
                reached: Reached::No,
            }) => {
                self.finish(job, ReplyResult::Failed, error.to_string())
                    .await;
                Err(error)
            }
            Err(Failure {
                error,
                reached: Reached::Maybe,
            }) => {
                self.finish(job, ReplyResult::Unknown, error.to_string())
                    .await;
                let (destination, status_code) = match &error {
                    ActionError::Retryable {
                        destination,
                        status_code,
                        ..
                    }
                    | ActionError::Permanent {
                        destination,
                        status_code,
                        ..
                    } => (destination.clone(), *status_code),
                    ActionError::Defer { .. } => (None, None),
                };
                Err(ActionError::Permanent {
                    error: format!(
                        "{error}; the provider may have sent the reply, so it is not retried \
                         (replies are at most once)"
                    ),
                    destination,
                    status_code,
                })
            }
        }
    }
}

impl ReplyAction {
    /// Records a send's result. If this write fails the record stays
    /// "sending", which later runs read as unknown: never a second send.
    async fn finish(&self, job: &ClaimedJob, result: ReplyResult, detail: String) {
        if let Err(e) = self
            .store
            .finish_reply(&job.message_id, &job.action, result, Some(detail))
            .await
        {
            tracing::warn!(message = %job.message_id, action = %job.action, error = %e, "Cannot record the reply's result; it will not be sent again.");
        }
    }
}

/// The request `sender` needs to send `text` to `to`.
fn send_request(
    sender: &Sender,
    to: &Recipient,
    text: &str,
    idempotency_key: String,
) -> Result<SendRequest, ActionError> {
    Ok(match sender {
        Sender::Twilio {
            account_sid,
            auth_token,
            from,
            ..
        } => {
            let prefix = if to.whatsapp { "whatsapp:" } else { "" };
            let with_prefix = |n: &str| {
                if n.starts_with("whatsapp:") {
                    n.to_string()
                } else {
                    format!("{prefix}{n}")
                }
            };
            let Some(sender) = from.as_deref().or(to.inbound_to.as_deref()) else {
                return Err(ActionError::Permanent {
                    error: "no sender number: set `from` on the action (the inbound \
                                message has no `to`)"
                        .into(),
                    destination: None,
                    status_code: None,
                });
            };
            SendRequest::Form {
                basic: Some((account_sid.clone(), auth_token.clone())),
                fields: vec![
                    ("To", with_prefix(&to.number)),
                    ("From", with_prefix(sender)),
                    ("Body", text.to_string()),
                ],
            }
        }
        Sender::WhatsappCloud { token, .. } => SendRequest::Json {
            bearer: Some(token.clone()),
            headers: vec![],
            body: json!({
                "messaging_product": "whatsapp",
                "to": to.digits(),
                "type": "text",
                "text": {"body": text},
            }),
        },
        Sender::Evolution { api_key, .. } => SendRequest::Json {
            bearer: None,
            headers: vec![("apikey", api_key.expose().to_string())],
            body: json!({"number": to.digits(), "text": text}),
        },
        Sender::SmsGateway { .. } => SendRequest::Json {
            bearer: None,
            headers: vec![("idempotency-key", idempotency_key)],
            body: json!({"to": to.number, "message": text}),
        },
    })
}

/// A send request, built before anything is recorded so a request that
/// cannot be made never leaves an intent-to-send behind.
enum SendRequest {
    Form {
        basic: Option<(String, Secret)>,
        fields: Vec<(&'static str, String)>,
    },
    Json {
        bearer: Option<Secret>,
        headers: Vec<(&'static str, String)>,
        body: Value,
    },
}

impl SendRequest {
    fn build(&self, client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        match self {
            SendRequest::Form { basic, fields } => {
                let req = client.post(url).form(fields);
                match basic {
                    Some((user, pass)) => req.basic_auth(user, Some(pass.expose())),
                    None => req,
                }
            }
            SendRequest::Json {
                bearer,
                headers,
                body,
            } => {
                let mut req = client.post(url).json(body);
                if let Some(t) = bearer {
                    req = req.bearer_auth(t.expose());
                }
                for (k, v) in headers {
                    req = req.header(*k, v);
                }
                req
            }
        }
    }
}

/// The provider's id of the sent message, for the audit trail: Twilio's
/// `sid`, Meta's `messages[0].id`, Evolution's `key.id`, or a plain `id`.
fn provider_message_id(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    ["/sid", "/messages/0/id", "/key/id", "/id"]
        .iter()
        .find_map(|p| v.pointer(p).and_then(Value::as_str).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(toml: &str) -> ActionConfig {
        let c = crate::config::Config::from_toml(
            &format!(
                "[[sources]]\nname='a'\nprovider='twilio'\n[[sources.actions]]\ntype='reply'\n{toml}"
            ),
            &[],
        );
        match c {
            Ok(c) => c.sources[0].actions[0].clone(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn each_via_builds_its_endpoint() {
        let url = |t: &str| Sender::from_config(&action(t)).unwrap().url();
        assert_eq!(
            url("via='twilio'\naccount_sid='AC1'\nauth_token='t'"),
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
        );
        assert_eq!(
            url("via='whatsapp-cloud'\nphone_number_id='42'\ntoken='t'"),
            "https://graph.facebook.com/v21.0/42/messages"
        );
        assert_eq!(
            url("via='evolution'\nbase_url='http://evo:8080/'\ninstance='main'\napi_key='k'"),
            "http://evo:8080/message/sendText/main"
        );
        assert_eq!(
            url("via='sms-gateway'\nurl='http://gw/send'"),
            "http://gw/send"
        );
    }

    #[test]
    fn provider_ids_are_found_in_each_answer_shape() {
        assert_eq!(
            provider_message_id(br#"{"sid":"SM1"}"#).as_deref(),
            Some("SM1")
        );
        assert_eq!(
            provider_message_id(br#"{"messages":[{"id":"wamid.1"}]}"#).as_deref(),
            Some("wamid.1")
        );
        assert_eq!(
            provider_message_id(br#"{"key":{"id":"E1"}}"#).as_deref(),
            Some("E1")
        );
        assert_eq!(provider_message_id(b"ok"), None);
    }

    fn twilio_fields(from: Option<&str>, to: &Recipient) -> Vec<(&'static str, String)> {
        let sender = Sender::Twilio {
            base_url: TWILIO_BASE_URL.into(),
            account_sid: "AC1".into(),
            auth_token: Secret::new("t"),
            from: from.map(str::to_string),
        };
        match send_request(&sender, to, "hi", "k".into()) {
            Ok(SendRequest::Form { fields, .. }) => fields,
            Ok(_) => panic!("twilio sends a form"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn twilio_replies_on_the_inbound_channel_from_the_inbound_number() {
        let whatsapp = Recipient {
            number: "+15551234567".into(),
            whatsapp: true,
            inbound_to: Some("+15557654321".into()),
        };
        assert_eq!(
            twilio_fields(None, &whatsapp),
            [
                ("To", "whatsapp:+15551234567".to_string()),
                ("From", "whatsapp:+15557654321".to_string()),
                ("Body", "hi".to_string()),
            ]
        );
        let sms = Recipient {
            whatsapp: false,
            ..whatsapp
        };
        assert_eq!(
            twilio_fields(Some("+15550000000"), &sms)[1].1,
            "+15550000000"
        );
        let nowhere = Recipient {
            inbound_to: None,
            ..sms
        };
        let sender = Sender::Twilio {
            base_url: TWILIO_BASE_URL.into(),
            account_sid: "AC1".into(),
            auth_token: Secret::new("t"),
            from: None,
        };
        assert!(matches!(
            send_request(&sender, &nowhere, "hi", "k".into()),
            Err(ActionError::Permanent { .. })
        ));
    }
}
