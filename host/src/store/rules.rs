//! Built-in rules and labels: sender → label rules, and applying rule actions to messages.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::{Db, StoreError};
use crate::inbox::rules::{Action, Pipeline, SimpleRule};
use crate::plugins::RuleMessage;

/// A rule, for `pigeon inbox rules list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    /// Rule id (for `rules rm`).
    pub id: i64,
    /// The sender's contact name, or PeerId if the contact was removed.
    pub from: String,
    /// The sender's PeerId.
    pub from_peer_id: String,
    /// The label it adds.
    pub label: String,
}

/// What `rules apply` did, or would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulesApplied {
    /// Whether nothing was changed (`--dry-run`).
    pub dry_run: bool,
    /// How many messages it changed (or would change).
    pub changed: u64,
    /// The first of those changes, at most [`RulesApplied::MAX_LISTED`].
    pub changes: Vec<RuleChange>,
}

impl RulesApplied {
    /// Most changes one answer lists; `changed` counts them all.
    pub const MAX_LISTED: usize = 1000;
}

/// What `rules apply` does (or would do) to one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleChange {
    /// Message id.
    pub id: String,
    /// Sender (contact name or PeerId).
    pub from: String,
    /// The actions.
    pub actions: Vec<Action>,
}

/// Applies `actions` to message `id` on `conn` (inside the caller's transaction, if any).
pub(super) fn apply_actions(
    conn: &Connection,
    id: &str,
    actions: &[Action],
) -> Result<(), StoreError> {
    for action in actions {
        match action {
            Action::AddLabel(l) => {
                // A message deleted meanwhile (during `rules apply`) takes no label, and is no error.
                conn.execute(
                    "INSERT OR IGNORE INTO labels (message_id, label)
                     SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM inbox WHERE id = ?1)",
                    params![id, l],
                )?;
            }
            Action::RemoveLabel(l) => {
                conn.execute(
                    "DELETE FROM labels WHERE message_id = ?1 AND label = ?2",
                    params![id, l],
                )?;
            }
            Action::MarkRead => {
                conn.execute("UPDATE inbox SET read = 1 WHERE id = ?1", [id])?;
            }
            Action::Archive => {
                conn.execute("UPDATE inbox SET archived = 1 WHERE id = ?1", [id])?;
            }
        }
    }
    Ok(())
}

impl Db {
    /// Adds a rule: messages from `from_peer` get `label`. Returns its id.
    pub fn add_rule(&mut self, from_peer: &str, label: &str) -> Result<i64, StoreError> {
        let added = self.conn.execute(
            "INSERT OR IGNORE INTO rules (from_peer, label) VALUES (?1, ?2)",
            params![from_peer, label],
        )?;
        if added == 0 {
            return Err(StoreError::Conflict(format!(
                "that rule exists already (label {label:?})"
            )));
        }
        Ok(self.conn.last_insert_rowid())
    }

