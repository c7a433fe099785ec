//! The inbox search language, close to notmuch's search terms, parsed into a [`Query`] tree.
//!
//! ```text
//! query   = or
//! or      = and ("OR" and)*
//! and     = unary (["AND"] unary)*          adjacent terms must all match
//! unary   = ("NOT" | "-") unary | atom
//! atom    = "(" or ")" | "\"phrase\"" | word | word"*" | filter
//! filter  = from:CONTACT | label:L | subject:WORD | has:attachment | attachment:NAME
//!         | is:unread | is:read | is:archived | after:DATE | before:DATE
//! ```
//!
//! `AND`, `OR` and `NOT` are operators only in capitals, as in notmuch; a filter's value may be
//! quoted (`from:"Alice Smith"`). Dates are `YYYY-MM-DD` (that day, UTC) or RFC 3339. A malformed
//! query is a [`QueryError`] that says where it broke; it never matches nothing silently.

use std::fmt;

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Every part matches.
    And(Vec<Query>),
    /// Any part matches.
    Or(Vec<Query>),
    /// The part does not match.
    Not(Box<Query>),
    /// A word of the subject or body (folded: lower-cased, accents off).
    Word(String),
    /// Words starting with this.
    Prefix(String),
    /// These words, in this order.
    Phrase(Vec<String>),
    /// A filter on what is kept in clear or on a field.
    Filter(Filter),
}

/// A filter term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `from:CONTACT`: the contact's name or the sender's PeerId.
    From(String),
    /// `to:CONTACT`: a message sent to the contact (its name or PeerId).
    To(String),
    /// `in:inbox`, `in:sent`, `in:all`: which messages to look among (received only, unless a
    /// query says `in:` or `to:`).
    In(Folder),
    /// `label:L`.
    Label(String),
    /// `subject:WORD`: a word of the subject only.
    Subject(String),
    /// `has:attachment`.
    HasAttachment,
    /// `attachment:NAME`: a word of an attachment's name.
    Attachment(String),
    /// `is:unread`, `is:read`, `is:archived`.
    Is(State),
    /// `after:DATE`: received at or after, in ms since the epoch.
    After(u64),
    /// `before:DATE`: received before, in ms since the epoch.
    Before(u64),
}

/// Where `in:` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Folder {
    /// Received messages.
    Inbox,
    /// Sent messages.
    Sent,
    /// Both.
    All,
}

/// A message state for `is:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not read yet.
    Unread,
    /// Read.
    Read,
    /// Archived.
    Archived,
}

/// Why a query does not parse, and where (a character offset, counted from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad query: {what} at {at}")]
pub struct QueryError {
    /// What is wrong.
    pub what: String,
    /// Where, in characters from 1.
    pub at: usize,
}

