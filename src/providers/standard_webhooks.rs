//! `standard-webhooks`: any JSON body signed per the Standard Webhooks
//! specification (<https://www.standardwebhooks.com>): headers `webhook-id`,
//! `webhook-timestamp` (unix seconds, ±5 min) and `webhook-signature`, a
//! space-separated list of `v1,<base64 HMAC-SHA256>` entries over
//! `{id}.{timestamp}.{body}`, any of which may match (several are sent while
//! a sender rotates its secret). Entries of other versions (`v1a`, ed25519)
//! are ignored. One message per request; dedup on `webhook-id`.
//!
//! The secret is `whsec_<base64>`; the base64 part, decoded, is the HMAC key.
//! A secret written without the `whsec_` prefix is read as the bare base64
//! key, as the specification's reference libraries do. Padding is optional.
//!
//! The same scheme signs our own deliveries: [`sign`] is what the forward
//! action puts in `webhook-signature`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use serde_json::Value;

use crate::config::{HmacAlgorithm, ProviderKind, SourceConfig};
use crate::domain::{Channel, InboundMessage, MessageId, PhoneNumber};

use super::{
    ParseContext, Parsed, Provider, ProviderError, Verified, WebhookRequest, from_json, signature,
};

const SECRET_PREFIX: &str = "whsec_";
const ID_HEADER: &str = "webhook-id";
const TIMESTAMP_HEADER: &str = "webhook-timestamp";
const SIGNATURE_HEADER: &str = "webhook-signature";

/// A decoded HMAC key; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Decodes `whsec_<base64>`, or bare base64 without the prefix.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let text = secret.trim();
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        if b64.is_empty() {
            return Err("the secret is empty; expected whsec_<base64>".into());
        }
        // The decoder's own error quotes the offending byte, which is part
        // of the secret: say only what is wrong.
        let key = STANDARD_PAD_INDIFFERENT.decode(b64).map_err(|_| {
            "the secret is not whsec_ followed by standard base64 (nor bare base64)".to_string()
        })?;
        if key.is_empty() {
            return Err("the secret decodes to an empty key".into());
        }
        Ok(Self(key))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The `webhook-signature` value for a delivery: `v1,<base64 HMAC-SHA256>`
/// of `{id}.{timestamp}.{body}` under `key` (see [`SigningKey::parse`]).
pub fn sign(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = mac(key, id, &timestamp.to_string(), body);
    format!("v1,{}", STANDARD.encode(mac))
}

fn mac(key: &SigningKey, id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    signature::hmac(
        HmacAlgorithm::Sha256,
        key.as_bytes(),
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    )
}

#[derive(Debug)]
pub struct StandardWebhooks {
    /// `None`: unsigned source. `Some(Err)`: a secret that does not decode;
    /// every request is refused rather than accepted unsigned.
    key: Option<Result<SigningKey, String>>,
    text_pointer: Option<String>,
    from_pointer: Option<String>,
}

impl StandardWebhooks {
    pub fn new(source: &SourceConfig) -> Self {
        Self {
            key: source
                .secret
                .as_ref()
                .map(|s| SigningKey::parse(s.expose())),
            text_pointer: source.text_pointer.clone(),
            from_pointer: source.from_pointer.clone(),
        }
    }
}

impl Provider for StandardWebhooks {
    fn kind(&self) -> ProviderKind {
        ProviderKind::StandardWebhooks
    }

    fn is_signed(&self) -> bool {
        self.key.is_some()
    }