    /// Removes rule `id`.
    pub fn remove_rule(&mut self, id: i64) -> Result<(), StoreError> {
        if self.conn.execute("DELETE FROM rules WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::NotFound {
                what: "rule",
                name: id.to_string(),
            });
        }
        Ok(())
    }

    /// Every rule, in the order they run.
    pub fn rules(&self) -> Result<Vec<RuleView>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.id, COALESCE(c.name, r.from_peer), r.from_peer, r.label
             FROM rules r LEFT JOIN contacts c ON c.peer_id = r.from_peer ORDER BY r.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RuleView {
                id: r.get(0)?,
                from: r.get(1)?,
                from_peer_id: r.get(2)?,
                label: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The rules pipeline as it stands.
    pub fn pipeline(&self) -> Result<Pipeline, StoreError> {
        Ok(Pipeline::new(
            self.rules()?
                .into_iter()
                .map(|r| SimpleRule {
                    id: r.id,
                    from_peer: r.from_peer_id,
                    label: r.label,
                })
                .collect(),
        ))
    }

    /// Adds `label` to the message `id` (or unique prefix); returns the full id.
    pub fn add_label(&mut self, id: &str, label: &str) -> Result<String, StoreError> {
        let id = self.resolve_id(id)?;
        apply_actions(&self.conn, &id, &[Action::AddLabel(label.to_owned())])?;
        self.refresh_states(&[&id])?;
        Ok(id)
    }

    /// Removes `label` from the message `id` (or unique prefix); returns the full id.
    pub fn remove_label(&mut self, id: &str, label: &str) -> Result<String, StoreError> {
        let id = self.resolve_id(id)?;
        apply_actions(&self.conn, &id, &[Action::RemoveLabel(label.to_owned())])?;
        self.refresh_states(&[&id])?;
        Ok(id)
    }

    /// Runs every rule over every message in the inbox; applies the changes unless `dry_run`.
    /// Up to `limit` inbox messages after `after` (a rowid, 0 to start), oldest first, with what
    /// the rules pipeline needs to see of them. `rules apply` walks the inbox with it page by page,
    /// so memory stays bounded whatever the inbox holds.
    pub fn rule_candidates(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<RuleCandidate>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT i.rowid, i.id, i.sender_seal, i.sender, i.sent_at,
                    i.subject, i.body, i.key_id, i.read, i.archived, i.redacted_at
             FROM inbox i
             WHERE i.rowid > ?1 ORDER BY i.rowid LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![after, limit])?;
        let mut out = Vec::new();
        let mut names = super::inbox::Names::default();
        while let Some(r) = rows.next()? {
            let id: String = r.get(1)?;
            let key_id: u32 = r.get(7)?;
            let sender = self.sender_of(&id, key_id, r.get(3)?, r.get(2)?)?;
            let contact = names.of(self, &sender)?;
            let redacted = r.get::<_, Option<i64>>(10)?.is_some();
            let body = self.body_of(&id, key_id, &r.get::<_, Vec<u8>>(6)?, redacted)?;
            let subject = self.open_subject(&id, key_id, r.get(5)?)?;
            out.push(RuleCandidate {
                rowid: r.get(0)?,
                from: contact.clone().unwrap_or_else(|| sender.to_string()),
                read: r.get(8)?,
                archived: r.get(9)?,
                message: RuleMessage {
                    labels: self.labels_of(&id)?,
                    attachments: self
                        .attachment_views(&id)?
                        .into_iter()
                        .map(|a| a.name)
                        .collect(),
                    sender: sender.to_string(),
                    contact,
                    sent_at_ms: r.get::<_, i64>(4)? as u64,
                    subject: subject.unwrap_or_default(),
                    body,
                    id,
                },
            });
        }
        Ok(out)
    }

    /// Applies `changes` in one transaction.
    pub fn apply_changes(&mut self, changes: &[RuleChange]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for change in changes {
            apply_actions(&tx, &change.id, &change.actions)?;
        }
        tx.commit()?;
        let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
        self.refresh_states(&ids)
    }
}

/// An inbox message as `rules apply` gives it to the pipeline.
#[derive(Debug, Clone)]
pub struct RuleCandidate {
    /// Where the next page starts.
    pub rowid: i64,
    /// The sender's contact name, or PeerId.
    pub from: String,
    /// Whether it is marked read (so `mark-read` would change nothing).
    pub read: bool,
    /// Whether it is archived.
    pub archived: bool,
    /// What the rules see.
    pub message: RuleMessage,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_db;

    #[test]
    fn a_change_for_a_message_that_is_gone_is_no_error_and_leaves_nothing() {
        let (_dir, mut db, _keys) = temp_db();
        let change = RuleChange {
            id: "no-such-message".into(),
            from: "alice".into(),
            actions: vec![Action::AddLabel("x".into()), Action::MarkRead],
        };
        db.apply_changes(&[change]).expect("applies");
        assert_eq!(
            db.labels_of("no-such-message").expect("labels"),
            Vec::<String>::new()
        );
    }
}
