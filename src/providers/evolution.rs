//! `evolution`: Evolution API (WhatsApp) webhooks. Every request is one
//! event `{event, instance, data, destination, date_time, sender,
//! server_url, apikey}`. `messages.upsert` carries a message in `data`
//! (`key.{id, remoteJid, fromMe, participant}`, `pushName`, `message`);
//! everything else is stored as an event named after `event`.
//!
//! The event name is `messages.upsert` in the body of current versions,
//! `MESSAGES_UPSERT` in the configuration and in some versions' bodies, and
//! `messages-upsert` in by-event URLs. Evolution itself treats `.`, `-` and
//! `_` alike and ignores case, so we do too and store the dotted lower-case
//! form (`messages.update`, `connection.update`, ...).
//!
//! Evolution delivers the same message more than once (retries, reconnects,
//! history sync), and `key.id` is only unique per WhatsApp account, so the
//! dedup key is `<instance>:<key.id>`; `external_id` stays `key.id`.
//!
//! Not every upsert is a message someone sent us. Stored as events instead:
//! our own messages (`fromMe`, kind `from_me`), contacts' status posts
//! (`status@broadcast`, kind `status`), channel posts (`@newsletter`, kind
//! `newsletter`) and protocol messages (deletes, ephemeral settings; kind
//! `protocol`). None of them must start an auto-reply.
//!
//! Verification, when the source has a secret (any one suffices): the body's
//! `apikey` field or an `apikey` header equals the secret, or
//! `Authorization: Bearer` carries an HS256 JWT signed with the secret whose
//! `exp`, if present, has not passed (Evolution's `jwt_key` webhook header
//! option signs `{iat, exp: iat + 600, app, action}` this way). All
//! comparisons are constant-time. The body's `apikey` is removed from what
//! we store: it is the secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{HmacAlgorithm, ProviderKind, Secret, SourceConfig};
use crate::domain::{Channel, InboundEvent, InboundMessage, Media, MessageId, PhoneNumber};

use super::{
    ParseContext, Parsed, Provider, ProviderError, Verified, WebhookRequest, from_json, signature,
};

const UPSERT: &str = "messages.upsert";

#[derive(Debug)]
pub struct Evolution {
    secret: Option<Secret>,
}

impl Evolution {
    pub fn new(source: &SourceConfig) -> Self {
        Self {
            secret: source.secret.clone(),
        }
    }
}

