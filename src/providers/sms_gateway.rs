//! `sms-gateway`: a generic SMS forwarder app posting JSON, one message
//! `{date, hour, time_received, message, number, guid}` or a batch
//! `{"messages":[...]}`, optionally signed with a generic HMAC of the raw
//! body (default `X-Signature: sha256=<hex>`). Dedup on `guid`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;

use crate::config::{ProviderKind, Secret, SignatureConfig, SourceConfig};
use crate::domain::{Channel, InboundMessage, MessageId, PhoneNumber, RawJson};

use super::{ParseContext, Parsed, Provider, ProviderError, Verified, WebhookRequest, signature};

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

/// A body (one message, or a batch when `messages` is there) or one item
/// of a batch. Unknown fields are allowed (apps add some) and kept in
/// `raw`. The app's own timestamps are only type-checked here (a wrong type
/// is a 400 naming the field); they stay in `raw`. Read in one pass
/// straight from the text (no `Value` tree); strings without escapes are
/// borrowed, not copied. Required fields are checked after the pass, so
/// that one pass also tells a batch from a message.
#[derive(Debug, Deserialize)]
struct Wire<'a> {
    /// `Some` whenever the key is there, even as `null`.
    #[serde(borrow, default, deserialize_with = "present")]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "text")]
    guid: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    number: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    message: Option<Cow<'a, str>>,
    #[serde(rename = "date", borrow, default, deserialize_with = "text")]
    _date: Option<Cow<'a, str>>,
    #[serde(rename = "hour", borrow, default, deserialize_with = "text")]
    _hour: Option<Cow<'a, str>>,
    #[serde(rename = "time_received", borrow, default, deserialize_with = "text")]
    _time_received: Option<Cow<'a, str>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// An optional string, borrowed from the body unless it has escapes.
/// (`#[serde(borrow)]` borrows a `Cow` field only when it is bare: inside
/// an `Option` every string was copied, six allocations a message.)
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<Text>::deserialize(d).map(|t| t.map(|t| t.0))
}

/// A message's fields, checked.
struct WireMessage<'a> {
    guid: Cow<'a, str>,
    number: Cow<'a, str>,
    message: Option<Cow<'a, str>>,
}

const NOT_AN_OBJECT: &str = "body must be a JSON object: a message or {\"messages\":[...]}";

fn invalid(why: impl Into<String>) -> ProviderError {
    ProviderError::InvalidPayload(why.into())
}

/// A serde_json error without its " at line L column C" (the field path
/// says where).
fn reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&at).map(str::to_string).unwrap_or(text)
}

/// Reads `json`: the body (`at` empty) or the batch item at `at`.
fn wire<'a>(json: &'a str, at: &str) -> Result<Wire<'a>, ProviderError> {
    // An object, not an array (which serde would take as a struct too).
    if !json.trim_start().starts_with('{') {
        let valid = serde_json::from_str::<serde::de::IgnoredAny>(json);
        return Err(match (at.is_empty(), valid) {
            (true, Err(e)) => invalid(format!("body is not valid JSON: {e}")),
            (true, Ok(_)) => invalid(NOT_AN_OBJECT),
            (false, _) => invalid(format!("field {at}: expected a message object")),
        });
    }
    // Parsed plainly first: tracking the path copies every key, so it is
    // done only to explain a failure.
    serde_json::from_str(json).map_err(|_| wire_error(json, at))
}

/// Why `json` could not be read, naming the field.
fn wire_error(json: &str, at: &str) -> ProviderError {
    let mut de = serde_json::Deserializer::from_str(json);
    let e = match serde_path_to_error::deserialize::<_, Wire>(&mut de) {
        Ok(_) => return invalid(format!("field {}: unreadable", loc(at, "."))),
        Err(e) => e,
    };
    let path = e.path().to_string();
    let inner = e.inner();
    match (at.is_empty(), path.as_str(), inner.classify()) {
        (true, _, Category::Syntax | Category::Eof | Category::Io) => {
            invalid(format!("body is not valid JSON: {inner}"))
        }
        _ => invalid(format!("field {}: {}", loc(at, &path), reason(inner))),
    }
}

/// Where an error is: the item's place in the batch and the field's path.
fn loc(at: &str, path: &str) -> String {
    let loc = [at, path]
        .into_iter()
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join(".");
    if loc.is_empty() { "body".into() } else { loc }
}

