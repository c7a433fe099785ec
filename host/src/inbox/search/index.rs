//! The tantivy index: its schema, opening it (or making it afresh), and one message as a document.

use std::path::Path;
use std::sync::Arc;

use tantivy::collector::TopDocs;
use tantivy::query::Query;
use tantivy::schema::{
    FAST, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::SearchError;
use super::sealed_dir::SealedDir;
use super::tokens;
use crate::keys::Keys;
use crate::store::FeedDoc;

/// Bumped when the schema, the settings or what is indexed changes: an index of another version
/// is rebuilt.
const VERSION: u32 = 3;
/// Memory for the writer's indexing, in all.
const WRITER_MEMORY: usize = 128 * 1024 * 1024;

/// The fields.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// The message's seq (the store's key for it).
    pub seq: tantivy::schema::Field,
    /// When it arrived (or was sent), ms.
    pub received: tantivy::schema::Field,
    /// Sender PeerId.
    pub from: tantivy::schema::Field,
    /// Subject and body.
    pub text: tantivy::schema::Field,
    /// Subject only.
    pub subject: tantivy::schema::Field,
    /// Attachment names.
    pub attachment: tantivy::schema::Field,
    /// 1 when it has attachments.
    pub has_attachment: tantivy::schema::Field,
    /// Recipient PeerId, for a message this node sent.
    pub to: tantivy::schema::Field,
    /// 1 for a message this node sent.
    pub sent: tantivy::schema::Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokens::NAME)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        seq: b.add_u64_field("seq", INDEXED | FAST),
        received: b.add_u64_field("received", INDEXED | FAST),
        from: b.add_text_field("from", STRING),
        text: b.add_text_field("text", words.clone()),
        subject: b.add_text_field("subject", words.clone()),
        attachment: b.add_text_field("attachment", words),
        has_attachment: b.add_u64_field("has_attachment", INDEXED),
        to: b.add_text_field("to", STRING),
        sent: b.add_u64_field("sent", INDEXED),
    };
    (b.build(), fields)
}

/// An open index and its reader.
pub struct Engine {
    pub(super) index: Index,
    /// The directory under the index (the same one tantivy reads through), for a rekey.
    pub(super) sealed: SealedDir,
    pub(super) reader: IndexReader,
    pub(super) fields: Fields,
}

/// The payload each commit carries: what the index holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Payload {
    version: u32,
    /// The highest seq taken in.
    mark: u64,
}

impl Engine {
    /// Opens the index in `dir`, or makes an empty one if there is none; `Err` if what is there
    /// does not open (the caller then starts afresh with [`Engine::create`]).
    pub fn open(dir: &Path, keys: Arc<Keys>) -> Result<(Engine, u64), SearchError> {
        let sealed = SealedDir::open(dir, keys.clone()).map_err(SearchError::Io)?;
        if !Index::exists(&sealed)? {
            return Ok((Engine::create(dir, keys)?, 0));
        }
        let index = Index::open(sealed.clone())?;
        let (schema, fields) = schema();
        if index.schema() != schema {
            return Err(SearchError::Damaged(
                "its schema is not this version's".into(),
            ));
        }
        let mark = match index.load_metas()?.payload {
            Some(p) => {
                let p: Payload = serde_json::from_str(&p)
                    .map_err(|_| SearchError::Damaged("its commit record does not parse".into()))?;
                if p.version != VERSION {
                    return Err(SearchError::Damaged(format!(
                        "it is of version {}, this pigeon writes {VERSION}",
                        p.version
                    )));
                }
                p.mark
            }
            None => 0,
        };
        Ok((Engine::with(index, sealed, fields)?, mark))
    }

