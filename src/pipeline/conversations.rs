//! Conversations: messages from one contact on one source share a
//! `conversation_id` while each arrives within `session_ttl` of the
//! previous one (a sliding window).
//!
//! The latest conversation per contact lives in a moka TTL cache whose
//! loads are coalesced: a burst of messages from one contact makes one
//! store lookup, not one per message. The per-contact state sits behind a
//! short std mutex (never held across an await) so concurrent workers
//! extend the same conversation instead of racing to open two.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;

use crate::domain::ConversationId;
use crate::store::{Millis, Store, StoreError};

#[derive(Debug, Clone)]
struct Current {
    id: String,
    last_at: Millis,
}

type Slot = Arc<Mutex<Option<Current>>>;

pub struct Conversations {
    store: Arc<dyn Store>,
    ttl_ms: i64,
    cache: Cache<(String, String), Slot>,
}

/// Contacts remembered at most; older ones are looked up again.
const CACHE_CAPACITY: u64 = 100_000;

impl Conversations {
    pub fn new(store: Arc<dyn Store>, session_ttl: Duration) -> Self {
        Self {
            store,
            ttl_ms: session_ttl.as_millis() as i64,
            // Past the TTL a contact's next message opens a new
            // conversation anyway, so idle entries can go.
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_idle(session_ttl)
                .build(),
        }
    }

    /// The conversation a message from `contact` arriving at `at` belongs
    /// to, opening a new one when the previous message is older than the TTL.
    pub async fn assign(
        &self,
        source: &str,
        contact: &str,
        at: Millis,
    ) -> Result<String, StoreError> {
        let store = self.store.clone();
        let (s, c) = (source.to_string(), contact.to_string());
        let slot = self
            .cache
            .try_get_with((s.clone(), c.clone()), async move {
                let found = store.last_conversation(&s, &c).await?;
                Ok::<_, StoreError>(Arc::new(Mutex::new(
                    found.map(|(id, last_at)| Current { id, last_at }),
                )))
            })
            .await
            .map_err(|e: Arc<StoreError>| match e.as_ref() {
                StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                other => StoreError::Internal(other.to_string()),
            })?;
        let mut current = slot.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_mut() {
            Some(cur) if (at - cur.last_at).abs() <= self.ttl_ms => {
                cur.last_at = cur.last_at.max(at);
                Ok(cur.id.clone())
            }
            // A straggler processed late, from long before the current
            // conversation: its own conversation, leaving the current one be.
            Some(cur) if at < cur.last_at => Ok(ConversationId::generate().to_string()),
            _ => {
                let id = ConversationId::generate().to_string();
                *current = Some(Current {
                    id: id.clone(),
                    last_at: at,
                });
                Ok(id)
            }
        }
    }
}
