//! Background processing: workers claim jobs from the store under a lease,
//! run their [`Action`], record the attempt and decide what happens next
//! (done, retry with backoff, dead). Nothing here is on the ACK path.

pub mod action;
pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod conversations;
pub mod forward;
pub mod llm;
pub mod outbound;
pub mod registry;
pub mod reply;
pub mod worker;

pub use action::{Action, ActionError, ActionOutput, Actions, ClassifyAction};
pub use backoff::Backoff;
pub use classify::RulesClassifier;
pub use outbound::{Delivered, Outbound, SendOptions};
pub use registry::build_actions;
pub use worker::{WorkerPool, WorkerSettings};
