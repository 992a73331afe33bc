//! The normalized inbound message (SPEC §4) and the events that are stored
//! but start no processing (status callbacks, our own outgoing messages,
//! other event types, quarantined bodies).

use serde::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{MessageId, PhoneNumber};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Whatsapp,
    /// Anything a provider adds (respond.io's `channel.source`, Standard Webhooks' `other`).
    #[serde(untagged)]
    Other(String),
}

impl Channel {
    pub fn from_name(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "sms" => Self::Sms,
            "whatsapp" => Self::Whatsapp,
            other => Self::Other(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Media {
    pub url: String,
    pub content_type: Option<String>,
}

/// One message as a provider module hands it over: verified and normalized,
/// not yet stored. The store assigns nothing: `id` is minted here so a
/// request's response and logs can name it before the commit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundMessage {
    pub id: MessageId,
    pub source: String,
    pub provider: &'static str,
    pub external_id: String,
    /// What dedup is keyed on within the source, when it is not
    /// `external_id` (Evolution: `instance:key.id`). `None` for the usual
    /// case, rather than a second copy of the id on every request; read it
    /// with [`InboundMessage::dedup_key`].
    #[serde(skip)]
    pub dedup_key: Option<String>,
    pub channel: Channel,
    pub from: Option<PhoneNumber>,
    pub to: Option<String>,
    pub text: Option<String>,
    pub media: Vec<Media>,
    pub received_at: String,
    pub raw: RawJson,
}

impl InboundMessage {
    /// What dedup is keyed on within the source.
    pub fn dedup_key(&self) -> &str {
        self.dedup_key.as_deref().unwrap_or(&self.external_id)
    }
}

/// A message's payload as the provider sent it (or, where one request
/// carries several messages, the part about this one): JSON text, written
/// into the stored document as it is. Kept as text rather than a
/// `serde_json::Value` tree because the ingest path only ever copies it
/// into the document. The sms-gateway parse through a tree (path tracked)
/// was 19.7k of the handler's 36k instructions per request; read typed
/// from the text into this, the whole connection task went from 51k to
/// 39k (callgrind, BENCHMARKS.md).
///
/// Always valid JSON: every constructor takes text a parser has read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// JSON text a parser has already checked.
    pub fn from_raw(raw: &RawValue) -> Self {
        Self(raw.get().into())
    }

    /// A whole body that has just been deserialized without error, so is
    /// one JSON value (with JSON whitespace around it, dropped here): not
    /// checked a second time (that was a tenth of the sms-gateway
    /// handler's instructions). Debug builds check it anyway.
    pub fn from_parsed_body(body: &str) -> Self {
        let text = body.trim_matches([' ', '\t', '\n', '\r']);
        debug_assert!(
            serde_json::from_str::<&RawValue>(text).is_ok(),
            "not one JSON value: {text}"
        );
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The payload as a `Value`, for reading fields out of it.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

impl From<Value> for RawJson {
    fn from(v: Value) -> Self {
        Self(v.to_string().into())
    }
}

/// As the JSON it is (not as a string). The stored document is written
/// without this (`store::stored_doc` splices the text in); this is for
/// everything else that serializes a message.
impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawValue::from_string(self.0.to_string())
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

/// Something stored and acknowledged that counts in neither `accepted` nor
/// `duplicates` and starts no processing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundEvent {
    /// e.g. `status`, `from_me`, `messages.update`, `quarantined`.
    pub kind: String,
    /// The provider id of the message the event is about, if any
    /// (a status callback's `MessageSid`), so it can be linked to it.
    pub external_id: Option<String>,
    pub payload: Value,
}

/// When a request was received, to the second, shown as RFC 3339 UTC
/// (`2026-01-01T00:00:00Z`; [`now_rfc3339`] is `now()` shown so). Providers
/// write it into each message's `received_at` with `to_string()`: one
/// string a message, formatted on a stack buffer, instead of one for the
/// request and a copy of it for each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedAt(i64);

impl ReceivedAt {
    pub fn now() -> Self {
        Self(time::OffsetDateTime::now_utc().unix_timestamp())
    }

    pub const fn from_unix(seconds: i64) -> Self {
        Self(seconds)
    }
}

impl std::fmt::Display for ReceivedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = time::OffsetDateTime::from_unix_timestamp(self.0)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        // RFC 3339 at second precision is 20 bytes (years 0000-9999).
        let mut buf = [0u8; 32];
        let mut out = &mut buf[..];
        at.format_into(&mut out, &time::format_description::well_known::Rfc3339)
            .map_err(|_| std::fmt::Error)?;
        let written = 32 - out.len();
        f.write_str(std::str::from_utf8(&buf[..written]).map_err(|_| std::fmt::Error)?)
    }
}

/// Now as RFC 3339 UTC with second precision.
pub fn now_rfc3339() -> String {
    ReceivedAt::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_at_shows_as_now_rfc3339_writes_it() {
        assert_eq!(
            ReceivedAt::from_unix(1_767_225_600).to_string(),
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(ReceivedAt::from_unix(0).to_string(), "1970-01-01T00:00:00Z");
        // The clock's second, as `time` writes it, unless a second ends in
        // between.
        let clock = || {
            let now = time::OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap();
            now.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let agree = (0..5).any(|_| ReceivedAt::now().to_string() == clock());
        assert!(agree, "{} / {}", ReceivedAt::now(), clock());
        assert_eq!(now_rfc3339().len(), "2026-01-01T00:00:00Z".len());
    }
}
