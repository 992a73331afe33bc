//! `twilio`: Twilio Programmable Messaging webhooks (SMS, MMS and WhatsApp
//! through Twilio), normally `application/x-www-form-urlencoded`, or
//! `application/json` with the same field names when the URL carries
//! `bodySHA256`. Dedup on `MessageSid`; the success body is empty TwiML.
//!
//! Verification (`X-Twilio-Signature`): base64 HMAC-SHA1 under the auth token
//! of the URL exactly as Twilio called it (`public_url` + path + query)
//! followed by every POST parameter, sorted by name, as name and value
//! concatenated. JSON bodies are signed over the URL alone, whose
//! `bodySHA256` query parameter must be the hex SHA-256 of the raw body.
//! Like Twilio's official validators (twilio-node `validateRequest`,
//! twilio-python `RequestValidator`), the URL is accepted both with and
//! without an explicit default port (`:443` for https, `:80` for http),
//! because Twilio's own signing is inconsistent about it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use sha2::Digest as _;
use url::form_urlencoded;

use crate::config::{HmacAlgorithm, ProviderKind, Secret, SignatureEncoding, SourceConfig};
use crate::domain::{Channel, InboundEvent, InboundMessage, Media, MessageId, PhoneNumber};

use super::{
    ParseContext, Parsed, Provider, ProviderError, SuccessBody, Verified, WebhookRequest, essence,
    from_json, is_json, signature,
};

/// The header Twilio puts its signature in.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
/// The query parameter carrying the hex SHA-256 of a JSON body.
pub const BODY_HASH_PARAM: &str = "bodySHA256";
const FORM: &str = "application/x-www-form-urlencoded";
const WHATSAPP_PREFIX: &str = "whatsapp:";
/// What Twilio expects back when we have nothing to say: an empty TwiML
/// document (anything else would be sent to the contact as a reply).
pub const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

#[derive(Debug)]
pub struct Twilio {
    /// The account's auth token; `None` accepts unsigned requests.
    secret: Option<Secret>,
}

impl Twilio {
    pub fn new(source: &SourceConfig) -> Self {
        Self {
            secret: source.secret.clone(),
        }
    }
}

impl Provider for Twilio {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Twilio
    }

    fn is_signed(&self) -> bool {
        self.secret.is_some()
    }

    /// Form bodies are Twilio's default. JSON is only accepted the way Twilio
    /// signs it, with `bodySHA256` in the query; without it nothing binds the
    /// body to the signature. A missing content type is read as a form, the
    /// only thing Twilio sends without saying.
    fn check_content_type(&self, req: &WebhookRequest<'_>) -> Result<(), ProviderError> {
        match req.content_type() {
            None => Ok(()),
            Some(ct) if essence(ct).eq_ignore_ascii_case(FORM) => Ok(()),
            Some(ct) if is_json(ct) => {
                if query_param(req.query(), BODY_HASH_PARAM).is_some() {
                    Ok(())
                } else {
                    Err(ProviderError::UnsupportedMediaType(format!(
                        "content type {ct:?} is accepted only with {BODY_HASH_PARAM} in the query"
                    )))
                }
            }
            Some(ct) => Err(ProviderError::UnsupportedMediaType(format!(
                "content type {ct:?} is not accepted; send {FORM} (or application/json with {BODY_HASH_PARAM})"
            ))),
        }
    }

    fn verify<'a>(&self, req: WebhookRequest<'a>) -> Result<Verified<'a>, ProviderError> {
        // Unsigned source: nothing to check, `bodySHA256` included (without
        // a secret it proves nothing about who sent the body).
        let Some(secret) = &self.secret else {
            return Ok(Verified::new(req));
        };
        let header = req.header(SIGNATURE_HEADER)?.ok_or_else(|| {
            ProviderError::InvalidSignature(format!("missing signature header {SIGNATURE_HEADER}"))
        })?;
        let expected = signature::decode(SignatureEncoding::Base64, header).ok_or_else(|| {
            ProviderError::InvalidSignature(format!("{SIGNATURE_HEADER} is not valid base64"))
        })?;
        let json = is_json_body(&req);
        let params = if json {
            String::new()
        } else {
            signed_params(&form_pairs(req.body))
        };
        let url = format!("{}{}", req.public_url, req.path_and_query);
        // Every candidate is checked (no early exit), each in constant time.
        let matched = url_candidates(&url).iter().fold(false, |any, candidate| {
            let ok = signature::verify_hmac(
                HmacAlgorithm::Sha1,
                secret.expose().as_bytes(),
                &[candidate.as_bytes(), params.as_bytes()],
                &expected,
            );
            any | ok
        });
        if !matched {
            return Err(ProviderError::InvalidSignature(
                "signature does not match".into(),
            ));
        }
        if json {
            verify_body_hash(&req)?;
        }
        Ok(Verified::new(req))
    }

    fn parse(&self, req: Verified<'_>, ctx: ParseContext<'_>) -> Result<Parsed, ProviderError> {
        let r = req.request();
        let (params, raw) = if is_json_body(r) {
            json_params(r.body)?
        } else {
            form_params(r.body)
        };
        normalize(&params, raw, ctx)
    }

    fn success_body(&self, _accepted: usize, _duplicates: usize) -> SuccessBody {
        SuccessBody {
            content_type: "text/xml",
            body: EMPTY_TWIML.into(),
        }
    }
}

