//! The schema, as numbered migrations; a database is brought to the latest at open.
//!
//! Never edit a migration that has shipped: add a new one.

use std::sync::LazyLock;

use rusqlite_migration::{M, Migrations};

/// The first schema version whose contact and inbox rows carry seals ([`super::Db::open`] seals
/// older rows once, when it migrates past it).
pub(super) const SEALED_ROWS: usize = 5;
/// The schema version of the last migration below (a database past it is from a newer pigeon).
pub(super) const LATEST: usize = 12;

pub(super) static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        M::up(
            r#"
CREATE TABLE contacts (
    name      TEXT PRIMARY KEY,
    peer_id   TEXT NOT NULL UNIQUE,
    address   TEXT NOT NULL,
    added_at  INTEGER NOT NULL
);
CREATE TABLE contact_addrs (
    peer_id   TEXT NOT NULL,
    addr      TEXT NOT NULL,
    PRIMARY KEY (peer_id, addr)
);
-- envelope: the HPKE-sealed message, itself sealed at rest under key_id; NULL once delivered.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    peer_id         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    delivered_at    INTEGER,
    size            INTEGER NOT NULL,
    envelope        BLOB,
    key_id          INTEGER
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
-- subject and body are sealed at rest under key_id; the id is the sender's message id.
CREATE TABLE inbox (
    id          TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,
    sent_at     INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    subject     BLOB,
    body        BLOB NOT NULL,
    key_id      INTEGER NOT NULL,
    read        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX inbox_received ON inbox (received_at);
CREATE TABLE labels (
    message_id TEXT NOT NULL REFERENCES inbox (id) ON DELETE CASCADE,
    label      TEXT NOT NULL,
    PRIMARY KEY (message_id, label)
);
"#,
        ),
        M::up(
            r#"
-- The peer health cache: decaying dial counts and ping RTT per address.
CREATE TABLE addr_health (
    peer_id    TEXT NOT NULL,
    addr       TEXT NOT NULL,
    successes  REAL NOT NULL,
    failures   REAL NOT NULL,
    rtt_ms     REAL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (peer_id, addr)
);
-- The TTL sweep finds old queued messages without a scan.
CREATE INDEX outbox_age ON outbox (state, created_at);
-- Attachments: ref is the CBOR manifest with the content key, sealed under key_id. For the sender
-- (direction 'out') peer_id is the recipient; for the receiver ('in') the sender.
CREATE TABLE attachments (
    id          TEXT PRIMARY KEY,
    message_id  TEXT NOT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    peer_id     TEXT NOT NULL,
    ref         BLOB NOT NULL,
    key_id      INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    held        INTEGER NOT NULL DEFAULT 0,
    bad_chunks  INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX attachments_message ON attachments (message_id);
-- Chunks the receiver has written to its file and verified.
CREATE TABLE attachment_chunks (
    attachment_id TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    PRIMARY KEY (attachment_id, idx)
);
"#,
        ),
        M::up(
            r#"
-- Built-in rules: messages from one sender get one label.
CREATE TABLE rules (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    from_peer TEXT NOT NULL,
    label     TEXT NOT NULL,
    UNIQUE (from_peer, label)
);
ALTER TABLE inbox ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
CREATE INDEX labels_label ON labels (label);
"#,
        ),
        M::up(
            r#"
-- When fetching an incoming attachment began failing without a chunk since (ms); NULL while it
-- makes progress. Past attachments.give_up_after the attachment is given up on.
ALTER TABLE attachments ADD COLUMN failing_since INTEGER;
-- Due messages are chosen peer by peer, so that one peer's backlog cannot crowd out the others.
CREATE INDEX outbox_peer_due ON outbox (state, peer_id, next_attempt_at);
"#,
        ),
        M::up(
            r#"
-- The rows that decide where messages go and who sent them, authenticated under the data key:
-- a contact's name and address sealed with its peer id as associated data, and each received
-- message's sender sealed under the message's key. Rows stored before this migration get theirs
-- in the same open (see `Db::open`); a row without one afterwards is refused as damaged.
ALTER TABLE contacts ADD COLUMN seal BLOB;
ALTER TABLE contacts ADD COLUMN key_id INTEGER;
ALTER TABLE inbox ADD COLUMN sender_seal BLOB;
"#,
        ),
        M::up(
            r#"
-- When a message was redacted (ms): its body is then an empty blob, its subject NULL, and its
-- attachments gone; the rest (id, sender, times, size, labels) stays.
ALTER TABLE inbox ADD COLUMN redacted_at INTEGER;
"#,
        ),
        M::up(
            r#"
-- The search index follows the inbox by `seq`, a number each message gets once, in the order
-- they were stored, never reused (unlike a rowid once the newest row is deleted): the index keeps
-- the highest seq it holds, and catches up from there.
ALTER TABLE inbox ADD COLUMN seq INTEGER;
UPDATE inbox SET seq = rowid;
CREATE UNIQUE INDEX inbox_seq ON inbox (seq);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters (name, value) VALUES ('inbox_seq', COALESCE((SELECT MAX(seq) FROM inbox), 0));
-- Messages deleted or redacted whose words the search index may still hold; written in the
-- transaction that deletes or redacts, removed once the index has let go of them.
CREATE TABLE search_purge (seq INTEGER PRIMARY KEY);
"#,
        ),
        M::up(
            r#"
-- An attachment the receiver has confirmed it holds whole: for the sender ('out') its sealed copy
-- is dropped; for the receiver ('in') the sender has said so, and nothing more is owed.
ALTER TABLE attachments ADD COLUMN released INTEGER NOT NULL DEFAULT 0;
"#,
        ),
        M::up(
            r#"
-- Forward secrecy. One-time keys this node handed to a contact (`holder`): the X25519 secret
-- sealed under key_id, until the one message sealed to it is stored (then it is deleted).
CREATE TABLE otk_secrets (
    id         BLOB PRIMARY KEY,
    holder     TEXT NOT NULL,
    secret     BLOB NOT NULL,
    key_id     INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX otk_secrets_holder ON otk_secrets (holder);
-- One-time keys used: the blake2b of the envelope that used each, so that the same envelope sent
-- again is acked as a duplicate and any other one sealed to that key is refused.
CREATE TABLE otk_used (
    id            BLOB PRIMARY KEY,
    envelope_hash BLOB NOT NULL,
    used_at       INTEGER NOT NULL
);
-- One-time keys received from a contact (`owner`), the signed key sealed under key_id, until one
-- message is sealed to it (then it is deleted in the same transaction).
CREATE TABLE otk_pool (
    id          BLOB PRIMARY KEY,
    owner       TEXT NOT NULL,
    key         BLOB NOT NULL,
    key_id      INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX otk_pool_owner ON otk_pool (owner, expires_at);
ALTER TABLE outbox ADD COLUMN forward_secret INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inbox ADD COLUMN forward_secret INTEGER NOT NULL DEFAULT 0;
"#,
        ),
        M::up(
            r#"
-- Forward secrecy policies. A message whose policy requires it waits ('waiting') for one of its
-- recipient's one-time keys. payload: the message itself (CBOR), sealed at rest under key_id like
-- the envelope, kept while a message is waiting or is sealed to a one-time key and not yet
-- delivered (so it can be sealed again if the recipient lost that key); NULL otherwise.
-- fs_policy: the policy the message was sent with. SQLite cannot change a CHECK constraint, so
-- the table is rebuilt (rowids kept, so the order of the outbox stays).
CREATE TABLE outbox_new (
    id              TEXT PRIMARY KEY,
    peer_id         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'waiting', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    delivered_at    INTEGER,
    size            INTEGER NOT NULL,
    envelope        BLOB,
    key_id          INTEGER,
    forward_secret  INTEGER NOT NULL DEFAULT 0,
    payload         BLOB,
    fs_policy       TEXT NOT NULL DEFAULT 'off' CHECK (fs_policy IN ('off', 'prefer', 'require'))
);
INSERT INTO outbox_new (rowid, id, peer_id, created_at, state, attempts, next_attempt_at,
                        last_error, delivered_at, size, envelope, key_id, forward_secret)
    SELECT rowid, id, peer_id, created_at, state, attempts, next_attempt_at, last_error,
           delivered_at, size, envelope, key_id, forward_secret FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_age ON outbox (state, created_at);
CREATE INDEX outbox_peer_due ON outbox (state, peer_id, next_attempt_at);
-- A contact's own forward secrecy policy; NULL: delivery.forward_secrecy.
ALTER TABLE contacts ADD COLUMN forward_secrecy TEXT CHECK (forward_secrecy IN ('off', 'prefer', 'require'));
"#,
        ),
        M::up(
            r#"
-- The sent history: what the owner sent, readable on this side. The id is the outbox row's (which
-- says how delivery goes); subject and body are sealed under key_id (domains sent.subject and
-- sent); redacted_at: when its text was scrubbed (body empty, subject NULL); seq: from the inbox's
-- counter, so that the search index follows both with one high-water mark.
CREATE TABLE sent (
    id          TEXT PRIMARY KEY,
    peer_id     TEXT NOT NULL,
    sent_at     INTEGER NOT NULL,
    subject     BLOB,
    body        BLOB NOT NULL,
    key_id      INTEGER NOT NULL,
    redacted_at INTEGER,
    seq         INTEGER NOT NULL UNIQUE
);
CREATE INDEX sent_at ON sent (sent_at);
CREATE INDEX sent_peer ON sent (peer_id, sent_at);
"#,
        ),
        M::up(
            r#"
-- The id of the one-time key a queued message's envelope is sealed to (NULL: none, or a row
-- sealed before this column): what the node lists as held when it asks the recipient for more,
-- without opening every envelope. The id travels in clear in the envelope, as otk_pool keeps it.
ALTER TABLE outbox ADD COLUMN otk_id BLOB;
"#,
        ),
    ])
});

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::MIGRATIONS
            .validate()
            .expect("migrations apply to an empty database");
    }

    #[test]
    fn latest_is_the_last_migration() {
        let mut conn = rusqlite::Connection::open_in_memory().expect("memory db");
        super::MIGRATIONS.to_latest(&mut conn).expect("migrate");
        let v: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(v, super::LATEST);
    }
}
