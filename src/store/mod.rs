//! Durable state behind the [`Store`] trait: messages with their raw
//! payload, dedup keys, jobs with leases, the attempts log, events and the
//! rejections log. Only this module holds SQL.
//!
//! The SQLite implementation group-commits: concurrent writes are batched
//! into one transaction and one fsync, and each caller is answered only
//! after its batch is committed. A PostgreSQL implementation will satisfy
//! the same trait.

pub mod gauges;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use crate::domain::{InboundEvent, InboundMessage, Intent};

pub use gauges::{QueueCounts, QueueGauges};

/// Milliseconds since the Unix epoch; the store's only clock unit.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The intent of a message with this text, by rules alone.
pub type RulesFn = dyn Fn(Option<&str>) -> Intent + Send + Sync;

/// Classification the store runs itself while it stores a message, in the
/// same transaction, when it needs no I/O (the rules classifier, no LLM):
/// the message is stored classified and in its conversation, its
/// `classify` job is stored done with its attempt recorded, and its
/// source's actions are enqueued. That saves the claim, the worker and the
/// second write of the row that a queued `classify` job costs
/// (ARCHITECTURE.md, "Inline classification"). Outcomes are the same as a
/// worker's run of the job.
pub struct InlineClassify {
    /// The rules: the intent of a message with this text.
    pub classify: Box<RulesFn>,
    /// Action names to enqueue once classified, per source.
    pub follow_ups: std::collections::HashMap<String, Vec<String>>,
    /// `conversations.session_ttl` in milliseconds.
    pub session_ttl_ms: Millis,
}

/// The first job every accepted message gets; forward/reply jobs are
/// enqueued when it completes.
pub const CLASSIFY: &str = "classify";

/// Everything one webhook request carried, to commit atomically.
#[derive(Debug, Clone)]
pub struct IngestBatch {
    /// Shared, not copied: the source's name is the same on every request.
    pub source: std::sync::Arc<str>,
    pub messages: Vec<InboundMessage>,
    /// Each message's [`stored_doc`], in the same order: serialized by the
    /// caller, on the many request threads, rather than on the single
    /// writer.
    pub docs: Vec<String>,
    pub events: Vec<InboundEvent>,
    /// When a key was first seen before this, it is forgotten and accepted again.
    pub dedup_cutoff: Millis,
    pub now: Millis,
}

impl IngestBatch {
    pub fn new(
        source: std::sync::Arc<str>,
        messages: Vec<InboundMessage>,
        events: Vec<InboundEvent>,
        dedup_cutoff: Millis,
        now: Millis,
    ) -> Self {
        let docs = messages.iter().map(stored_doc).collect();
        Self {
            source,
            messages,
            docs,
            events,
            dedup_cutoff,
            now,
        }
    }
}

/// A message as its row's `doc` holds it: everything but what the row
/// keeps in columns of its own (`id`, `source`, `external_id`, and `from`
/// as `contact`), which the store puts back when it reads the message.
/// Those four were a fifth of the document, written twice (journal and
/// row) and read never.
pub fn stored_doc(m: &InboundMessage) -> String {
    // Every field named, so a field added to the message must be placed
    // here (in the document or among the columns) to compile.
    let InboundMessage {
        id: _,
        source: _,
        external_id: _,
        from: _,
        dedup_key: _,
        provider,
        channel,
        to,
        text,
        media,
        received_at,
        raw,
    } = m;
    #[derive(Serialize)]
    struct Stored<'a> {
        provider: &'a str,
        channel: &'a crate::domain::Channel,
        to: &'a Option<String>,
        text: &'a Option<String>,
        media: &'a [crate::domain::Media],
        received_at: &'a str,
    }
    let stored = Stored {
        provider,
        channel,
        to,
        text,
        media,
        received_at,
    };
    // Sized up front: growing it was a few copies per message.
    let mut doc = Vec::with_capacity(raw.as_str().len() + 160);
    serde_json::to_writer(&mut doc, &stored).expect("a message always serializes");
    // `{...}` becomes `{...,"raw":RAW}`: the payload's text as it came
    // (always JSON), with no second pass over it.
    doc.pop();
    doc.extend_from_slice(br#","raw":"#);
    doc.extend_from_slice(raw.as_str().as_bytes());
    doc.push(b'}');
    String::from_utf8(doc).expect("serde_json writes UTF-8")
}

