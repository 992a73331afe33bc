#!/usr/bin/env python3
"""WAL bytes per message of the SQLite writer's transactions, modelled.

    scripts/wal-model.py DEDUP DOC KEYS [TRANSACTIONS]
      DEDUP: index (the `dedup` table of older builds: PRIMARY KEY (source,
             key) and an index on seen_at) | log (`dedup_keys`, append-only)
      DOC:   whole (the document with id, source, external_id, from) |
             compact (without them, as stored since the ninth session)
      KEYS:  bench (`inlet bench` guids: bench-<run>-<n>) | random (32 hex
             digits, like Twilio SIDs or UUIDs)
      CONTACTS=random in the environment: random contact numbers instead
             of the benchmark's sequential ones
      PER_TXN=400 messages a transaction (20 is what the writer's 200 ms
             applies hold at 100/s, 200 at 1,000/s)
      PAGE=4096 SQLite's page_size for the new file

Builds Inlet's schema (src/store/sqlite/schema.sql) in a temp file with
Python's sqlite3, applies TRANSACTIONS (default 200) transactions of
PER_TXN messages shaped like the benchmark's, with checkpoints off, and
prints the WAL bytes written per message over the second half (after one truncating checkpoint) and the
pages each b-tree has. Not the writer's own code (no journal, no inline
classification); a model of its page writes, repeatable on any machine.
"""
import os
import random
import sqlite3
import sys
import tempfile
import uuid

dedup, doc_kind, keys = sys.argv[1:4]
txns = int(sys.argv[4]) if len(sys.argv) > 4 else 200
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
schema = open(os.path.join(root, "src/store/sqlite/schema.sql")).read()

d = tempfile.mkdtemp(prefix="inlet-wal-model.")
path = os.path.join(d, "inlet.db")
c = sqlite3.connect(path, isolation_level=None)
c.execute("PRAGMA page_size=%d" % int(os.environ.get("PAGE", 4096)))
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA wal_autocheckpoint=0")
c.executescript(schema)
c.execute("ALTER TABLE messages ADD COLUMN inline_classified_at INTEGER")
if dedup == "index":
    c.execute("DROP TABLE dedup_keys")
    c.execute("""CREATE TABLE dedup (source TEXT NOT NULL, key TEXT NOT NULL,
                 message_id TEXT NOT NULL, seen_at INTEGER NOT NULL,
                 PRIMARY KEY (source, key)) WITHOUT ROWID""")
    c.execute("CREATE INDEX dedup_by_seen ON dedup (seen_at)")
    insert_key = ("INSERT INTO dedup (source, key, message_id, seen_at) VALUES (?1, ?2, ?3, ?4)"
                  " ON CONFLICT (source, key) DO UPDATE SET message_id = excluded.message_id,"
                  " seen_at = excluded.seen_at")
else:
    insert_key = "INSERT INTO dedup_keys (source, key, seen_at) VALUES (?1, ?2, ?4)"

run = uuid.uuid4().hex
rng = random.Random(1)
n = measured = base = 0
for t in range(txns):
    if t == txns // 2:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        base, measured = os.path.getsize(path + "-wal"), 0
    c.execute("BEGIN IMMEDIATE")
    for _ in range(int(os.environ.get("PER_TXN", 400))):
        now = 1_796_304_733_600 + n
        mid = "msg_%012x%020x" % (now, rng.getrandbits(80))
        key = "bench-%s-%d" % (run, n) if keys == "bench" else "%032x" % rng.getrandbits(128)
        if os.environ.get("CONTACTS") == "random":
            contact = "+1%010d" % rng.getrandbits(33)
        else:
            contact = "+1555%07d" % (n % 10_000_000)
        raw = ('{"date":"2026-01-01","hour":"12:00:00","time_received":"1764000000000",'
               '"message":"bench message %d","number":"%s","guid":"%s"}' % (n, contact, key))
        rest = ('"channel":"sms","to":null,"text":"bench message %d","media":[],'
                '"received_at":"2026-12-03T13:32:13Z","raw":%s}' % (n, raw))
        if doc_kind == "whole":
            doc = ('{"id":"%s","source":"sms","provider":"sms-gateway","external_id":"%s",'
                   '"from":"%s",' % (mid, key, contact)) + rest
        else:
            doc = '{"provider":"sms-gateway",' + rest
        c.execute(insert_key, ("sms", key, mid, now))
        c.execute("INSERT INTO messages (id, source, external_id, contact, received_at, doc,"
                  " intent, intent_label, conversation_id, inline_classified_at)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                  (mid, "sms", key, contact, now, doc,
                   '{"label":"other","confidence":0.0,"by":"rules"}', "other",
                   "conv_%032x" % rng.getrandbits(128), now))
        n += 1
        measured += 1
    c.execute("UPDATE journal_state SET applied = ?1 WHERE id = 1", (n,))
    c.execute("COMMIT")
wal = os.path.getsize(path + "-wal") - base
print(f"{dedup} {doc_kind} {keys}: WAL {wal / measured:.0f} B/msg over {measured} messages")
for name, pages in c.execute("SELECT name, count(*) FROM dbstat GROUP BY name"
                             " HAVING count(*) > 1 ORDER BY 2 DESC"):
    print(f"  {name}: {pages} pages")
c.close()
for f in os.listdir(d):
    os.remove(os.path.join(d, f))
os.rmdir(d)
