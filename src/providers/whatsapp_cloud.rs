//! `whatsapp-cloud`: Meta's WhatsApp Cloud API webhooks,
//! `{"object":"whatsapp_business_account","entry":[{"changes":[{"value":…,"field":…}]}]}`,
//! with many messages and statuses per request. Dedup on the message `id`
//! (`wamid.…`).
//!
//! Verification: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret,
//! raw body)>`, and the `GET` handshake (`hub.mode=subscribe`,
//! `hub.verify_token` equal to the source's `verify_token`, answered with
//! `hub.challenge`), both as in Meta's "Webhooks — Getting Started".
//!
//! Normalization choices (Meta's webhook gives no single "text"):
//! - text: `text.body`; `button.text` (template quick reply); the `title` of
//!   an interactive `button_reply`/`list_reply` (what the user saw and
//!   tapped; the `id` stays in `raw`), `nfm_reply.body` for flows; the
//!   `caption` of an image, video or document; `order.text`; a reaction's
//!   emoji (a 👍 on "reply YES to confirm" reads as a yes; an empty emoji,
//!   i.e. a removed reaction, is no text). Location, contacts, audio,
//!   sticker, unsupported and unknown messages have no text: a location is
//!   data, not words, and a made-up description would only mislead the
//!   classifier; its coordinates stay in `raw`.
//! - media: the webhook carries no download URL, only a media id that the
//!   Graph API resolves (with the business's access token) to a short-lived
//!   URL. `media.url` is that Graph resource, `https://graph.facebook.com/<id>`
//!   (a `url` in the media object, which newer payloads may carry, wins);
//!   `content_type` is `mime_type`.
//! - `system` messages (e.g. `user_changed_number`) are not something the
//!   user wrote: they become events of kind `system`. Statuses become events
//!   of kind `status` (external id = the status `id`), webhook-level `errors`
//!   events of kind `error`, and changes of any other `field` (template
//!   status, account updates, message echoes…) events named after the field.
//! - `raw` of a message is its change's `value` narrowed to that message:
//!   `messaging_product`, `metadata`, the matching `contacts` entry (the
//!   profile name lives there) and `messages: [it]`.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use url::form_urlencoded;

use crate::config::{
    HmacAlgorithm, ProviderKind, Secret, SignatureConfig, SignatureEncoding, SourceConfig,
};
use crate::domain::{Channel, InboundEvent, InboundMessage, Media, MessageId, PhoneNumber};

use super::{
    ParseContext, Parsed, Provider, ProviderError, Verified, WebhookRequest, from_json, signature,
};

/// The header Meta puts its signature in.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
const OBJECT: &str = "whatsapp_business_account";
const GRAPH_URL: &str = "https://graph.facebook.com";

/// Meta's scheme in the generic form `signature` knows how to check.
pub fn signature_config() -> SignatureConfig {
    SignatureConfig {
        header: SIGNATURE_HEADER.into(),
        algorithm: HmacAlgorithm::Sha256,
        encoding: SignatureEncoding::Hex,
        prefix: "sha256=".into(),
    }
}

#[derive(Debug)]
pub struct WhatsappCloud {
    /// The app secret; `None` accepts unsigned requests.
    secret: Option<Secret>,
    /// The token the `GET` handshake must present.
    verify_token: Option<Secret>,
}

impl WhatsappCloud {
    pub fn new(source: &SourceConfig) -> Self {
        Self {
            secret: source.secret.clone(),
            verify_token: source.verify_token.clone(),
        }
    }
}