/// Twilio's signature of a request to `url` carrying `params` (none for a
/// JSON body), as Twilio computes it. Tests and `inlet bench` sign with this.
pub fn sign(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    let mac = signature::hmac(
        HmacAlgorithm::Sha1,
        auth_token,
        &[url.as_bytes(), signed_params(params).as_bytes()],
    );
    signature::encode(SignatureEncoding::Base64, &mac)
}

/// Parameters as Twilio appends them to the URL: sorted by name (byte order,
/// Twilio's "Unix-style case-sensitive sorting"), name then value with no
/// delimiter. A repeated name contributes each distinct value in sorted order,
/// as twilio-node and twilio-python do.
fn signed_params(pairs: &[(String, String)]) -> String {
    let mut sorted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (k, v) in pairs {
        sorted.entry(k.as_str()).or_default().insert(v.as_str());
    }
    let mut out = String::new();
    for (k, values) in sorted {
        for v in values {
            out.push_str(k);
            out.push_str(v);
        }
    }
    out
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn is_json_body(req: &WebhookRequest<'_>) -> bool {
    req.content_type().is_some_and(is_json)
}

/// The URL as signed, plus the same URL with the scheme's default port
/// toggled (added when absent, removed when explicit), and both again
/// without user info, which Twilio drops before signing. A non-default port
/// is always kept.
fn url_candidates(url: &str) -> Vec<String> {
    let mut bases = vec![url.to_string()];
    if let Some(stripped) = without_userinfo(url) {
        bases.push(stripped);
    }
    let mut out = Vec::with_capacity(bases.len() * 2);
    for base in bases {
        if let Some(toggled) = toggle_default_port(&base) {
            out.push(toggled);
        }
        out.push(base);
    }
    out
}

/// Splits `scheme://authority` from the rest; `None` for a URL without `://`.
fn split_authority(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    Some((scheme, authority, tail))
}

fn without_userinfo(url: &str) -> Option<String> {
    let (scheme, authority, tail) = split_authority(url)?;
    let (_, host) = authority.rsplit_once('@')?;
    Some(format!("{scheme}://{host}{tail}"))
}

fn toggle_default_port(url: &str) -> Option<String> {
    let (scheme, authority, tail) = split_authority(url)?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    // A `:` inside `[...]` belongs to an IPv6 address, not to a port.
    let port_sep = host_port
        .rfind(':')
        .filter(|&i| !host_port[i..].contains(']'));
    match port_sep {
        Some(i) if &host_port[i + 1..] == default => {
            Some(format!("{scheme}://{}{tail}", &authority[..host_start + i]))
        }
        Some(_) => None,
        None => Some(format!("{scheme}://{authority}:{default}{tail}")),
    }
}

/// A JSON body is bound to the (signed) URL by its `bodySHA256` parameter.
fn verify_body_hash(req: &WebhookRequest<'_>) -> Result<(), ProviderError> {
    let declared = query_param(req.query(), BODY_HASH_PARAM).ok_or_else(|| {
        ProviderError::InvalidSignature(format!(
            "a JSON body needs {BODY_HASH_PARAM} in the signed URL"
        ))
    })?;
    let declared = hex::decode(declared.trim())
        .map_err(|_| ProviderError::InvalidSignature(format!("{BODY_HASH_PARAM} is not hex")))?;
    let actual = sha2::Sha256::digest(req.body);
    if signature::constant_time_eq(&actual, &declared) {
        Ok(())
    } else {
        Err(ProviderError::InvalidSignature(format!(
            "{BODY_HASH_PARAM} does not match the body"
        )))
    }
}

/// Twilio's parameters by name; a repeated name keeps every value in order.
#[derive(Debug, Default)]
struct Params(BTreeMap<String, Vec<String>>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.first()).map(String::as_str)
    }

    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, ProviderError> {
        self.non_empty(name)
            .ok_or_else(|| ProviderError::InvalidPayload(format!("field {name}: missing")))
    }
}

