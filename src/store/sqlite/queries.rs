//! Read-side queries of the admin API, on their own connection so reads
//! never queue behind the writer (WAL lets them run during a commit).

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use super::super::{Lane, ListQuery, Millis, OptState, Page};
use super::leases::Leases;

/// The columns a message's document is rebuilt from, in this order
/// (`m` is `messages`); [`DocColumns::read`] reads them.
pub const DOC_COLUMNS: &str =
    "m.doc, m.intent, m.conversation_id, m.id, m.source, m.external_id, m.contact";

/// A message's row as far as its document needs it.
pub struct DocColumns {
    doc: String,
    intent: Option<String>,
    conversation: Option<String>,
    id: String,
    source: String,
    external_id: String,
    contact: Option<String>,
}

impl DocColumns {
    /// Reads [`DOC_COLUMNS`] from `row`, starting at column `at`.
    pub fn read(row: &Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            doc: row.get(at)?,
            intent: row.get(at + 1)?,
            conversation: row.get(at + 2)?,
            id: row.get(at + 3)?,
            source: row.get(at + 4)?,
            external_id: row.get(at + 5)?,
            contact: row.get(at + 6)?,
        })
    }
}

/// The normalized message with what processing added since ingest. The
/// stored document leaves out what the row holds in columns (see
/// [`crate::store::stored_doc`]); they are put back here. Documents
/// stored by older builds carry them already, and keep theirs.
pub fn message_doc(c: DocColumns) -> Value {
    let mut v: Value = serde_json::from_str(&c.doc).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        let mut fill = |key: &str, value: Value| {
            o.entry(key).or_insert(value);
        };
        fill("id", Value::String(c.id));
        fill("source", Value::String(c.source));
        fill("external_id", Value::String(c.external_id));
        fill("from", c.contact.map(Value::String).unwrap_or(Value::Null));
        o.insert(
            "conversation_id".into(),
            c.conversation.map(Value::String).unwrap_or(Value::Null),
        );
        o.insert(
            "intent".into(),
            c.intent
                .and_then(|i| serde_json::from_str(&i).ok())
                .unwrap_or(Value::Null),
        );
    }
    v
}

/// A message's status from its jobs: dead if any is dead, pending while any
/// is to run, else done.
const STATUS_SQL: &str = "CASE
    WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id AND j.status = 'dead') THEN 'dead'
    WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id AND j.status IN ('pending', 'running')) THEN 'pending'
    ELSE 'done' END";

/// A message's document and its status: [`DOC_COLUMNS`], then the status.
fn with_status(row: &Row<'_>) -> rusqlite::Result<Value> {
    let mut doc = message_doc(DocColumns::read(row, 0)?);
    if let Value::Object(o) = &mut doc {
        o.insert("status".into(), Value::String(row.get(7)?));
    }
    Ok(doc)
}

fn page(items: Vec<Value>, limit: usize, cursor_of: impl Fn(&Value) -> Option<String>) -> Page {
    let next_cursor = if items.len() == limit {
        items.last().and_then(cursor_of)
    } else {
        None
    };
    Page { items, next_cursor }
}

pub fn list_messages(c: &Connection, q: &ListQuery) -> rusqlite::Result<Page> {
    let sql = format!(
        "SELECT {DOC_COLUMNS}, status FROM (
           SELECT m.id, m.source, m.external_id, m.contact, m.intent_label, m.doc, m.intent,
                  m.conversation_id, {STATUS_SQL} AS status
           FROM messages m
           WHERE (?1 IS NULL OR m.source = ?1) AND (?2 IS NULL OR m.id < ?2)
             AND (?3 IS NULL OR m.intent_label = ?3) AND (?4 IS NULL OR m.contact = ?4)
         ) m WHERE (?5 IS NULL OR status = ?5)
         ORDER BY id DESC LIMIT ?6"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let items = stmt
        .query_map(
            params![
                q.source,
                q.cursor,
                q.intent,
                q.contact,
                q.status,
                q.limit as i64
            ],
            with_status,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page(items, q.limit, |v| v["id"].as_str().map(String::from)))
}

