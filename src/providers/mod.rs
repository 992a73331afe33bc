//! Provider adapters: one module per provider, each turning a raw request
//! (bytes, headers, URL) into verified, normalized domain values.
//!
//! Every adapter has the same shape ([`Provider`]): check the content type,
//! `verify` the request (which yields a [`Verified`] token), `parse` the
//! verified request into [`Parsed`] messages and events, and render the
//! provider's expected success body. Adapters do no I/O and know nothing of
//! HTTP status codes or SQL: `http::error` maps [`ProviderError`] to statuses.

pub mod android_sms_gateway;
pub mod evolution;
pub mod respondio;
pub mod signature;
pub mod sms_gateway;
pub mod standard_webhooks;
pub mod twilio;
pub mod whatsapp_cloud;

#[cfg(test)]
pub(crate) mod testing;

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::{HeaderMap, Method};

use crate::config::{ProviderKind, SourceConfig};
use crate::domain::{InboundEvent, InboundMessage};

/// A request as received, before verification. `body` is the raw bytes
/// every signature is computed over.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    pub method: &'a Method,
    /// Path and query exactly as received, e.g. `/hooks/sms?x=1`.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// `server.public_url` without a trailing slash (Twilio signs the full URL).
    pub public_url: &'a str,
    /// Unix seconds, injected so timestamp tolerance is testable.
    pub now: i64,
}

impl<'a> WebhookRequest<'a> {
    /// The single value of a header; `Err` when it is repeated, since two
    /// signature headers are an attack or a bug, never something to pick from.
    pub fn header(&self, name: &str) -> Result<Option<&'a str>, ProviderError> {
        let mut it = self.headers.get_all(name).iter();
        let Some(first) = it.next() else {
            return Ok(None);
        };
        if it.next().is_some() {
            return Err(ProviderError::InvalidSignature(format!(
                "header {name} appears more than once"
            )));
        }
        first
            .to_str()
            .map(Some)
            .map_err(|_| ProviderError::InvalidSignature(format!("header {name} is not ASCII")))
    }

    pub fn content_type(&self) -> Option<&'a str> {
        self.headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    pub fn query(&self) -> &'a str {
        self.path_and_query
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
    }
}

/// Proof that [`Provider::verify`] accepted a request; only `verify` makes one.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    req: WebhookRequest<'a>,
}

impl<'a> Verified<'a> {
    /// For adapters' `verify` implementations.
    pub fn new(req: WebhookRequest<'a>) -> Self {
        Self { req }
    }
    pub fn request(&self) -> &WebhookRequest<'a> {
        &self.req
    }
}

/// What one request carried.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    pub messages: Vec<InboundMessage>,
    pub events: Vec<InboundEvent>,
}

/// Facts about the receiving side an adapter needs to normalize.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext<'a> {
    pub source: &'a str,
    /// Written into each message's `received_at`.
    pub received_at: crate::domain::ReceivedAt,
}

/// The success body a provider expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessBody {
    pub content_type: &'static str,
    pub body: Cow<'static, str>,
}