    fn verify<'a>(&self, req: WebhookRequest<'a>) -> Result<Verified<'a>, ProviderError> {
        let Some(key) = &self.key else {
            return Ok(Verified::new(req));
        };
        let key = key.as_ref().map_err(|e| {
            ProviderError::InvalidSignature(format!("the source's secret is unusable: {e}"))
        })?;
        let id = signature::required_header(&req, ID_HEADER)?;
        let timestamp = signature::required_header(&req, TIMESTAMP_HEADER)?;
        let signatures = signature::required_header(&req, SIGNATURE_HEADER)?;
        signature::check_timestamp(timestamp, req.now, TIMESTAMP_HEADER)?;
        let expected = mac(key, id, timestamp, req.body);
        let matched = signatures
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| STANDARD_PAD_INDIFFERENT.decode(sig).ok())
            .any(|sig| signature::constant_time_eq(&expected, &sig));
        if matched {
            Ok(Verified::new(req))
        } else {
            Err(ProviderError::InvalidSignature(format!(
                "no v1 entry of {SIGNATURE_HEADER} matches"
            )))
        }
    }

    fn parse(&self, req: Verified<'_>, ctx: ParseContext<'_>) -> Result<Parsed, ProviderError> {
        let req = req.request();
        let body: Value = from_json(req.body)?;
        let id = req
            .header(ID_HEADER)?
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                ProviderError::InvalidPayload(format!(
                    "header {ID_HEADER}: missing; it is the message id"
                ))
            })?;
        let text = match &self.text_pointer {
            Some(p) => text_at(&body, p)?,
            None => None,
        };
        let from = match &self.from_pointer {
            Some(p) => phone_at(&body, p)?,
            None => None,
        };
        Ok(Parsed {
            messages: vec![InboundMessage {
                id: MessageId::generate(),
                source: ctx.source.to_string(),
                provider: ProviderKind::StandardWebhooks.as_str(),
                external_id: id.to_string(),
                dedup_key: None,
                channel: Channel::Other("other".into()),
                from,
                to: None,
                text,
                media: Vec::new(),
                received_at: ctx.received_at.to_string(),
                raw: body.into(),
            }],
            events: Vec::new(),
        })
    }
}

/// The string at `pointer`; absent or `null` is no text.
fn text_at(body: &Value, pointer: &str) -> Result<Option<String>, ProviderError> {
    match body.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProviderError::InvalidPayload(format!(
            "field {pointer} (text_pointer): expected a string"
        ))),
    }
}

