//! Words as the index and the query language both see them.
//!
//! Unicode word boundaries (UAX #29: `don't` and `3.14` stay whole, each CJK ideograph is a word),
//! only the pieces that hold a letter or a digit, compatibility-decomposed (NFKD, so `ﬁ` is `fi`
//! and a full-width `Ａ` is `A`), combining marks dropped (so `café` is `cafe`), lower-cased. The
//! index, the query parser and the snippets all call [`words`], so what one folds the others fold
//! the same way.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
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
    text.split_word_bound_indices()
        .filter_map(|(start, piece)| {
            if !piece.chars().any(char::is_alphanumeric) {
                return None;
            }
            let folded = fold(piece);
            (!folded.is_empty() && folded.len() <= MAX_WORD_BYTES).then(|| Word {
                start,
                end: start + piece.len(),
                text: folded,
            })
        })
}

/// `text` decomposed, without combining marks, lower-cased.
pub fn fold(text: &str) -> String {
    if text.is_ascii() {
        // Nothing to decompose: the common case, ten times cheaper.
        return text.to_ascii_lowercase();
    }
    text.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The tantivy tokenizer that indexes [`words`].
#[derive(Debug, Clone, Default)]
pub struct Tokenizer {
    tokens: Vec<tantivy::tokenizer::Token>,
}

/// Name under which [`Tokenizer`] is registered with the index.
pub const NAME: &str = "pigeon";

/// The tokens of one text, handed out one by one.
pub struct Stream<'a> {
    tokens: &'a mut Vec<tantivy::tokenizer::Token>,
    next: usize,
}

impl tantivy::tokenizer::Tokenizer for Tokenizer {
    type TokenStream<'a> = Stream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Stream<'a> {
        self.tokens.clear();
        self.tokens
            .extend(
                words(text)
                    .enumerate()
                    .map(|(position, w)| tantivy::tokenizer::Token {
                        offset_from: w.start,
                        offset_to: w.end,
                        position,
                        text: w.text,
                        position_length: 1,
                    }),
            );
        Stream {
            tokens: &mut self.tokens,
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
