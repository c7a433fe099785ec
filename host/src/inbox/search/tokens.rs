//! Words as the index and the query language both see them.
//!
//! Unicode word boundaries (UAX #29: `don't` and `3.14` stay whole, each CJK ideograph is a word),
//! only the pieces that hold a letter or a digit, compatibility-decomposed (NFKD, so `ﬁ` is `fi`
//! and a full-width `Ａ` is `A`), combining marks dropped (so `café` is `cafe`), lower-cased. The
//! index, the query parser and the snippets all call [`words`], so what one folds the others fold
//! the same way.

use unicode_normalization::char::{decompose_compatible, is_combining_mark};
use unicode_segmentation::UnicodeSegmentation;

/// Longer words are left out of the index (a base64 blob is not something one searches for, and
/// tantivy refuses terms over 64 KiB).
pub const MAX_WORD_BYTES: usize = 100;

/// One word of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// Byte offset of its first character in the text.
    pub start: usize,
    /// Byte offset just past it.
    pub end: usize,
    /// Its folded form, as indexed.
    pub text: String,
}

/// The words of `text`, in order, folded.
pub fn words(text: &str) -> impl Iterator<Item = Word> + '_ {
    let mut spans = Vec::new();
    pieces(text, |start, end| spans.push((start, end)));
    spans.into_iter().filter_map(move |(start, end)| {
        let mut folded = String::with_capacity(end - start);
        fold_into(&text[start..end], &mut folded);
        (!folded.is_empty() && folded.len() <= MAX_WORD_BYTES).then_some(Word {
            start,
            end,
            text: folded,
        })
    })
}

/// Calls `each(start, end)` with the byte span of every UAX #29 word of `text` that holds a
/// letter or a digit, in order.
fn pieces(text: &str, mut each: impl FnMut(usize, usize)) {
    if latin::covers(text) {
        latin::pieces(text, each);
        return;
    }
    for (start, piece) in text.split_word_bound_indices() {
        if piece.chars().any(char::is_alphanumeric) {
            each(start, start + piece.len());
        }
    }
}

/// `text` decomposed, without combining marks, lower-cased.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    fold_into(text, &mut out);
    out
}

/// [`fold`], appended to `out`. Per character: its compatibility decomposition (NFKD's canonical
/// reordering only moves combining marks, which are dropped), marks left out, lower-cased.
fn fold_into(text: &str, out: &mut String) {
    if text.is_ascii() {
        // Nothing to decompose: the common case, ten times cheaper.
        let from = out.len();
        out.push_str(text);
        out[from..].make_ascii_lowercase();
        return;
    }
    for c in text.chars() {
        decompose_compatible(c, |d| {
            if !is_combining_mark(d) {
                out.extend(d.to_lowercase());
            }
        });
    }
}

