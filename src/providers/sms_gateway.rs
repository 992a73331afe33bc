//! `sms-gateway`: a generic SMS forwarder app posting JSON, one message
//! `{date, hour, time_received, message, number, guid}` or a batch
//! `{"messages":[...]}`, optionally signed with a generic HMAC of the raw
//! body (default `X-Signature: sha256=<hex>`). Dedup on `guid`.

use serde::Deserialize;
use serde_json::Value;

use crate::config::{ProviderKind, Secret, SignatureConfig, SourceConfig};
use crate::domain::{Channel, InboundMessage, MessageId, PhoneNumber};

use super::{
    ParseContext, Parsed, Provider, ProviderError, Verified, WebhookRequest, from_json, signature,
};

#[derive(Debug)]
pub struct SmsGateway {
    secret: Option<Secret>,
    signature: SignatureConfig,
}

impl SmsGateway {
    pub fn new(source: &SourceConfig) -> Self {
        Self {
            secret: source.secret.clone(),
            signature: source.signature.clone().unwrap_or_default(),
        }
    }
}

/// One message on the wire. Unknown fields are allowed (apps add some) and
/// kept in `raw`. The app's own timestamps are only type-checked here (a
/// wrong type is a 400 naming the field); they stay in `raw`.
#[derive(Debug, Deserialize)]
struct WireMessage {
    guid: String,
    number: String,
    message: Option<String>,
    #[serde(rename = "date")]
    _date: Option<String>,
    #[serde(rename = "hour")]
    _hour: Option<String>,
    #[serde(rename = "time_received")]
    _time_received: Option<String>,
}