/// The smallest message id minted at or after `millis`: ids are `msg_` and
/// a UUIDv7 whose first 12 hex digits are its Unix milliseconds, so time
/// ranges are id ranges and need no index of their own.
pub fn message_id_floor(millis: Millis) -> String {
    format!("msg_{:012x}", millis.max(0))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
}

/// One queue a claim may take from: the jobs of one action of one source,
/// at most `limit` of them. Workers leave out the lanes whose destination's
/// breaker is open, so waiting jobs are not touched at all during an outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub source: String,
    pub action: String,
    pub limit: usize,
}

/// A job handed to a worker under a lease.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub message_id: String,
    pub source: String,
    pub action: String,
    /// Attempts already recorded before this run.
    pub attempts: u32,
    /// The normalized message as stored (intent and conversation included
    /// once known).
    pub message: Value,
}

/// One recorded attempt (SPEC §5 `attempts`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    pub action: String,
    pub destination: Option<String>,
    pub outcome: String,
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

/// What happens to a job after a run.
#[derive(Debug, Clone, PartialEq)]
pub enum JobNext {
    Done,
    /// Run again at this time; the attempt was charged.
    Retry {
        at: Millis,
    },
    /// Run again at this time without charging an attempt (open breaker).
    Defer {
        at: Millis,
    },
    Dead {
        error: String,
    },
}

#[derive(Debug, Clone)]
pub struct JobCompletion {
    pub job_id: i64,
    pub message_id: String,
    pub attempt: Option<AttemptRecord>,
    pub next: JobNext,
    pub set_intent: Option<Intent>,
    pub set_conversation: Option<String>,
    /// Jobs to enqueue for the same message, in the same transaction.
    pub follow_ups: Vec<String>,
    pub now: Millis,
}

impl JobCompletion {
    /// `job` finished with nothing to record yet; callers fill in the rest.
    pub fn done(job: &ClaimedJob, now: Millis) -> Self {
        Self {
            job_id: job.job_id,
            message_id: job.message_id.clone(),
            attempt: None,
            next: JobNext::Done,
            set_intent: None,
            set_conversation: None,
            follow_ups: Vec::new(),
            now,
        }
    }
}

/// A rejected request as the rejections log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub at: String,
    pub source: String,
    pub status: u16,
    pub code: String,
    pub headers: serde_json::Map<String, Value>,
    pub body: String,
}

/// Filters and paging of the admin listings.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub source: Option<String>,
    pub status: Option<String>,
    pub intent: Option<String>,
    pub contact: Option<String>,
    pub action: Option<String>,
    pub limit: usize,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
}

/// Whether a contact may get an auto-reply, judged against every earlier
/// message of that contact (SPEC §4: opt-out state changes in arrival order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptState {
    /// No opt-out in force.
    Active,
    OptedOut,
    /// An earlier message of the contact is not classified yet: ask again later.
    Undecided,
}

/// What a reply job finds when it announces a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClaim {
    /// Nothing was sent for this message and action: go ahead (intent to
    /// send is now recorded).
    Proceed,
    /// Already sent.
    AlreadySent,
    /// A previous run recorded intent but not the result (crash or timeout
    /// mid-send): the send may have happened, so it is not repeated.
    Unknown,
}

/// The recorded result of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyResult {
    Sent,
    /// Definitely not sent (the provider refused it): a retry may send.
    Failed,
    /// May or may not have been sent (timeout after the request left).
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not commit (locked, busy, disk full, gone).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Too many acknowledged messages wait for the database
    /// (`store.max_backlog`): new ones are refused until it catches up.
    #[error("{0} acknowledged messages wait to be stored (store.max_backlog)")]
    Backlogged(u64),
    #[error("not found")]
    NotFound,
    #[error("store error: {0}")]
    Internal(String),
}

