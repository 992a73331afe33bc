//! `android-sms-gateway`: the SMS Gateway for Android app (sms-gate.app).
//! Every webhook is an envelope `{id, webhookId, event, deviceId, payload}`;
//! `sms:received` carries `{messageId, message, phoneNumber, simNumber,
//! receivedAt}` and is the one inbound message. Every other event
//! (`sms:sent`, `sms:delivered`, `sms:failed`, `system:ping`,
//! `sms:data-received`, `mms:*`, ...) is stored as an event.
//!
//! Signed requests carry `X-Signature`, the hex HMAC-SHA256 under the
//! app's signing key of the raw body followed by the `X-Timestamp` value,
//! and `X-Timestamp`, unix seconds that must be within ±5 minutes.
//!
//! Dedup is on the envelope `id`: the app's `messageId` is derived from the
//! content (two identical texts from one number share it), so it is kept
//! only in `raw` and as an event's `external_id`.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{HmacAlgorithm, ProviderKind, Secret, SignatureEncoding, SourceConfig};
use crate::domain::{Channel, InboundEvent, InboundMessage, MessageId, PhoneNumber};

use super::{
    ParseContext, Parsed, Provider, ProviderError, Verified, WebhookRequest, from_json, signature,
};

const SIGNATURE_HEADER: &str = "X-Signature";
const TIMESTAMP_HEADER: &str = "X-Timestamp";
const RECEIVED: &str = "sms:received";

#[derive(Debug)]
pub struct AndroidSmsGateway {
    secret: Option<Secret>,
}

impl AndroidSmsGateway {
    pub fn new(source: &SourceConfig) -> Self {
        Self {
            secret: source.secret.clone(),
        }
    }
}

/// The envelope every webhook of the app shares.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: String,
    event: String,
    #[serde(default)]
    payload: Value,
}

/// `sms:received`'s payload. `simNumber` and `receivedAt` stay in `raw`
/// only (the first is null on some devices, the second is device-local).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Received {
    phone_number: String,
    message: Option<String>,
}

/// Deserializes `value`, naming the offending field below `at`.
fn from_value<T: DeserializeOwned>(value: &Value, at: &str) -> Result<T, ProviderError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let loc = [at, inner.as_str()]
            .into_iter()
            .filter(|p| !p.is_empty() && *p != ".")
            .collect::<Vec<_>>()
            .join(".");
        if loc.is_empty() {
            ProviderError::InvalidPayload(format!("body: {}", e.inner()))
        } else {
            ProviderError::InvalidPayload(format!("field {loc}: {}", e.inner()))
        }
    })
}

