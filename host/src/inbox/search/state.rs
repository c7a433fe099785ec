//! What can change about a message after it arrived (read, archived, labels), kept in memory for
//! the search, and the tantivy query that filters on it.
//!
//! The database is the truth for this state, so that a mark or a label shows in filters the moment
//! it is committed, with or without a node, without writing the message into the index again. The
//! table is loaded from the database the first time a query filters on state, and from then on
//! the store updates it after every commit that changes a message's state ([`States::set`]).
//! Messages are found by their `seq`, a number the inbox gives each message once, in order.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tantivy::query::{EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::{BitSet, DocId, DocSet, Score, SegmentReader, TERMINATED};

use super::query::State;

/// A message's state as the store reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MsgState {
    /// Its sequence number.
    pub seq: u64,
    /// Read.
    pub read: bool,
    /// Archived.
    pub archived: bool,
    /// Its labels.
    pub labels: Vec<String>,
}

const READ: u8 = 1;
const ARCHIVED: u8 = 2;
const PRESENT: u8 = 4;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    flags: u8,
    /// Index into `Table::sets`.
    set: u32,
}

/// Every message's state, by seq.
#[derive(Debug, Default)]
struct Table {
    /// Bumped by every change, so that a filter's set can be reused until the next one.
    version: u64,
    entries: Vec<Entry>,
    label_ids: HashMap<String, u32>,
    /// Distinct label sets (few: messages share them).
    sets: Vec<Vec<u32>>,
    set_ids: HashMap<Vec<u32>, u32>,
}

impl Table {
    fn set(&mut self, m: &MsgState) {
        let Ok(seq) = usize::try_from(m.seq) else {
            return;
        };
        self.version += 1;
        let mut ids: Vec<u32> = m
            .labels
            .iter()
            .map(|l| {
                let next = self.label_ids.len() as u32;
                *self.label_ids.entry(l.clone()).or_insert(next)
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let set = match self.set_ids.get(&ids) {
            Some(&s) => s,
            None => {
                let s = self.sets.len() as u32;
                self.sets.push(ids.clone());
                self.set_ids.insert(ids, s);
                s
            }
        };
        if self.entries.len() <= seq {
            self.entries.resize(seq + 1, Entry::default());
        }
        self.entries[seq] = Entry {
            flags: PRESENT | if m.read { READ } else { 0 } | if m.archived { ARCHIVED } else { 0 },
            set,
        };
    }

    fn remove(&mut self, seq: u64) {
        self.version += 1;
        if let Some(e) = usize::try_from(seq)
            .ok()
            .and_then(|s| self.entries.get_mut(s))
        {
            *e = Entry::default();
        }
    }
}

/// A filter on state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StateFilter {
    /// `is:...`.
    Is(State),
    /// `label:...`.
    Label(String),
}

/// The shared state table; empty until loaded.
#[derive(Debug, Default)]
pub struct States {
    table: RwLock<Option<Table>>,
    /// The last set made for each filter, with the table version it was made at.
    made: std::sync::Mutex<HashMap<StateFilter, (u64, Arc<BitSet>)>>,
}

impl States {
    /// Whether the table has been loaded (the store then keeps it up to date).
    pub fn loaded(&self) -> bool {
        self.table.read().map(|t| t.is_some()).unwrap_or(false)
    }

    /// Replaces the table with `all` (the store, on its thread, so no update is lost in between).
    pub fn load(&self, all: impl IntoIterator<Item = MsgState>) {
        let mut table = Table::default();
        for m in all {
            table.set(&m);
        }
        if let Ok(mut t) = self.table.write() {
            table.version = t.as_ref().map_or(0, |old| old.version + 1);
            *t = Some(table);
        }
    }

    /// Records `m` (a message stored or changed), if the table is loaded.
    pub fn set(&self, m: &MsgState) {
        if let Ok(mut t) = self.table.write()
            && let Some(t) = t.as_mut()
        {
            t.set(m);
        }
    }

    /// Forgets message `seq` (deleted).
    pub fn remove(&self, seq: u64) {
        if let Ok(mut t) = self.table.write()
            && let Some(t) = t.as_mut()
        {
            t.remove(seq);
        }
    }

    /// The seqs of the messages that pass `filter`, as a set; `None` if the table is not loaded.
    pub fn matching(&self, filter: &StateFilter) -> Option<Arc<BitSet>> {
        let guard = self.table.read().ok()?;
        let t = guard.as_ref()?;
        if let Some((version, bits)) = self.made.lock().ok()?.get(filter)
            && *version == t.version
        {
            return Some(bits.clone());
        }
        let bits = Arc::new(Self::make(t, filter));
        if let Ok(mut made) = self.made.lock() {
            made.insert(filter.clone(), (t.version, bits.clone()));
        }
        Some(bits)
    }