/// `MESSAGES_UPSERT`, `messages-upsert` and `messages.upsert` are one event.
pub fn normalize_event(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c {
            '_' | '-' => '.',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl Provider for Evolution {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Evolution
    }

    /// Blanks every `"apikey": "..."` value, even in bodies that do not
    /// parse, so a rejected request never puts the secret in the log.
    fn redact_body<'a>(&self, body: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        static APIKEY: std::sync::OnceLock<regex::bytes::Regex> = std::sync::OnceLock::new();
        let re = APIKEY.get_or_init(|| {
            regex::bytes::Regex::new(r#""apikey"\s*:\s*"(?:[^"\\]|\\.)*""#).expect("valid regex")
        });
        re.replace_all(body, &b"\"apikey\":\"[redacted]\""[..])
    }

    fn is_signed(&self) -> bool {
        self.secret.is_some()
    }

    fn verify<'a>(&self, req: WebhookRequest<'a>) -> Result<Verified<'a>, ProviderError> {
        let Some(secret) = &self.secret else {
            return Ok(Verified::new(req));
        };
        let secret = secret.expose().as_bytes();
        // Read both headers first: a repeated one is refused even when
        // another credential would match.
        let header_key = req.header("apikey")?;
        let authorization = req.header("authorization")?;

        if let Some(key) = header_key
            && signature::constant_time_eq(key.trim().as_bytes(), secret)
        {
            return Ok(Verified::new(req));
        }
        if let Some(key) = body_apikey(req.body)
            && signature::constant_time_eq(key.as_bytes(), secret)
        {
            return Ok(Verified::new(req));
        }
        if let Some(token) = authorization.and_then(bearer_token) {
            verify_hs256_jwt(token, secret, req.now)?;
            return Ok(Verified::new(req));
        }
        Err(ProviderError::InvalidSignature(
            "no valid credential: expected the apikey (body field or header) \
             or Authorization: Bearer <HS256 JWT>"
                .into(),
        ))
    }

    fn parse(&self, req: Verified<'_>, ctx: ParseContext<'_>) -> Result<Parsed, ProviderError> {
        let body: Value = from_json(req.request().body)?;
        let Value::Object(mut envelope) = body else {
            return Err(ProviderError::InvalidPayload(
                "body must be a JSON object (an Evolution API event)".into(),
            ));
        };
        // It is the secret: never stored, forwarded or shown.
        envelope.remove("apikey");
        let kind = match envelope.get("event") {
            Some(Value::String(e)) if !e.trim().is_empty() => normalize_event(e),
            Some(Value::String(_)) => return Err(invalid("field event: must not be empty")),
            Some(_) => return Err(invalid("field event: expected a string")),
            None => return Err(invalid("field event: missing")),
        };
        if kind != UPSERT {
            let external_id = envelope.get("data").and_then(event_external_id);
            return Ok(Parsed {
                messages: Vec::new(),
                events: vec![InboundEvent {
                    kind,
                    external_id,
                    payload: Value::Object(envelope),
                }],
            });
        }
        let instance = match envelope.get("instance") {
            Some(Value::String(i)) if !i.trim().is_empty() => i.clone(),
            Some(Value::String(_)) => return Err(invalid("field instance: must not be empty")),
            Some(_) => return Err(invalid("field instance: expected a string")),
            None => return Err(invalid("field instance: missing")),
        };
        // One message per request in every version seen; an array is
        // accepted too, each item stored with its own copy of the envelope.
        let items: Vec<(String, Value)> = match envelope.remove("data") {
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(invalid("field data: empty array"));
            }
            Some(Value::Array(a)) => a
                .into_iter()
                .enumerate()
                .map(|(i, item)| (format!("data[{i}]"), item))
                .collect(),
            Some(item @ Value::Object(_)) => vec![("data".to_string(), item)],
            Some(_) => return Err(invalid("field data: expected an object")),
            None => return Err(invalid("field data: missing")),
        };
        let mut parsed = Parsed::default();
        for (at, item) in items {
            let upsert = read_upsert(&item, &at)?;
            let mut raw = envelope.clone();
            raw.insert("data".into(), item);
            let raw = Value::Object(raw);
            match upsert {
                Upsert::Event(kind) => parsed.events.push(InboundEvent {
                    kind: kind.into(),
                    external_id: Some(upsert_id(&raw)),
                    payload: raw,
                }),
                Upsert::Message {
                    id,
                    from,
                    to,
                    text,
                    media,
                } => parsed.messages.push(InboundMessage {
                    id: MessageId::generate(),
                    source: ctx.source.to_string(),
                    provider: ProviderKind::Evolution.as_str(),
                    dedup_key: Some(format!("{instance}:{id}")),
                    external_id: id,
                    channel: Channel::Whatsapp,
                    from,
                    to,
                    text,
                    media,
                    received_at: ctx.received_at.to_string(),
                    raw: raw.into(),
                }),
            }
        }
        Ok(parsed)
    }
}

fn invalid(msg: &str) -> ProviderError {
    ProviderError::InvalidPayload(msg.into())
}

/// The `apikey` field of a JSON body, if there is one.
fn body_apikey(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct KeyOnly {
        apikey: Option<String>,
    }
    serde_json::from_slice::<KeyOnly>(body).ok()?.apikey
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks a compact JWS: header `alg` must be `HS256` (never `none` or
/// another algorithm), the HMAC-SHA256 of `header.payload` under `secret`
/// must match in constant time, and `exp`/`nbf`, when present, must hold at
/// `now` (no leeway).
fn verify_hs256_jwt(token: &str, secret: &[u8], now: i64) -> Result<(), ProviderError> {
    let reject =
        |why: &str| ProviderError::InvalidSignature(format!("bearer token rejected: {why}"));
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject("not a JWT (expected header.payload.signature)"));
    };
    let header_json = json_part(header).ok_or_else(|| reject("header is not base64url JSON"))?;
    if header_json.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(reject("alg must be HS256"));
    }
    if header_json.get("crit").is_some() {
        return Err(reject("critical header extensions are not supported"));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| reject("signature is not base64url"))?;
    let signing_input = &token.as_bytes()[..header.len() + 1 + payload.len()];
    if !signature::verify_hmac(HmacAlgorithm::Sha256, secret, &[signing_input], &sig) {
        return Err(reject("signature does not match"));
    }
    let claims = json_part(payload).ok_or_else(|| reject("payload is not base64url JSON"))?;
    let Value::Object(claims) = claims else {
        return Err(reject("payload is not a JSON object"));
    };
    let now = now as f64;
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_f64().ok_or_else(|| reject("exp is not a number"))?;
        if now >= exp {
            return Err(reject("expired (exp has passed)"));
        }
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or_else(|| reject("nbf is not a number"))?;
        if now < nbf {
            return Err(reject("not valid yet (nbf is in the future)"));
        }
    }
    Ok(())
}

