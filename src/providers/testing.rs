//! What the adapters' unit tests share: a configured source, a request,
//! verify-then-parse, and the two property tests every adapter runs (a
//! request signed as the provider signs verifies and flipping any byte
//! fails; arbitrary bodies never panic).

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{ParseContext, Parsed, Provider, ProviderError, WebhookRequest};
use crate::config::{Config, SourceConfig};

/// `server.public_url` in tests (only Twilio signs it).
pub(crate) const PUBLIC_URL: &str = "https://hooks.example.com";

/// What every test parses with, but for the source name.
pub(crate) fn ctx(source: &str) -> ParseContext<'_> {
    ParseContext {
        source,
        received_at: crate::domain::ReceivedAt::from_unix(1_767_225_600), // 2026-01-01T00:00:00Z
    }
}

/// The one source of `[[sources]] name='{name}' provider='{provider}'`
/// followed by `extra` TOML lines.
pub(crate) fn source(name: &str, provider: &str, extra: &str) -> SourceConfig {
    let text = format!("[[sources]]\nname='{name}'\nprovider='{provider}'\n{extra}");
    Config::from_toml(&text, &[]).unwrap().sources.remove(0)
}

/// A POST of `body` to `path_and_query` at [`PUBLIC_URL`], received at `now`.
pub(crate) fn request<'a>(
    path_and_query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    now: i64,
) -> WebhookRequest<'a> {
    WebhookRequest {
        method: &Method::POST,
        path_and_query,
        headers,
        body,
        public_url: PUBLIC_URL,
        now,
    }
}

/// Headers from `(name, value)` pairs, each set once.
pub(crate) fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    h
}

/// `verify`, then `parse` for source `source` (no content-type check).
pub(crate) fn verify_and_parse(
    p: &dyn Provider,
    req: WebhookRequest<'_>,
    source: &str,
) -> Result<Parsed, ProviderError> {
    let v = p.verify(req)?;
    p.parse(v, ctx(source))
}

pub(crate) fn is_invalid_signature<T>(r: Result<T, ProviderError>) -> bool {
    matches!(r, Err(ProviderError::InvalidSignature(_)))
}

/// `verify` accepts `bytes` as they are, and every copy of them with one
/// byte XORed with one of `masks` is an invalid signature. `what` names
/// the bytes in a failure.
pub(crate) fn assert_every_flipped_byte_fails(
    what: &str,
    bytes: &[u8],
    masks: &[u8],
    mut verify: impl FnMut(&[u8]) -> Result<(), ProviderError>,
) {
    assert!(verify(bytes).is_ok(), "{what} does not verify as signed");
    let mut flipped = bytes.to_vec();
    for i in 0..flipped.len() {
        for &mask in masks {
            flipped[i] ^= mask;
            assert!(
                is_invalid_signature(verify(&flipped)),
                "flipping {what} byte {i} with {mask:#04x} still verified"
            );
            flipped[i] ^= mask;
        }
    }
}

/// For each of `bodies`: a POST to `path_and_query` at `now` with the
/// headers `sign` makes for it verifies, and flipping any body byte with
/// any of `masks` is an invalid signature.
pub(crate) fn assert_signed_bodies_verify_and_flips_fail(
    p: &dyn Provider,
    path_and_query: &str,
    now: i64,
    bodies: &[&[u8]],
    masks: &[u8],
    sign: impl Fn(&[u8]) -> HeaderMap,
) {
    for body in bodies {
        let h = sign(body);
        assert_every_flipped_byte_fails("body", body, masks, |b| {
            p.verify(request(path_and_query, &h, b, now)).map(drop)
        });
    }
}

/// JSON's punctuation and a few scalars, then `names` (an adapter's
/// field names and values, quoted): pieces for [`arbitrary_bodies`].
pub(crate) fn json_pieces<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let common = ["{", "}", "[", "]", ",", ":", "1", "null", "\"\"", "\"x\""];
    common.iter().chain(names).copied().collect()
}

/// `count` bodies, each the concatenation of fewer than `max_pieces`
/// pieces picked from `pieces` by xorshift32 from `seed`: deterministic
/// pseudo-random input, no extra crate.
pub(crate) fn arbitrary_bodies<P: AsRef<[u8]>>(
    mut seed: u32,
    count: usize,
    max_pieces: usize,
    pieces: &[P],
) -> Vec<Vec<u8>> {
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as usize
    };
    let mut bodies = Vec::with_capacity(count);
    for _ in 0..count {
        let mut body = Vec::new();
        for _ in 0..next() % max_pieces {
            body.extend_from_slice(pieces[next() % pieces.len()].as_ref());
        }
        bodies.push(body);
    }
    bodies
}

/// Runs `run` on every body: any result is fine, a panic fails the test.
pub(crate) fn assert_arbitrary_bodies_never_panic<B, T>(
    bodies: impl IntoIterator<Item = B>,
    mut run: impl FnMut(B) -> T,
) {
    for body in bodies {
        let _ = run(body);
    }
}
