//! HMAC helpers shared by the adapters. Every comparison of a received
//! signature goes through `Mac::verify_slice` or [`constant_time_eq`], both
//! constant-time, so a timing side channel leaks nothing about the secret.

use base64::Engine as _;
use hmac::{KeyInit, Mac};

use crate::config::{HmacAlgorithm, SignatureConfig, SignatureEncoding};

use super::{ProviderError, WebhookRequest};

/// HMAC of the concatenation of `parts` under `key`.
pub fn hmac(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<hmac::Hmac<sha1::Sha1>>(key, parts),
        HmacAlgorithm::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => run::<hmac::Hmac<sha2::Sha512>>(key, parts),
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Whether `expected` is the HMAC of `parts` under `key`, in constant time.
pub fn verify_hmac(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    constant_time_eq(&hmac(algorithm, key, parts), expected)
}

pub fn decode(encoding: SignatureEncoding, text: &str) -> Option<Vec<u8>> {
    match encoding {
        SignatureEncoding::Hex => hex::decode(text.trim()).ok(),
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok(),
    }
}

pub fn encode(encoding: SignatureEncoding, bytes: &[u8]) -> String {
    match encoding {
        SignatureEncoding::Hex => hex::encode(bytes),
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
    }
}

/// How far a signed timestamp header may be from our clock, either way:
/// the Standard Webhooks window, which `android-sms-gateway`'s app
/// documents too.
pub const TOLERANCE_SECS: u64 = 5 * 60;

/// Parses a unix-seconds timestamp header and checks it is within
/// [`TOLERANCE_SECS`] of `now` in either direction (a replayed request is
/// old; a far-future one could be replayed later).
pub fn check_timestamp(value: &str, now: i64, header: &str) -> Result<i64, ProviderError> {
    // Digits only: the value is signed as sent, so "+1700000000" or
    // " 1700000000" must not verify as 1700000000.
    if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProviderError::InvalidSignature(format!(
            "header {header} must be unix seconds"
        )));
    }
    let ts: i64 = value.parse().map_err(|_| {
        ProviderError::InvalidSignature(format!("header {header} must be unix seconds"))
    })?;
    if now.abs_diff(ts) > TOLERANCE_SECS {
        return Err(ProviderError::InvalidSignature(format!(
            "header {header} is more than {TOLERANCE_SECS} s away from the server clock"
        )));
    }
    Ok(ts)
}

/// The single value of a header a signature needs; missing (or repeated)
/// is an invalid signature.
pub fn required_header<'a>(req: &WebhookRequest<'a>, name: &str) -> Result<&'a str, ProviderError> {
    req.header(name)?
        .ok_or_else(|| ProviderError::InvalidSignature(format!("missing header {name}")))
}

/// Checks a generic "HMAC of the raw body in one header" signature.
pub fn verify_body_hmac(
    req: &WebhookRequest<'_>,
    config: &SignatureConfig,
    secret: &[u8],
) -> Result<(), ProviderError> {
    let value = req.header(&config.header)?.ok_or_else(|| {
        ProviderError::InvalidSignature(format!("missing signature header {}", config.header))
    })?;
    let encoded = value
        .trim()
        .strip_prefix(config.prefix.as_str())
        .ok_or_else(|| {
            ProviderError::InvalidSignature(format!(
                "signature header {} must start with {:?}",
                config.header, config.prefix
            ))
        })?;
    let sig = decode(config.encoding, encoded).ok_or_else(|| {
        ProviderError::InvalidSignature(format!(
            "signature header {} is not valid {:?}",
            config.header, config.encoding
        ))
    })?;
    if verify_hmac(config.algorithm, secret, &[req.body], &sig) {
        Ok(())
    } else {
        Err(ProviderError::InvalidSignature(
            "signature does not match".into(),
        ))
    }
}

/// The value of a generic body signature, as a sender would compute it
/// (tests and `inlet bench` sign with this).
pub fn sign_body(config: &SignatureConfig, secret: &[u8], body: &[u8]) -> String {
    format!(
        "{}{}",
        config.prefix,
        encode(config.encoding, &hmac(config.algorithm, secret, &[body]))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        let mac = hmac(
            HmacAlgorithm::Sha256,
            b"Jefe",
            &[b"what do ya want ", b"for nothing?"],
        );
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_sha1_and_sha512_match_rfc_vectors() {
        let mac = hmac(
            HmacAlgorithm::Sha1,
            b"Jefe",
            &[b"what do ya want for nothing?"],
        );
        assert_eq!(hex::encode(mac), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        let mac = hmac(
            HmacAlgorithm::Sha512,
            b"Jefe",
            &[b"what do ya want for nothing?"],
        );
        assert!(hex::encode(mac).starts_with("164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd6"));
    }

    #[test]
    fn constant_time_eq_requires_equal_length_and_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