impl Provider for WhatsappCloud {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WhatsappCloud
    }

    fn is_signed(&self) -> bool {
        self.secret.is_some()
    }

    fn verify<'a>(&self, req: WebhookRequest<'a>) -> Result<Verified<'a>, ProviderError> {
        if let Some(secret) = &self.secret {
            signature::verify_body_hmac(&req, &signature_config(), secret.expose().as_bytes())?;
        }
        Ok(Verified::new(req))
    }

    fn handshake(&self, query: &str) -> Result<String, ProviderError> {
        let fail = |why: &str| Err(ProviderError::VerificationFailed(why.to_string()));
        let (mut mode, mut token, mut challenge) = (None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "hub.mode" => &mut mode,
                "hub.verify_token" => &mut token,
                "hub.challenge" => &mut challenge,
                _ => continue,
            };
            if slot.is_some() {
                return fail(&format!("{k} appears more than once"));
            }
            *slot = Some(v.into_owned());
        }
        let Some(expected) = &self.verify_token else {
            return fail("this source has no verify_token configured");
        };
        let token_matches = signature::constant_time_eq(
            token.as_deref().unwrap_or("").as_bytes(),
            expected.expose().as_bytes(),
        );
        if mode.as_deref() != Some("subscribe") {
            return fail("hub.mode must be \"subscribe\"");
        }
        if token.is_none() || !token_matches {
            return fail("hub.verify_token does not match");
        }
        match challenge {
            Some(c) if !c.is_empty() => Ok(c),
            _ => fail("missing hub.challenge"),
        }
    }

    fn parse(&self, req: Verified<'_>, ctx: ParseContext<'_>) -> Result<Parsed, ProviderError> {
        let envelope: Envelope = from_json(req.request().body)?;
        if envelope.object != OBJECT {
            return Err(ProviderError::InvalidPayload(format!(
                "field object: expected {OBJECT:?}, got {:?}",
                envelope.object
            )));
        }
        let mut parsed = Parsed::default();
        for (i, entry) in envelope.entry.into_iter().enumerate() {
            for (j, change) in entry.changes.into_iter().enumerate() {
                let at = format!("entry[{i}].changes[{j}].value");
                match change.field.as_deref() {
                    None | Some("messages") => {
                        parse_messages_change(change.value, &at, ctx, &mut parsed)?
                    }
                    Some(other) => parsed.events.push(InboundEvent {
                        kind: other.to_string(),
                        external_id: None,
                        payload: change.value,
                    }),
                }
            }
        }
        Ok(parsed)
    }
}