    fn make(t: &Table, filter: &StateFilter) -> BitSet {
        let max = u32::try_from(t.entries.len()).unwrap_or(u32::MAX).max(1);
        let mut bits = BitSet::with_max_value(max);
        let pass: Box<dyn Fn(&Entry) -> bool> = match filter {
            StateFilter::Is(State::Read) => Box::new(|e| e.flags & READ != 0),
            StateFilter::Is(State::Unread) => Box::new(|e| e.flags & READ == 0),
            StateFilter::Is(State::Archived) => Box::new(|e| e.flags & ARCHIVED != 0),
            StateFilter::Label(label) => {
                let Some(&id) = t.label_ids.get(label) else {
                    return bits;
                };
                let with: Vec<bool> = t.sets.iter().map(|s| s.contains(&id)).collect();
                Box::new(move |e| with.get(e.set as usize).copied().unwrap_or(false))
            }
        };
        for (seq, e) in t.entries.iter().enumerate().take(max as usize) {
            if e.flags & PRESENT != 0 && pass(e) {
                bits.insert(seq as u32);
            }
        }
        bits
    }
}

/// Matches the documents whose `seq` fast field is in a set.
#[derive(Clone)]
pub struct SeqSetQuery {
    field: String,
    seqs: Arc<BitSet>,
}

impl std::fmt::Debug for SeqSetQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqSetQuery")
            .field("field", &self.field)
            .field("len", &self.seqs.len())
            .finish()
    }
}

impl SeqSetQuery {
    /// Documents whose fast field `field` holds a value in `seqs`.
    pub fn new(field: &str, seqs: Arc<BitSet>) -> SeqSetQuery {
        SeqSetQuery {
            field: field.to_owned(),
            seqs,
        }
    }
}

impl Query for SeqSetQuery {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for SeqSetQuery {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let column = reader.fast_fields().u64(&self.field)?;
        let mut scorer = SeqSetScorer {
            column,
            seqs: self.seqs.clone(),
            max_doc: reader.max_doc(),
            doc: 0,
            boost,
        };
        scorer.doc = scorer.next_from(0);
        Ok(Box::new(scorer))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.seek(doc) == doc {
            Ok(Explanation::new("message state filter", scorer.score()))
        } else {
            Err(tantivy::TantivyError::InvalidArgument(
                "the message does not pass the filter".into(),
            ))
        }
    }
}

struct SeqSetScorer {
    column: tantivy::columnar::Column<u64>,
    seqs: Arc<BitSet>,
    max_doc: DocId,
    doc: DocId,
    boost: Score,
}

impl SeqSetScorer {
    fn passes(&self, doc: DocId) -> bool {
        self.column
            .first(doc)
            .and_then(|s| u32::try_from(s).ok())
            .is_some_and(|s| s < self.seqs.max_value() && self.seqs.contains(s))
    }

    fn next_from(&self, mut doc: DocId) -> DocId {
        while doc < self.max_doc {
            if self.passes(doc) {
                return doc;
            }
            doc += 1;
        }
        TERMINATED
    }
}

impl DocSet for SeqSetScorer {
    fn advance(&mut self) -> DocId {
        if self.doc != TERMINATED {
            self.doc = self.next_from(self.doc + 1);
        }
        self.doc
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.doc < target {
            self.doc = self.next_from(target);
        }
        self.doc
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        // Never the cheapest to drive an intersection: checked per candidate instead.
        self.max_doc
    }
}

impl Scorer for SeqSetScorer {
    fn score(&mut self) -> Score {
        self.boost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64, read: bool, archived: bool, labels: &[&str]) -> MsgState {
        MsgState {
            seq,
            read,
            archived,
            labels: labels.iter().map(|l| l.to_string()).collect(),
        }
    }

    fn seqs(bits: &BitSet) -> Vec<u32> {
        (0..bits.max_value())
            .filter(|&s| bits.contains(s))
            .collect()
    }

    #[test]
    fn filters_follow_loads_sets_and_removals() {
        let s = States::default();
        assert!(s.matching(&StateFilter::Is(State::Read)).is_none());
        s.set(&m(1, true, false, &[])); // ignored: not loaded
        s.load([
            m(1, true, false, &["work"]),
            m(2, false, true, &["work", "x"]),
            m(4, false, false, &[]),
        ]);
        let read = s.matching(&StateFilter::Is(State::Read)).expect("loaded");
        assert_eq!(seqs(&read), [1]);
        let unread = s.matching(&StateFilter::Is(State::Unread)).expect("loaded");
        assert_eq!(seqs(&unread), [2, 4]);
        let work = s
            .matching(&StateFilter::Label("work".into()))
            .expect("loaded");
        assert_eq!(seqs(&work), [1, 2]);
        s.set(&m(4, true, true, &["work"]));
        s.remove(1);
        let work = s
            .matching(&StateFilter::Label("work".into()))
            .expect("loaded");
        assert_eq!(seqs(&work), [2, 4]);
        let archived = s
            .matching(&StateFilter::Is(State::Archived))
            .expect("loaded");
        assert_eq!(seqs(&archived), [2, 4]);
        let none = s
            .matching(&StateFilter::Label("nope".into()))
            .expect("loaded");
        assert!(seqs(&none).is_empty());
    }
}
