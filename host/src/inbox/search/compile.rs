//! A parsed [`Query`] as a tantivy query: words, prefixes and phrases on the text fields, filters
//! on the fields kept for them, and state filters ([`super::state`]) on the in-memory table.

use std::collections::HashMap;
use std::ops::Bound;

use tantivy::Term;
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query as TQuery,
    RangeQuery, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};

use super::SearchError;
use super::index::Fields;
use super::state::{SeqSetQuery, StateFilter, States};
use crate::inbox::query::{Filter, Folder, Query};

/// What compiling needs besides the query.
pub struct Context<'a> {
    /// The index's fields.
    pub fields: Fields,
    /// The state table (loaded if the query filters on state).
    pub states: &'a States,
    /// `from:` values to the PeerIds they name.
    pub senders: &'a HashMap<String, String>,
}

/// Compiles `query`.
pub fn compile(query: &Query, cx: &Context<'_>) -> Result<Box<dyn TQuery>, SearchError> {
    Ok(match query {
        Query::And(parts) => {
            let mut clauses = Vec::with_capacity(parts.len() + 1);
            for part in parts {
                clauses.push(match part {
                    Query::Not(inner) => (Occur::MustNot, compile(inner, cx)?),
                    other => (Occur::Must, compile(other, cx)?),
                });
            }
            if clauses.iter().all(|(o, _)| *o == Occur::MustNot) {
                clauses.push((Occur::Must, Box::new(AllQuery)));
            }
            Box::new(BooleanQuery::new(clauses))
        }
        Query::Or(parts) => Box::new(BooleanQuery::new(
            parts
                .iter()
                .map(|p| Ok((Occur::Should, compile(p, cx)?)))
                .collect::<Result<_, SearchError>>()?,
        )),
        Query::Not(inner) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(AllQuery) as Box<dyn TQuery>),
            (Occur::MustNot, compile(inner, cx)?),
        ])),
        Query::Word(w) => word(cx.fields.text, w),
        Query::Prefix(p) => Box::new(PhrasePrefixQuery::new(vec![Term::from_field_text(
            cx.fields.text,
            p,
        )])),
        Query::Phrase(words) => match words.as_slice() {
            [] => Box::new(EmptyQuery),
            [one] => word(cx.fields.text, one),
            many => Box::new(PhraseQuery::new(
                many.iter()
                    .map(|w| Term::from_field_text(cx.fields.text, w))
                    .collect(),
            )),
        },
        Query::Filter(f) => filter(f, cx)?,
    })
}

/// The messages whose `field` (from, to) is the PeerId `who` names.
fn peer(field: Field, who: &str, cx: &Context<'_>) -> Result<Box<dyn TQuery>, SearchError> {
    let peer = cx
        .senders
        .get(who)
        .ok_or_else(|| SearchError::UnknownSender(who.to_owned()))?;
    Ok(Box::new(TermQuery::new(
        Term::from_field_text(field, peer),
        IndexRecordOption::Basic,
    )))
}

/// The messages this node sent.
fn sent(fields: &Fields) -> Box<dyn TQuery> {
    Box::new(TermQuery::new(
        Term::from_field_u64(fields.sent, 1),
        IndexRecordOption::Basic,
    ))
}

/// `query` compiled, among received messages only unless it says where to look (`in:`, `to:`).
pub fn compile_scoped(query: &Query, cx: &Context<'_>) -> Result<Box<dyn TQuery>, SearchError> {
    let compiled = compile(query, cx)?;
    if names_a_folder(query) {
        return Ok(compiled);
    }
    Ok(Box::new(BooleanQuery::new(vec![
        (Occur::Must, compiled),
        (Occur::MustNot, sent(&cx.fields)),
    ])))
}

fn names_a_folder(query: &Query) -> bool {
    match query {
        Query::And(p) | Query::Or(p) => p.iter().any(names_a_folder),
        Query::Not(q) => names_a_folder(q),
        Query::Filter(Filter::In(_) | Filter::To(_)) => true,
        _ => false,
    }
}

fn word(field: Field, w: &str) -> Box<dyn TQuery> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, w),
        IndexRecordOption::WithFreqs,
    ))
}