fn json_part(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// What one `messages.upsert` item is.
enum Upsert {
    Message {
        id: String,
        from: Option<PhoneNumber>,
        to: Option<String>,
        text: Option<String>,
        media: Vec<Media>,
    },
    /// Stored, acknowledged, not processed; the kind names why.
    Event(&'static str),
}

fn read_upsert(item: &Value, at: &str) -> Result<Upsert, ProviderError> {
    let err = |field: &str, what: &str| {
        ProviderError::InvalidPayload(format!("field {at}{field}: {what}"))
    };
    let Value::Object(item) = item else {
        return Err(err("", "expected an object"));
    };
    let Some(Value::Object(key)) = item.get("key") else {
        return Err(err(".key", "expected an object {id, remoteJid, fromMe}"));
    };
    let id = non_empty_str(key, "id").map_err(|what| err(".key.id", what))?;
    let remote_jid = non_empty_str(key, "remoteJid").map_err(|what| err(".key.remoteJid", what))?;
    let from_me = match key.get("fromMe") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(err(".key.fromMe", "expected a boolean")),
    };
    let message = item.get("message").filter(|m| m.is_object());

    if from_me {
        return Ok(Upsert::Event("from_me"));
    }
    if remote_jid == "status@broadcast" {
        return Ok(Upsert::Event("status"));
    }
    if remote_jid.ends_with("@newsletter") {
        return Ok(Upsert::Event("newsletter"));
    }
    if item.get("messageType").and_then(Value::as_str) == Some("protocolMessage")
        || message.is_some_and(|m| m.get("protocolMessage").is_some())
    {
        return Ok(Upsert::Event("protocol"));
    }

    let (from, to) = if remote_jid.ends_with("@g.us") {
        let participant = non_empty_str(key, "participant").map_err(|what| {
            err(
                ".key.participant",
                &format!("{what} (a group message names its sender here)"),
            )
        })?;
        let alt = alt_jid(key, &["participantAlt", "participantPn"]);
        (jid_to_phone(participant, alt), Some(remote_jid.to_string()))
    } else {
        let alt = alt_jid(key, &["remoteJidAlt", "senderPn"]);
        (jid_to_phone(remote_jid, alt), None)
    };
    Ok(Upsert::Message {
        id: id.to_string(),
        from,
        to,
        text: message.and_then(|m| text_of(m, 0)),
        media: message.map(|m| media_of(m, 0)).unwrap_or_default(),
    })
}

fn non_empty_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, &'static str> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.as_str()),
        Some(Value::String(_)) => Err("must not be empty"),
        None | Some(Value::Null) => Err("missing"),
        Some(_) => Err("expected a string"),
    }
}

