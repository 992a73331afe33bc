//! What one journal record holds: the accepted messages and the events of
//! one request, exactly as SQLite will store them. A plain length-prefixed
//! binary layout (version byte first): the documents are JSON already, and
//! escaping them into another JSON layer would cost the ACK path time.

use crate::store::Millis;

/// Version 2 added each message's text; version 1 records (written by
/// older builds, still in a journal after an upgrade) read it from the doc.
const VERSION: u8 = 2;

/// One accepted message, ready for its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub external_id: String,
    /// `None` when it is `external_id` (see [`Row::dedup_key`]). The
    /// record holds the key either way.
    pub dedup_key: Option<String>,
    pub contact: Option<String>,
    /// The normalized message as JSON, raw payload included.
    pub doc: String,
    /// The message's text, also in `doc`: carried so the writer classifies
    /// without parsing the document.
    pub text: Option<String>,
}

impl Row {
    /// What dedup is keyed on within the source.
    pub fn dedup_key(&self) -> &str {
        self.dedup_key.as_deref().unwrap_or(&self.external_id)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub kind: String,
    pub external_id: Option<String>,
    pub payload: String,
}

/// A request's share of the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub source: std::sync::Arc<str>,
    pub now: Millis,
    pub messages: Vec<Row>,
    pub events: Vec<EventRow>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_opt(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put_str(buf, s);
        }
    }
}

impl Entry {
    /// The length of [`Self::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let opt = |s: &Option<String>| 1 + s.as_ref().map_or(0, |s| 4 + s.len());
        let messages: usize = (self.messages.iter())
            .map(|m| {
                16 + m.id.len()
                    + m.external_id.len()
                    + m.dedup_key().len()
                    + m.doc.len()
                    + opt(&m.contact)
                    + opt(&m.text)
            })
            .sum();
        let events: usize = (self.events.iter())
            .map(|e| 8 + e.kind.len() + e.payload.len() + opt(&e.external_id))
            .sum();
        1 + 8 + 4 + self.source.len() + 4 + messages + 4 + events
    }

    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.push(VERSION);
        buf.extend_from_slice(&self.now.to_le_bytes());
        put_str(buf, &self.source);
        buf.extend_from_slice(&(self.messages.len() as u32).to_le_bytes());
        for m in &self.messages {
            put_str(buf, &m.id);
            put_str(buf, &m.external_id);
            put_str(buf, m.dedup_key());
            put_opt(buf, m.contact.as_deref());
            put_str(buf, &m.doc);
            put_opt(buf, m.text.as_deref());
        }
        buf.extend_from_slice(&(self.events.len() as u32).to_le_bytes());
        for e in &self.events {
            put_str(buf, &e.kind);
            put_opt(buf, e.external_id.as_deref());
            put_str(buf, &e.payload);
        }
    }

    pub fn decode(body: &[u8]) -> Result<Self, String> {
        let mut r = Reader { buf: body, at: 0 };
        let version = r.u8()?;
        if version != VERSION && version != 1 {
            return Err(format!("unknown journal record version {version}"));
        }
        let now = i64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let source = r.str()?.into();
        let n = r.u32()? as usize;
        let mut messages = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let (id, external_id) = (r.string()?, r.string()?);
            // Usually the id again: then not a string of its own.
            let key = r.str()?;
            let dedup_key = (key != external_id).then(|| key.to_string());
            let (contact, doc) = (r.opt()?, r.string()?);
            let text = match version {
                1 => text_of(&doc),
                _ => r.opt()?,
            };
            messages.push(Row {
                id,
                external_id,
                dedup_key,
                contact,
                doc,
                text,
            });
        }
        let n = r.u32()? as usize;
        let mut events = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            events.push(EventRow {
                kind: r.string()?,
                external_id: r.opt()?,
                payload: r.string()?,
            });
        }
        if r.at != body.len() {
            return Err("trailing bytes after a journal record".into());
        }
        Ok(Self {
            source,
            now,
            messages,
            events,
        })
    }
}