impl Provider for SmsGateway {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SmsGateway
    }

    fn is_signed(&self) -> bool {
        self.secret.is_some()
    }

    fn verify<'a>(&self, req: WebhookRequest<'a>) -> Result<Verified<'a>, ProviderError> {
        if let Some(secret) = &self.secret {
            signature::verify_body_hmac(&req, &self.signature, secret.expose().as_bytes())?;
        }
        Ok(Verified::new(req))
    }

    fn parse(&self, req: Verified<'_>, ctx: ParseContext<'_>) -> Result<Parsed, ProviderError> {
        let body: Value = from_json(req.request().body)?;
        let (items, prefix) = match &body {
            Value::Object(o) if o.contains_key("messages") => match &o["messages"] {
                Value::Array(a) if a.is_empty() => {
                    return Err(ProviderError::InvalidPayload(
                        "field messages: empty batch".into(),
                    ));
                }
                Value::Array(a) => (a.iter().collect::<Vec<_>>(), "messages"),
                _ => {
                    return Err(ProviderError::InvalidPayload(
                        "field messages: expected an array of messages".into(),
                    ));
                }
            },
            Value::Object(_) => (vec![&body], ""),
            _ => {
                return Err(ProviderError::InvalidPayload(
                    "body must be a JSON object: a message or {\"messages\":[...]}".into(),
                ));
            }
        };
        let mut messages = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let at = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}[{i}]")
            };
            let wire: WireMessage = serde_path_to_error::deserialize(item).map_err(|e| {
                let inner = e.path().to_string();
                let loc = [at.as_str(), inner.as_str()]
                    .into_iter()
                    .filter(|p| !p.is_empty() && *p != ".")
                    .collect::<Vec<_>>()
                    .join(".");
                let loc = if loc.is_empty() {
                    "body".to_string()
                } else {
                    loc
                };
                ProviderError::InvalidPayload(format!("field {loc}: {}", e.inner()))
            })?;
            if wire.guid.trim().is_empty() {
                return Err(ProviderError::InvalidPayload(format!(
                    "field {}guid: must not be empty",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!("{at}.")
                    }
                )));
            }
            messages.push(InboundMessage {
                id: MessageId::generate(),
                source: ctx.source.to_string(),
                provider: ProviderKind::SmsGateway.as_str(),
                external_id: wire.guid.clone(),
                dedup_key: wire.guid,
                channel: Channel::Sms,
                from: PhoneNumber::parse(&wire.number),
                to: None,
                text: wire.message,
                media: Vec::new(),
                received_at: ctx.received_at.to_string(),
                raw: item.clone(),
            });
        }
        Ok(Parsed {
            messages,
            events: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::providers::testing::{self, is_invalid_signature};

    fn source(extra: &str) -> SourceConfig {
        testing::source("sms", "sms-gateway", extra)
    }

    fn run(p: &SmsGateway, headers: &HeaderMap, body: &str) -> Result<Parsed, ProviderError> {
        let req = testing::request("/hooks/sms", headers, body.as_bytes(), 0);
        testing::verify_and_parse(p, req, "sms")
    }

    const ONE: &str = r#"{"date":"2026-01-01","hour":"10:00","time_received":"1767261600","message":"Yes","number":"+1 555 123 4567","guid":"g-1"}"#;

    #[test]
    fn single_message_is_normalized() {
        let p = SmsGateway::new(&source(""));
        let parsed = run(&p, &HeaderMap::new(), ONE).unwrap();
        let m = &parsed.messages[0];
        assert_eq!(m.external_id, "g-1");
        assert_eq!(m.dedup_key, "g-1");
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+15551234567");
        assert_eq!(m.text.as_deref(), Some("Yes"));
        assert_eq!(m.channel, Channel::Sms);
        assert_eq!(m.raw["hour"], "10:00");
    }

    #[test]
    fn batch_gives_one_message_per_item() {
        let p = SmsGateway::new(&source(""));
        let body = format!(r#"{{"messages":[{ONE},{}]}}"#, ONE.replace("g-1", "g-2"));
        let parsed = run(&p, &HeaderMap::new(), &body).unwrap();
        let ids: Vec<_> = parsed
            .messages
            .iter()
            .map(|m| m.external_id.as_str())
            .collect();
        assert_eq!(ids, ["g-1", "g-2"]);
    }

    #[test]
    fn invalid_batch_item_names_the_field_and_rejects_the_whole_batch() {
        let p = SmsGateway::new(&source(""));
        let body = format!(r#"{{"messages":[{ONE},{{"number":"1","message":"x"}}]}}"#);
        let err = run(&p, &HeaderMap::new(), &body).unwrap_err();
        assert_eq!(
            err,
            ProviderError::InvalidPayload("field messages[1]: missing field `guid`".into())
        );
        let err = run(&p, &HeaderMap::new(), r#"{"guid":5,"number":"1"}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("field guid: invalid type"),
            "{err}"
        );
        let err = run(&p, &HeaderMap::new(), r#"{"messages":[]}"#).unwrap_err();
        assert!(err.to_string().contains("empty batch"));
    }

    #[test]
    fn signed_source_checks_the_generic_hmac() {
        let p = SmsGateway::new(&source("secret='k'"));
        let sig = signature::sign_body(&SignatureConfig::default(), b"k", ONE.as_bytes());
        let mut h = testing::headers([("x-signature", sig.as_str())]);
        assert!(run(&p, &h, ONE).is_ok());
        let tampered = ONE.replace("Yes", "No!");
        assert!(is_invalid_signature(run(&p, &h, &tampered)));
        assert!(is_invalid_signature(run(&p, &HeaderMap::new(), ONE)));
        h.append("x-signature", HeaderValue::from_str(&sig).unwrap());
        assert!(is_invalid_signature(run(&p, &h, ONE)));
    }

    #[test]
    fn configured_signature_header_algorithm_and_encoding_are_used() {
        let p = SmsGateway::new(&source(
            "secret='k'\nsignature={header='X-Hub', algorithm='sha1', encoding='base64', prefix=''}",
        ));
        let cfg = SignatureConfig {
            header: "X-Hub".into(),
            algorithm: crate::config::HmacAlgorithm::Sha1,
            encoding: crate::config::SignatureEncoding::Base64,
            prefix: String::new(),
        };
        let sig = signature::sign_body(&cfg, b"k", ONE.as_bytes());
        let h = testing::headers([("x-hub", sig.as_str())]);
        assert!(run(&p, &h, ONE).is_ok());
    }
}
