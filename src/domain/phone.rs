//! Phone numbers: E.164 (`+` and digits) where the provider gives one with a
//! country code; numbers without one are kept as given (SPEC §3).

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Normalizes `+1 (555) 123-4567` to `+15551234567`. A number without a
    /// leading `+` is kept as given (trimmed): we cannot know its country.
    /// Returns `None` for an empty string.
    pub fn parse(raw: &str) -> Option<Self> {
        let t = raw.trim();
        if t.is_empty() {
            return None;
        }
        if let Some(rest) = t.strip_prefix('+') {
            let only_formatting = rest
                .bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b' ' | b'-' | b'(' | b')' | b'.'));
            if only_formatting && rest.bytes().any(|c| c.is_ascii_digit()) {
                let mut e164 = String::with_capacity(t.len());
                e164.push('+');
                e164.extend(rest.chars().filter(char::is_ascii_digit));
                return Some(Self(e164));
            }
        }
        Some(Self(t.to_string()))
    }

    /// `+` and the digits of a provider id that is known to be a full
    /// international number without the plus (WhatsApp `wa_id`, JIDs).
    pub fn from_international_digits(digits: &str) -> Option<Self> {
        let d: String = digits.chars().filter(|c| c.is_ascii_digit()).collect();
        (!d.is_empty()).then(|| Self(format!("+{d}")))
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_is_stripped_from_international_numbers() {
        assert_eq!(
            PhoneNumber::parse(" +1 (555) 123-4567 ").unwrap().as_str(),
            "+15551234567"
        );
    }

    #[test]
    fn numbers_without_country_code_are_kept_as_given() {
        assert_eq!(
            PhoneNumber::parse("0612345678").unwrap().as_str(),
            "0612345678"
        );
        assert_eq!(PhoneNumber::parse("ACME").unwrap().as_str(), "ACME");
        assert!(PhoneNumber::parse("  ").is_none());
    }

    #[test]
    fn international_digits_get_a_plus() {
        assert_eq!(
            PhoneNumber::from_international_digits("5511999990000")
                .unwrap()
                .as_str(),
            "+5511999990000"
        );
    }
}