impl SuccessBody {
    pub fn json(accepted: usize, duplicates: usize) -> Self {
        // One message a request is the usual case: its two answers are
        // constants, neither formatted nor allocated per request.
        let body = match (accepted, duplicates) {
            (1, 0) => Cow::Borrowed(r#"{"status":"received","accepted":1,"duplicates":0}"#),
            (0, 1) => Cow::Borrowed(r#"{"status":"received","accepted":0,"duplicates":1}"#),
            _ => Cow::Owned(format!(
                r#"{{"status":"received","accepted":{accepted},"duplicates":{duplicates}}}"#
            )),
        };
        Self {
            content_type: "application/json",
            body,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The body does not parse as this provider's payload; names the field.
    #[error("{0}")]
    InvalidPayload(String),
    /// Signature missing, wrong, or outside the time tolerance.
    #[error("{0}")]
    InvalidSignature(String),
    /// A GET handshake with a wrong token or mode.
    #[error("{0}")]
    VerificationFailed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// This provider has no GET endpoint.
    #[error("{0}")]
    MethodNotAllowed(String),
}

/// One provider adapter. Implementations are pure: no I/O, no clock
/// (the request carries `now`).
pub trait Provider: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> ProviderKind;

    /// 415 unless the content type is one this provider accepts.
    fn check_content_type(&self, req: &WebhookRequest<'_>) -> Result<(), ProviderError> {
        check_json_content_type(req.content_type())
    }

    /// Checks the signature (or the token) over the raw request.
    fn verify<'a>(&self, req: WebhookRequest<'a>) -> Result<Verified<'a>, ProviderError>;

    /// Normalizes a verified request. A batch with one invalid message is
    /// an error as a whole.
    fn parse(&self, req: Verified<'_>, ctx: ParseContext<'_>) -> Result<Parsed, ProviderError>;

    fn success_body(&self, accepted: usize, duplicates: usize) -> SuccessBody {
        SuccessBody::json(accepted, duplicates)
    }

    /// A `GET` on the hook (Meta's verification handshake). The `Ok` value
    /// is the plain-text body to answer.
    fn handshake(&self, _query: &str) -> Result<String, ProviderError> {
        Err(ProviderError::MethodNotAllowed(format!(
            "provider {} accepts POST only",
            self.kind().as_str()
        )))
    }

    /// Whether a source without a secret accepts unsigned requests; the
    /// server warns at start for those.
    fn is_signed(&self) -> bool;

    /// The body as the rejections log may keep it: adapters whose payloads
    /// carry a credential (Evolution's `apikey` field) blank it out.
    fn redact_body<'a>(&self, body: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        std::borrow::Cow::Borrowed(body)
    }
}

/// Builds the adapter for a configured source.
pub fn build(source: &SourceConfig) -> Arc<dyn Provider> {
    match source.provider {
        ProviderKind::SmsGateway => Arc::new(sms_gateway::SmsGateway::new(source)),
        ProviderKind::AndroidSmsGateway => {
            Arc::new(android_sms_gateway::AndroidSmsGateway::new(source))
        }
        ProviderKind::Evolution => Arc::new(evolution::Evolution::new(source)),
        ProviderKind::StandardWebhooks => {
            Arc::new(standard_webhooks::StandardWebhooks::new(source))
        }
        ProviderKind::Twilio => Arc::new(twilio::Twilio::new(source)),
        ProviderKind::WhatsappCloud => Arc::new(whatsapp_cloud::WhatsappCloud::new(source)),
        ProviderKind::Respondio => Arc::new(respondio::Respondio::new(source)),
    }
}

/// `application/json` with any charset, `+json` types, or no content type.
pub fn check_json_content_type(ct: Option<&str>) -> Result<(), ProviderError> {
    match ct {
        None => Ok(()),
        Some(ct) if is_json(ct) => Ok(()),
        Some(ct) => Err(ProviderError::UnsupportedMediaType(format!(
            "content type {ct:?} is not accepted; send application/json"
        ))),
    }
}

/// The media type without parameters, as sent (compare it ignoring ASCII
/// case: media types are case-insensitive).
pub fn essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

pub fn is_json(ct: &str) -> bool {
    let e = essence(ct).as_bytes();
    let (prefix, suffix) = (b"application/".as_slice(), b"+json".as_slice());
    e.eq_ignore_ascii_case(b"application/json")
        || (e.len() >= prefix.len() + suffix.len()
            && e[..prefix.len()].eq_ignore_ascii_case(prefix)
            && e[e.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
}

/// Deserializes JSON, naming the offending field in the error.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ProviderError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ProviderError::InvalidPayload(format!("body is not valid JSON: {}", e.inner()))
        } else {
            ProviderError::InvalidPayload(format!("field {path}: {}", e.inner()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_told_apart_ignoring_case_and_parameters() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;",
            "application/vnd.api+json",
            "APPLICATION/CLOUDEVENTS+JSON",
            "application/+json",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "",
            "text/json",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "application+json",
            "applicatio/n+json",
            "application/é+json",
            "é",
        ] {
            assert_eq!(is_json(ct), ct == "application/é+json", "{ct}");
        }
        assert_eq!(essence("Text/Plain; charset=utf-8"), "Text/Plain");
    }

    #[test]
    fn the_single_message_answers_are_the_formatted_ones() {
        for (a, d) in [(1, 0), (0, 1), (2, 3), (0, 0)] {
            let formatted = format!(r#"{{"status":"received","accepted":{a},"duplicates":{d}}}"#);
            assert_eq!(SuccessBody::json(a, d).body, formatted);
        }
    }
}