impl Provider for AndroidSmsGateway {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AndroidSmsGateway
    }

    fn is_signed(&self) -> bool {
        self.secret.is_some()
    }

    fn verify<'a>(&self, req: WebhookRequest<'a>) -> Result<Verified<'a>, ProviderError> {
        let Some(secret) = &self.secret else {
            return Ok(Verified::new(req));
        };
        let sig = signature::required_header(&req, SIGNATURE_HEADER)?;
        let timestamp = signature::required_header(&req, TIMESTAMP_HEADER)?;
        signature::check_timestamp(timestamp, req.now, TIMESTAMP_HEADER)?;
        let sig = signature::decode(SignatureEncoding::Hex, sig).ok_or_else(|| {
            ProviderError::InvalidSignature(format!("header {SIGNATURE_HEADER} is not hex"))
        })?;
        // The timestamp is signed exactly as sent, appended to the raw body.
        let parts = [req.body, timestamp.as_bytes()];
        if signature::verify_hmac(
            HmacAlgorithm::Sha256,
            secret.expose().as_bytes(),
            &parts,
            &sig,
        ) {
            Ok(Verified::new(req))
        } else {
            Err(ProviderError::InvalidSignature(
                "signature does not match".into(),
            ))
        }
    }

    fn parse(&self, req: Verified<'_>, ctx: ParseContext<'_>) -> Result<Parsed, ProviderError> {
        let body: Value = from_json(req.request().body)?;
        if !body.is_object() {
            return Err(ProviderError::InvalidPayload(
                "body must be a JSON object {id, webhookId, event, deviceId, payload}".into(),
            ));
        }
        let envelope: Envelope = from_value(&body, "")?;
        if envelope.id.trim().is_empty() {
            return Err(ProviderError::InvalidPayload(
                "field id: must not be empty".into(),
            ));
        }
        if envelope.event != RECEIVED {
            let external_id = envelope
                .payload
                .get("messageId")
                .and_then(Value::as_str)
                .map(str::to_string);
            return Ok(Parsed {
                messages: Vec::new(),
                events: vec![InboundEvent {
                    kind: envelope.event,
                    external_id,
                    payload: body,
                }],
            });
        }
        if !envelope.payload.is_object() {
            return Err(ProviderError::InvalidPayload(
                "field payload: expected an object for sms:received".into(),
            ));
        }
        let received: Received = from_value(&envelope.payload, "payload")?;
        let from = PhoneNumber::parse(&received.phone_number).ok_or_else(|| {
            ProviderError::InvalidPayload("field payload.phoneNumber: must not be empty".into())
        })?;
        Ok(Parsed {
            messages: vec![InboundMessage {
                id: MessageId::generate(),
                source: ctx.source.to_string(),
                provider: ProviderKind::AndroidSmsGateway.as_str(),
                external_id: envelope.id,
                dedup_key: None,
                channel: Channel::Sms,
                from: Some(from),
                to: None,
                text: received.message,
                media: Vec::new(),
                received_at: ctx.received_at.to_string(),
                raw: body.into(),
            }],
            events: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;
    use crate::providers::testing::{self, is_invalid_signature};

    /// The key and timestamp `sms-received.x-signature` was computed with
    /// (by python3's hmac module; see the fixture README).
    const FIXTURE_KEY: &str = "T0p-Secret-Signing-Key";
    const FIXTURE_TS: i64 = 1_719_045_971;

    const RECEIVED_BODY: &str =
        include_str!("../../tests/fixtures/android-sms-gateway/sms-received.json");
    const RECEIVED_SIG: &str =
        include_str!("../../tests/fixtures/android-sms-gateway/sms-received.x-signature");
    const INTERNATIONAL: &str =
        include_str!("../../tests/fixtures/android-sms-gateway/sms-received-international.json");
    const SENT: &str = include_str!("../../tests/fixtures/android-sms-gateway/sms-sent.json");
    const DELIVERED: &str =
        include_str!("../../tests/fixtures/android-sms-gateway/sms-delivered.json");
    const FAILED: &str = include_str!("../../tests/fixtures/android-sms-gateway/sms-failed.json");
    const PING: &str = include_str!("../../tests/fixtures/android-sms-gateway/system-ping.json");

    fn provider(extra: &str) -> AndroidSmsGateway {
        AndroidSmsGateway::new(&testing::source("phone", "android-sms-gateway", extra))
    }

    fn signed() -> AndroidSmsGateway {
        provider(&format!("secret='{FIXTURE_KEY}'"))
    }

    /// Signs as the app does (independently checked against the fixture).
    fn sign(key: &str, body: &[u8], ts: &str) -> String {
        hex::encode(signature::hmac(
            HmacAlgorithm::Sha256,
            key.as_bytes(),
            &[body, ts.as_bytes()],
        ))
    }

    fn headers(sig: &str, ts: &str) -> HeaderMap {
        testing::headers([("x-signature", sig), ("x-timestamp", ts)])
    }

    fn signed_headers(body: &[u8], ts: i64) -> HeaderMap {
        let ts = ts.to_string();
        headers(&sign(FIXTURE_KEY, body, &ts), &ts)
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a [u8], now: i64) -> WebhookRequest<'a> {
        testing::request("/hooks/phone", headers, body, now)
    }

    fn run(
        p: &AndroidSmsGateway,
        headers: &HeaderMap,
        body: &str,
        now: i64,
    ) -> Result<Parsed, ProviderError> {
        testing::verify_and_parse(p, request(headers, body.as_bytes(), now), "phone")
    }

    fn unsigned(body: &str) -> Result<Parsed, ProviderError> {
        run(&provider(""), &HeaderMap::new(), body, 0)
    }

    #[test]
    fn signature_computed_independently_with_python_verifies() {
        let h = headers(RECEIVED_SIG.trim(), &FIXTURE_TS.to_string());
        let parsed = run(&signed(), &h, RECEIVED_BODY, FIXTURE_TS + 30).unwrap();
        assert_eq!(parsed.messages.len(), 1);
        assert_eq!(
            sign(
                FIXTURE_KEY,
                RECEIVED_BODY.as_bytes(),
                &FIXTURE_TS.to_string()
            ),
            RECEIVED_SIG.trim()
        );
    }

    #[test]
    fn upper_case_hex_signature_is_accepted() {
        let h = headers(&RECEIVED_SIG.trim().to_uppercase(), &FIXTURE_TS.to_string());
        assert!(run(&signed(), &h, RECEIVED_BODY, FIXTURE_TS).is_ok());
    }

    #[test]
    fn documented_sms_received_is_normalized() {
        let parsed = unsigned(RECEIVED_BODY).unwrap();
        assert!(parsed.events.is_empty());
        let [m] = parsed.messages.as_slice() else {
            panic!("one message expected")
        };
        assert_eq!(m.external_id, "Ey6ECgOkVVFjz3CL48B8C");
        assert_eq!(m.dedup_key(), "Ey6ECgOkVVFjz3CL48B8C");
        assert_eq!(m.provider, "android-sms-gateway");
        assert_eq!(m.channel, Channel::Sms);
        // The documented number has no country code: kept as given.
        assert_eq!(m.from.as_ref().unwrap().as_str(), "6505551212");
        assert_eq!(m.to, None);
        assert_eq!(m.text.as_deref(), Some("Android is always a sweet treat!"));
        assert_eq!(m.raw.to_value()["payload"]["messageId"], "abc123");
        assert_eq!(
            m.raw.to_value()["deviceId"],
            "ffffffffceb0b1db0000018e937c815b"
        );
    }

    #[test]
    fn same_content_message_id_with_different_envelope_ids_are_not_duplicates() {
        let a = &unsigned(RECEIVED_BODY).unwrap().messages[0];
        let b = &unsigned(INTERNATIONAL).unwrap().messages[0];
        assert_eq!(
            a.raw.to_value()["payload"]["messageId"],
            b.raw.to_value()["payload"]["messageId"]
        );
        assert_ne!(a.dedup_key(), b.dedup_key());
        assert_eq!(b.from.as_ref().unwrap().as_str(), "+16505551212");
        assert_eq!(b.text.as_deref(), Some("STOP"));
    }

    #[test]
    fn status_and_ping_events_are_stored_as_events() {
        for (body, kind, external_id) in [
            (SENT, "sms:sent", Some("PyDmBQZZXYmyxMwED8Fzy")),
            (DELIVERED, "sms:delivered", Some("PyDmBQZZXYmyxMwED8Fzy")),
            (FAILED, "sms:failed", Some("PyDmBQZZXYmyxMwED8Fzy")),
            (PING, "system:ping", None),
        ] {
            let parsed = unsigned(body).unwrap();
            assert!(parsed.messages.is_empty(), "{kind}");
            let [e] = parsed.events.as_slice() else {
                panic!("one event expected for {kind}")
            };
            assert_eq!(e.kind, kind);
            assert_eq!(e.external_id.as_deref(), external_id);
            assert_eq!(e.payload["event"], kind);
        }
    }

    #[test]
    fn unknown_events_are_stored_as_events_too() {
        let body = r#"{"id":"x1","webhookId":"w","event":"mms:downloaded","deviceId":"d","payload":{"messageId":"m1"}}"#;
        let e = &unsigned(body).unwrap().events[0];
        assert_eq!(e.kind, "mms:downloaded");
        assert_eq!(e.external_id.as_deref(), Some("m1"));
    }

    #[test]
    fn payload_errors_name_the_field() {
        for (body, expected) in [
            (
                r#"{"event":"sms:received","payload":{}}"#,
                "body: missing field `id`",
            ),
            (r#"{"id":"a","payload":{}}"#, "body: missing field `event`"),
            (
                r#"{"id":"","event":"sms:received","payload":{}}"#,
                "field id: must not be empty",
            ),
            (
                r#"{"id":"a","event":"sms:received"}"#,
                "field payload: expected an object for sms:received",
            ),
            (
                r#"{"id":"a","event":"sms:received","payload":{"message":"hi"}}"#,
                "field payload: missing field `phoneNumber`",
            ),
            (
                r#"{"id":"a","event":"sms:received","payload":{"phoneNumber":" ","message":"hi"}}"#,
                "field payload.phoneNumber: must not be empty",
            ),
            (
                r#"[1,2]"#,
                "body must be a JSON object {id, webhookId, event, deviceId, payload}",
            ),
        ] {
            assert_eq!(
                unsigned(body).unwrap_err(),
                ProviderError::InvalidPayload(expected.into()),
                "{body}"
            );
        }
        let err = unsigned(r#"{"id":"a","event":"sms:received","payload":{"phoneNumber":5}}"#)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("field payload.phoneNumber: invalid type"),
            "{err}"
        );
        assert!(matches!(
            unsigned("{"),
            Err(ProviderError::InvalidPayload(_))
        ));
    }

    #[test]
    fn android_sms_gateway_with_wrong_secret_is_rejected() {
        let ts = FIXTURE_TS.to_string();
        let h = headers(&sign("another-key", RECEIVED_BODY.as_bytes(), &ts), &ts);
        assert!(is_invalid_signature(run(
            &signed(),
            &h,
            RECEIVED_BODY,
            FIXTURE_TS
        )));
    }

    #[test]
    fn android_sms_gateway_with_tampered_body_or_timestamp_is_rejected() {
        let h = headers(RECEIVED_SIG.trim(), &FIXTURE_TS.to_string());
        let tampered = RECEIVED_BODY.replace("sweet treat", "sour treat!");
        assert!(is_invalid_signature(run(
            &signed(),
            &h,
            &tampered,
            FIXTURE_TS
        )));
        // A fresh timestamp with the old signature: the timestamp is signed.
        let h = headers(RECEIVED_SIG.trim(), &(FIXTURE_TS + 60).to_string());
        assert!(is_invalid_signature(run(
            &signed(),
            &h,
            RECEIVED_BODY,
            FIXTURE_TS
        )));
    }

    #[test]
    fn android_sms_gateway_with_stale_timestamp_is_rejected() {
        let now = FIXTURE_TS;
        for (ts, ok) in [
            (now - 300, true),
            (now + 300, true),
            (now - 301, false),
            (now + 301, false),
            (now - 86_400, false),
        ] {
            let h = signed_headers(RECEIVED_BODY.as_bytes(), ts);
            assert_eq!(
                run(&signed(), &h, RECEIVED_BODY, now).is_ok(),
                ok,
                "timestamp {ts}"
            );
        }
    }

    #[test]
    fn android_sms_gateway_with_missing_header_is_rejected() {
        let full = signed_headers(RECEIVED_BODY.as_bytes(), FIXTURE_TS);
        for name in ["x-signature", "x-timestamp"] {
            let mut h = full.clone();
            h.remove(name);
            assert!(
                is_invalid_signature(run(&signed(), &h, RECEIVED_BODY, FIXTURE_TS)),
                "{name}"
            );
        }
    }

    #[test]
    fn android_sms_gateway_with_duplicated_header_is_rejected() {
        let full = signed_headers(RECEIVED_BODY.as_bytes(), FIXTURE_TS);
        for name in ["x-signature", "x-timestamp"] {
            let mut h = full.clone();
            let v = h.get(name).unwrap().clone();
            h.append(name, v);
            assert!(
                is_invalid_signature(run(&signed(), &h, RECEIVED_BODY, FIXTURE_TS)),
                "{name}"
            );
        }
    }

    #[test]
    fn android_sms_gateway_with_malformed_signature_or_timestamp_is_rejected() {
        let ts = FIXTURE_TS.to_string();
        for (sig, ts) in [
            ("zz", ts.as_str()),
            ("", ts.as_str()),
            (RECEIVED_SIG.trim(), "1719045971.0"),
            (RECEIVED_SIG.trim(), "abc"),
            (&RECEIVED_SIG.trim()[..10], ts.as_str()),
        ] {
            let h = headers(sig, ts);
            assert!(
                is_invalid_signature(run(&signed(), &h, RECEIVED_BODY, FIXTURE_TS)),
                "{sig:?} {ts:?}"
            );
        }
    }

    #[test]
    fn unsigned_source_accepts_unsigned_requests() {
        let p = provider("");
        assert!(!p.is_signed());
        assert!(signed().is_signed());
        assert!(run(&p, &HeaderMap::new(), RECEIVED_BODY, 0).is_ok());
    }

    #[test]
    fn a_request_we_sign_verifies_and_flipping_any_body_byte_fails() {
        testing::assert_signed_bodies_verify_and_flips_fail(
            &signed(),
            "/hooks/phone",
            FIXTURE_TS,
            &[RECEIVED_BODY.as_bytes(), SENT.as_bytes(), PING.as_bytes()],
            &[0x20],
            |body| signed_headers(body, FIXTURE_TS),
        );
    }

    #[test]
    fn arbitrary_bodies_never_panic() {
        let bodies = [
            "",
            "null",
            "[]",
            "{}",
            "\"x\"",
            r#"{"id":1}"#,
            r#"{"id":"a","event":"sms:received","payload":[]}"#,
            r#"{"id":"a","event":5,"payload":{}}"#,
            r#"{"id":"a","event":"x","payload":"str"}"#,
        ];
        testing::assert_arbitrary_bodies_never_panic(bodies, |body| {
            let _ = unsigned(body);
            let h = signed_headers(body.as_bytes(), FIXTURE_TS);
            run(&signed(), &h, body, FIXTURE_TS)
        });
    }
}