/// The form as parameters and as a JSON object (`raw`); a repeated name
/// becomes an array of its values.
fn form_params(body: &[u8]) -> (Params, Value) {
    let mut params = Params::default();
    for (k, v) in form_pairs(body) {
        params.0.entry(k).or_default().push(v);
    }
    let raw: Map<String, Value> = params
        .0
        .iter()
        .map(|(k, vs)| {
            let v = match vs.as_slice() {
                [one] => Value::String(one.clone()),
                many => Value::Array(many.iter().cloned().map(Value::String).collect()),
            };
            (k.clone(), v)
        })
        .collect();
    (params, Value::Object(raw))
}

/// A JSON body "with the same field names": an object whose scalar values
/// are read like form values; `raw` is the object as sent.
fn json_params(body: &[u8]) -> Result<(Params, Value), ProviderError> {
    let value: Value = from_json(body)?;
    let Value::Object(obj) = &value else {
        return Err(ProviderError::InvalidPayload(
            "body must be a JSON object of Twilio's parameters".into(),
        ));
    };
    let mut params = Params::default();
    for (k, v) in obj {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => other.to_string(),
        };
        params.0.entry(k.clone()).or_default().push(text);
    }
    Ok((params, value))
}

/// Twilio posts two kinds of request to messaging webhooks, with overlapping
/// fields (both carry `MessageSid`, `From`, `To`, and some channels put `Body`
/// in status callbacks too). What tells them apart is the status: an inbound
/// message carries `SmsStatus=received` and no `MessageStatus` (a
/// Twilio-compatible sender may add `MessageStatus=received`), while a status
/// callback reports an outbound message's lifecycle in `MessageStatus` (and
/// the legacy duplicate `SmsStatus`): `queued`, `sending`, `sent`,
/// `delivered`, `undelivered`, `failed`, `read`, `canceled`… So a request is
/// a status callback when its status (`MessageStatus`, else `SmsStatus`) is
/// present and is neither `received` nor `receiving`; anything else is an
/// inbound message.
fn is_status_callback(params: &Params) -> bool {
    match params
        .non_empty("MessageStatus")
        .or_else(|| params.non_empty("SmsStatus"))
    {
        None => false,
        Some(status) => !matches!(
            status.trim().to_ascii_lowercase().as_str(),
            "received" | "receiving"
        ),
    }
}

/// `whatsapp:+1555…` is WhatsApp and the bare number; anything else is SMS.
fn split_channel(address: &str) -> (Channel, &str) {
    let address = address.trim();
    match address.get(..WHATSAPP_PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(WHATSAPP_PREFIX) => {
            (Channel::Whatsapp, &address[WHATSAPP_PREFIX.len()..])
        }
        _ => (Channel::Sms, address),
    }
}

fn collect_media(params: &Params) -> Result<Vec<Media>, ProviderError> {
    let count = match params.non_empty("NumMedia") {
        None => 0,
        Some(n) => n.trim().parse::<usize>().map_err(|_| {
            ProviderError::InvalidPayload(format!("field NumMedia: {n:?} is not a count"))
        })?,
    };
    // No `with_capacity(count)`: `count` is untrusted, and the loop stops at
    // the first missing item anyway.
    let mut media = Vec::new();
    for i in 0..count {
        let url = params.non_empty(&format!("MediaUrl{i}")).ok_or_else(|| {
            ProviderError::InvalidPayload(format!(
                "field MediaUrl{i}: missing (NumMedia is {count})"
            ))
        })?;
        media.push(Media {
            url: url.trim().to_string(),
            content_type: params
                .non_empty(&format!("MediaContentType{i}"))
                .map(|c| c.trim().to_string()),
        });
    }
    Ok(media)
}