/// The `text` field of a stored document.
fn text_of(doc: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Text {
        #[serde(default)]
        text: Option<String>,
    }
    serde_json::from_str::<Text>(doc).ok().and_then(|t| t.text)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or("journal record ends early")?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
    }
    fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_string)
    }
    fn opt(&mut self) -> Result<Option<String>, String> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_the_length_encode_writes() {
        let mut e = Entry {
            source: "sms".into(),
            now: 42,
            messages: vec![],
            events: vec![],
        };
        for i in 0..3 {
            e.messages.push(Row {
                id: format!("msg_{i}"),
                external_id: "x".repeat(i),
                dedup_key: Some("k".into()),
                contact: (i % 2 == 0).then(|| "+1555".into()),
                doc: "{}".into(),
                text: (i == 1).then(|| "hi".into()),
            });
            e.events.push(EventRow {
                kind: "status".into(),
                external_id: (i % 2 == 1).then(|| "e".into()),
                payload: "[]".repeat(i),
            });
            let mut buf = Vec::new();
            e.encode(&mut buf);
            assert_eq!(e.encoded_len(), buf.len());
        }
    }

    #[test]
    fn an_entry_reads_back_as_written_and_a_cut_one_is_an_error() {
        let entry = Entry {
            source: "sms".into(),
            now: 1_700_000_000_123,
            messages: vec![
                Row {
                    id: "msg_1".into(),
                    external_id: "g1".into(),
                    dedup_key: None,
                    contact: Some("+15551234567".into()),
                    doc: r#"{"text":"héllo"}"#.into(),
                    text: Some("héllo".into()),
                },
                Row {
                    id: "msg_2".into(),
                    external_id: "g2".into(),
                    dedup_key: Some("inst:g2".into()),
                    contact: None,
                    doc: "{}".into(),
                    text: None,
                },
            ],
            events: vec![EventRow {
                kind: "status".into(),
                external_id: None,
                payload: "{}".into(),
            }],
        };
        let mut buf = Vec::new();
        entry.encode(&mut buf);
        assert_eq!(Entry::decode(&buf).unwrap(), entry);
        for cut in [1, 9, buf.len() - 1] {
            assert!(Entry::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        buf.push(0);
        assert!(Entry::decode(&buf).is_err());
    }

    #[test]
    fn a_key_that_is_the_id_is_written_out_and_read_back_as_none() {
        let row = |dedup_key: Option<&str>| Entry {
            source: "sms".into(),
            now: 1,
            messages: vec![Row {
                id: "msg_1".into(),
                external_id: "g1".into(),
                dedup_key: dedup_key.map(str::to_string),
                contact: None,
                doc: "{}".into(),
                text: None,
            }],
            events: vec![],
        };
        let (mut implied, mut spelled) = (Vec::new(), Vec::new());
        row(None).encode(&mut implied);
        row(Some("g1")).encode(&mut spelled);
        // The layout of records written before the key could be implied.
        assert_eq!(implied, spelled);
        let read = Entry::decode(&spelled).unwrap();
        assert_eq!(read, row(None));
        assert_eq!(read.messages[0].dedup_key(), "g1");
    }

    #[test]
    fn a_version_1_record_reads_its_text_from_the_doc() {
        let entry = Entry {
            source: "sms".into(),
            now: 7,
            messages: vec![Row {
                id: "msg_1".into(),
                external_id: "g1".into(),
                dedup_key: None,
                contact: None,
                doc: r#"{"id":"msg_1","text":"STOP \u00e9"}"#.into(),
                text: None,
            }],
            events: vec![],
        };
        // Version 1: the same layout without the text after each doc.
        let mut v1 = Vec::new();
        entry.encode(&mut v1);
        v1[0] = 1;
        v1.truncate(v1.len() - 4 - 1); // the message's `None` text, the event count
        v1.extend_from_slice(&0u32.to_le_bytes());
        let read = Entry::decode(&v1).unwrap();
        assert_eq!(read.messages[0].text.as_deref(), Some("STOP é"));
        v1[0] = 3;
        assert!(Entry::decode(&v1).is_err());
    }
}
