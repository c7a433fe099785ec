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

/// The words of `text`, in order, folded. Lazy: a caller that stops at the first match does not
/// pay for the rest of a long text.
pub fn words(text: &str) -> impl Iterator<Item = Word> + '_ {
    pieces(text).filter_map(move |(start, end)| {
        let mut folded = String::with_capacity(end - start);
        fold_into(&text[start..end], &mut folded);
        (!folded.is_empty() && folded.len() <= MAX_WORD_BYTES).then_some(Word {
            start,
            end,
            text: folded,
        })
    })
}

/// The byte spans of the UAX #29 words of `text` that hold a letter or a digit, in order.
fn pieces(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let latin = latin::covers(text).then(|| latin::Pieces::new(text));
    let general = latin.is_none().then(|| {
        text.split_word_bound_indices()
            .filter(|(_, piece)| piece.chars().any(char::is_alphanumeric))
            .map(|(start, piece)| (start, start + piece.len()))
    });
    latin
        .into_iter()
        .flatten()
        .chain(general.into_iter().flatten())
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

    /// Whether every character of `text` is ASCII or a letter of U+00C0..U+024F: in UTF-8,
    /// lead bytes C3 to C9 (without U+00D7 `×` and U+00F7 `÷`, and nothing past C9 8F).
    pub(super) fn covers(text: &str) -> bool {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                0..=0x7f => i += 1,
                0xc3 if !matches!(b.get(i + 1), Some(0x97 | 0xb7)) => i += 2,
                0xc4..=0xc8 => i += 2,
                0xc9 if b.get(i + 1).is_some_and(|&c| c <= 0x8f) => i += 2,
                _ => return false,
            }
        }
        true
    }

    /// The class and the length in bytes of the character at byte `at` of a covered text.
    fn at(b: &[u8], at: usize) -> Option<(Class, usize)> {
        let c = *b.get(at)?;
        Some(match c {
            b'a'..=b'z' | b'A'..=b'Z' => (Class::Letter, 1),
            b'0'..=b'9' => (Class::Digit, 1),
            b'_' => (Class::Joiner, 1),
            b':' => (Class::MidLetter, 1),
            b'.' | b'\'' => (Class::MidNumLet, 1),
            b',' | b';' => (Class::MidNum, 1),
            0..=0x7f => (Class::Other, 1),
            _ => (Class::Letter, 2),
        })
    }

    fn wordish(c: Class) -> bool {
        matches!(c, Class::Letter | Class::Digit | Class::Joiner)
    }

    /// The spans of the words of a covered text that hold a letter or a digit.
    pub(super) struct Pieces<'a> {
        bytes: &'a [u8],
        next: usize,
    }

    impl Pieces<'_> {
        pub(super) fn new(text: &str) -> Pieces<'_> {
            Pieces {
                bytes: text.as_bytes(),
                next: 0,
            }
        }
    }

    impl Iterator for Pieces<'_> {
        type Item = (usize, usize);

        fn next(&mut self) -> Option<(usize, usize)> {
            let b = self.bytes;
            loop {
                let (first, len) = at(b, self.next)?;
                if !wordish(first) {
                    self.next += len;
                    continue;
                }
                let start = self.next;
                let mut alnum = first != Class::Joiner;
                let mut here = first;
                let mut end = start + len;
                // Letters, digits and `_` never break between them (WB5, WB8-10, WB13a-b); a
                // middle character joins two letters (WB6-7) or two digits (WB11-12).
                while let Some((next, len)) = at(b, end) {
                    if wordish(next) {
                        alnum |= next != Class::Joiner;
                        here = next;
                        end += len;
                        continue;
                    }
                    let Some((after, after_len)) = at(b, end + len) else {
                        break;
                    };
                    let joins = matches!(
                        (here, next, after),
                        (
                            Class::Letter,
                            Class::MidLetter | Class::MidNumLet,
                            Class::Letter
                        ) | (Class::Digit, Class::MidNum | Class::MidNumLet, Class::Digit)
                    );
                    if !joins {
                        break;
                    }
                    here = after;
                    alnum = true;
                    end += len + after_len;
                }
                self.next = end;
                if alnum {
                    return Some((start, end));
                }
            }
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
        for (start, end) in pieces(text) {
            if tokens.len() == n {
                tokens.push(tantivy::tokenizer::Token::default());
            }
            let token = &mut tokens[n];
            token.text.clear();
            fold_into(&text[start..end], &mut token.text);
            if token.text.is_empty() || token.text.len() > MAX_WORD_BYTES {
                continue;
            }
            token.offset_from = start;
            token.offset_to = end;
            token.position = n;
            token.position_length = 1;
            n += 1;
        }
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
            let fast: Vec<_> = latin::Pieces::new(&text).collect();
            assert_eq!(fast, reference_pieces(&text), "case {case}: {text:?}");
        }
        for text in [
            "don't", "e.g.", "a:b", "3.14", "1,000;2", "a_.b", "__", "_a", "a..b", "x'",
        ] {
            let fast: Vec<_> = latin::Pieces::new(text).collect();
            assert_eq!(fast, reference_pieces(text), "{text:?}");
        }
        assert!(latin::covers("naïve ǅ ɏ"));
        for outside in ["×", "÷", "\u{250}", "µ", "東京", "\u{301}"] {
            assert!(!latin::covers(outside), "{outside:?}");
        }
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
        for s in [
            "e\u{301}\u{327}x",
            "A\u{30a}\u{323}",
            "\u{1e69}\u{323}",
            "ǅ ﬃ Ⅻ",
        ] {
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
