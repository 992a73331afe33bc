//! Newtype ids with a readable prefix (`msg_`, `conv_`, `evt_`), time-ordered
//! (UUIDv7) so that sorting by id sorts by creation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A fresh time-ordered id with `prefix`.
pub fn new_id(prefix: &str) -> String {
    let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
    let mut id = String::with_capacity(prefix.len() + hex.len());
    id.push_str(prefix);
    id.push_str(uuid::Uuid::now_v7().simple().encode_lower(&mut hex));
    id
}

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub fn generate() -> Self {
                Self(new_id($prefix))
            }
            /// Accepts only ids carrying this type's prefix.
            pub fn parse(s: &str) -> Option<Self> {
                (s.starts_with($prefix) && s.len() > $prefix.len()).then(|| Self(s.to_string()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(MessageId, "msg_");
prefixed_id!(ConversationId, "conv_");
prefixed_id!(EventId, "evt_");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_sort_by_time() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert!(a.as_str().starts_with("msg_"));
        assert!(a < b);
        assert!(MessageId::parse("conv_x").is_none());
        assert_eq!(MessageId::parse(a.as_str()), Some(a));
    }
}
