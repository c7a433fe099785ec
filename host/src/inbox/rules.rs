//! The rules pipeline: what happens to a message as it arrives (and on `rules apply`).
//!
//! Built-in simple rules (sender → label, kept in SQLite) run first, then the enabled rule plugins
//! in config order (see [`crate::plugins`]). Both speak the same [`Action`] vocabulary and feed
//! one [`Effects`]. Everything here is pure: it takes a message's facts and returns actions.

use serde::{Deserialize, Serialize};

/// What a rule may do to a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", content = "label", rename_all = "snake_case")]
pub enum Action {
    /// Add a label.
    AddLabel(String),
    /// Remove a label.
    RemoveLabel(String),
    /// Mark the message read.
    MarkRead,
    /// Archive the message.
    Archive,
}

/// The facts a rule sees about a message.
#[derive(Debug, Clone, Default)]
pub struct RuleInput<'a> {
    /// Sender PeerId, as text.
    pub sender: &'a str,
    /// Sender's contact name, if any.
    pub contact: Option<&'a str>,
    /// Labels the message has now.
    pub labels: &'a [String],
}

/// A built-in rule: messages from one contact get one label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimpleRule {
    /// Rule id.
    pub id: i64,
    /// The sender's PeerId.
    pub from_peer: String,
    /// The label to add.
    pub label: String,
}

impl SimpleRule {
    fn evaluate(&self, input: &RuleInput<'_>) -> Option<Action> {
        (input.sender == self.from_peer).then(|| Action::AddLabel(self.label.clone()))
    }
}

/// The rules, in the order they run.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    simple: Vec<SimpleRule>,
}

impl Pipeline {
    /// A pipeline of the built-in rules.
    pub fn new(simple: Vec<SimpleRule>) -> Pipeline {
        Pipeline { simple }
    }

    /// Runs every rule over one message; returns the actions that change something, in order.
    pub fn run(&self, input: &RuleInput<'_>) -> Vec<Action> {
        let mut effects = Effects::new(input.labels);
        for action in self.simple.iter().filter_map(|r| r.evaluate(input)) {
            effects.apply(action);
        }
        effects.into_actions()
    }
}

/// The actions taken on one message so far, and the labels they leave it with. Built-in rules
/// and plugins feed it in turn, so each sees the labels the ones before it left, and an action
/// that changes nothing is dropped.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    labels: Vec<String>,
    actions: Vec<Action>,
}

impl Effects {
    /// Nothing done yet to a message that has `labels`.
    pub fn new(labels: &[String]) -> Effects {
        Effects {
            labels: labels.to_vec(),
            actions: Vec::new(),
        }
    }

    /// Takes `action` if it changes something; returns whether it did.
    pub fn apply(&mut self, action: Action) -> bool {
        let changes = match &action {
            Action::AddLabel(l) if !self.labels.contains(l) => {
                self.labels.push(l.clone());
                true
            }
            Action::RemoveLabel(l) if self.labels.contains(l) => {
                self.labels.retain(|x| x != l);
                true
            }
            Action::MarkRead | Action::Archive => !self.actions.contains(&action),
            _ => false,
        };
        if changes {
            self.actions.push(action);
        }
        changes
    }

    /// The labels the message has now.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The actions taken, in order.
    pub fn into_actions(self) -> Vec<Action> {
        self.actions
    }
}

/// The labels a message that had `labels` has after `actions`.
pub fn labels_after(labels: &[String], actions: &[Action]) -> Vec<String> {
    let mut effects = Effects::new(labels);
    for a in actions {
        effects.apply(a.clone());
    }
    effects.labels
}

/// Checks a label typed by a user or returned by a rule. `pigeon_plugin_sdk::check_label` is the
/// same rule on the plugin side (the SDK builds for wasm and shares no code with the host): change
/// both together.
pub fn validate_label(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "label {label:?} is not allowed: use 1-64 letters, digits, '-', '_', '.', '/' or ':'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: i64, from: &str, label: &str) -> SimpleRule {
        SimpleRule {
            id,
            from_peer: from.into(),
            label: label.into(),
        }
    }

    #[test]
    fn sender_rules_label_only_their_sender_and_skip_what_is_there() {
        let p = Pipeline::new(vec![
            rule(1, "alice", "friends"),
            rule(2, "bob", "work"),
            rule(3, "alice", "close"),
        ]);
        let from_alice = RuleInput {
            sender: "alice",
            contact: Some("alice"),
            labels: &[],
        };
        assert_eq!(
            p.run(&from_alice),
            vec![
                Action::AddLabel("friends".into()),
                Action::AddLabel("close".into())
            ]
        );
        let labelled = ["friends".to_owned()];
        let again = RuleInput {
            labels: &labelled,
            ..from_alice.clone()
        };
        assert_eq!(p.run(&again), vec![Action::AddLabel("close".into())]);
        assert!(
            p.run(&RuleInput {
                sender: "carol",
                contact: None,
                labels: &[]
            })
            .is_empty()
        );
        let dup = Pipeline::new(vec![rule(1, "alice", "x"), rule(2, "alice", "x")]);
        assert_eq!(
            dup.run(&from_alice).len(),
            1,
            "the same label twice is one change"
        );
    }

    #[test]
    fn labels_are_checked() {
        assert!(validate_label("work/urgent").is_ok());
        for bad in ["", "a b", "x,y", &"l".repeat(65)] {
            assert!(validate_label(bad).is_err(), "{bad:?}");
        }
    }
}