fn upsert_id(raw: &Value) -> String {
    raw.pointer("/data/key/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The WhatsApp message id an event is about: `data.key.id` (upserts,
/// `send.message`) or `data.keyId` (`messages.update` in v2).
fn event_external_id(data: &Value) -> Option<String> {
    data.pointer("/key/id")
        .or_else(|| data.get("keyId"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The first phone-number JID among `fields` (newer versions put the number
/// there when the chat is addressed by a LID).
fn alt_jid<'a>(key: &'a Map<String, Value>, fields: &[&str]) -> Option<&'a str> {
    fields
        .iter()
        .filter_map(|f| key.get(*f).and_then(Value::as_str))
        .find(|jid| jid.ends_with("@s.whatsapp.net") || jid.ends_with("@c.us"))
}

/// `5511988887777@s.whatsapp.net` (or `...:12@...`, a device) becomes
/// `+5511988887777`. A LID (`...@lid`, an opaque id, not a number) uses the
/// phone-number JID Evolution gives beside it, else is kept as given.
fn jid_to_phone(jid: &str, alt: Option<&str>) -> Option<PhoneNumber> {
    let (user, server) = jid.split_once('@').unwrap_or((jid, "s.whatsapp.net"));
    let user = user.split(':').next().unwrap_or(user);
    match server {
        "s.whatsapp.net" | "c.us"
            if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) =>
        {
            PhoneNumber::from_international_digits(user)
        }
        "lid" => match alt {
            Some(alt) => jid_to_phone(alt, None),
            None => PhoneNumber::parse(jid),
        },
        _ => PhoneNumber::parse(jid),
    }
}

/// Wrappers whose `message` holds the real content.
const WRAPPERS: [&str; 5] = [
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
];
/// Media message types; the first three may carry a caption.
const MEDIA: [&str; 5] = [
    "imageMessage",
    "videoMessage",
    "documentMessage",
    "audioMessage",
    "stickerMessage",
];
const MAX_WRAPPING: usize = 4;

/// Text from `conversation`, `extendedTextMessage.text` or a media caption,
/// looking inside ephemeral / view-once wrappers.
fn text_of(message: &Value, depth: usize) -> Option<String> {
    let non_empty = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if let Some(t) = non_empty(message.get("conversation"))
        .or_else(|| non_empty(message.pointer("/extendedTextMessage/text")))
        .or_else(|| {
            MEDIA[..3]
                .iter()
                .find_map(|m| non_empty(message.get(*m).and_then(|m| m.get("caption"))))
        })
    {
        return Some(t);
    }
    if depth >= MAX_WRAPPING {
        return None;
    }
    WRAPPERS
        .iter()
        .filter_map(|w| message.get(*w).and_then(|w| w.get("message")))
        .find_map(|inner| text_of(inner, depth + 1))
}

/// The media of a message: `mediaUrl` (Evolution's own copy, when it
/// stores media) or else WhatsApp's encrypted `url`, with the `mimetype`.
fn media_of(message: &Value, depth: usize) -> Vec<Media> {
    for m in MEDIA {
        if let Some(media) = message.get(m).filter(|v| v.is_object()) {
            let url = message
                .get("mediaUrl")
                .or_else(|| media.get("url"))
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty());
            return url
                .map(|url| Media {
                    url: url.to_string(),
                    content_type: media
                        .get("mimetype")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .into_iter()
                .collect();
        }
    }
    if depth >= MAX_WRAPPING {
        return Vec::new();
    }
    WRAPPERS
        .iter()
        .filter_map(|w| message.get(*w).and_then(|w| w.get("message")))
        .map(|inner| media_of(inner, depth + 1))
        .find(|m| !m.is_empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;
    use crate::providers::testing::{self, is_invalid_signature};

    const SECRET: &str = "EVO-INSTANCE-TOKEN-0001";
    const NOW: i64 = 1_767_225_600;

    const CONVERSATION: &str =
        include_str!("../../tests/fixtures/evolution/messages-upsert-conversation.json");
    const EXTENDED: &str =
        include_str!("../../tests/fixtures/evolution/messages-upsert-extended-text.json");
    const IMAGE: &str =
        include_str!("../../tests/fixtures/evolution/messages-upsert-image-caption.json");
    const GROUP: &str = include_str!("../../tests/fixtures/evolution/messages-upsert-group.json");
    const FROM_ME: &str =
        include_str!("../../tests/fixtures/evolution/messages-upsert-from-me.json");
    const UPPERCASE: &str =
        include_str!("../../tests/fixtures/evolution/messages-upsert-uppercase-event.json");
    const LID: &str = include_str!("../../tests/fixtures/evolution/messages-upsert-lid.json");
    const UPDATE: &str = include_str!("../../tests/fixtures/evolution/messages-update.json");
    const CONNECTION: &str = include_str!("../../tests/fixtures/evolution/connection-update.json");

    fn provider(extra: &str) -> Evolution {
        Evolution::new(&testing::source("wa", "evolution", extra))
    }

    fn signed() -> Evolution {
        provider(&format!("secret='{SECRET}'"))
    }

    fn run_at(
        p: &Evolution,
        headers: &HeaderMap,
        body: &str,
        now: i64,
    ) -> Result<Parsed, ProviderError> {
        let req = testing::request("/hooks/wa", headers, body.as_bytes(), now);
        testing::verify_and_parse(p, req, "wa")
    }

    /// A fixture as Evolution sends it, authenticated by its body apikey.
    fn run(body: &str) -> Result<Parsed, ProviderError> {
        run_at(&signed(), &HeaderMap::new(), body, NOW)
    }

    fn one_message(body: &str) -> InboundMessage {
        let parsed = run(body).unwrap();
        assert!(parsed.events.is_empty(), "{:?}", parsed.events);
        let [m] = <[InboundMessage; 1]>::try_from(parsed.messages).unwrap();
        m
    }

    fn one_event(body: &str) -> InboundEvent {
        let parsed = run(body).unwrap();
        assert!(parsed.messages.is_empty());
        let [e] = <[InboundEvent; 1]>::try_from(parsed.events).unwrap();
        e
    }

    fn without_apikey(body: &str) -> String {
        let mut v: Value = serde_json::from_str(body).unwrap();
        v.as_object_mut().unwrap().remove("apikey");
        v.to_string()
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// An HS256 JWT as Evolution's `jwt_key` option makes one.
    fn jwt(header: &Value, claims: &Value, key: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let mac = signature::hmac(HmacAlgorithm::Sha256, key.as_bytes(), &[input.as_bytes()]);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    fn evolution_jwt(iat: i64, key: &str) -> String {
        jwt(
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"iat": iat, "exp": iat + 600, "app": "evolution", "action": "webhook"}),
            key,
        )
    }

    fn bearer(token: &str) -> HeaderMap {
        testing::headers([("authorization", format!("Bearer {token}").as_str())])
    }

    #[test]
    fn conversation_message_is_normalized() {
        let m = one_message(CONVERSATION);
        assert_eq!(m.external_id, "3A6687C4331054C34F0F");
        assert_eq!(m.dedup_key(), "sales:3A6687C4331054C34F0F");
        assert_eq!(m.provider, "evolution");
        assert_eq!(m.channel, Channel::Whatsapp);
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+5511988887777");
        assert_eq!(m.to, None);
        assert_eq!(m.text.as_deref(), Some("Sim, pode confirmar"));
        assert!(m.media.is_empty());
        assert_eq!(m.raw.to_value()["data"]["pushName"], "Leila Fernanda");
        assert_eq!(m.raw.to_value()["instance"], "sales");
    }

    #[test]
    fn rejected_body_is_logged_without_the_apikey() {
        let p = signed();
        let body = format!(r#"{{"event":"x","apikey":"{SECRET}","data":{{"apikey" : "a\"b"}}"#);
        let shown = String::from_utf8(p.redact_body(body.as_bytes()).into_owned()).unwrap();
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains(r#"a\"b"#), "{shown}");
        assert_eq!(shown.matches("[redacted]").count(), 2);
    }

    #[test]
    fn stored_raw_never_contains_the_apikey() {
        let m = one_message(CONVERSATION);
        assert!(m.raw.to_value().get("apikey").is_none());
        assert!(!m.raw.as_str().contains(SECRET));
        let e = one_event(CONNECTION);
        assert!(!e.payload.to_string().contains(SECRET));
    }

    #[test]
    fn extended_text_message_gives_the_text() {
        let m = one_message(EXTENDED);
        assert_eq!(
            m.text.as_deref(),
            Some("Veja https://example.com/pedido/42")
        );
        assert_eq!(m.external_id, "BAE520405E56E538");
    }

    #[test]
    fn image_caption_is_the_text_and_the_image_is_media() {
        let m = one_message(IMAGE);
        assert_eq!(m.text.as_deref(), Some("Comprovante do pagamento"));
        assert_eq!(
            m.media,
            vec![Media {
                url: "https://mmg.whatsapp.net/o1/v/t62.7118-24/f1/m231/up-oil-image.enc".into(),
                content_type: Some("image/jpeg".into()),
            }]
        );
    }

    #[test]
    fn video_and_document_captions_and_stored_media_url_are_read() {
        for kind in ["videoMessage", "documentMessage"] {
            let body = json!({"event": "messages.upsert", "instance": "i", "data": {
                "key": {"id": "A1", "remoteJid": "447700900123@s.whatsapp.net", "fromMe": false},
                "message": {kind: {"caption": "see this", "mimetype": "application/pdf"},
                            "mediaUrl": "https://s3.example.com/evolution/A1.pdf"}}});
            let m = &run_at(&provider(""), &HeaderMap::new(), &body.to_string(), NOW)
                .unwrap()
                .messages[0];
            assert_eq!(m.text.as_deref(), Some("see this"), "{kind}");
            assert_eq!(m.media[0].url, "https://s3.example.com/evolution/A1.pdf");
        }
    }

    #[test]
    fn group_message_is_from_the_participant_to_the_group() {
        let m = one_message(GROUP);
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+5521966665555");
        assert_eq!(m.to.as_deref(), Some("120363041967849074@g.us"));
        assert_eq!(m.text.as_deref(), Some("Bom dia, grupo"));
        assert_eq!(m.dedup_key(), "sales:ABCDEF0123456789ABCD");
    }

    #[test]
    fn group_message_without_participant_names_the_field() {
        let mut v: Value = serde_json::from_str(GROUP).unwrap();
        v["data"]["key"]
            .as_object_mut()
            .unwrap()
            .remove("participant");
        let err = run(&v.to_string()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("field data.key.participant: missing"),
            "{err}"
        );
    }

    #[test]
    fn from_me_upsert_is_stored_as_an_event() {
        let e = one_event(FROM_ME);
        assert_eq!(e.kind, "from_me");
        assert_eq!(e.external_id.as_deref(), Some("3AE99D6A1DBF3F9A0578"));
        assert_eq!(
            e.payload["data"]["message"]["conversation"],
            "Texto da mensagem"
        );
    }

    #[test]
    fn upper_case_event_name_is_the_same_event() {
        let upper = one_message(UPPERCASE);
        let lower = one_message(CONVERSATION);
        assert_eq!(upper.dedup_key(), lower.dedup_key());
        assert_eq!(upper.text, lower.text);
        for name in ["MESSAGES_UPSERT", "messages-upsert", " Messages.Upsert "] {
            assert_eq!(normalize_event(name), "messages.upsert");
        }
    }

    #[test]
    fn lid_chat_uses_the_phone_number_jid_and_ephemeral_text() {
        let m = one_message(LID);
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+966500000000");
        assert_eq!(m.text.as_deref(), Some("Quero remarcar"));
        let mut v: Value = serde_json::from_str(LID).unwrap();
        v["data"]["key"]
            .as_object_mut()
            .unwrap()
            .remove("remoteJidAlt");
        let m = &run(&v.to_string()).unwrap().messages[0];
        assert_eq!(m.from.as_ref().unwrap().as_str(), "272516946294519@lid");
    }

    #[test]
    fn device_suffix_is_dropped_from_the_jid() {
        assert_eq!(
            jid_to_phone("5511988887777:12@s.whatsapp.net", None)
                .unwrap()
                .as_str(),
            "+5511988887777"
        );
        assert_eq!(
            jid_to_phone("5511988887777", None).unwrap().as_str(),
            "+5511988887777"
        );
        assert_eq!(jid_to_phone("", None), None);
    }

    #[test]
    fn duplicate_delivery_yields_the_same_dedup_key() {
        let first = one_message(CONVERSATION);
        let again = one_message(CONVERSATION);
        assert_eq!(first.dedup_key(), again.dedup_key());
        assert_ne!(first.id, again.id);
        // The same key.id on another instance is another message.
        let other = CONVERSATION.replace(r#""instance": "sales""#, r#""instance": "support""#);
        assert_eq!(
            one_message(&other).dedup_key(),
            "support:3A6687C4331054C34F0F"
        );
        assert_eq!(one_message(&other).external_id, first.external_id);
    }

    #[test]
    fn other_events_are_stored_under_their_name() {
        let e = one_event(UPDATE);
        assert_eq!(e.kind, "messages.update");
        assert_eq!(e.external_id.as_deref(), Some("3AE99D6A1DBF3F9A0578"));
        let e = one_event(CONNECTION);
        assert_eq!(e.kind, "connection.update");
        assert_eq!(e.external_id, None);
        assert_eq!(e.payload["data"]["state"], "open");
        let upper = CONNECTION.replace("connection.update", "CONNECTION_UPDATE");
        assert_eq!(one_event(&upper).kind, "connection.update");
    }

    #[test]
    fn status_broadcast_newsletter_and_protocol_upserts_are_events() {
        let with = |jid: &str, message: Value| {
            json!({"event": "messages.upsert", "instance": "i", "apikey": SECRET, "data": {
                "key": {"id": "X1", "remoteJid": jid, "fromMe": false,
                        "participant": "5511988887777@s.whatsapp.net"},
                "message": message}})
            .to_string()
        };
        let text = json!({"conversation": "hi"});
        assert_eq!(
            one_event(&with("status@broadcast", text.clone())).kind,
            "status"
        );
        assert_eq!(
            one_event(&with("120363000000000001@newsletter", text)).kind,
            "newsletter"
        );
        let revoke = json!({"protocolMessage": {"key": {"id": "Y"}, "type": "REVOKE"}});
        let e = one_event(&with("5511988887777@s.whatsapp.net", revoke));
        assert_eq!(e.kind, "protocol");
        assert_eq!(e.external_id.as_deref(), Some("X1"));
    }

    #[test]
    fn upsert_without_text_has_null_text() {
        let body = json!({"event": "messages.upsert", "instance": "i", "data": {
            "key": {"id": "A2", "remoteJid": "447700900123@s.whatsapp.net"},
            "message": {"reactionMessage": {"text": "👍"}}}});
        let m = &run_at(&provider(""), &HeaderMap::new(), &body.to_string(), NOW)
            .unwrap()
            .messages[0];
        assert_eq!(m.text, None);
        assert!(m.media.is_empty());
    }

    #[test]
    fn array_data_gives_one_message_per_item() {
        let body = json!({"event": "messages.upsert", "instance": "i", "data": [
            {"key": {"id": "A", "remoteJid": "1@s.whatsapp.net"}, "message": {"conversation": "a"}},
            {"key": {"id": "B", "remoteJid": "2@s.whatsapp.net", "fromMe": true}}]});
        let parsed = run_at(&provider(""), &HeaderMap::new(), &body.to_string(), NOW).unwrap();
        assert_eq!(parsed.messages.len(), 1);
        assert_eq!(parsed.messages[0].raw.to_value()["data"]["key"]["id"], "A");
        assert_eq!(parsed.events[0].external_id.as_deref(), Some("B"));
    }

    #[test]
    fn payload_errors_name_the_field() {
        let p = provider("");
        let cases = [
            (json!({"instance": "i", "data": {}}), "field event: missing"),
            (json!({"event": 1}), "field event: expected a string"),
            (
                json!({"event": "messages.upsert", "data": {}}),
                "field instance: missing",
            ),
            (
                json!({"event": "messages.upsert", "instance": "i"}),
                "field data: missing",
            ),
            (
                json!({"event": "messages.upsert", "instance": "i", "data": []}),
                "field data: empty array",
            ),
            (
                json!({"event": "messages.upsert", "instance": "i", "data": {}}),
                "field data.key: expected an object {id, remoteJid, fromMe}",
            ),
            (
                json!({"event": "messages.upsert", "instance": "i", "data": {"key": {"remoteJid": "1@s.whatsapp.net"}}}),
                "field data.key.id: missing",
            ),
            (
                json!({"event": "messages.upsert", "instance": "i", "data": {"key": {"id": "", "remoteJid": "1@s.whatsapp.net"}}}),
                "field data.key.id: must not be empty",
            ),
            (
                json!({"event": "messages.upsert", "instance": "i", "data": {"key": {"id": "A"}}}),
                "field data.key.remoteJid: missing",
            ),
            (
                json!({"event": "messages.upsert", "instance": "i", "data": {"key": {"id": "A", "remoteJid": "1@s.whatsapp.net", "fromMe": "no"}}}),
                "field data.key.fromMe: expected a boolean",
            ),
            (
                json!({"event": "messages.upsert", "instance": "i", "data": [{"key": {"id": "A", "remoteJid": "1@s.whatsapp.net"}}, 5]}),
                "field data[1]: expected an object",
            ),
            (
                json!([1]),
                "body must be a JSON object (an Evolution API event)",
            ),
        ];
        for (body, expected) in cases {
            let err = run_at(&p, &HeaderMap::new(), &body.to_string(), NOW).unwrap_err();
            assert_eq!(
                err,
                ProviderError::InvalidPayload(expected.into()),
                "{body}"
            );
        }
    }

    #[test]
    fn apikey_in_body_or_header_authenticates() {
        assert!(run(CONVERSATION).is_ok());
        let bare = without_apikey(CONVERSATION);
        let mut h = HeaderMap::new();
        h.insert("apikey", HeaderValue::from_static(SECRET));
        assert!(run_at(&signed(), &h, &bare, NOW).is_ok());
    }

    #[test]
    fn evolution_with_wrong_apikey_is_rejected() {
        let wrong = CONVERSATION.replace(SECRET, "EVO-INSTANCE-TOKEN-0002");
        assert!(is_invalid_signature(run(&wrong)));
        let mut h = HeaderMap::new();
        h.insert("apikey", HeaderValue::from_static("EVO-INSTANCE-TOKEN"));
        assert!(is_invalid_signature(run_at(
            &signed(),
            &h,
            &without_apikey(CONVERSATION),
            NOW
        )));
    }

    #[test]
    fn evolution_without_credentials_is_rejected() {
        let bare = without_apikey(CONVERSATION);
        assert!(is_invalid_signature(run(&bare)));
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        assert!(is_invalid_signature(run_at(&signed(), &h, &bare, NOW)));
    }

    #[test]
    fn evolution_with_duplicated_apikey_or_authorization_header_is_rejected() {
        for name in ["apikey", "authorization"] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(SECRET));
            h.append(name, HeaderValue::from_static(SECRET));
            // Even with the right apikey in the body.
            assert!(
                is_invalid_signature(run_at(&signed(), &h, CONVERSATION, NOW)),
                "{name}"
            );
        }
    }

    #[test]
    fn unsigned_source_accepts_unsigned_requests() {
        let p = provider("");
        assert!(!p.is_signed());
        assert!(signed().is_signed());
        assert!(run_at(&p, &HeaderMap::new(), &without_apikey(CONVERSATION), NOW).is_ok());
    }

    #[test]
    fn evolution_jwt_signed_with_the_secret_authenticates() {
        let bare = without_apikey(CONVERSATION);
        let h = bearer(&evolution_jwt(NOW - 5, SECRET));
        assert!(run_at(&signed(), &h, &bare, NOW).is_ok());
        let no_exp = jwt(
            &json!({"alg": "HS256"}),
            &json!({"app": "evolution"}),
            SECRET,
        );
        assert!(run_at(&signed(), &bearer(&no_exp), &bare, NOW).is_ok());
        let mut lower = HeaderMap::new();
        let value = format!("bearer {}", evolution_jwt(NOW, SECRET));
        lower.insert("authorization", HeaderValue::from_str(&value).unwrap());
        assert!(run_at(&signed(), &lower, &bare, NOW).is_ok());
    }

    #[test]
    fn evolution_jwt_with_bad_signature_is_rejected() {
        let bare = without_apikey(CONVERSATION);
        let other_key = evolution_jwt(NOW, "another-secret");
        assert!(is_invalid_signature(run_at(
            &signed(),
            &bearer(&other_key),
            &bare,
            NOW
        )));
        // Claims swapped under an intact signature.
        let good = evolution_jwt(NOW, SECRET);
        let forged_claims = b64(&json!({"iat": NOW, "exp": NOW + 999_999}));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert!(is_invalid_signature(run_at(
            &signed(),
            &bearer(&forged),
            &bare,
            NOW
        )));
        for garbage in [
            "x",
            "a.b",
            "a.b.c.d",
            "..",
            "e30.e30.!!!",
            &format!("{good}="),
        ] {
            assert!(
                is_invalid_signature(run_at(&signed(), &bearer(garbage), &bare, NOW)),
                "{garbage}"
            );
        }
    }

    #[test]
    fn evolution_jwt_with_expired_exp_is_rejected() {
        let bare = without_apikey(CONVERSATION);
        let token = evolution_jwt(NOW - 600, SECRET); // exp == NOW
        let err = run_at(&signed(), &bearer(&token), &bare, NOW).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let token = evolution_jwt(NOW - 601, SECRET);
        assert!(is_invalid_signature(run_at(
            &signed(),
            &bearer(&token),
            &bare,
            NOW
        )));
        let still_valid = evolution_jwt(NOW - 599, SECRET);
        assert!(run_at(&signed(), &bearer(&still_valid), &bare, NOW).is_ok());
        let future = jwt(&json!({"alg": "HS256"}), &json!({"nbf": NOW + 60}), SECRET);
        assert!(is_invalid_signature(run_at(
            &signed(),
            &bearer(&future),
            &bare,
            NOW
        )));
        let bad_exp = jwt(&json!({"alg": "HS256"}), &json!({"exp": "soon"}), SECRET);
        assert!(is_invalid_signature(run_at(
            &signed(),
            &bearer(&bad_exp),
            &bare,
            NOW
        )));
    }

    #[test]
    fn evolution_jwt_with_alg_none_or_another_alg_is_rejected() {
        let bare = without_apikey(CONVERSATION);
        let claims = b64(&json!({"iat": NOW, "exp": NOW + 600}));
        let none = format!("{}.{claims}.", b64(&json!({"alg": "none", "typ": "JWT"})));
        let err = run_at(&signed(), &bearer(&none), &bare, NOW).unwrap_err();
        assert_eq!(
            err,
            ProviderError::InvalidSignature("bearer token rejected: alg must be HS256".into())
        );
        for header in [
            json!({"alg": "HS512"}),
            json!({"alg": "hs256"}),
            json!({"typ": "JWT"}),
            json!({"alg": "HS256", "crit": ["b64"]}),
        ] {
            let token = jwt(&header, &json!({"exp": NOW + 600}), SECRET);
            assert!(
                is_invalid_signature(run_at(&signed(), &bearer(&token), &bare, NOW)),
                "{header}"
            );
        }
    }

    #[test]
    fn a_jwt_we_sign_verifies_and_flipping_any_token_byte_fails() {
        let token = evolution_jwt(NOW, SECRET);
        testing::assert_every_flipped_byte_fails("token", token.as_bytes(), &[0x01], |t| {
            // A base64url token flipped in bit 0 stays ASCII.
            verify_hs256_jwt(std::str::from_utf8(t).unwrap(), SECRET.as_bytes(), NOW)
        });
    }

    #[test]
    fn arbitrary_bodies_never_panic() {
        let p = provider("");
        let bodies = [
            "",
            "null",
            "[]",
            "{}",
            "\"x\"",
            "{\"event\":null}",
            r#"{"event":"messages.upsert","instance":"i","data":{"key":{"id":"a","remoteJid":"@"},"message":"x"}}"#,
            r#"{"event":"messages.upsert","instance":"i","data":{"key":{"id":"a","remoteJid":"@lid"},"message":{"ephemeralMessage":{"message":{"ephemeralMessage":{"message":{"ephemeralMessage":{"message":{"ephemeralMessage":{"message":{"ephemeralMessage":{"message":{"conversation":"deep"}}}}}}}}}}}}}"#,
            r#"{"event":"x","data":[1,2]}"#,
            r#"{"event":"messages.upsert","instance":"i","apikey":5,"data":{"key":{"id":"a","remoteJid":"1@g.us","participant":7}}}"#,
        ];
        testing::assert_arbitrary_bodies_never_panic(bodies, |body| {
            let _ = run_at(&p, &HeaderMap::new(), body, NOW);
            run_at(&signed(), &HeaderMap::new(), body, NOW)
        });
        let _ = verify_hs256_jwt("é.é.é", b"k", NOW);
    }
}