fn filter(f: &Filter, cx: &Context<'_>) -> Result<Box<dyn TQuery>, SearchError> {
    let fields = &cx.fields;
    Ok(match f {
        Filter::From(who) => peer(fields.from, who, cx)?,
        Filter::To(who) => peer(fields.to, who, cx)?,
        Filter::In(Folder::Sent) => sent(fields),
        Filter::In(Folder::Inbox) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(AllQuery) as Box<dyn TQuery>),
            (Occur::MustNot, sent(fields)),
        ])),
        Filter::In(Folder::All) => Box::new(AllQuery),
        Filter::Subject(w) => word(fields.subject, w),
        Filter::Attachment(w) => word(fields.attachment, w),
        Filter::HasAttachment => Box::new(TermQuery::new(
            Term::from_field_u64(fields.has_attachment, 1),
            IndexRecordOption::Basic,
        )),
        Filter::After(ms) => Box::new(RangeQuery::new(
            Bound::Included(Term::from_field_u64(fields.received, *ms)),
            Bound::Unbounded,
        )),
        Filter::Before(ms) => Box::new(RangeQuery::new(
            Bound::Unbounded,
            Bound::Excluded(Term::from_field_u64(fields.received, *ms)),
        )),
        Filter::Label(l) => state(StateFilter::Label(l.clone()), cx)?,
        Filter::Is(s) => state(StateFilter::Is(*s), cx)?,
    })
}

fn state(filter: StateFilter, cx: &Context<'_>) -> Result<Box<dyn TQuery>, SearchError> {
    let seqs = cx
        .states
        .matching(&filter)
        .ok_or(SearchError::StatesNotLoaded)?;
    Ok(Box::new(SeqSetQuery::new("seq", seqs)))
}

/// `query`, only among the messages whose seq is after `after` and up to `upto`.
pub fn within_seqs(
    query: Box<dyn TQuery>,
    fields: Fields,
    after: u64,
    upto: u64,
) -> Box<dyn TQuery> {
    let range = RangeQuery::new(
        Bound::Excluded(Term::from_field_u64(fields.seq, after)),
        Bound::Included(Term::from_field_u64(fields.seq, upto)),
    );
    Box::new(BooleanQuery::new(vec![
        (Occur::Must, query),
        (Occur::Must, Box::new(range)),
    ]))
}

/// Whether `query` filters on state (so the state table must be loaded first).
pub fn needs_states(query: &Query) -> bool {
    match query {
        Query::And(p) | Query::Or(p) => p.iter().any(needs_states),
        Query::Not(q) => needs_states(q),
        Query::Filter(Filter::Label(_) | Filter::Is(_)) => true,
        _ => false,
    }
}

/// The `from:` values of `query`.
pub fn senders(query: &Query, out: &mut Vec<String>) {
    match query {
        Query::And(p) | Query::Or(p) => p.iter().for_each(|q| senders(q, out)),
        Query::Not(q) => senders(q, out),
        Query::Filter(Filter::From(who) | Filter::To(who)) => out.push(who.clone()),
        _ => {}
    }
}

/// The words a hit is marked by in snippets: the query's positive words, prefixes and phrases.
pub fn highlights(query: &Query, out: &mut Highlights) {
    match query {
        Query::And(p) | Query::Or(p) => p.iter().for_each(|q| highlights(q, out)),
        Query::Not(_) => {}
        Query::Word(w) => out.words.push(w.clone()),
        Query::Prefix(p) => out.prefixes.push(p.clone()),
        Query::Phrase(ws) => out.words.extend(ws.iter().cloned()),
        Query::Filter(Filter::Subject(w)) => out.words.push(w.clone()),
        Query::Filter(_) => {}
    }
}

/// Words and prefixes to mark.
#[derive(Debug, Default, Clone)]
pub struct Highlights {
    /// Whole words.
    pub words: Vec<String>,
    /// Word starts.
    pub prefixes: Vec<String>,
}

impl Highlights {
    /// Whether the folded word `w` is one to mark.
    pub fn marks(&self, w: &str) -> bool {
        self.words.iter().any(|x| x == w) || self.prefixes.iter().any(|p| w.starts_with(p))
    }

    /// Whether there is nothing to mark.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty() && self.prefixes.is_empty()
    }
}