/// The durable store. Every write method returns only after its effects
/// are committed.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Dedup and store the messages and events of one request, creating a
    /// `classify` job per accepted message.
    async fn ingest(&self, batch: IngestBatch) -> Result<IngestOutcome, StoreError>;
    /// Lease up to `limit` due jobs.
    /// Lease up to `limit` due jobs from `lanes` (earliest first), plus jobs
    /// of any lane whose lease ran out.
    async fn claim(
        &self,
        lanes: &[Lane],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError>;
    async fn complete(&self, completion: JobCompletion) -> Result<(), StoreError>;
    async fn reject(&self, rejection: Rejection) -> Result<(), StoreError>;
    /// Drop expired dedup keys, messages past retention and old rejections.
    async fn prune(&self, dedup_cutoff: Millis, retention_cutoff: Millis)
    -> Result<(), StoreError>;
    /// When the earliest pending job is due, if any.
    async fn next_due(&self, lanes: &[Lane]) -> Result<Option<Millis>, StoreError>;
    /// Marks dead the unfinished jobs of actions no longer configured (not
    /// in `lanes`), so they show up as dead letters instead of waiting forever.
    async fn fail_orphans(&self, lanes: &[Lane]) -> Result<usize, StoreError>;
    /// Ok when the store accepts writes.
    async fn probe(&self) -> Result<(), StoreError>;
    /// In-memory queue counts, kept current by the store on every commit.
    fn gauges(&self) -> &QueueGauges;
    /// Notified whenever new work became runnable (an ingest, a retry, a
    /// follow-up job), so workers claim at once instead of polling.
    fn work_signal(&self) -> std::sync::Arc<tokio::sync::Notify>;

    async fn list_messages(&self, q: ListQuery) -> Result<Page, StoreError>;
    async fn get_message(&self, id: &str) -> Result<Value, StoreError>;
    async fn list_rejections(&self, q: ListQuery) -> Result<Page, StoreError>;
    async fn list_dead_letters(&self, q: ListQuery) -> Result<Page, StoreError>;
    /// Re-run a message's jobs (only the dead ones when `only_failed`).
    async fn replay_message(&self, id: &str, only_failed: bool) -> Result<usize, StoreError>;
    /// Re-run dead jobs matching source/action; returns how many.
    async fn replay_dead(
        &self,
        source: Option<String>,
        action: Option<String>,
    ) -> Result<usize, StoreError>;

    /// The opt-out state of `contact` as of just before `message_id` arrived.
    async fn opt_state(
        &self,
        source: &str,
        contact: &str,
        message_id: &str,
    ) -> Result<OptState, StoreError>;
    /// Records intent to send a reply before it is sent.
    async fn begin_reply(&self, message_id: &str, action: &str) -> Result<ReplyClaim, StoreError>;
    /// Records the result of a send announced by `begin_reply`.
    async fn finish_reply(
        &self,
        message_id: &str,
        action: &str,
        result: ReplyResult,
        detail: Option<String>,
    ) -> Result<(), StoreError>;
    /// The latest conversation of a contact: its id and when its last
    /// message arrived.
    async fn last_conversation(
        &self,
        source: &str,
        contact: &str,
    ) -> Result<Option<(String, Millis)>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, Media, MessageId, PhoneNumber, RawJson};

    #[test]
    fn the_stored_document_is_the_message_less_its_columns() {
        let raw = r#"{"guid":"g-1","message":"hi \"you\"","n":[1,2.5,null],"é":{}}"#;
        let m = InboundMessage {
            id: MessageId::generate(),
            source: "sms".into(),
            provider: "sms-gateway",
            external_id: "g-1".into(),
            dedup_key: None,
            channel: Channel::Sms,
            from: PhoneNumber::parse("+15551234567"),
            to: Some("+15550000000".into()),
            text: Some("hi \"you\"".into()),
            media: vec![Media {
                url: "https://example.com/a.jpg".into(),
                content_type: Some("image/jpeg".into()),
            }],
            received_at: "2026-12-03T16:00:00Z".into(),
            raw: RawJson::from_parsed_body(&format!("\n {raw}\r\n")),
        };
        let doc = stored_doc(&m);
        let mut whole = serde_json::to_value(&m).unwrap();
        for column in ["id", "source", "external_id", "from"] {
            whole.as_object_mut().unwrap().remove(column);
        }
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&doc).unwrap(),
            whole
        );
        // The payload's text as it came, byte for byte.
        assert!(doc.ends_with(&format!(r#","raw":{raw}}}"#)), "{doc}");
    }
}