impl<'a> Wire<'a> {
    /// The message's required fields, or which one is missing or empty.
    fn message(self, at: &str) -> Result<WireMessage<'a>, ProviderError> {
        let missing =
            |name: &str| invalid(format!("field {}: missing field `{name}`", loc(at, ".")));
        let guid = self.guid.ok_or_else(|| missing("guid"))?;
        let number = self.number.ok_or_else(|| missing("number"))?;
        if guid.trim().is_empty() {
            return Err(invalid(format!(
                "field {}: must not be empty",
                loc(at, "guid")
            )));
        }
        Ok(WireMessage {
            guid,
            number,
            message: self.message,
        })
    }
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
        let body = std::str::from_utf8(req.request().body)
            .map_err(|e| invalid(format!("body is not valid JSON: not UTF-8 ({e})")))?;
        let top = wire(body, "")?;
        let message = |raw: RawJson, wire: WireMessage| InboundMessage {
            id: MessageId::generate(),
            source: ctx.source.to_string(),
            provider: ProviderKind::SmsGateway.as_str(),
            external_id: wire.guid.into_owned(),
            dedup_key: None,
            channel: Channel::Sms,
            from: PhoneNumber::parse(&wire.number),
            to: None,
            text: wire.message.map(Cow::into_owned),
            media: Vec::new(),
            received_at: ctx.received_at.to_string(),
            raw,
        };
        let messages = match top.messages {
            // `wire` read the whole body: it is one JSON object. (No list
            // of items first: that was an allocation on every request.)
            None => vec![message(RawJson::from_parsed_body(body), top.message("")?)],
            Some(list) => {
                let list: Vec<&RawValue> = serde_json::from_str(list.get())
                    .map_err(|_| invalid("field messages: expected an array of messages"))?;
                if list.is_empty() {
                    return Err(invalid("field messages: empty batch"));
                }
                let mut messages = Vec::with_capacity(list.len());
                for (i, item) in list.into_iter().enumerate() {
                    let at = format!("messages[{i}]");
                    let fields = wire(item.get(), &at)?.message(&at)?;
                    messages.push(message(RawJson::from_raw(item), fields));
                }
                messages
            }
        };
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
        assert_eq!(m.dedup_key(), "g-1");
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+15551234567");
        assert_eq!(m.text.as_deref(), Some("Yes"));
        assert_eq!(m.channel, Channel::Sms);
        assert_eq!(m.raw.to_value()["hour"], "10:00");
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
    fn the_whole_body_is_refused_with_what_is_wrong_with_it() {
        let p = SmsGateway::new(&source(""));
        let err = |body: &str| run(&p, &HeaderMap::new(), body).unwrap_err().to_string();
        assert!(
            err("{\"guid\":").contains("body is not valid JSON"),
            "{}",
            err("{\"guid\":")
        );
        assert!(err("[1,2]").contains("body must be a JSON object"));
        assert!(err("\"text\"").contains("body must be a JSON object"));
        assert!(err(r#"{"messages":null}"#).contains("expected an array of messages"));
        assert!(err(r#"{"messages":{"guid":"g"}}"#).contains("expected an array of messages"));
        assert!(
            err(r#"{"messages":[["g","1"]]}"#)
                .contains("field messages[0]: expected a message object")
        );
        assert!(err(" [1,").contains("body is not valid JSON"));
        assert!(err(r#"{"number":"1"}"#).ends_with("field body: missing field `guid`"));
        assert!(err(r#"{"guid":"g"}"#).ends_with("field body: missing field `number`"));
        assert!(err(r#"{"guid":" ","number":"1"}"#).ends_with("field guid: must not be empty"));
        assert!(err(r#"{"guid":"g","number":"1","hour":7}"#).contains("field hour: invalid type"));
        let batch = format!(r#"{{"messages":[{ONE},{{"guid":"g","number":"1","message":[]}}]}}"#);
        assert!(
            err(&batch).contains("field messages[1].message: invalid type"),
            "{}",
            err(&batch)
        );
        assert!(
            !err(&batch).contains("line 1"),
            "the path says where: {}",
            err(&batch)
        );
    }

    #[test]
    fn raw_is_the_json_as_sent_and_escapes_are_read() {
        let p = SmsGateway::new(&source(""));
        let body = "{ \"guid\" : \"g-\\u00e9\", \"number\":\"+1 555\",\n \"message\":\"a\\\"b\", \"x\": [1, {}] }";
        let parsed = run(&p, &HeaderMap::new(), body).unwrap();
        let m = &parsed.messages[0];
        assert_eq!(m.raw.as_str(), body);
        assert_eq!(m.external_id, "g-\u{e9}");
        assert_eq!(m.text.as_deref(), Some("a\"b"));
        let item = r#"{"guid":"g-2","number":"1", "extra":true}"#;
        let parsed = run(
            &p,
            &HeaderMap::new(),
            &format!(r#"{{"messages":[ {ONE} , {item}]}}"#),
        )
        .unwrap();
        assert_eq!(parsed.messages[0].raw.as_str(), ONE);
        assert_eq!(parsed.messages[1].raw.as_str(), item);
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

#[cfg(test)]
mod borrow_tests {
    use super::*;

    #[test]
    fn strings_without_escapes_are_borrowed_and_with_escapes_read_right() {
        let w = wire(
            r#"{"guid":"g-1","number":"+1","message":"a \"b\"","date":"d","hour":"h","time_received":"t"}"#,
            "",
        )
        .unwrap();
        assert!(matches!(w.guid, Some(Cow::Borrowed("g-1"))), "{:?}", w.guid);
        assert!(
            matches!(w.number, Some(Cow::Borrowed("+1"))),
            "{:?}",
            w.number
        );
        assert_eq!(w.message.as_deref(), Some("a \"b\""));
        assert!(matches!(w._date, Some(Cow::Borrowed("d"))), "{:?}", w._date);
    }
}