/// Parses `text`.
pub fn parse(text: &str) -> Result<Query, QueryError> {
    let tokens = lex(text)?;
    let end = text.chars().count() + 1;
    let mut p = Parser {
        tokens,
        pos: 0,
        end,
    };
    if p.tokens.is_empty() {
        return Err(QueryError {
            what: "an empty query".into(),
            at: 1,
        });
    }
    let query = p.or()?;
    match p.tokens.get(p.pos) {
        None => Ok(query),
        Some(t) if t.kind == Kind::Close => Err(t.error("unbalanced )")),
        Some(t) => Err(t.error("unexpected input")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Open,
    Close,
    And,
    Or,
    Not,
    Minus,
    Phrase(String),
    Word(String),
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// Character offset from 1.
    at: usize,
}

impl Token {
    fn error(&self, what: &str) -> QueryError {
        QueryError {
            what: what.to_owned(),
            at: self.at,
        }
    }
}

fn lex(text: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let kind = match c {
            '(' => {
                i += 1;
                Kind::Open
            }
            ')' => {
                i += 1;
                Kind::Close
            }
            '-' if tokens_may_start(&chars, i + 1) => {
                i += 1;
                Kind::Minus
            }
            '"' => {
                let (phrase, next) = quoted(&chars, i)?;
                i = next;
                Kind::Phrase(phrase)
            }
            _ => {
                let mut word = String::new();
                while i < chars.len() && !chars[i].is_whitespace() && !matches!(chars[i], '(' | ')')
                {
                    if chars[i] == '"' {
                        // A filter's quoted value: `from:"Alice Smith"`.
                        let (value, next) = quoted(&chars, i)?;
                        word.push_str(&value);
                        i = next;
                        continue;
                    }
                    word.push(chars[i]);
                    i += 1;
                }
                match word.as_str() {
                    "AND" => Kind::And,
                    "OR" => Kind::Or,
                    "NOT" => Kind::Not,
                    _ => Kind::Word(word),
                }
            }
        };
        tokens.push(Token { kind, at });
    }
    Ok(tokens)
}

/// Whether something that can start a term follows at `i` (so `-` is a negation, not a word).
fn tokens_may_start(chars: &[char], i: usize) -> bool {
    chars.get(i).is_some_and(|c| !c.is_whitespace())
}

/// The text of the quoted string opening at `start`, and the index after its closing quote.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), QueryError> {
    let mut i = start + 1;
    let mut text = String::new();
    while i < chars.len() && chars[i] != '"' {
        text.push(chars[i]);
        i += 1;
    }
    if i == chars.len() {
        return Err(QueryError {
            what: "unclosed \"".into(),
            at: start + 1,
        });
    }
    Ok((text, i + 1))
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Where the input ends, for "expected more" errors.
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Kind> {
        self.tokens.get(self.pos).map(|t| &t.kind)
    }

    fn end_error(&self, what: &str) -> QueryError {
        QueryError {
            what: what.to_owned(),
            at: self.end,
        }
    }

    fn or(&mut self) -> Result<Query, QueryError> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Kind::Or) {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(one_or(parts, Query::Or))
    }

    fn and(&mut self) -> Result<Query, QueryError> {
        let mut parts = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Kind::And) => {
                    self.pos += 1;
                    parts.push(self.unary()?);
                }
                None | Some(Kind::Or | Kind::Close) => break,
                Some(_) => parts.push(self.unary()?),
            }
        }
        Ok(one_or(parts, Query::And))
    }

    fn unary(&mut self) -> Result<Query, QueryError> {
        match self.peek() {
            Some(Kind::Not | Kind::Minus) => {
                self.pos += 1;
                Ok(Query::Not(Box::new(self.unary()?)))
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Result<Query, QueryError> {
        let Some(token) = self.tokens.get(self.pos).cloned() else {
            return Err(self.end_error("a term expected"));
        };
        self.pos += 1;
        match &token.kind {
            Kind::Open => {
                if self.peek() == Some(&Kind::Close) {
                    return Err(token.error("empty ( )"));
                }
                let inner = self.or()?;
                match self.peek() {
                    Some(Kind::Close) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(token.error("unbalanced (")),
                }
            }
            Kind::Phrase(text) => {
                let words = words(text);
                match words.len() {
                    0 => Err(token.error("an empty phrase")),
                    1 => Ok(Query::Word(words.into_iter().next().unwrap_or_default())),
                    _ => Ok(Query::Phrase(words)),
                }
            }
            Kind::Word(word) => term(word, &token),
            Kind::Close => Err(token.error("unbalanced )")),
            Kind::And | Kind::Or | Kind::Not | Kind::Minus => Err(token.error("a term expected")),
        }
    }
}

fn one_or(mut parts: Vec<Query>, many: fn(Vec<Query>) -> Query) -> Query {
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        many(parts)
    }
}

/// A bare word, a prefix or a filter.
fn term(word: &str, token: &Token) -> Result<Query, QueryError> {
    if let Some((key, value)) = word.split_once(':') {
        return filter(key, value, token).map(Query::Filter);
    }
    if let Some(stem) = word.strip_suffix('*') {
        let stem = words(stem);
        return match stem.as_slice() {
            [one] => Ok(Query::Prefix(one.clone())),
            _ => Err(token.error("a prefix is one word followed by *")),
        };
    }
    let mut found = words(word);
    match found.len() {
        0 => Err(token.error("no word in this term")),
        1 => Ok(Query::Word(found.remove(0))),
        // `e-mail` or `don't`: the index splits them too, so they must follow each other.
        _ => Ok(Query::Phrase(found)),
    }
}

fn filter(key: &str, value: &str, token: &Token) -> Result<Filter, QueryError> {
    let need = |what: &str| {
        if value.is_empty() {
            Err(token.error(&format!("{key}: needs {what}")))
        } else {
            Ok(value.to_owned())
        }
    };
    Ok(match key {
        "from" => Filter::From(need("a contact")?),
        "to" => Filter::To(need("a contact")?),
        "in" => Filter::In(match value {
            "inbox" => Folder::Inbox,
            "sent" => Folder::Sent,
            "all" => Folder::All,
            _ => return Err(token.error("in: takes inbox, sent or all")),
        }),
        "label" => Filter::Label(need("a label")?),
        "subject" => Filter::Subject(single_word(&need("a word")?, token)?),
        "attachment" => Filter::Attachment(single_word(&need("a name")?, token)?),
        "has" if value == "attachment" => Filter::HasAttachment,
        "has" => return Err(token.error("has: takes attachment")),
        "is" => Filter::Is(match value {
            "unread" => State::Unread,
            "read" => State::Read,
            "archived" => State::Archived,
            _ => return Err(token.error("is: takes unread, read or archived")),
        }),
        "after" => Filter::After(date(value, token)?),
        "before" => Filter::Before(date(value, token)?),
        _ => {
            return Err(token.error(&format!(
                "unknown filter {key}: (from, to, in, label, subject, has, attachment, is, after, before)"
            )));
        }
    })
}

fn single_word(value: &str, token: &Token) -> Result<String, QueryError> {
    let mut found = words(value);
    match found.len() {
        1 => Ok(found.remove(0)),
        _ => Err(token.error("this filter takes one word")),
    }
}

/// `YYYY-MM-DD` (its start, UTC) or RFC 3339, in ms since the epoch.
fn date(value: &str, token: &Token) -> Result<u64, QueryError> {
    let text = if value.len() == 10 {
        format!("{value}T00:00:00Z")
    } else {
        value.to_owned()
    };
    let bad = || token.error("a date is YYYY-MM-DD or RFC 3339");
    let t = humantime::parse_rfc3339(&text).map_err(|_| bad())?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis();
    u64::try_from(ms).map_err(|_| bad())
}

/// The words of `text` as the index sees them ([`super::search::tokens`]: Unicode word
/// boundaries, accents folded, lower-cased).
pub fn words(text: &str) -> Vec<String> {
    super::search::tokens::words(text).map(|w| w.text).collect()
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Unread => "unread",
            State::Read => "read",
            State::Archived => "archived",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Query {
        Query::Word(s.into())
    }

    #[test]
    fn words_operators_and_precedence() {
        assert_eq!(parse("invoice").expect("parse"), w("invoice"));
        assert_eq!(
            parse("Invoice march").expect("parse"),
            Query::And(vec![w("invoice"), w("march")])
        );
        // AND binds tighter than OR; parentheses group.
        assert_eq!(
            parse("a b OR c").expect("parse"),
            Query::Or(vec![Query::And(vec![w("a"), w("b")]), w("c")])
        );
        assert_eq!(
            parse("a AND (b OR c)").expect("parse"),
            Query::And(vec![w("a"), Query::Or(vec![w("b"), w("c")])])
        );
        assert_eq!(
            parse("NOT a -b").expect("parse"),
            Query::And(vec![
                Query::Not(Box::new(w("a"))),
                Query::Not(Box::new(w("b")))
            ])
        );
        // Operators only in capitals, as in notmuch.
        assert_eq!(
            parse("this or that").expect("parse"),
            Query::And(vec![w("this"), w("or"), w("that")])
        );
    }

    #[test]
    fn phrases_prefixes_and_filters() {
        assert_eq!(
            parse("\"Quarterly Report\"").expect("parse"),
            Query::Phrase(vec!["quarterly".into(), "report".into()])
        );
        assert_eq!(parse("inv*").expect("parse"), Query::Prefix("inv".into()));
        // Folded as the index folds them.
        assert_eq!(parse("Café").expect("parse"), w("cafe"));
        assert_eq!(
            parse("label:work is:unread").expect("parse"),
            Query::And(vec![
                Query::Filter(Filter::Label("work".into())),
                Query::Filter(Filter::Is(State::Unread))
            ])
        );
        assert_eq!(
            parse("from:\"Alice Smith\" has:attachment attachment:report subject:Budget")
                .expect("parse"),
            Query::And(vec![
                Query::Filter(Filter::From("Alice Smith".into())),
                Query::Filter(Filter::HasAttachment),
                Query::Filter(Filter::Attachment("report".into())),
                Query::Filter(Filter::Subject("budget".into())),
            ])
        );
        assert_eq!(
            parse("after:2026-01-02 before:2026-01-03T12:00:00Z").expect("parse"),
            Query::And(vec![
                Query::Filter(Filter::After(1_767_312_000_000)),
                Query::Filter(Filter::Before(1_767_441_600_000)),
            ])
        );
    }

    #[test]
    fn malformed_queries_say_where_they_broke() {
        for (text, what, at) in [
            ("", "an empty query", 1),
            ("a AND (b OR c", "unbalanced (", 7),
            ("a b)", "unbalanced )", 4),
            ("a OR", "a term expected", 5),
            ("NOT", "a term expected", 4),
            ("\"open phrase", "unclosed \"", 1),
            ("()", "empty ( )", 1),
            ("size:big", "unknown filter size:", 1),
            ("is:new", "is: takes unread, read or archived", 1),
            ("after:yesterday", "a date is YYYY-MM-DD or RFC 3339", 1),
            ("label:", "label: needs a label", 1),
            ("x AND OR y", "a term expected", 7),
            ("***", "a prefix is one word followed by *", 1),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.what.starts_with(what), "{text:?}: {e}");
            assert_eq!(e.at, at, "{text:?}: {e}");
        }
        assert_eq!(
            parse("a AND (b OR c").expect_err("unbalanced").to_string(),
            "bad query: unbalanced ( at 7"
        );
    }

    #[test]
    fn no_input_makes_it_panic() {
        // Bounded: every prefix of a few hostile strings, and every single character.
        let samples = [
            "a AND (b OR \"c d\" -e*) label:x is:read after:2026-01-01 )(",
            "\"\"\"((--",
        ];
        for s in samples {
            for end in s.char_indices().map(|(i, _)| i).chain([s.len()]) {
                let _ = parse(&s[..end]);
            }
        }
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let _ = parse(&c.to_string());
        }
    }
}