    /// Removes whatever is in `dir` and makes an empty index there.
    pub fn create(dir: &Path, keys: Arc<Keys>) -> Result<Engine, SearchError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(SearchError::Io)?;
        }
        let sealed = SealedDir::open(dir, keys).map_err(SearchError::Io)?;
        let (schema, fields) = schema();
        // Every segment holds its messages newest first, so that a newest-first search stops
        // after the first hits of each segment instead of visiting every match.
        let settings = tantivy::IndexSettings {
            sort_by_field: Some(tantivy::IndexSortByField {
                field: "seq".into(),
                order: tantivy::Order::Desc,
            }),
            ..tantivy::IndexSettings::default()
        };
        let index = Index::create(sealed.clone(), schema, settings)?;
        Engine::with(index, sealed, fields)
    }

    fn with(index: Index, sealed: SealedDir, fields: Fields) -> Result<Engine, SearchError> {
        index
            .tokenizers()
            .register(tokens::NAME, tokens::Tokenizer::default());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Engine {
            index,
            sealed,
            reader,
            fields,
        })
    }

    /// A writer (the one the follower thread holds).
    pub fn writer(&self) -> Result<IndexWriter, SearchError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 2);
        Ok(self.index.writer_with_num_threads(threads, WRITER_MEMORY)?)
    }

    /// `doc` as the index takes it in.
    pub fn document(&self, doc: &FeedDoc) -> TantivyDocument {
        let f = &self.fields;
        let mut d = TantivyDocument::new();
        d.add_u64(f.seq, doc.seq);
        d.add_u64(f.received, doc.received_at);
        d.add_text(f.from, &doc.sender);
        if let Some(to) = &doc.to {
            d.add_text(f.to, to);
            d.add_u64(f.sent, 1);
        }
        if !doc.redacted {
            d.add_text(f.text, &doc.subject);
            d.add_text(f.text, &doc.body);
            d.add_text(f.subject, &doc.subject);
            for name in &doc.attachments {
                // As given (`photo.jpg` is one word to Unicode) and cut at the punctuation of
                // file names, so that `attachment:photo` finds it too.
                d.add_text(f.attachment, name);
                d.add_text(f.attachment, name.replace(['.', '_', '-'], " "));
            }
            if !doc.attachments.is_empty() {
                d.add_u64(f.has_attachment, 1);
            }
        }
        d
    }

    /// The term that names message `seq`.
    pub fn seq_term(&self, seq: u64) -> Term {
        Term::from_field_u64(self.fields.seq, seq)
    }

    /// Commits what `writer` holds, recording `mark`, and lets readers see it.
    pub fn commit(&self, writer: &mut IndexWriter, mark: u64) -> Result<(), SearchError> {
        let payload = serde_json::to_string(&Payload {
            version: VERSION,
            mark,
        })
        .map_err(|e| SearchError::Damaged(e.to_string()))?;
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// How many messages the index holds.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Reads every file the index uses, so that damage shows now rather than in a query.
    pub fn verify(&self) -> Result<(), SearchError> {
        let dir = self.index.directory();
        use tantivy::Directory as _;
        use tantivy::index::SegmentComponent as C;
        let mut files = Vec::new();
        for meta in self.index.searchable_segment_metas()? {
            for c in [
                C::Postings,
                C::Positions,
                C::Terms,
                C::Store,
                C::FastFields,
                C::FieldNorms,
            ] {
                files.push(meta.relative_path(c));
            }
            if meta.has_deletes() {
                files.push(meta.relative_path(C::Delete));
            }
        }
        files.sort();
        files.dedup();
        for file in files {
            if !dir.exists(&file)? {
                continue;
            }
            let slice = dir.open_read(&file)?;
            let len = tantivy::HasLen::len(&slice);
            let mut at = 0;
            while at < len {
                let end = (at + (1 << 20)).min(len);
                slice.read_bytes_slice(at..end).map_err(SearchError::Io)?;
                at = end;
            }
        }
        dir.atomic_read(Path::new("meta.json"))?;
        Ok(())
    }

    /// The seqs (with scores) of the `limit` best hits of `query`: the newest first, or the most
    /// relevant first.
    pub fn top(
        &self,
        query: &dyn Query,
        limit: usize,
        by_relevance: bool,
    ) -> Result<Vec<(u64, f32)>, SearchError> {
        let searcher = self.reader.searcher();
        let limit = limit.min(super::MAX_HITS as usize);
        if limit == 0 {
            return Ok(Vec::new());
        }
        if !by_relevance {
            return newest(&searcher, query, limit);
        }
        let hits: Vec<(f32, DocAddress)> =
            searcher.search(query, &TopDocs::with_limit(limit).order_by_score())?;
        let mut out = Vec::with_capacity(hits.len());
        for (score, addr) in hits {
            let seq = searcher
                .segment_reader(addr.segment_ord)
                .fast_fields()
                .u64("seq")?
                .first(addr.doc_id);
            if let Some(seq) = seq {
                out.push((seq, score));
            }
        }
        Ok(out)
    }
}

/// The `limit` newest hits of `query`, with their scores. Segments hold their messages newest
/// first (the index is sorted by seq, descending), so each segment gives at most its first
/// `limit` live matches. Segments are visited newest first (by their highest seq), and the walk
/// stops as soon as nothing left can beat the `limit` hits in hand: usually after the newest
/// segment or two.
fn newest(
    searcher: &tantivy::Searcher,
    query: &dyn Query,
    limit: usize,
) -> Result<Vec<(u64, f32)>, SearchError> {
    let weight = query.weight(tantivy::query::EnableScoring::enabled_from_searcher(
        searcher,
    ))?;
    let mut segments = Vec::with_capacity(searcher.segment_readers().len());
    for segment in searcher.segment_readers() {
        let seqs = segment.fast_fields().u64("seq")?;
        segments.push((seqs.max_value(), segment, seqs));
    }
    segments.sort_by_key(|(max, _, _)| std::cmp::Reverse(*max));
    let mut found: Vec<(u64, f32)> = Vec::new();
    for (max, segment, seqs) in segments {
        // The oldest of the hits in hand, once there are enough of them.
        let bar = found.get(limit.wrapping_sub(1)).map(|&(seq, _)| seq);
        if bar.is_some_and(|bar| max < bar) {
            break;
        }
        let alive = segment.alive_bitset();
        let mut scorer = weight.scorer(segment, 1.0)?;
        let mut taken = 0;
        let mut doc = scorer.doc();
        while doc != tantivy::TERMINATED && taken < limit {
            if alive.is_none_or(|a| a.is_alive(doc))
                && let Some(seq) = seqs.first(doc)
            {
                if bar.is_some_and(|bar| seq < bar) {
                    break;
                }
                found.push((seq, scorer.score()));
                taken += 1;
            }
            doc = scorer.advance();
        }
        found.sort_by_key(|&(seq, _)| std::cmp::Reverse(seq));
        found.truncate(limit);
    }
    Ok(found)
}