pub fn get_message(c: &Connection, id: &str) -> rusqlite::Result<Option<Value>> {
    let sql = format!(
        "SELECT {DOC_COLUMNS}, {STATUS_SQL}, m.inline_classified_at
         FROM messages m WHERE m.id = ?1"
    );
    let found = c
        .prepare_cached(&sql)?
        .query_row([id], |r| {
            Ok((
                with_status(r)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<Millis>>(8)?,
            ))
        })
        .optional()?;
    let Some((mut doc, source, external_id, inline_classified_at)) = found else {
        return Ok(None);
    };
    let events = c
        .prepare_cached(
            "SELECT id, kind, external_id, at, payload FROM events
             WHERE source = ?1 AND external_id = ?2 ORDER BY at, id",
        )?
        .query_map(params![source, external_id], |r| {
            Ok(json!({
                "id": r.get::<_, String>(0)?,
                "kind": r.get::<_, String>(1)?,
                "external_id": r.get::<_, Option<String>>(2)?,
                "at": rfc3339(r.get(3)?),
                "payload": serde_json::from_str::<Value>(&r.get::<_, String>(4)?).unwrap_or(Value::Null),
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // Classified as it was stored: that first attempt is not a row.
    let inline = inline_classified_at.map(|at| {
        json!({
            "action": super::super::CLASSIFY, "destination": null, "outcome": "success",
            "status_code": null, "duration_ms": 0, "error": null, "at": rfc3339(at),
        })
    });
    let mut stmt = c.prepare_cached(
        "SELECT action, destination, outcome, status_code, duration_ms, error, at
             FROM attempts WHERE message_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(json!({
            "action": r.get::<_, String>(0)?,
            "destination": r.get::<_, Option<String>>(1)?,
            "outcome": r.get::<_, String>(2)?,
            "status_code": r.get::<_, Option<i64>>(3)?,
            "duration_ms": r.get::<_, i64>(4)?,
            "error": r.get::<_, Option<String>>(5)?,
            "at": rfc3339(r.get(6)?),
        }))
    })?;
    let attempts = inline
        .into_iter()
        .map(Ok)
        .chain(rows)
        .collect::<Result<Vec<_>, _>>()?;
    if let Value::Object(o) = &mut doc {
        o.insert("events".into(), Value::Array(events));
        o.insert("attempts".into(), Value::Array(attempts));
    }
    Ok(Some(doc))
}

pub fn list_rejections(c: &Connection, q: &ListQuery) -> rusqlite::Result<Page> {
    let cursor: Option<i64> = q.cursor.as_deref().and_then(|s| s.parse().ok());
    let items = c
        .prepare_cached(
            "SELECT id, at, source, status, code, headers, body FROM rejections
             WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3",
        )?
        .query_map(params![q.source, cursor, q.limit as i64], |r| {
            Ok(json!({
                "id": r.get::<_, i64>(0)?.to_string(),
                "at": r.get::<_, String>(1)?,
                "source": r.get::<_, String>(2)?,
                "status": r.get::<_, i64>(3)?,
                "code": r.get::<_, String>(4)?,
                "headers": serde_json::from_str::<Value>(&r.get::<_, String>(5)?).unwrap_or(Value::Null),
                "body": r.get::<_, String>(6)?,
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page(items, q.limit, |v| v["id"].as_str().map(String::from)))
}

pub fn list_dead_letters(c: &Connection, q: &ListQuery) -> rusqlite::Result<Page> {
    let cursor: Option<i64> = q.cursor.as_deref().and_then(|s| s.parse().ok());
    let items = c
        .prepare_cached(
            "SELECT id, message_id, source, action, last_error, updated_at FROM jobs
             WHERE status = 'dead' AND (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR id < ?2)
               AND (?3 IS NULL OR action = ?3)
             ORDER BY id DESC LIMIT ?4",
        )?
        .query_map(params![q.source, cursor, q.action, q.limit as i64], |r| {
            Ok(json!({
                "id": r.get::<_, i64>(0)?.to_string(),
                "message_id": r.get::<_, String>(1)?,
                "source": r.get::<_, String>(2)?,
                "action": r.get::<_, String>(3)?,
                "error": r.get::<_, Option<String>>(4)?,
                "at": rfc3339(r.get(5)?),
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page(items, q.limit, |v| v["id"].as_str().map(String::from)))
}

/// Pending jobs of one lane due by a time, earliest first, on the partial
/// index of pending jobs.
pub(super) const LANE_DUE: &str = "SELECT id, run_at FROM jobs
     WHERE status = 'pending' AND source = ?1 AND action = ?2 AND run_at <= ?3
     ORDER BY run_at LIMIT ?4";

/// Up to `n` jobs of `lane` due by `until` that no worker holds, as
/// (run_at, id), earliest first. Leased jobs are still pending rows, so the
/// query looks past as many as are leased.
pub(super) fn unleased_due(
    c: &Connection,
    lane: &Lane,
    until: Millis,
    n: usize,
    held: &HashSet<i64>,
) -> rusqlite::Result<Vec<(Millis, i64)>> {
    let mut due = c.prepare_cached(LANE_DUE)?;
    let rows = due.query_map(
        params![lane.source, lane.action, until, (n + held.len()) as i64],
        |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(0)?)),
    )?;
    let mut out = Vec::with_capacity(n);
    for row in rows {
        let (run_at, id) = row?;
        if !held.contains(&id) {
            out.push((run_at, id));
            if out.len() == n {
                break;
            }
        }
    }
    Ok(out)
}

/// The earliest run time of a job not leased now in `lanes`, or the
/// earliest lease end.
pub fn next_due(c: &Connection, lanes: &[Lane], leases: &Leases) -> rusqlite::Result<Option<i64>> {
    let held = leases.ids();
    let mut due = leases.earliest_end();
    for lane in lanes {
        if let Some((run_at, _)) = unleased_due(c, lane, Millis::MAX, 1, &held)?.first() {
            due = Some(due.map_or(*run_at, |d| d.min(*run_at)));
        }
    }
    Ok(due)
}

pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Opt-out state just before `message_id`: undecided while an earlier
/// message of the contact still waits for classification; else the latest
/// earlier opt_out/opt_in, falling back to the registry for contacts whose
/// messages are past retention.
pub fn opt_state(
    c: &Connection,
    source: &str,
    contact: &str,
    message_id: &str,
) -> rusqlite::Result<OptState> {
    let waiting: bool = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM messages m JOIN jobs j ON j.message_id = m.id
               WHERE m.source = ?1 AND m.contact = ?2 AND m.id < ?3 AND m.intent_label IS NULL
                 AND j.action = 'classify' AND j.status IN ('pending', 'running'))",
        )?
        .query_row(params![source, contact, message_id], |r| r.get(0))?;
    if waiting {
        return Ok(OptState::Undecided);
    }
    let latest: Option<String> = c
        .prepare_cached(
            "SELECT intent_label FROM messages
             WHERE source = ?1 AND contact = ?2 AND id < ?3 AND intent_label IN ('opt_out', 'opt_in')
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![source, contact, message_id], |r| r.get(0))
        .optional()?;
    let opted_out = match latest {
        Some(label) => label == "opt_out",
        None => c
            .prepare_cached("SELECT opted_out FROM opt_outs WHERE source = ?1 AND contact = ?2 AND message_id < ?3")?
            .query_row(params![source, contact, message_id], |r| r.get::<_, bool>(0))
            .optional()?
            .unwrap_or(false),
    };
    Ok(if opted_out {
        OptState::OptedOut
    } else {
        OptState::Active
    })
}

pub const LAST_CONVERSATION: &str = "SELECT conversation_id, received_at FROM messages
    WHERE source = ?1 AND contact = ?2 AND conversation_id IS NOT NULL
    ORDER BY id DESC LIMIT 1";

pub fn last_conversation(
    c: &Connection,
    source: &str,
    contact: &str,
) -> rusqlite::Result<Option<(String, i64)>> {
    let mut stmt = c.prepare_cached(LAST_CONVERSATION)?;
    last_conversation_with(&mut stmt, source, contact)
}

/// [`last_conversation`] on a statement the caller holds.
pub fn last_conversation_with(
    stmt: &mut rusqlite::Statement<'_>,
    source: &str,
    contact: &str,
) -> rusqlite::Result<Option<(String, i64)>> {
    stmt.query_row(params![source, contact], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}