/// Word boundaries for text in ASCII and the Latin letters of U+00C0..U+024F (most of what
/// people write in European languages), by the rules of UAX #29 that these characters can meet,
/// without the general tables: several times faster. Any other character sends the whole text to
/// `unicode-segmentation`; the tests check both give the same words.
mod latin {
    /// What UAX #29 calls a character, for the characters this covers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Class {
        /// ALetter.
        Letter,
        /// Numeric.
        Digit,
        /// ExtendNumLet (`_`).
        Joiner,
        /// MidLetter (`:`).
        MidLetter,
        /// MidNumLet and Single_Quote (`.`, `'`).
        MidNumLet,
        /// MidNum (`,`, `;`).
        MidNum,
        /// Everything else: a boundary on both sides.
        Other,
    }

    fn class(c: char) -> Option<Class> {
        Some(match c {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Digit,
            '_' => Class::Joiner,
            ':' => Class::MidLetter,
            '.' | '\'' => Class::MidNumLet,
            ',' | ';' => Class::MidNum,
            '\0'..='\x7f' => Class::Other,
            '\u{c0}'..='\u{24f}' if c != '\u{d7}' && c != '\u{f7}' => Class::Letter,
            _ => return None,
        })
    }

    /// Whether every character of `text` is one this module knows.
    pub(super) fn covers(text: &str) -> bool {
        text.is_ascii() || text.chars().all(|c| class(c).is_some())
    }

    /// The spans of the words of `text` (which [`covers`]) that hold a letter or a digit.
    pub(super) fn pieces(text: &str, mut each: impl FnMut(usize, usize)) {
        let chars: Vec<(usize, Class)> = text
            .char_indices()
            .map(|(at, c)| (at, class(c).unwrap_or(Class::Other)))
            .collect();
        let end_of = |i: usize| chars.get(i + 1).map_or(text.len(), |&(at, _)| at);
        let class_at = |i: usize| chars.get(i).map(|&(_, c)| c);
        let wordish = |c: Class| matches!(c, Class::Letter | Class::Digit | Class::Joiner);
        let mut i = 0;
        while i < chars.len() {
            let first = chars[i].1;
            if !wordish(first) {
                i += 1;
                continue;
            }
            let start = i;
            let mut alnum = first != Class::Joiner;
            // Letters, digits and `_` never break between them (WB5, WB8-10, WB13a-b); a
            // middle character joins two letters (WB6-7) or two digits (WB11-12).
            while let Some(next) = class_at(i + 1) {
                let here = chars[i].1;
                if wordish(next) {
                    alnum |= next != Class::Joiner;
                    i += 1;
                    continue;
                }
                let after = class_at(i + 2);
                let joins = match (here, next, after) {
                    (Class::Letter, Class::MidLetter | Class::MidNumLet, Some(Class::Letter)) => {
                        true
                    }
                    (Class::Digit, Class::MidNum | Class::MidNumLet, Some(Class::Digit)) => true,
                    _ => false,
                };
                if !joins {
                    break;
                }
                i += 2;
            }
            if alnum {
                each(chars[start].0, end_of(i));
            }
            i += 1;
        }
    }
}

/// The tantivy tokenizer that indexes [`words`]. It keeps its tokens (and their strings) from
/// one text to the next.
#[derive(Debug, Clone, Default)]
pub struct Tokenizer {
    tokens: Vec<tantivy::tokenizer::Token>,
}

/// Name under which [`Tokenizer`] is registered with the index.
pub const NAME: &str = "pigeon";

/// The tokens of one text, handed out one by one.
pub struct Stream<'a> {
    tokens: &'a mut [tantivy::tokenizer::Token],
    next: usize,
}

impl tantivy::tokenizer::Tokenizer for Tokenizer {
    type TokenStream<'a> = Stream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Stream<'a> {
        let tokens = &mut self.tokens;
        let mut n = 0;
        pieces(text, |start, end| {
            if tokens.len() == n {
                tokens.push(tantivy::tokenizer::Token::default());
            }
            let token = &mut tokens[n];
            token.text.clear();
            fold_into(&text[start..end], &mut token.text);
            if token.text.is_empty() || token.text.len() > MAX_WORD_BYTES {
                return;
            }
            token.offset_from = start;
            token.offset_to = end;
            token.position = n;
            token.position_length = 1;
            n += 1;
        });
        Stream {
            tokens: &mut tokens[..n],
            next: 0,
        }
    }
}