#[derive(Debug, Deserialize)]
struct Envelope {
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct Change {
    field: Option<String>,
    #[serde(default)]
    value: Value,
}

/// The parts of a `messages` change's `value` we read; the rest is in `raw`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MessagesValue {
    metadata: Option<Metadata>,
    contacts: Option<Vec<Value>>,
    messages: Option<Vec<Value>>,
    statuses: Option<Vec<Value>>,
    errors: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Metadata {
    display_phone_number: Option<Scalar>,
}

/// A field Meta documents as a string but that tolerant parsing also takes
/// as a number (`display_phone_number`, `wa_id`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(serde_json::Number),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    id: String,
    from: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<WireText>,
    image: Option<WireMedia>,
    video: Option<WireMedia>,
    audio: Option<WireMedia>,
    document: Option<WireMedia>,
    sticker: Option<WireMedia>,
    button: Option<WireButton>,
    interactive: Option<WireInteractive>,
    reaction: Option<WireReaction>,
    order: Option<WireText>,
    location: Option<Value>,
    contacts: Option<Value>,
    system: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireText {
    body: Option<String>,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireMedia {
    id: Option<String>,
    url: Option<String>,
    mime_type: Option<String>,
    caption: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireButton {
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireInteractive {
    button_reply: Option<WireReply>,
    list_reply: Option<WireReply>,
    nfm_reply: Option<WireText>,
}

#[derive(Debug, Deserialize)]
struct WireReply {
    title: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireReaction {
    emoji: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireStatus {
    id: String,
}

/// Deserializes `value` (found at `at` in the body), naming the offending
/// field by its full path on error.
fn typed<T: DeserializeOwned>(value: &Value, at: &str) -> Result<T, ProviderError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let loc = if inner.is_empty() || inner == "." {
            at.to_string()
        } else {
            format!("{at}.{inner}")
        };
        ProviderError::InvalidPayload(format!("field {loc}: {}", e.inner()))
    })
}

fn parse_messages_change(
    value: Value,
    at: &str,
    ctx: ParseContext<'_>,
    parsed: &mut Parsed,
) -> Result<(), ProviderError> {
    let wire: MessagesValue = typed(&value, at)?;
    // `to` is the business number: `+` and the digits of display_phone_number.
    let to = wire
        .metadata
        .and_then(|m| m.display_phone_number)
        .map(Scalar::into_string)
        .and_then(|n| PhoneNumber::from_international_digits(&n))
        .map(|p| p.to_string());
    let contacts = wire.contacts.unwrap_or_default();
    for (k, message) in wire.messages.unwrap_or_default().iter().enumerate() {
        let at = format!("{at}.messages[{k}]");
        let raw = narrowed_raw(&value, message, &contacts);
        match normalize_message(message, &at, to.clone(), raw, ctx)? {
            Normalized::Message(m) => parsed.messages.push(*m),
            Normalized::Event(e) => parsed.events.push(e),
        }
    }
    for (k, status) in wire.statuses.unwrap_or_default().into_iter().enumerate() {
        let w: WireStatus = typed(&status, &format!("{at}.statuses[{k}]"))?;
        parsed.events.push(InboundEvent {
            kind: "status".into(),
            external_id: Some(w.id),
            payload: status,
        });
    }
    for error in wire.errors.unwrap_or_default() {
        parsed.events.push(InboundEvent {
            kind: "error".into(),
            external_id: None,
            payload: error,
        });
    }
    Ok(())
}

/// The change's `value` with only this message and its sender's contact.
fn narrowed_raw(value: &Value, message: &Value, contacts: &[Value]) -> Value {
    let mut raw = match value {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    raw.remove("statuses");
    raw.remove("errors");
    let from = message.get("from");
    let own: Vec<Value> = contacts
        .iter()
        .filter(|c| from.is_some() && c.get("wa_id") == from)
        .cloned()
        .collect();
    raw.insert("contacts".into(), Value::Array(own));
    raw.insert("messages".into(), Value::Array(vec![message.clone()]));
    Value::Object(raw)
}

enum Normalized {
    Message(Box<InboundMessage>),
    Event(InboundEvent),
}

fn non_empty(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty()).cloned()
}

/// The message's type: `type`, or, when Meta leaves it out (its location
/// example does), the first content object present.
fn kind_of(w: &WireMessage) -> String {
    if let Some(k) = w.kind.as_deref().filter(|k| !k.is_empty()) {
        return k.to_string();
    }
    let present = [
        ("text", w.text.is_some()),
        ("image", w.image.is_some()),
        ("video", w.video.is_some()),
        ("audio", w.audio.is_some()),
        ("document", w.document.is_some()),
        ("sticker", w.sticker.is_some()),
        ("button", w.button.is_some()),
        ("interactive", w.interactive.is_some()),
        ("reaction", w.reaction.is_some()),
        ("order", w.order.is_some()),
        ("location", w.location.is_some()),
        ("contacts", w.contacts.is_some()),
        ("system", w.system.is_some()),
    ];
    present
        .iter()
        .find(|(_, here)| *here)
        .map_or("unknown", |(k, _)| k)
        .to_string()
}

fn media_of(kind: &str, m: Option<&WireMedia>, at: &str) -> Result<Media, ProviderError> {
    let m = m.ok_or_else(|| {
        ProviderError::InvalidPayload(format!(
            "field {at}.{kind}: missing for a message of type {kind}"
        ))
    })?;
    let url = match (non_empty(m.url.as_ref()), non_empty(m.id.as_ref())) {
        (Some(url), _) => url,
        (None, Some(id)) => format!("{GRAPH_URL}/{}", id.trim()),
        (None, None) => {
            return Err(ProviderError::InvalidPayload(format!(
                "field {at}.{kind}.id: missing"
            )));
        }
    };
    Ok(Media {
        url,
        content_type: non_empty(m.mime_type.as_ref()),
    })
}

fn normalize_message(
    message: &Value,
    at: &str,
    to: Option<String>,
    raw: Value,
    ctx: ParseContext<'_>,
) -> Result<Normalized, ProviderError> {
    let w: WireMessage = typed(message, at)?;
    let id = w.id.trim().to_string();
    if id.is_empty() {
        return Err(ProviderError::InvalidPayload(format!(
            "field {at}.id: must not be empty"
        )));
    }
    let kind = kind_of(&w);
    if kind == "system" {
        return Ok(Normalized::Event(InboundEvent {
            kind: "system".into(),
            external_id: Some(id),
            payload: raw,
        }));
    }
    let from = w.from.trim();
    if from.is_empty() {
        return Err(ProviderError::InvalidPayload(format!(
            "field {at}.from: must not be empty"
        )));
    }
    // A WhatsApp id is the full international number without `+`. Anything
    // else (a business-scoped user id, for users hiding their number) is
    // kept as given.
    let from = if from
        .trim_start_matches('+')
        .bytes()
        .all(|b| b.is_ascii_digit())
    {
        PhoneNumber::from_international_digits(from)
    } else {
        PhoneNumber::parse(from)
    };
    let caption = |m: Option<&WireMedia>| m.and_then(|m| non_empty(m.caption.as_ref()));
    let (text, media) = match kind.as_str() {
        "text" => (
            w.text.as_ref().and_then(|t| non_empty(t.body.as_ref())),
            vec![],
        ),
        "image" | "video" | "document" | "audio" | "sticker" => {
            let m = match kind.as_str() {
                "image" => w.image.as_ref(),
                "video" => w.video.as_ref(),
                "document" => w.document.as_ref(),
                "audio" => w.audio.as_ref(),
                _ => w.sticker.as_ref(),
            };
            (caption(m), vec![media_of(&kind, m, at)?])
        }
        "button" => (
            w.button.as_ref().and_then(|b| non_empty(b.text.as_ref())),
            vec![],
        ),
        "interactive" => {
            let text = w.interactive.as_ref().and_then(|i| {
                i.button_reply
                    .as_ref()
                    .or(i.list_reply.as_ref())
                    .and_then(|r| non_empty(r.title.as_ref()))
                    .or_else(|| {
                        i.nfm_reply
                            .as_ref()
                            .and_then(|n| non_empty(n.body.as_ref()))
                    })
            });
            (text, vec![])
        }
        "reaction" => (
            w.reaction
                .as_ref()
                .and_then(|r| non_empty(r.emoji.as_ref())),
            vec![],
        ),
        "order" => (
            w.order.as_ref().and_then(|o| non_empty(o.text.as_ref())),
            vec![],
        ),
        // location, contacts, unsupported, unknown, and types Meta adds later.
        _ => (None, vec![]),
    };
    Ok(Normalized::Message(Box::new(InboundMessage {
        id: MessageId::generate(),
        source: ctx.source.to_string(),
        provider: ProviderKind::WhatsappCloud.as_str(),
        external_id: id,
        dedup_key: None,
        channel: Channel::Whatsapp,
        from,
        to,
        text,
        media,
        received_at: ctx.received_at.to_string(),
        raw: raw.into(),
    })))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::providers::testing::{self, is_invalid_signature};

    const SECRET: &str = "meta-test-app-secret";
    const TEXT: &[u8] = include_bytes!("../../tests/fixtures/whatsapp-cloud/text.json");
    const BATCH: &[u8] = include_bytes!("../../tests/fixtures/whatsapp-cloud/batch.json");
    const TEMPLATE_STATUS: &[u8] =
        include_bytes!("../../tests/fixtures/whatsapp-cloud/template_status.json");
    /// Computed with `openssl dgst` (see the fixtures' README), not our code.
    const BATCH_SIGNATURE: &str = include_str!("../../tests/fixtures/whatsapp-cloud/signature.txt");

    fn source(extra: &str) -> SourceConfig {
        testing::source("wa", "whatsapp-cloud", extra)
    }

    fn signed() -> WhatsappCloud {
        WhatsappCloud::new(&source(&format!(
            "secret='{SECRET}'\nverify_token='meatyhamhock'"
        )))
    }

    fn headers(signature: Option<&str>) -> HeaderMap {
        let sig = signature.map(|s| ("x-hub-signature-256", s));
        testing::headers(
            [("content-type", "application/json")]
                .into_iter()
                .chain(sig),
        )
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        signature::sign_body(&signature_config(), secret.as_bytes(), body)
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> WebhookRequest<'a> {
        testing::request("/hooks/wa", headers, body, 0)
    }

    fn run(p: &WhatsappCloud, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, ProviderError> {
        let req = request(headers, body);
        p.check_content_type(&req)?;
        testing::verify_and_parse(p, req, "wa")
    }

    fn parse_unsigned(body: &[u8]) -> Result<Parsed, ProviderError> {
        run(&WhatsappCloud::new(&source("")), &HeaderMap::new(), body)
    }

    #[test]
    fn whatsapp_handshake_answers_the_challenge() {
        // Meta's sample verification request, verbatim.
        let q = "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=meatyhamhock";
        assert_eq!(signed().handshake(q).unwrap(), "1158201444");
        // Order and percent-encoding do not matter.
        let q = "hub.verify_token=meaty%68amhock&hub.challenge=abc%20def&hub.mode=subscribe";
        assert_eq!(signed().handshake(q).unwrap(), "abc def");
    }

    #[test]
    fn whatsapp_handshake_with_wrong_verify_token_is_rejected() {
        for q in [
            "hub.mode=subscribe&hub.challenge=1&hub.verify_token=meatyhamhoc",
            "hub.mode=subscribe&hub.challenge=1&hub.verify_token=meatyhamhockk",
            "hub.mode=subscribe&hub.challenge=1&hub.verify_token=",
            "hub.mode=subscribe&hub.challenge=1",
            "hub.mode=subscribe&hub.challenge=1&hub.verify_token=MEATYHAMHOCK",
        ] {
            assert_eq!(
                signed().handshake(q),
                Err(ProviderError::VerificationFailed(
                    "hub.verify_token does not match".into()
                )),
                "{q}"
            );
        }
    }

    #[test]
    fn whatsapp_handshake_with_wrong_mode_is_rejected() {
        for q in [
            "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=meatyhamhock",
            "hub.mode=Subscribe&hub.challenge=1&hub.verify_token=meatyhamhock",
            "hub.challenge=1&hub.verify_token=meatyhamhock",
        ] {
            assert_eq!(
                signed().handshake(q),
                Err(ProviderError::VerificationFailed(
                    "hub.mode must be \"subscribe\"".into()
                )),
                "{q}"
            );
        }
    }

    #[test]
    fn whatsapp_handshake_needs_a_configured_token_a_challenge_and_single_values() {
        let q = "hub.mode=subscribe&hub.challenge=1&hub.verify_token=meatyhamhock";
        let unconfigured = WhatsappCloud::new(&source(&format!("secret='{SECRET}'")));
        assert!(matches!(
            unconfigured.handshake(q),
            Err(ProviderError::VerificationFailed(_))
        ));
        let no_challenge = "hub.mode=subscribe&hub.verify_token=meatyhamhock";
        assert!(matches!(
            signed().handshake(no_challenge),
            Err(ProviderError::VerificationFailed(_))
        ));
        let twice = format!("{q}&hub.verify_token=other");
        assert!(matches!(
            signed().handshake(&twice),
            Err(ProviderError::VerificationFailed(_))
        ));
        assert!(signed().handshake("").is_err());
        assert!(signed().handshake("%%%&&==").is_err());
    }

    #[test]
    fn whatsapp_signature_computed_with_openssl_verifies() {
        let sig = BATCH_SIGNATURE.trim();
        assert!(sig.starts_with("sha256="));
        assert_eq!(sign(SECRET, BATCH), sig, "our signer agrees with openssl");
        assert!(run(&signed(), &headers(Some(sig)), BATCH).is_ok());
        // Hex case does not matter.
        let upper = format!("sha256={}", sig["sha256=".len()..].to_uppercase());
        assert!(run(&signed(), &headers(Some(&upper)), BATCH).is_ok());
    }

    #[test]
    fn whatsapp_webhook_with_wrong_secret_is_rejected() {
        let other = WhatsappCloud::new(&source("secret='not-the-app-secret'"));
        assert!(is_invalid_signature(run(
            &other,
            &headers(Some(BATCH_SIGNATURE.trim())),
            BATCH
        )));
    }

    #[test]
    fn whatsapp_webhook_with_tampered_body_is_rejected() {
        let tampered = String::from_utf8_lossy(BATCH).replace("\"Yes\"", "\"No\"");
        assert!(is_invalid_signature(run(
            &signed(),
            &headers(Some(BATCH_SIGNATURE.trim())),
            tampered.as_bytes()
        )));
    }

    #[test]
    fn whatsapp_webhook_with_missing_duplicated_or_malformed_signature_is_rejected() {
        let sig = BATCH_SIGNATURE.trim();
        assert!(is_invalid_signature(run(&signed(), &headers(None), BATCH)));
        let mut twice = headers(Some(sig));
        twice.append("x-hub-signature-256", HeaderValue::from_str(sig).unwrap());
        assert!(is_invalid_signature(run(&signed(), &twice, BATCH)));
        let bare_hex = &sig["sha256=".len()..];
        for bad in [bare_hex, "sha1=abc", "sha256=zz", "sha256=", ""] {
            assert!(
                is_invalid_signature(run(&signed(), &headers(Some(bad)), BATCH)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn whatsapp_source_without_secret_accepts_unsigned_requests() {
        let p = WhatsappCloud::new(&source(""));
        assert!(!p.is_signed());
        assert!(signed().is_signed());
        assert_eq!(parse_unsigned(TEXT).unwrap().messages.len(), 1);
    }

    #[test]
    fn whatsapp_text_message_is_normalized() {
        let parsed = parse_unsigned(TEXT).unwrap();
        assert!(parsed.events.is_empty());
        let m = &parsed.messages[0];
        assert_eq!(m.provider, "whatsapp-cloud");
        assert_eq!(m.external_id, "wamid.ABGGFlCGg0cvAgo-sJQh43L5Pe4W");
        assert_eq!(m.dedup_key(), m.external_id);
        assert_eq!(m.channel, Channel::Whatsapp);
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+16315551234");
        assert_eq!(m.to.as_deref(), Some("+16505553333"));
        assert_eq!(m.text.as_deref(), Some("Hello this is an answer"));
        assert!(m.media.is_empty());
        assert_eq!(
            m.raw.to_value()["contacts"][0]["profile"]["name"],
            "Kerry Fisher"
        );
        assert_eq!(m.raw.to_value()["messages"][0]["timestamp"], "1603059201");
        assert_eq!(
            m.raw.to_value()["metadata"]["phone_number_id"],
            "27681414235104944"
        );
    }

    #[test]
    fn whatsapp_batch_gives_one_message_per_message_and_events_for_the_rest() {
        let parsed = run(&signed(), &headers(Some(BATCH_SIGNATURE.trim())), BATCH).unwrap();
        let summary: Vec<(&str, Option<&str>, usize)> = parsed
            .messages
            .iter()
            .map(|m| {
                (
                    m.from.as_ref().unwrap().as_str(),
                    m.text.as_deref(),
                    m.media.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("+16315551234", Some("Yes"), 0),
                ("+5511999990000", Some("Comprovante"), 1),
                ("+16315551234", Some("Confirm"), 0),
                ("+5511999990000", Some("Tuesday 10:00"), 0),
                ("+16315551234", None, 0),
                ("+5511999990000", Some("👍"), 0),
                ("+447700900123", Some("STOP promotions"), 0),
                ("+447700900123", Some("Signed form"), 1),
                ("+447700900123", None, 1),
                ("+447700900123", None, 1),
                ("+447700900123", None, 0),
            ]
        );
        assert!(
            parsed
                .messages
                .iter()
                .all(|m| m.channel == Channel::Whatsapp)
        );
        assert!(
            parsed
                .messages
                .iter()
                .all(|m| m.dedup_key().starts_with("wamid."))
        );
        assert_eq!(parsed.messages[0].to.as_deref(), Some("+16505553333"));
        assert_eq!(
            parsed.messages[6].to.as_deref(),
            Some("+442079460000"),
            "display_phone_number reduced to its digits"
        );
        // Each message's raw carries only its own sender's contact.
        assert_eq!(
            parsed.messages[1].raw.to_value()["contacts"][0]["profile"]["name"],
            "Ana Souza"
        );
        assert_eq!(
            parsed.messages[1].raw.to_value()["contacts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert!(parsed.messages[1].raw.to_value().get("statuses").is_none());
        assert_eq!(
            parsed.messages[4].raw.to_value()["messages"][0]["location"]["latitude"],
            37.483307
        );

        let events: Vec<(&str, Option<&str>)> = parsed
            .events
            .iter()
            .map(|e| (e.kind.as_str(), e.payload["status"].as_str()))
            .collect();
        assert_eq!(
            events,
            [
                ("status", Some("sent")),
                ("status", Some("delivered")),
                ("status", Some("read")),
                ("system", None),
                ("status", Some("failed")),
            ]
        );
        assert_eq!(
            parsed.events[0].external_id.as_deref(),
            Some("wamid.HBgLMTYzMTU1NTEyMzQVAgARGBI5QTAwMDAwMDAwMDAwMDAwMDEA")
        );
        assert_eq!(
            parsed.events[3].external_id.as_deref(),
            Some("wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUM0IwMDAwMDAwMDAwMDAwMDAwMDYA")
        );
    }

    #[test]
    fn whatsapp_media_points_at_the_graph_api_with_its_mime_type() {
        let parsed = parse_unsigned(BATCH).unwrap();
        let media: Vec<(&str, Option<&str>)> = parsed
            .messages
            .iter()
            .flat_map(|m| m.media.iter())
            .map(|m| (m.url.as_str(), m.content_type.as_deref()))
            .collect();
        assert_eq!(
            media,
            [
                (
                    "https://graph.facebook.com/1013859600285441",
                    Some("image/jpeg")
                ),
                (
                    "https://graph.facebook.com/2093847561029384",
                    Some("application/pdf")
                ),
                (
                    "https://graph.facebook.com/3847561029384756",
                    Some("audio/ogg; codecs=opus")
                ),
                (
                    "https://graph.facebook.com/4756102938475610",
                    Some("image/webp")
                ),
            ]
        );
        // A url in the media object (newer payloads) is used as is.
        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"messages":[
            {"from":"15550001","id":"wamid.1","type":"video","video":{"id":"9","url":"https://lookaside.example/v","mime_type":"video/mp4"}}]}}]}]}"#;
        let m = &parse_unsigned(body).unwrap().messages[0];
        assert_eq!(m.media[0].url, "https://lookaside.example/v");
        assert_eq!(m.to, None, "no metadata, no to");
    }

    #[test]
    fn whatsapp_other_fields_and_webhook_errors_become_events() {
        let parsed = parse_unsigned(TEMPLATE_STATUS).unwrap();
        assert!(parsed.messages.is_empty());
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].kind, "message_template_status_update");
        assert_eq!(parsed.events[0].payload["event"], "APPROVED");

        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"messaging_product":"whatsapp","errors":[{"code":131000,"title":"Something went wrong"}]}}]}]}"#;
        let parsed = parse_unsigned(body).unwrap();
        assert_eq!(parsed.events[0].kind, "error");
        assert_eq!(parsed.events[0].payload["code"], 131000);
    }

    #[test]
    fn whatsapp_message_type_is_inferred_when_missing() {
        // Meta's location example has no "type".
        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"messages":[
            {"from":"15550001","id":"wamid.1","location":{"latitude":1.5,"longitude":2.5}},
            {"from":"15550001","id":"wamid.2","text":{"body":"hi"}},
            {"from":"US.13491208655302741918","id":"wamid.3","type":"text","text":{"body":"bsuid"}}]}}]}]}"#;
        let parsed = parse_unsigned(body).unwrap();
        assert_eq!(parsed.messages[0].text, None);
        assert_eq!(parsed.messages[1].text.as_deref(), Some("hi"));
        assert_eq!(
            parsed.messages[2].from.as_ref().unwrap().as_str(),
            "US.13491208655302741918",
            "a non-numeric sender id is kept as given"
        );
    }

    #[test]
    fn whatsapp_payload_errors_name_the_field() {
        let wrap = |messages: &str| {
            format!(
                r#"{{"object":"whatsapp_business_account","entry":[{{"changes":[{{"field":"messages","value":{{"messages":[{messages}]}}}}]}}]}}"#
            )
        };
        let ok = r#"{"from":"1","id":"wamid.ok","type":"text","text":{"body":"x"}}"#;
        let cases = [
            (
                wrap(&format!(r#"{ok},{{"from":"1","type":"text"}}"#)),
                "field entry[0].changes[0].value.messages[1]: missing field `id`",
            ),
            (
                wrap(r#"{"id":"wamid.1","from":"","type":"text"}"#),
                "field entry[0].changes[0].value.messages[0].from: must not be empty",
            ),
            (
                wrap(r#"{"id":"wamid.1","from":"1","type":"image"}"#),
                "field entry[0].changes[0].value.messages[0].image: missing for a message of type image",
            ),
            (
                wrap(
                    r#"{"id":"wamid.1","from":"1","type":"image","image":{"mime_type":"image/png"}}"#,
                ),
                "field entry[0].changes[0].value.messages[0].image.id: missing",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_unsigned(body.as_bytes()).unwrap_err(),
                ProviderError::InvalidPayload(want.into())
            );
        }
        let err = parse_unsigned(wrap(r#"{"id":"w","from":"1","text":{"body":5}}"#).as_bytes())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("field entry[0].changes[0].value.messages[0].text.body: invalid type"),
            "{err}"
        );
        let err = parse_unsigned(br#"{"object":"page","entry":[]}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("field object: expected"),
            "{err}"
        );
        let err = parse_unsigned(br#"{"entry":[]}"#).unwrap_err();
        assert!(err.to_string().contains("object"), "{err}");
        let err = parse_unsigned(br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"statuses":[{"status":"sent"}]}}]}]}"#).unwrap_err();
        assert_eq!(
            err,
            ProviderError::InvalidPayload(
                "field entry[0].changes[0].value.statuses[0]: missing field `id`".into()
            )
        );
        assert!(matches!(
            parse_unsigned(b"not json"),
            Err(ProviderError::InvalidPayload(_))
        ));
    }

    #[test]
    fn whatsapp_signed_request_always_verifies_and_any_flipped_byte_fails() {
        testing::assert_signed_bodies_verify_and_flips_fail(
            &signed(),
            "/hooks/wa",
            0,
            &[TEXT, BATCH, TEMPLATE_STATUS],
            &[0x01],
            |body| headers(Some(&sign(SECRET, body))),
        );
    }

    #[test]
    fn whatsapp_arbitrary_bodies_never_panic() {
        let pieces = testing::json_pieces(&[
            "\"object\"",
            "\"whatsapp_business_account\"",
            "\"entry\"",
            "\"changes\"",
            "\"value\"",
            "\"messages\"",
            "\"statuses\"",
            "\"field\"",
            "\"id\"",
            "\"from\"",
            "\"type\"",
            "\"image\"",
            "\"text\"",
            "\"metadata\"",
            "\"display_phone_number\"",
        ]);
        testing::assert_arbitrary_bodies_never_panic(
            testing::arbitrary_bodies(0x9e37_79b9, 2000, 40, &pieces),
            |body| parse_unsigned(&body),
        );
    }
}
