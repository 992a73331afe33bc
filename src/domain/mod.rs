//! Domain types shared by every layer: ids, phone numbers, the normalized
//! inbound message, events and intents. No I/O here.

mod ids;
mod intent;
mod message;
mod phone;

pub use ids::{ConversationId, EventId, MessageId, new_id};
pub use intent::{Classifier as IntentBy, Intent};
pub use message::{Channel, InboundEvent, InboundMessage, Media, RawJson, ReceivedAt, now_rfc3339};
pub use phone::PhoneNumber;