/// The sender at `pointer`: a string, or an integer some senders use for
/// phone numbers; absent or `null` is no sender.
fn phone_at(body: &Value, pointer: &str) -> Result<Option<PhoneNumber>, ProviderError> {
    match body.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(PhoneNumber::parse(s)),
        Some(Value::Number(n)) if n.is_u64() => Ok(PhoneNumber::parse(&n.to_string())),
        Some(_) => Err(ProviderError::InvalidPayload(format!(
            "field {pointer} (from_pointer): expected a string"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use serde::Deserialize;

    use super::*;
    use crate::providers::signature::{TOLERANCE_SECS, check_timestamp};
    use crate::providers::testing::{self, is_invalid_signature};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    const MESSAGE: &str =
        include_str!("../../tests/fixtures/standard-webhooks/message-received.json");
    const CONTACT: &str =
        include_str!("../../tests/fixtures/standard-webhooks/contact-created.json");
    const VECTORS: &str = include_str!("../../tests/fixtures/standard-webhooks/spec-vectors.json");

    #[derive(Deserialize)]
    struct Vector {
        secret: String,
        id: String,
        timestamp: i64,
        payload: String,
        signature: String,
    }

    fn vectors() -> Vec<Vector> {
        serde_json::from_str(VECTORS).unwrap()
    }

    fn provider(extra: &str) -> StandardWebhooks {
        StandardWebhooks::new(&testing::source("sw", "standard-webhooks", extra))
    }

    fn signed() -> StandardWebhooks {
        provider(&format!("secret='{SECRET}'"))
    }

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let ts = ts.to_string();
        testing::headers([
            (ID_HEADER, id),
            (TIMESTAMP_HEADER, ts.as_str()),
            (SIGNATURE_HEADER, sig),
        ])
    }

    fn signed_headers(id: &str, ts: i64, body: &[u8]) -> HeaderMap {
        let key = SigningKey::parse(SECRET).unwrap();
        headers(id, ts, &sign(&key, id, ts, body))
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a [u8], now: i64) -> WebhookRequest<'a> {
        testing::request("/hooks/sw", headers, body, now)
    }

    fn run(
        p: &StandardWebhooks,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Parsed, ProviderError> {
        testing::verify_and_parse(p, request(headers, body, now), "sw")
    }

    #[test]
    fn sign_matches_the_specification_test_vectors() {
        for v in vectors() {
            let key = SigningKey::parse(&v.secret).unwrap();
            assert_eq!(
                sign(&key, &v.id, v.timestamp, v.payload.as_bytes()),
                v.signature
            );
        }
    }

    #[test]
    fn specification_test_vectors_verify_at_their_timestamp() {
        for v in vectors() {
            let p = provider(&format!("secret='{}'", v.secret));
            let h = headers(&v.id, v.timestamp, &v.signature);
            let parsed = run(&p, &h, v.payload.as_bytes(), v.timestamp + 10).unwrap();
            assert_eq!(parsed.messages[0].external_id, v.id);
        }
    }

    #[test]
    fn secret_without_whsec_prefix_is_read_as_bare_base64() {
        let v = &vectors()[1];
        let bare = v.secret.strip_prefix("whsec_").unwrap();
        let p = provider(&format!("secret='{bare}'"));
        let h = headers(&v.id, v.timestamp, &v.signature);
        assert!(run(&p, &h, v.payload.as_bytes(), v.timestamp).is_ok());
        assert_eq!(
            SigningKey::parse(bare).unwrap(),
            SigningKey::parse(&v.secret).unwrap()
        );
    }

    #[test]
    fn secret_that_is_not_base64_refuses_every_request() {
        assert!(SigningKey::parse("whsec_not*base64!").is_err());
        assert!(SigningKey::parse("whsec_").is_err());
        // `check-config` refuses such a secret; the adapter still fails
        // closed if one reaches it.
        let mut source = testing::source("sw", "standard-webhooks", "");
        source.secret = Some(crate::config::Secret::new("whsec_not*base64!"));
        let p = StandardWebhooks::new(&source);
        assert!(p.is_signed());
        let h = signed_headers("msg_1", NOW, MESSAGE.as_bytes());
        let err = run(&p, &h, MESSAGE.as_bytes(), NOW).unwrap_err();
        assert!(matches!(err, ProviderError::InvalidSignature(_)));
        assert!(!err.to_string().contains("not*base64"), "{err}");
    }

    #[test]
    fn signing_key_debug_is_redacted() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "[redacted]");
    }

    #[test]
    fn signed_message_is_normalized_with_pointers() {
        let p = provider(&format!(
            "secret='{SECRET}'\ntext_pointer='/data/text'\nfrom_pointer='/data/from'"
        ));
        let h = signed_headers("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", NOW, MESSAGE.as_bytes());
        let parsed = run(&p, &h, MESSAGE.as_bytes(), NOW).unwrap();
        assert!(parsed.events.is_empty());
        let [m] = parsed.messages.as_slice() else {
            panic!("one message expected")
        };
        assert_eq!(m.external_id, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
        assert_eq!(m.dedup_key(), "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
        assert_eq!(m.channel, Channel::Other("other".into()));
        assert_eq!(m.provider, "standard-webhooks");
        assert_eq!(m.text.as_deref(), Some("Yes please"));
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+15551234567");
        assert_eq!(m.to, None);
        assert_eq!(m.raw.to_value()["data"]["channel"], "chat-widget");
    }

    #[test]
    fn without_pointers_text_and_from_are_null() {
        let h = signed_headers("msg_a", NOW, CONTACT.as_bytes());
        let m = &run(&signed(), &h, CONTACT.as_bytes(), NOW)
            .unwrap()
            .messages[0];
        assert_eq!(m.text, None);
        assert_eq!(m.from, None);
        assert_eq!(m.raw.to_value()["type"], "contact.created");
    }

    #[test]
    fn pointer_to_an_absent_field_gives_null_and_a_national_number_is_kept() {
        let p = provider(&format!(
            "secret='{SECRET}'\ntext_pointer='/data/text'\nfrom_pointer='/data/phoneNumber'"
        ));
        let h = signed_headers("msg_b", NOW, CONTACT.as_bytes());
        let m = &run(&p, &h, CONTACT.as_bytes(), NOW).unwrap().messages[0];
        assert_eq!(m.text, None);
        assert_eq!(m.from.as_ref().unwrap().as_str(), "(281) 332-2575");
    }

    #[test]
    fn text_pointer_to_a_non_string_is_an_invalid_payload_naming_the_pointer() {
        let p = provider(&format!("secret='{SECRET}'\ntext_pointer='/data'"));
        let h = signed_headers("msg_c", NOW, MESSAGE.as_bytes());
        let err = run(&p, &h, MESSAGE.as_bytes(), NOW).unwrap_err();
        assert_eq!(
            err,
            ProviderError::InvalidPayload("field /data (text_pointer): expected a string".into())
        );
    }

    #[test]
    fn numeric_sender_is_accepted_and_an_object_sender_is_rejected() {
        let p = provider("from_pointer='/from'");
        let h = headers("msg_d", NOW, "v1,x");
        let m = &run(&p, &h, br#"{"from":15551234567}"#, NOW)
            .unwrap()
            .messages[0];
        assert_eq!(m.from.as_ref().unwrap().as_str(), "15551234567");
        let err = run(&p, &h, br#"{"from":{"n":1}}"#, NOW).unwrap_err();
        assert!(
            err.to_string().starts_with("field /from (from_pointer)"),
            "{err}"
        );
    }

    #[test]
    fn standard_webhooks_with_wrong_secret_is_rejected() {
        let other = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let h = headers(
            "msg_1",
            NOW,
            &sign(&other, "msg_1", NOW, MESSAGE.as_bytes()),
        );
        assert!(is_invalid_signature(run(
            &signed(),
            &h,
            MESSAGE.as_bytes(),
            NOW
        )));
    }

    #[test]
    fn standard_webhooks_with_tampered_body_id_or_timestamp_is_rejected() {
        let h = signed_headers("msg_1", NOW, MESSAGE.as_bytes());
        let tampered = MESSAGE.replace("Yes please", "No thanks!");
        assert!(is_invalid_signature(run(
            &signed(),
            &h,
            tampered.as_bytes(),
            NOW
        )));
        let mut other_id = h.clone();
        other_id.insert(ID_HEADER, HeaderValue::from_static("msg_2"));
        assert!(is_invalid_signature(run(
            &signed(),
            &other_id,
            MESSAGE.as_bytes(),
            NOW
        )));
        let mut other_ts = h.clone();
        other_ts.insert(TIMESTAMP_HEADER, HeaderValue::from(NOW + 1));
        assert!(is_invalid_signature(run(
            &signed(),
            &other_ts,
            MESSAGE.as_bytes(),
            NOW
        )));
    }

    #[test]
    fn standard_webhooks_with_stale_timestamp_is_rejected() {
        let tol = TOLERANCE_SECS as i64;
        for (ts, ok) in [
            (NOW - tol, true),
            (NOW + tol, true),
            (NOW - tol - 1, false),
            (NOW + tol + 1, false),
        ] {
            let h = signed_headers("msg_1", ts, MESSAGE.as_bytes());
            assert_eq!(
                run(&signed(), &h, MESSAGE.as_bytes(), NOW).is_ok(),
                ok,
                "timestamp {ts}"
            );
        }
    }

    #[test]
    fn standard_webhooks_timestamp_that_is_not_plain_digits_is_rejected() {
        let key = SigningKey::parse(SECRET).unwrap();
        for ts in [
            "+1767225600",
            " 1767225600",
            "1767225600.5",
            "",
            "abc",
            "-5",
        ] {
            let expected = mac(&key, "msg_1", ts, MESSAGE.as_bytes());
            let sig = format!("v1,{}", STANDARD.encode(expected));
            let h = testing::headers([
                (ID_HEADER, "msg_1"),
                (TIMESTAMP_HEADER, ts),
                (SIGNATURE_HEADER, sig.as_str()),
            ]);
            assert!(
                is_invalid_signature(run(&signed(), &h, MESSAGE.as_bytes(), NOW)),
                "timestamp {ts:?}"
            );
        }
    }

    #[test]
    fn standard_webhooks_with_missing_header_is_rejected() {
        let full = signed_headers("msg_1", NOW, MESSAGE.as_bytes());
        for name in [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
            let mut h = full.clone();
            h.remove(name);
            let err = run(&signed(), &h, MESSAGE.as_bytes(), NOW).unwrap_err();
            assert_eq!(
                err,
                ProviderError::InvalidSignature(format!("missing header {name}"))
            );
        }
    }

    #[test]
    fn standard_webhooks_with_duplicated_header_is_rejected() {
        let full = signed_headers("msg_1", NOW, MESSAGE.as_bytes());
        for name in [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
            let mut h = full.clone();
            let value = h.get(name).unwrap().clone();
            h.append(name, value);
            assert!(
                is_invalid_signature(run(&signed(), &h, MESSAGE.as_bytes(), NOW)),
                "{name}"
            );
        }
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_ignored() {
        let good = sign(
            &SigningKey::parse(SECRET).unwrap(),
            "msg_1",
            NOW,
            MESSAGE.as_bytes(),
        );
        let b64 = good.strip_prefix("v1,").unwrap();
        let list = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a,{b64} {good} v1,bm90LWEtc2ln"
        );
        let h = headers("msg_1", NOW, &list);
        assert!(run(&signed(), &h, MESSAGE.as_bytes(), NOW).is_ok());

        // The right MAC under another version tag does not count.
        for only_wrong in [
            format!("v1a,{b64}"),
            format!("v2,{b64}"),
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=".to_string(),
            "v1,".to_string(),
            "garbage".to_string(),
            b64.to_string(),
        ] {
            let h = headers("msg_1", NOW, &only_wrong);
            assert!(
                is_invalid_signature(run(&signed(), &h, MESSAGE.as_bytes(), NOW)),
                "{only_wrong}"
            );
        }
    }

    #[test]
    fn unsigned_source_accepts_unsigned_requests_but_needs_a_webhook_id() {
        let p = provider("");
        assert!(!p.is_signed());
        let mut h = HeaderMap::new();
        h.insert(ID_HEADER, HeaderValue::from_static("evt_1"));
        let parsed = run(&p, &h, MESSAGE.as_bytes(), NOW).unwrap();
        assert_eq!(parsed.messages[0].dedup_key(), "evt_1");
        let err = run(&p, &HeaderMap::new(), MESSAGE.as_bytes(), NOW).unwrap_err();
        assert_eq!(
            err,
            ProviderError::InvalidPayload(
                "header webhook-id: missing; it is the message id".into()
            )
        );
    }

    #[test]
    fn body_that_is_not_json_is_an_invalid_payload_after_verification() {
        let body = b"not json";
        let h = signed_headers("msg_1", NOW, body);
        let err = run(&signed(), &h, body, NOW).unwrap_err();
        assert!(matches!(err, ProviderError::InvalidPayload(_)), "{err}");
    }

    #[test]
    fn a_request_we_sign_verifies_and_flipping_any_body_byte_fails() {
        testing::assert_signed_bodies_verify_and_flips_fail(
            &signed(),
            "/hooks/sw",
            NOW,
            &[MESSAGE.trim().as_bytes()],
            &[0x01, 0x80],
            |body| signed_headers("msg_prop", NOW, body),
        );
    }

    #[test]
    fn arbitrary_bytes_and_headers_never_panic() {
        let p = signed();
        let bodies: [&[u8]; 5] = [b"", b"\xff\xfe", b"{", b"[]", b"null"];
        testing::assert_arbitrary_bodies_never_panic(bodies, |body| {
            for sig in ["", "v1", ",", "v1,,", "v1,\u{7f}", "v1,==== v1,a"] {
                let Ok(sig) = HeaderValue::from_str(sig) else {
                    continue;
                };
                let mut h = headers("msg_1", NOW, "v1,x");
                h.insert(SIGNATURE_HEADER, sig);
                let _ = run(&p, &h, body, NOW);
                let _ = run(&provider("text_pointer='/a'"), &h, body, NOW);
            }
        });
        let _ = check_timestamp("99999999999999999999", i64::MIN, "t");
        let _ = check_timestamp("999999999999999999", i64::MAX, "t");
    }
}
