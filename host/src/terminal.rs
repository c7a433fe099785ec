//! Text from peers and plugins made safe to print (CLI output and text logs): no escape sequence of
//! theirs may drive the user's terminal. JSON output needs none of this (serde escapes every control
//! character).

use crate::attachments::is_hidden_or_control;

/// `text` with every control, format or separator character shown as a visible `\u{..}` escape,
/// newlines and tabs kept (a message body keeps its lines).
pub fn shown(text: &str) -> String {
    escape(text, |c| c == '\n' || c == '\t')
}

/// [`shown`] on one line: newlines and tabs become spaces (so `cut -f` columns hold).
pub fn one_line(text: &str) -> String {
    escape(&text.replace(['\t', '\n', '\r'], " "), |_| false)
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_hidden_or_control(c) && !keep(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_escape_sequence_gets_through() {
        // Clear the screen, set the window title, hide text behind a right-to-left override.
        let hostile = "hi\u{1b}[2J\u{1b}]0;owned\u{7}\r\nline two\u{202e}txt.exe\u{9b}31m";
        let body = shown(hostile);
        assert_eq!(
            body,
            "hi\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\u{d}\nline two\\u{202e}txt.exe\\u{9b}31m"
        );
        assert!(body.chars().all(|c| c == '\n' || !is_hidden_or_control(c)));
        let line = one_line(hostile);
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        assert_eq!(
            shown("plain text, naïve café\tok"),
            "plain text, naïve café\tok"
        );
    }
}