fn normalize(params: &Params, raw: Value, ctx: ParseContext<'_>) -> Result<Parsed, ProviderError> {
    let sid = params.required("MessageSid")?.trim().to_string();
    if is_status_callback(params) {
        return Ok(Parsed {
            messages: Vec::new(),
            events: vec![InboundEvent {
                kind: "status".into(),
                external_id: Some(sid),
                payload: raw,
            }],
        });
    }
    let (channel, from) = split_channel(params.required("From")?);
    let to = params
        .non_empty("To")
        .map(|to| split_channel(to).1)
        .and_then(PhoneNumber::parse)
        .map(|p| p.to_string());
    let message = InboundMessage {
        id: MessageId::generate(),
        source: ctx.source.to_string(),
        provider: ProviderKind::Twilio.as_str(),
        external_id: sid,
        dedup_key: None,
        channel,
        from: PhoneNumber::parse(from),
        to,
        // Twilio sends `Body=` for media-only messages: that is no text.
        text: params.non_empty("Body").map(str::to_string),
        media: collect_media(params)?,
        received_at: ctx.received_at.to_string(),
        raw: raw.into(),
    };
    Ok(Parsed {
        messages: vec![message],
        events: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::providers::testing::{self, PUBLIC_URL, is_invalid_signature};

    const TOKEN: &str = "twilio-test-auth-token";
    const PATH: &str = "/hooks/twilio-main";

    const INBOUND_SMS: &str = include_str!("../../tests/fixtures/twilio/inbound_sms.form");
    const INBOUND_MMS: &str = include_str!("../../tests/fixtures/twilio/inbound_mms.form");
    const INBOUND_WHATSAPP: &str =
        include_str!("../../tests/fixtures/twilio/inbound_whatsapp.form");
    const INBOUND_WHATSAPP_IMAGE: &str =
        include_str!("../../tests/fixtures/twilio/inbound_whatsapp_image.form");
    const STATUS_CALLBACK: &str = include_str!("../../tests/fixtures/twilio/status_callback.form");
    const STATUS_WHATSAPP_READ: &str =
        include_str!("../../tests/fixtures/twilio/status_callback_whatsapp_read.form");
    const INBOUND_SMS_JSON: &str = include_str!("../../tests/fixtures/twilio/inbound_sms.json");
    const DOCS_EXAMPLE: &str = include_str!("../../tests/fixtures/twilio/docs_example.form");
    const DOCS_EXAMPLE_LEGACY: &str =
        include_str!("../../tests/fixtures/twilio/docs_example_legacy.form");
    const DOCS_EXAMPLE_BODY: &str =
        include_str!("../../tests/fixtures/twilio/docs_example_body.json");
    const SIGNATURES: &str = include_str!("../../tests/fixtures/twilio/signatures.txt");

    /// The last field of `name`'s line in `signatures.txt` (computed with Python).
    fn published(name: &str) -> &'static str {
        SIGNATURES
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("no signature for {name}"))
    }

    fn source(extra: &str) -> SourceConfig {
        testing::source("twilio-main", "twilio", extra)
    }

    fn signed() -> Twilio {
        Twilio::new(&source(&format!("secret='{TOKEN}'")))
    }

    fn form_headers(signature: Option<&str>) -> HeaderMap {
        let sig = signature.map(|s| ("x-twilio-signature", s));
        testing::headers([("content-type", FORM)].into_iter().chain(sig))
    }

    fn json_headers(signature: Option<&str>) -> HeaderMap {
        let mut h = form_headers(signature);
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h
    }

    fn request<'a>(
        public_url: &'a str,
        path_and_query: &'a str,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> WebhookRequest<'a> {
        WebhookRequest {
            public_url,
            ..testing::request(path_and_query, headers, body, 0)
        }
    }

    const CTX: ParseContext<'static> = ParseContext {
        source: "twilio-main",
        received_at: crate::domain::ReceivedAt::from_unix(1_767_225_600), // 2026-01-01T00:00:00Z
    };

    fn verify_and_parse(
        p: &Twilio,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &str,
    ) -> Result<Parsed, ProviderError> {
        let req = request(PUBLIC_URL, path_and_query, headers, body.as_bytes());
        p.check_content_type(&req)?;
        testing::verify_and_parse(p, req, "twilio-main")
    }

    #[test]
    fn twilio_documented_signature_example_verifies() {
        // "Webhooks security", section "Explore the algorithm yourself".
        let p = Twilio::new(&source("secret='12345'"));
        let h = form_headers(Some("L/OH5YylLD5NRKLltdqwSvS0BnU="));
        let req = request(
            "https://example.com",
            "/myapp.php?foo=1&bar=2",
            &h,
            DOCS_EXAMPLE.as_bytes(),
        );
        assert!(p.verify(req).is_ok());
        let pairs = form_pairs(DOCS_EXAMPLE.as_bytes());
        assert_eq!(
            sign(
                b"12345",
                "https://example.com/myapp.php?foo=1&bar=2",
                &pairs
            ),
            "L/OH5YylLD5NRKLltdqwSvS0BnU="
        );
    }

    #[test]
    fn twilio_legacy_documented_signature_example_verifies() {
        // The older revision of the same page (mycompany.com, +12349013030).
        let p = Twilio::new(&source("secret='12345'"));
        let h = form_headers(Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        let req = request(
            "https://mycompany.com",
            "/myapp.php?foo=1&bar=2",
            &h,
            DOCS_EXAMPLE_LEGACY.as_bytes(),
        );
        assert!(p.verify(req).is_ok());
        let tampered = request(
            "https://mycompany.com",
            "/myapp.php?foo=1&bar=3",
            &h,
            DOCS_EXAMPLE_LEGACY.as_bytes(),
        );
        assert!(is_invalid_signature(p.verify(tampered)));
    }

    #[test]
    fn twilio_signatures_computed_independently_verify_for_every_fixture() {
        let p = signed();
        for (name, body) in [
            ("inbound_sms.form", INBOUND_SMS),
            ("inbound_mms.form", INBOUND_MMS),
            ("inbound_whatsapp.form", INBOUND_WHATSAPP),
            ("inbound_whatsapp_image.form", INBOUND_WHATSAPP_IMAGE),
            ("status_callback.form", STATUS_CALLBACK),
            ("status_callback_whatsapp_read.form", STATUS_WHATSAPP_READ),
        ] {
            let h = form_headers(Some(published(name)));
            let result = verify_and_parse(&p, PATH, &h, body);
            assert!(result.is_ok(), "{name}: {result:?}");
        }
    }

    #[test]
    fn twilio_json_body_verifies_through_body_sha256() {
        let p = signed();
        let hash = SIGNATURES
            .lines()
            .find(|l| l.starts_with("inbound_sms.json "))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap();
        let path = format!("{PATH}?{BODY_HASH_PARAM}={hash}");
        let h = json_headers(Some(published("inbound_sms.json")));
        let parsed = verify_and_parse(&p, &path, &h, INBOUND_SMS_JSON).unwrap();
        let m = &parsed.messages[0];
        assert_eq!(m.external_id, "SM6f708192a3b4c5d6e7f8091a2b3c4d5e");
        assert_eq!(m.text.as_deref(), Some("STOP"));
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+14155550123");
        assert_eq!(m.raw.to_value()["NumSegments"], "1");
    }

    #[test]
    fn twilio_documented_json_body_hash_matches_and_verifies() {
        // The body and bodySHA256 of the docs' application/json snippet; the
        // signature was computed with Python under token 12345 (the docs'
        // own signature uses an undisclosed token).
        let p = Twilio::new(&source("secret='12345'"));
        let path =
            "/myapp?bodySHA256=5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9";
        let h = json_headers(Some(published("docs_example_body.json")));
        let req = request(
            "https://example.com",
            path,
            &h,
            DOCS_EXAMPLE_BODY.as_bytes(),
        );
        assert!(p.check_content_type(&req).is_ok());
        assert!(p.verify(req).is_ok());
    }

    #[test]
    fn twilio_json_body_with_tampered_body_is_rejected() {
        let p = Twilio::new(&source("secret='12345'"));
        let path =
            "/myapp?bodySHA256=5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9";
        let h = json_headers(Some(published("docs_example_body.json")));
        let tampered = DOCS_EXAMPLE_BODY.replace("+1234", "+9999");
        let req = request("https://example.com", path, &h, tampered.as_bytes());
        let err = p.verify(req).unwrap_err();
        assert_eq!(
            err,
            ProviderError::InvalidSignature("bodySHA256 does not match the body".into())
        );
    }

    #[test]
    fn twilio_json_body_without_body_sha256_is_unsupported_media_type() {
        let p = signed();
        let h = json_headers(None);
        let req = request(PUBLIC_URL, PATH, &h, INBOUND_SMS_JSON.as_bytes());
        assert!(matches!(
            p.check_content_type(&req),
            Err(ProviderError::UnsupportedMediaType(_))
        ));
        // Even if the content-type check were skipped, verify refuses it.
        let url = format!("{PUBLIC_URL}{PATH}");
        let h = json_headers(Some(&sign(TOKEN.as_bytes(), &url, &[])));
        let req = request(PUBLIC_URL, PATH, &h, INBOUND_SMS_JSON.as_bytes());
        assert!(is_invalid_signature(p.verify(req)));
    }

    #[test]
    fn twilio_accepts_form_and_json_content_types_only() {
        let p = signed();
        let with_ct = |ct: &str, path: &str| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_str(ct).unwrap());
            let req = request(PUBLIC_URL, path, &h, b"");
            p.check_content_type(&req)
        };
        assert!(with_ct("application/x-www-form-urlencoded", PATH).is_ok());
        assert!(with_ct("Application/X-WWW-Form-Urlencoded; charset=UTF-8", PATH).is_ok());
        assert!(with_ct("application/json", "/h?bodySHA256=00").is_ok());
        for ct in [
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/xml",
        ] {
            assert!(
                matches!(
                    with_ct(ct, PATH),
                    Err(ProviderError::UnsupportedMediaType(_))
                ),
                "{ct}"
            );
        }
        let none = HeaderMap::new();
        assert!(
            p.check_content_type(&request(PUBLIC_URL, PATH, &none, b""))
                .is_ok()
        );
    }

    #[test]
    fn twilio_url_with_and_without_default_port_both_verify() {
        let p = signed();
        let pairs = form_pairs(INBOUND_SMS.as_bytes());
        let cases = [
            // (public_url we are configured with, URL Twilio signed)
            ("https://hooks.example.com", "https://hooks.example.com:443"),
            ("https://hooks.example.com:443", "https://hooks.example.com"),
            ("https://hooks.example.com", "https://hooks.example.com"),
            ("http://hooks.example.com", "http://hooks.example.com:80"),
            ("http://hooks.example.com:80", "http://hooks.example.com"),
            ("https://[2001:db8::1]", "https://[2001:db8::1]:443"),
            (
                "https://user:pw@hooks.example.com",
                "https://hooks.example.com",
            ),
        ];
        for (configured, signed_as) in cases {
            let sig = sign(TOKEN.as_bytes(), &format!("{signed_as}{PATH}"), &pairs);
            let h = form_headers(Some(&sig));
            let req = request(configured, PATH, &h, INBOUND_SMS.as_bytes());
            assert!(p.verify(req).is_ok(), "{configured} signed as {signed_as}");
        }
    }

    #[test]
    fn twilio_non_default_port_and_wrong_default_port_are_not_interchangeable() {
        let p = signed();
        let pairs = form_pairs(INBOUND_SMS.as_bytes());
        let cases = [
            (
                "https://hooks.example.com:8443",
                "https://hooks.example.com",
            ),
            (
                "https://hooks.example.com",
                "https://hooks.example.com:8443",
            ),
            ("https://hooks.example.com", "https://hooks.example.com:80"),
            ("http://hooks.example.com", "http://hooks.example.com:443"),
        ];
        for (configured, signed_as) in cases {
            let sig = sign(TOKEN.as_bytes(), &format!("{signed_as}{PATH}"), &pairs);
            let h = form_headers(Some(&sig));
            let req = request(configured, PATH, &h, INBOUND_SMS.as_bytes());
            assert!(
                is_invalid_signature(p.verify(req)),
                "{configured} signed as {signed_as}"
            );
        }
    }

    #[test]
    fn twilio_webhook_with_wrong_auth_token_is_rejected() {
        let p = Twilio::new(&source("secret='another-token'"));
        let h = form_headers(Some(published("inbound_sms.form")));
        assert!(is_invalid_signature(verify_and_parse(
            &p,
            PATH,
            &h,
            INBOUND_SMS
        )));
    }

    #[test]
    fn twilio_webhook_with_tampered_body_is_rejected() {
        let p = signed();
        let h = form_headers(Some(published("inbound_sms.form")));
        let tampered = INBOUND_SMS.replace("Body=Yes", "Body=No");
        assert!(is_invalid_signature(verify_and_parse(
            &p, PATH, &h, &tampered
        )));
        // An added parameter is a tampered body too.
        let added = format!("{INBOUND_SMS}&Extra=1");
        assert!(is_invalid_signature(verify_and_parse(&p, PATH, &h, &added)));
    }

    #[test]
    fn twilio_webhook_with_tampered_url_is_rejected() {
        let p = signed();
        let h = form_headers(Some(published("inbound_sms.form")));
        for path in [
            "/hooks/twilio-other",
            "/hooks/twilio-main?x=1",
            "/hooks/twilio-main/",
        ] {
            assert!(
                is_invalid_signature(verify_and_parse(&p, path, &h, INBOUND_SMS)),
                "{path}"
            );
        }
        let req = request("https://evil.example.com", PATH, &h, INBOUND_SMS.as_bytes());
        assert!(is_invalid_signature(p.verify(req)));
    }

    #[test]
    fn twilio_webhook_without_signature_header_is_rejected() {
        let p = signed();
        let err = verify_and_parse(&p, PATH, &form_headers(None), INBOUND_SMS).unwrap_err();
        assert_eq!(
            err,
            ProviderError::InvalidSignature("missing signature header X-Twilio-Signature".into())
        );
    }

    #[test]
    fn twilio_webhook_with_duplicated_signature_header_is_rejected() {
        let p = signed();
        let sig = published("inbound_sms.form");
        let mut h = form_headers(Some(sig));
        h.append("x-twilio-signature", HeaderValue::from_str(sig).unwrap());
        assert!(is_invalid_signature(verify_and_parse(
            &p,
            PATH,
            &h,
            INBOUND_SMS
        )));
    }

    #[test]
    fn twilio_signature_that_is_not_base64_is_rejected() {
        let p = signed();
        for bad in ["not base64!", "", "====", "KawahUAoCvY9gPoS9c/gfsZIAx"] {
            let h = form_headers(Some(bad));
            assert!(
                is_invalid_signature(verify_and_parse(&p, PATH, &h, INBOUND_SMS)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn twilio_source_without_auth_token_accepts_unsigned_requests() {
        let p = Twilio::new(&source(""));
        assert!(!p.is_signed());
        assert!(signed().is_signed());
        let parsed = verify_and_parse(&p, PATH, &form_headers(None), INBOUND_SMS).unwrap();
        assert_eq!(parsed.messages.len(), 1);
    }

    #[test]
    fn twilio_inbound_sms_is_normalized() {
        let h = form_headers(Some(published("inbound_sms.form")));
        let parsed = verify_and_parse(&signed(), PATH, &h, INBOUND_SMS).unwrap();
        assert!(parsed.events.is_empty());
        let m = &parsed.messages[0];
        assert_eq!(m.provider, "twilio");
        assert_eq!(m.source, "twilio-main");
        assert_eq!(m.external_id, "SM5f1c2d3e4a5b6c7d8e9f0a1b2c3d4e5f");
        assert_eq!(m.dedup_key(), m.external_id);
        assert_eq!(m.channel, Channel::Sms);
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+14155550123");
        assert_eq!(m.to.as_deref(), Some("+14155550100"));
        assert_eq!(m.text.as_deref(), Some("Yes, please reschedule + thanks!"));
        assert!(m.media.is_empty());
        assert_eq!(m.raw.to_value()["FromCity"], "SAN FRANCISCO");
        assert_eq!(m.raw.to_value()["SmsStatus"], "received");
        assert_eq!(m.received_at, "2026-01-01T00:00:00Z");
    }

    #[test]
    fn twilio_inbound_mms_media_is_collected_in_order() {
        let h = form_headers(Some(published("inbound_mms.form")));
        let parsed = verify_and_parse(&signed(), PATH, &h, INBOUND_MMS).unwrap();
        let m = &parsed.messages[0];
        assert_eq!(m.text, None, "an empty Body is no text");
        assert_eq!(m.media.len(), 2);
        assert!(
            m.media[0]
                .url
                .ends_with("/Media/ME0a1b2c3d4e5f60718293a4b5c6d7e8f9")
        );
        assert_eq!(m.media[0].content_type.as_deref(), Some("image/jpeg"));
        assert!(
            m.media[1]
                .url
                .starts_with("https://api.twilio.com/2010-04-01/Accounts/")
        );
        assert_eq!(m.media[1].content_type.as_deref(), Some("application/pdf"));
    }

    #[test]
    fn twilio_whatsapp_message_maps_channel_and_strips_the_prefix() {
        let h = form_headers(Some(published("inbound_whatsapp.form")));
        let parsed = verify_and_parse(&signed(), PATH, &h, INBOUND_WHATSAPP).unwrap();
        let m = &parsed.messages[0];
        assert_eq!(m.channel, Channel::Whatsapp);
        assert_eq!(m.from.as_ref().unwrap().as_str(), "+14155550123");
        assert_eq!(m.to.as_deref(), Some("+14155238886"));
        assert_eq!(m.text.as_deref(), Some("Hola, ¿puedo cambiar la cita?"));
        assert_eq!(m.raw.to_value()["ProfileName"], "Jane Doe");
        assert_eq!(m.raw.to_value()["From"], "whatsapp:+14155550123");

        let h = form_headers(Some(published("inbound_whatsapp_image.form")));
        let parsed = verify_and_parse(&signed(), PATH, &h, INBOUND_WHATSAPP_IMAGE).unwrap();
        let m = &parsed.messages[0];
        assert_eq!(m.channel, Channel::Whatsapp);
        assert_eq!(m.text.as_deref(), Some("Here is the receipt"));
        assert_eq!(m.media.len(), 1);
        assert_eq!(m.media[0].content_type.as_deref(), Some("image/jpeg"));
    }

    #[test]
    fn twilio_status_callbacks_become_status_events_not_messages() {
        for (name, body, sid) in [
            (
                "status_callback.form",
                STATUS_CALLBACK,
                "SM4d5e6f708192a3b4c5d6e7f8091a2b3c",
            ),
            (
                "status_callback_whatsapp_read.form",
                STATUS_WHATSAPP_READ,
                "SM5e6f708192a3b4c5d6e7f8091a2b3c4d",
            ),
        ] {
            let h = form_headers(Some(published(name)));
            let parsed = verify_and_parse(&signed(), PATH, &h, body).unwrap();
            assert!(parsed.messages.is_empty(), "{name}");
            assert_eq!(parsed.events.len(), 1);
            let e = &parsed.events[0];
            assert_eq!(e.kind, "status");
            assert_eq!(e.external_id.as_deref(), Some(sid));
            assert!(e.payload["MessageStatus"].is_string());
        }
    }

    #[test]
    fn twilio_status_is_told_apart_by_message_status_then_sms_status() {
        let parse = |body: &str| {
            let (params, raw) = form_params(body.as_bytes());
            normalize(&params, raw, CTX).unwrap()
        };
        let base = "MessageSid=SM1&From=%2B15550001&To=%2B15550002&Body=hi";
        assert_eq!(parse(base).messages.len(), 1, "no status at all: inbound");
        assert_eq!(
            parse(&format!("{base}&SmsStatus=received")).messages.len(),
            1
        );
        assert_eq!(
            parse(&format!("{base}&MessageStatus=received"))
                .messages
                .len(),
            1
        );
        assert_eq!(parse(&format!("{base}&SmsStatus=sent")).events.len(), 1);
        assert_eq!(
            parse(&format!(
                "{base}&MessageStatus=undelivered&SmsStatus=received"
            ))
            .events
            .len(),
            1
        );
    }

    #[test]
    fn twilio_payload_errors_name_the_field() {
        let parse = |body: &str| {
            let (params, raw) = form_params(body.as_bytes());
            normalize(&params, raw, CTX)
        };
        let cases = [
            ("From=%2B1555&Body=x", "field MessageSid: missing"),
            ("MessageSid=&From=%2B1555", "field MessageSid: missing"),
            ("MessageSid=SM1&Body=x", "field From: missing"),
            (
                "MessageSid=SM1&From=%2B1555&NumMedia=two",
                "field NumMedia: \"two\" is not a count",
            ),
            (
                "MessageSid=SM1&From=%2B1555&NumMedia=2&MediaUrl0=https%3A%2F%2Fx",
                "field MediaUrl1: missing (NumMedia is 2)",
            ),
            (
                "MessageSid=SM1&From=%2B1555&NumMedia=18446744073709551615",
                "field MediaUrl0: missing (NumMedia is 18446744073709551615)",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse(body).unwrap_err(),
                ProviderError::InvalidPayload(want.into()),
                "{body}"
            );
        }
        assert!(matches!(
            json_params(b"[1,2]"),
            Err(ProviderError::InvalidPayload(_))
        ));
        assert!(matches!(
            json_params(b"{\"MessageSid\":"),
            Err(ProviderError::InvalidPayload(_))
        ));
    }

    #[test]
    fn twilio_success_body_is_empty_twiml() {
        let body = signed().success_body(3, 1);
        assert_eq!(body.content_type, "text/xml");
        assert_eq!(
            body.body,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#
        );
    }

    #[test]
    fn twilio_signed_request_always_verifies_and_any_flipped_byte_fails() {
        let p = signed();
        let url = format!("{PUBLIC_URL}{PATH}");
        let bodies =
            [INBOUND_SMS, INBOUND_MMS, INBOUND_WHATSAPP, STATUS_CALLBACK].map(str::as_bytes);
        let sign_form =
            |body: &[u8]| form_headers(Some(&sign(TOKEN.as_bytes(), &url, &form_pairs(body))));
        testing::assert_signed_bodies_verify_and_flips_fail(
            &p,
            PATH,
            0,
            &bodies,
            &[0x01],
            sign_form,
        );
        for body in bodies {
            let h = sign_form(body);
            testing::assert_every_flipped_byte_fails("path", PATH.as_bytes(), &[0x01], |path| {
                let path = std::str::from_utf8(path).unwrap();
                p.verify(request(PUBLIC_URL, path, &h, body)).map(drop)
            });
        }
    }

    #[test]
    fn twilio_arbitrary_bytes_never_panic() {
        let p = signed();
        let unsigned = Twilio::new(&source(""));
        let alphabet = b"MessageSid=From&To%2B%3A+NumMedia0123456789MediaUrlwhatsapp:\xff\x00=&";
        let bytes: Vec<&[u8]> = alphabet.chunks(1).collect();
        let bodies = testing::arbitrary_bodies(0x1234_5678, 500, 120, &bytes);
        testing::assert_arbitrary_bodies_never_panic(bodies, |body| {
            for ct in [FORM, "application/json"] {
                let mut h = HeaderMap::new();
                h.insert("content-type", HeaderValue::from_static(ct));
                h.insert("x-twilio-signature", HeaderValue::from_static("AAAA"));
                for public_url in ["https://a", "http://[::1", "weird", "https://u@:"] {
                    let req = request(public_url, "/h?bodySHA256=zz", &h, &body);
                    let _ = p.check_content_type(&req);
                    let _ = p.verify(req);
                    if let Ok(v) = unsigned.verify(req) {
                        let _ = unsigned.parse(v, CTX);
                    }
                }
            }
        });
    }
}
