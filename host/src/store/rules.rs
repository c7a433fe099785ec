//! Built-in rules and labels: sender → label rules, and applying rule actions to messages.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::{Db, StoreError};
use crate::inbox::rules::{Action, Pipeline, RuleInput, SimpleRule};

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
                conn.execute(
                    "INSERT OR IGNORE INTO labels (message_id, label) VALUES (?1, ?2)",
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
        Ok(id)
    }

    /// Removes `label` from the message `id` (or unique prefix); returns the full id.
    pub fn remove_label(&mut self, id: &str, label: &str) -> Result<String, StoreError> {
        let id = self.resolve_id(id)?;
        apply_actions(&self.conn, &id, &[Action::RemoveLabel(label.to_owned())])?;
        Ok(id)
    }

    /// Runs every rule over every message in the inbox; applies the changes unless `dry_run`.
    pub fn apply_rules(&mut self, dry_run: bool) -> Result<Vec<RuleChange>, StoreError> {
        let pipeline = self.pipeline()?;
        let mut stmt = self.conn.prepare(
            "SELECT i.id, COALESCE(c.name, i.sender), i.sender, c.name FROM inbox i
             LEFT JOIN contacts c ON c.peer_id = i.sender ORDER BY i.received_at, i.rowid",
        )?;
        let rows: Vec<(String, String, String, Option<String>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        let mut changes = Vec::new();
        for (id, from, sender, contact) in rows {
            let labels = self.labels_of(&id)?;
            let input = RuleInput {
                sender: &sender,
                contact: contact.as_deref(),
                labels: &labels,
            };
            let actions = pipeline.run(&input);
            if !actions.is_empty() {
                changes.push(RuleChange { id, from, actions });
            }
        }
        if !dry_run {
            let tx = self.conn.transaction()?;
            for change in &changes {
                apply_actions(&tx, &change.id, &change.actions)?;
            }
            tx.commit()?;
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MessageId;
    use crate::keys::Keys;
    use crate::store::Received;
    use crate::store::test_support::temp_db;

    #[test]
    fn rules_apply_dry_run_changes_nothing_and_apply_does() {
        let (_dir, mut db, _keys) = temp_db();
        let alice = Keys::generate();
        db.add_contact("alice", &alice.address(), &[])
            .expect("contact");
        let peer = alice.peer_id();
        let m = Received {
            id: MessageId::random(),
            sender: peer,
            sent_at_ms: 1,
            subject: None,
            body: "hi".into(),
            attachments: vec![],
            actions: vec![],
        };
        db.store_received(std::slice::from_ref(&m), 2)
            .expect("store");
        let rule = db.add_rule(&peer.to_string(), "friends").expect("rule");
        assert!(matches!(
            db.add_rule(&peer.to_string(), "friends"),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(db.rules().expect("rules")[0].from, "alice");
        let planned = db.apply_rules(true).expect("dry run");
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].actions, vec![Action::AddLabel("friends".into())]);
        assert!(
            db.message(&m.id.to_string())
                .expect("message")
                .labels
                .is_empty(),
            "dry run changed a label"
        );
        db.apply_rules(false).expect("apply");
        assert_eq!(
            db.message(&m.id.to_string()).expect("message").labels,
            vec!["friends"]
        );
        assert!(
            db.apply_rules(true).expect("again").is_empty(),
            "nothing left to change"
        );
        db.remove_label(&m.id.to_string(), "friends")
            .expect("rm label");
        db.add_label(&m.id.to_string()[..6], "later")
            .expect("add label by prefix");
        assert_eq!(
            db.message(&m.id.to_string()).expect("message").labels,
            vec!["later"]
        );
        db.remove_rule(rule).expect("rm rule");
        assert!(matches!(
            db.remove_rule(rule),
            Err(StoreError::NotFound { .. })
        ));
    }
}
