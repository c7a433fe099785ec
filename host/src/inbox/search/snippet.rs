//! The piece of a hit's text around its first matched word, the matched words in `[...]`.

use super::compile::Highlights;
use super::tokens::words;

/// Characters of context before the first match.
const BEFORE: usize = 40;
/// Characters of snippet in all, about.
const LENGTH: usize = 160;

/// The snippet of a message with `subject` and `body` for `h`: around the first match in the
/// body, else in the subject, else the start of the body.
pub(super) fn snippet(subject: &str, body: &str, h: &Highlights) -> String {
    if !h.is_empty() {
        for text in [body, subject] {
            if let Some(s) = around_first(text, h) {
                return s;
            }
        }
    }
    crate::store::opening(body, LENGTH)
}

fn around_first(text: &str, h: &Highlights) -> Option<String> {
    let first = words(text).find(|w| h.marks(&w.text))?;
    let start = back_chars(text, first.start, BEFORE);
    let end = forward_chars(text, start, LENGTH);
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    let mut at = start;
    for w in words(&text[start..end]) {
        let (ws, we) = (start + w.start, start + w.end);
        if h.marks(&w.text) {
            out.push_str(&collapse(&text[at..ws]));
            out.push('[');
            out.push_str(&text[ws..we]);
            out.push(']');
            at = we;
        }
    }
    out.push_str(&collapse(&text[at..end]));
    if end < text.len() {
        out.push('…');
    }
    Some(out)
}

/// Whitespace runs (newlines included) as one space.
fn collapse(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    out
}

fn back_chars(text: &str, from: usize, n: usize) -> usize {
    text[..from]
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i)
}

fn forward_chars(text: &str, from: usize, n: usize) -> usize {
    text[from..]
        .char_indices()
        .nth(n)
        .map_or(text.len(), |(i, _)| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(words: &[&str], prefixes: &[&str]) -> Highlights {
        Highlights {
            words: words.iter().map(|s| s.to_string()).collect(),
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn marks_matches_folded_with_context() {
        assert_eq!(
            snippet("", "Meet me at the Café\non Friday", &h(&["cafe"], &[])),
            "Meet me at the [Café] on Friday"
        );
        assert_eq!(
            snippet("", "invoices and an invoice", &h(&[], &["invoic"])),
            "[invoices] and an [invoice]"
        );
        let long = format!("{} needle {}", "word ".repeat(50), "tail ".repeat(50));
        let s = snippet("", &long, &h(&["needle"], &[]));
        assert!(s.starts_with('…') && s.ends_with('…'), "{s}");
        assert!(s.contains("[needle]"), "{s}");
        assert!(s.chars().count() < LENGTH + 10, "{s}");
    }

    #[test]
    fn falls_back_to_the_subject_then_the_start() {
        assert_eq!(
            snippet("Quarterly report", "see attached", &h(&["report"], &[])),
            "Quarterly [report]"
        );
        assert_eq!(snippet("", "just text", &h(&[], &[])), "just text");
        assert_eq!(snippet("", "", &h(&["x"], &[])), "");
    }
}