impl tantivy::tokenizer::TokenStream for Stream<'_> {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }

    fn token(&self) -> &tantivy::tokenizer::Token {
        &self.tokens[self
            .next
            .saturating_sub(1)
            .min(self.tokens.len().saturating_sub(1))]
    }

    fn token_mut(&mut self) -> &mut tantivy::tokenizer::Token {
        let i = self
            .next
            .saturating_sub(1)
            .min(self.tokens.len().saturating_sub(1));
        &mut self.tokens[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        words(s).map(|w| w.text).collect()
    }

    #[test]
    fn splits_folds_and_lowercases() {
        assert_eq!(
            texts("Café au LAIT, s'il vous plaît!"),
            ["cafe", "au", "lait", "s'il", "vous", "plait"]
        );
        assert_eq!(texts("ﬁne Ａbc naïve Ærø"), ["fine", "abc", "naive", "ærø"]);
        assert_eq!(texts("e-mail 3.14 -- ..."), ["e", "mail", "3.14"]);
        assert_eq!(texts("東京タワー"), ["東", "京", "タワー"]);
        assert_eq!(texts(""), Vec::<String>::new());
        let long = "x".repeat(MAX_WORD_BYTES + 1);
        assert_eq!(texts(&format!("a {long} b")), ["a", "b"]);
    }

    /// The spans `unicode-segmentation` gives, which the Latin path must equal.
    fn reference_pieces(text: &str) -> Vec<(usize, usize)> {
        text.split_word_bound_indices()
            .filter(|(_, p)| p.chars().any(char::is_alphanumeric))
            .map(|(at, p)| (at, at + p.len()))
            .collect()
    }

    #[test]
    fn the_latin_path_splits_as_uax29_does() {
        use rand::{Rng, SeedableRng};
        let latin: Vec<char> = ('\u{c0}'..='\u{24f}')
            .filter(|c| !matches!(c, '\u{d7}' | '\u{f7}'))
            .collect();
        let tricky = ".,;:'_ \n\r\t\"-!?";
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        for case in 0..20_000 {
            let len = rng.gen_range(0..24);
            let text: String = (0..len)
                .map(|_| match rng.gen_range(0..10) {
                    0..=3 => rng.gen_range('a'..='e'),
                    4 => rng.gen_range('0'..='3'),
                    5..=6 => tricky
                        .chars()
                        .nth(rng.gen_range(0..tricky.chars().count()))
                        .unwrap_or(' '),
                    7 => char::from(rng.gen_range(0u8..0x80)),
                    _ => latin[rng.gen_range(0..latin.len())],
                })
                .collect();
            assert!(latin::covers(&text), "case {case}: {text:?}");
            let mut fast = Vec::new();
            latin::pieces(&text, |s, e| fast.push((s, e)));
            assert_eq!(fast, reference_pieces(&text), "case {case}: {text:?}");
        }
        for text in ["don't", "e.g.", "a:b", "3.14", "1,000;2", "a_.b", "__", "_a", "a..b", "x'"] {
            let mut fast = Vec::new();
            latin::pieces(text, |s, e| fast.push((s, e)));
            assert_eq!(fast, reference_pieces(text), "{text:?}");
        }
        assert!(!latin::covers("naïve ×"));
        assert!(!latin::covers("東京"));
    }

    #[test]
    fn folding_matches_nfkd_without_marks() {
        use unicode_normalization::UnicodeNormalization;
        let reference = |s: &str| -> String {
            s.nfkd()
                .filter(|c| !is_combining_mark(*c))
                .flat_map(char::to_lowercase)
                .collect()
        };
        for c in (0..0x3_0000).filter_map(char::from_u32) {
            let s = c.to_string();
            assert_eq!(fold(&s), reference(&s), "U+{:04X}", c as u32);
        }
        for s in ["e\u{301}\u{327}x", "A\u{30a}\u{323}", "\u{1e69}\u{323}", "ǅ ﬃ Ⅻ"] {
            assert_eq!(fold(s), reference(s), "{s:?}");
        }
    }

    #[test]
    fn offsets_point_at_the_original_text() {
        let text = "Grüße, café";
        let found: Vec<_> = words(text).map(|w| &text[w.start..w.end]).collect();
        assert_eq!(found, ["Grüße", "café"]);
    }

    #[test]
    fn the_tantivy_stream_yields_every_word_once() {
        use tantivy::tokenizer::{TokenStream, Tokenizer as _};
        let mut t = Tokenizer::default();
        let mut stream = t.token_stream("Hello wörld");
        let mut seen = Vec::new();
        while stream.advance() {
            seen.push((stream.token().text.clone(), stream.token().position));
        }
        assert_eq!(seen, [("hello".to_owned(), 0), ("world".to_owned(), 1)]);
    }
}
