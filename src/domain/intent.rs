//! The classification result stored on a message.

use serde::{Deserialize, Serialize};

/// Which classifier decided (`intent.by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classifier {
    Rules,
    Llm,
    Fallback,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub label: String,
    pub confidence: f64,
    pub by: Classifier,
}
