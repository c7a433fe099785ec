//! `keyword-labeler`: labels a message when its subject or body contains a configured word.
//!
//! ```toml
//! [plugins.keyword-labeler]
//! enabled = true
//! [plugins.keyword-labeler.config]
//! invoice = "finance"     # a message mentioning "invoice" gets the label "finance"
//! standup = "work"
//! ```
//!
//! Words match whole words, case-insensitively, in the subject and the body.

use std::collections::{BTreeMap, HashMap};

use pigeon_plugin_sdk::{Action, Level, Message, Rule, check_label, export_rule, log};

/// Maps a lower-cased word to the labels it gives.
pub struct KeywordLabeler {
    words: HashMap<String, Vec<String>>,
    /// Bit n is set when some configured word is n bytes long (n < 64): most words of a text
    /// are skipped on their length alone, without hashing.
    lengths: u64,
}

impl Rule for KeywordLabeler {
    type Config = BTreeMap<String, String>;

    fn new(config: Self::Config) -> Result<Self, String> {
        let mut words: HashMap<String, Vec<String>> = HashMap::new();
        for (word, label) in config {
            let word = word.trim().to_lowercase();
            // The text is split at every character that is not a letter or a digit, so a word
            // with any other character in it could never match.
            if word.is_empty() || !word.chars().all(char::is_alphanumeric) {
                return Err(format!(
                    "{word:?} is not one word: use letters and digits only"
                ));
            }
            // A label the host would drop on every match is refused up front.
            check_label(&label)?;
            words.entry(word).or_default().push(label);
        }
        if words.is_empty() {
            log(Level::Warn, "no words configured; nothing will be labelled");
        }
        let lengths = words.keys().fold(0u64, |acc, w| {
            acc | 1u64.checked_shl(w.len() as u32).unwrap_or(0)
        });
        let lengths = if words.keys().any(|w| w.len() >= 64) {
            u64::MAX
        } else {
            lengths
        };
        Ok(KeywordLabeler { words, lengths })
    }

    fn on_message(&mut self, message: &Message) -> Vec<Action> {
        // Lower-case the text once, then look every word up without allocating per word.
        let body = message.body.as_deref().unwrap_or("");
        let mut text = String::with_capacity(message.subject.len() + body.len() + 1);
        text.push_str(&message.subject);
        text.push(' ');
        text.push_str(body);
        let text = if text.is_ascii() {
            text.make_ascii_lowercase();
            text
        } else {
            text.to_lowercase()
        };
        let mut labels: Vec<&String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty() && self.lengths & (1u64 << w.len().min(63)) != 0)
            .filter_map(|w| self.words.get(w))
            .flatten()
            .collect();
        labels.sort();
        labels.dedup();
        labels
            .into_iter()
            .filter(|l| !message.labels.contains(l))
            .map(|l| Action::AddLabel(l.clone()))
            .collect()
    }
}

export_rule!(KeywordLabeler);

#[cfg(test)]
mod tests {
    use super::*;

    fn message(subject: &str, body: &str) -> Message {
        Message {
            id: "m1".into(),
            sender: "peer".into(),
            contact: Some("alice".into()),
            subject: subject.into(),
            body: Some(body.into()),
            size: body.len() as u64,
            sent_at_ms: 0,
            attachments: vec![],
            labels: vec![],
        }
    }

    fn labeler(pairs: &[(&str, &str)]) -> KeywordLabeler {
        let config = pairs
            .iter()
            .map(|(w, l)| (w.to_string(), l.to_string()))
            .collect();
        KeywordLabeler::new(config).expect("valid config")
    }

    #[test]
    fn whole_words_in_subject_or_body_case_insensitive() {
        let mut p = labeler(&[("invoice", "finance"), ("standup", "work")]);
        assert_eq!(
            p.on_message(&message("Your INVOICE", "see the standup notes")),
            vec![
                Action::AddLabel("finance".into()),
                Action::AddLabel("work".into())
            ]
        );
        assert!(p.on_message(&message("invoices", "")).is_empty());
        let mut already = message("invoice", "");
        already.labels = vec!["finance".into()];
        assert!(p.on_message(&already).is_empty());
    }

    #[test]
    fn words_that_cannot_match_and_labels_the_host_drops_are_refused() {
        let refused = |word: &str, label: &str| {
            let config = [(word.to_string(), label.to_string())].into();
            match KeywordLabeler::new(config) {
                Err(e) => e,
                Ok(_) => panic!("{word:?} = {label:?} was accepted"),
            }
        };
        assert!(refused("two words", "x").contains("not one word"));
        assert!(refused("e-mail", "x").contains("not one word"));
        assert!(refused("c++", "x").contains("not one word"));
        assert!(refused("invoice", "Finance Dept").contains("not allowed"));
        assert!(refused("invoice", "").contains("not allowed"));
        assert!(refused("invoice", &"x".repeat(65)).contains("not allowed"));
        assert!(KeywordLabeler::new([("Größe".to_string(), "de/size".to_string())].into()).is_ok());
    }
}
