//! Full-text search over the inbox: a tantivy index sealed at rest that follows the inbox.
//!
//! - [`tokens`]: the words (Unicode word boundaries, folded) that the index, the query parser and
//!   the snippets share.
//! - [`sealed_dir`]: the tantivy `Directory` whose files are sealed under keys of their own, each
//!   sealed under the data key; no term reaches the disk in clear.
//! - `index`: the schema and one message as a document; `compile`: a parsed
//!   [`crate::inbox::query::Query`] as a tantivy query; `state`: read, archived and labels kept
//!   in memory from the database, so that changes show in filters at once; `snippet`.
//!
//! The follower thread (`pigeon-search`) owns the index writer. The store rings it after each
//! commit that stores, deletes or redacts messages; it then lets go of what was deleted or
//! redacted (`search_purge`: delete, commit, merge the segments that held the message, collect the
//! old files), takes in the messages after the highest seq it holds (its high-water mark, kept in
//! each commit), and commits, at most every [`COMMIT_EVERY`] unless someone waits on it. On open
//! it catches up the same way, checks that it holds as many messages as the inbox, reads every
//! file once to find damage, and starts afresh when anything is wrong: the inbox is never touched.

pub mod compile;
mod index;
pub mod sealed_dir;
mod snippet;
mod state;
pub mod tokens;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tantivy::IndexWriter;
use tokio::sync::{oneshot, watch};

pub use self::index::Engine;
pub use self::state::{MsgState, SeqSetQuery, StateFilter, States};
use crate::exit::ErrorKind;
use crate::inbox::query::{self, QueryError};
use crate::keys::Keys;
use crate::store::{FeedDoc, Listed, SearchLink, Store, StoreError};

/// The shortest time between two commits while messages keep arriving (a message is searchable
/// within about this long after it is stored).
pub const COMMIT_EVERY: Duration = Duration::from_millis(250);
/// Messages read from the store per round trip.
const PAGE: u32 = 2000;
/// The most hits one search returns.
pub const MAX_HITS: u32 = 10_000;
/// A failed step (a merge that met a background one, say) is tried again after this.
const RETRY: Duration = Duration::from_secs(1);

/// Errors from the search.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The query does not parse.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// `from:` or `to:` names no contact (and is not a PeerId).
    #[error("no contact {0:?}: from: and to: take a contact's name or a PeerId")]
    UnknownSender(String),
    /// The index failed.
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// The index's files could not be read or written.
    #[error("search index: {0}")]
    Io(std::io::Error),
    /// What is on disk is not a usable index.
    #[error("search index is damaged: {0}")]
    Damaged(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A state filter was compiled before the state table was loaded (a bug).
    #[error("search: message states are not loaded")]
    StatesNotLoaded,
    /// The follower thread has stopped.
    #[error("the search index is closed")]
    Closed,
    /// The index could not be built from the inbox.
    #[error("search is unavailable: the index could not be built ({reason})")]
    Unavailable {
        /// The kind of the failure that stopped it.
        kind: ErrorKind,
        /// What it was.
        reason: String,
    },
}

impl From<tantivy::directory::error::OpenReadError> for SearchError {
    fn from(e: tantivy::directory::error::OpenReadError) -> SearchError {
        SearchError::Damaged(e.to_string())
    }
}

impl SearchError {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            SearchError::Query(_) | SearchError::UnknownSender(_) => ErrorKind::Usage,
            SearchError::Store(e) => e.kind(),
            SearchError::Damaged(_) => ErrorKind::Corrupt,
            SearchError::Unavailable { kind, .. } => *kind,
            _ => ErrorKind::Other,
        }
    }
}

/// How hits are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Newest first.
    #[default]
    Date,
    /// Best match first.
    Relevance,
}

/// One hit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hit {
    /// What `inbox list` (or, for a sent message, `sent list`) shows of it, and `kind`.
    #[serde(flatten)]
    pub item: Listed,
    /// Its text around the first match, matched words in `[...]`.
    pub snippet: String,
    /// Its relevance (BM25; filters alone score 1 each).
    pub score: f32,
}

/// Where the index stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexStatus {
    /// Messages taken in so far.
    pub indexed: u64,
    /// Messages the inbox holds.
    pub total: u64,
    /// Whether it is being built from scratch.
    pub rebuilding: bool,
}

/// A handle to the search: cloneable; [`Search::close`] stops the follower.
#[derive(Clone)]
pub struct Search {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    ready: watch::Receiver<bool>,
}

struct Shared {
    engine: RwLock<Arc<Engine>>,
    states: Arc<States>,
    bell: Bell,
    indexed: AtomicU64,
    total: AtomicU64,
    rebuilding: std::sync::atomic::AtomicBool,
    /// Why the index could not be built, while it cannot: searches fail with it rather than
    /// answer nothing.
    broken: Mutex<Option<(ErrorKind, String)>>,
}

/// The search last opened in this process, for a progress bar beside a request that runs here.
static OPEN_HERE: Mutex<std::sync::Weak<Shared>> = Mutex::new(std::sync::Weak::new());

/// Where the search open in this process stands, if one is.
pub fn status_here() -> Option<IndexStatus> {
    OPEN_HERE.lock().ok()?.upgrade().map(|s| s.status())
}

impl Shared {
    fn status(&self) -> IndexStatus {
        IndexStatus {
            indexed: self.indexed.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            rebuilding: self.rebuilding.load(Ordering::Relaxed),
        }
    }

    fn engine(&self) -> Arc<Engine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

#[derive(Default)]
struct Pending {
    wake: bool,
    syncs: Vec<oneshot::Sender<Result<(), String>>>,
    reindex: Vec<oneshot::Sender<Result<u64, String>>>,
    close: bool,
}

/// What the follower is asked to do, and the condition variable it sleeps on.
#[derive(Default)]
struct Bell {
    pending: Mutex<Pending>,
    ring: Condvar,
}

impl Bell {
    fn with(&self, f: impl FnOnce(&mut Pending)) {
        if let Ok(mut p) = self.pending.lock() {
            f(&mut p);
            self.ring.notify_one();
        }
    }

    /// Waits until there is something to do: a close, a reindex or a sync at once; a wake not
    /// before `not_before`.
    fn wait(&self, not_before: Instant) -> Pending {
        let Ok(mut p) = self.pending.lock() else {
            return Pending {
                close: true,
                ..Pending::default()
            };
        };
        loop {
            let urgent = p.close || !p.reindex.is_empty() || !p.syncs.is_empty();
            let now = Instant::now();
            if urgent || (p.wake && now >= not_before) {
                return std::mem::take(&mut *p);
            }
            let timeout = if p.wake {
                not_before - now
            } else {
                Duration::from_secs(3600)
            };
            p = match self.ring.wait_timeout(p, timeout) {
                Ok((p, _)) => p,
                Err(_) => {
                    return Pending {
                        close: true,
                        ..Pending::default()
                    };
                }
            };
        }
    }
}

impl Search {
    /// Opens (or makes, or repairs) the index in `dir` and starts following the inbox of
    /// `store`. Returns at once; searches wait until the index has caught up.
    pub async fn open(dir: &Path, keys: Arc<Keys>, store: Store) -> Result<Search, SearchError> {
        let (d, k) = (dir.to_owned(), keys.clone());
        let (engine, mark) = tokio::task::spawn_blocking(move || open_or_create(&d, k))
            .await
            .map_err(|_| SearchError::Closed)??;
        let shared = Arc::new(Shared {
            engine: RwLock::new(Arc::new(engine)),
            states: Arc::new(States::default()),
            bell: Bell::default(),
            indexed: AtomicU64::new(0),
            total: AtomicU64::new(0),
            rebuilding: Default::default(),
            broken: Mutex::new(None),
        });
        let ring = shared.clone();
        let states = shared.states.clone();
        store
            .call(move |db| {
                db.attach_search(SearchLink {
                    wake: Box::new(move || ring.bell.with(|p| p.wake = true)),
                    states,
                })
            })
            .await?;
        if let Ok(mut open) = OPEN_HERE.lock() {
            *open = Arc::downgrade(&shared);
        }
        let (ready_tx, ready) = watch::channel(false);
        let follower = Follower {
            shared: shared.clone(),
            store,
            dir: dir.to_owned(),
            keys,
            writer: None,
            mark,
        };
        let thread = std::thread::Builder::new()
            .name("pigeon-search".into())
            .spawn(move || follower.run(ready_tx))
            .map_err(SearchError::Io)?;
        Ok(Search {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
            ready,
        })
    }

    /// Waits until the follower's first catch-up (or rebuild) is over.
    async fn wait_started(&self) -> Result<(), SearchError> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|r| *r)
            .await
            .map(drop)
            .map_err(|_| SearchError::Closed)
    }

    /// [`Search::wait_started`], and then an error if the index could not be built.
    async fn wait_ready(&self) -> Result<(), SearchError> {
        self.wait_started().await?;
        match self.shared.broken.lock().ok().and_then(|b| b.clone()) {
            Some((kind, reason)) => Err(SearchError::Unavailable { kind, reason }),
            None => Ok(()),
        }
    }

    /// Waits until everything the store committed before this call is in the index (deletions
    /// and redactions let go of, to the merge).
    pub async fn sync(&self) -> Result<(), SearchError> {
        self.wait_started().await?;
        let (tx, rx) = oneshot::channel();
        self.shared.bell.with(|p| p.syncs.push(tx));
        rx.await
            .map_err(|_| SearchError::Closed)?
            .map_err(SearchError::Damaged)
    }

    /// Builds the index again from the inbox; returns how many messages it holds.
    pub async fn reindex(&self) -> Result<u64, SearchError> {
        self.wait_started().await?;
        let (tx, rx) = oneshot::channel();
        self.shared.bell.with(|p| p.reindex.push(tx));
        rx.await
            .map_err(|_| SearchError::Closed)?
            .map_err(SearchError::Damaged)
    }

    /// Starts building the index again and returns at once; [`Search::status`] follows it.
    pub fn start_reindex(&self) {
        self.shared.rebuilding.store(true, Ordering::Relaxed);
        let (tx, _) = oneshot::channel();
        self.shared.bell.with(|p| p.reindex.push(tx));
    }

    /// Where the index stands.
    pub fn status(&self) -> IndexStatus {
        self.shared.status()
    }

    /// The hits of `text`, at most `limit`, in `sort` order, filled in from `store`. `senders`
    /// resolves a `from:` value to a PeerId (`None`: no such contact).
    pub async fn search(
        &self,
        store: &Store,
        text: &str,
        limit: usize,
        sort: Sort,
    ) -> Result<Vec<Hit>, SearchError> {
        self.search_parsed(store, &query::parse(text)?, limit, sort)
            .await
    }

    /// [`Search::search`] for a query already parsed.
    pub async fn search_parsed(
        &self,
        store: &Store,
        query: &query::Query,
        limit: usize,
        sort: Sort,
    ) -> Result<Vec<Hit>, SearchError> {
        let top = self.top(store, query, limit, sort, None).await?;
        let seqs: Vec<u64> = top.iter().map(|(s, _)| *s).collect();
        let scores: HashMap<u64, f32> = top.into_iter().collect();
        let rows = store.call(move |db| db.search_hits(&seqs)).await?;
        let mut marks = compile::Highlights::default();
        compile::highlights(query, &mut marks);
        let text_query = !marks.is_empty();
        Ok(rows
            .into_iter()
            // A message redacted a moment ago matches words it no longer has until the index
            // lets go of it.
            .filter(|(_, r)| !(r.redacted && text_query))
            .map(|(seq, r)| Hit {
                snippet: snippet::snippet(&r.subject, &r.body, &marks),
                score: scores.get(&seq).copied().unwrap_or(0.0),
                item: r.item,
            })
            .collect())
    }

    /// The seqs in `after..=upto` that `query` matches, oldest first, once the index holds
    /// everything the store committed before this call (`inbox watch` with a query).
    pub async fn matching(
        &self,
        store: &Store,
        query: &query::Query,
        after: u64,
        upto: u64,
    ) -> Result<Vec<u64>, SearchError> {
        if upto <= after {
            return Ok(Vec::new());
        }
        self.sync().await?;
        let limit = usize::try_from(upto - after).unwrap_or(usize::MAX);
        let range = Some((after, upto));
        let mut seqs: Vec<u64> = self
            .top(store, query, limit, Sort::Date, range)
            .await?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The `limit` best hits of `query` (seqs with scores), only among seqs in `range`
    /// (`(after, upto)`: after `after`, up to `upto`) if given.
    async fn top(
        &self,
        store: &Store,
        query: &query::Query,
        limit: usize,
        sort: Sort,
        range: Option<(u64, u64)>,
    ) -> Result<Vec<(u64, f32)>, SearchError> {
        self.wait_ready().await?;
        if compile::needs_states(query) && !self.shared.states.loaded() {
            store.call(|db| db.load_states()).await?;
        }
        let mut wanted = Vec::new();
        compile::senders(query, &mut wanted);
        let senders = if wanted.is_empty() {
            HashMap::new()
        } else {
            store.call(move |db| resolve_senders(db, &wanted)).await?
        };
        let shared = self.shared.clone();
        let q = query.clone();
        tokio::task::spawn_blocking(move || -> Result<_, SearchError> {
            let engine = shared.engine();
            let cx = compile::Context {
                fields: engine.fields,
                states: &shared.states,
                senders: &senders,
            };
            let mut compiled = compile::compile_scoped(&q, &cx)?;
            if let Some((after, upto)) = range {
                compiled = compile::within_seqs(compiled, engine.fields, after, upto);
            }
            engine.top(&*compiled, limit, sort == Sort::Relevance)
        })
        .await
        .map_err(|_| SearchError::Closed)?
    }

    /// Seals the key of every index file under the current data key (a rekey's part here);
    /// returns how many files it moved.
    pub async fn rekey_files(&self) -> Result<usize, SearchError> {
        self.wait_started().await?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.engine().sealed.rekey())
            .await
            .map_err(|_| SearchError::Closed)?
            .map_err(SearchError::Io)
    }

    /// Stops the follower (after what it is doing) and waits for it.
    pub async fn close(&self) {
        self.shared.bell.with(|p| p.close = true);
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The search, opened when first needed (a CLI command without a node) or at once (a node).
#[derive(Clone)]
pub struct LazySearch {
    cell: Arc<tokio::sync::OnceCell<Search>>,
    dir: PathBuf,
    keys: Arc<Keys>,
    store: Store,
}

impl LazySearch {
    /// The index in `dir` over the inbox of `store`, not opened yet.
    pub fn new(dir: &Path, keys: Arc<Keys>, store: Store) -> LazySearch {
        LazySearch {
            cell: Arc::default(),
            dir: dir.to_owned(),
            keys,
            store,
        }
    }

    /// The search, opened now if need be.
    pub async fn get(&self) -> Result<&Search, SearchError> {
        self.cell
            .get_or_try_init(|| Search::open(&self.dir, self.keys.clone(), self.store.clone()))
            .await
    }

    /// The search if it is open.
    pub fn opened(&self) -> Option<&Search> {
        self.cell.get()
    }

    /// Stops the follower if it was started, and waits for it.
    pub async fn close(&self) {
        if let Some(search) = self.cell.get() {
            search.close().await;
        }
    }
}

/// `from:` values to PeerIds: a contact's name, or a PeerId as given.
fn resolve_senders(
    db: &mut crate::store::Db,
    wanted: &[String],
) -> Result<HashMap<String, String>, StoreError> {
    let mut out = HashMap::new();
    for who in wanted {
        match db.contact_by_name(who) {
            Ok(c) => {
                out.insert(who.clone(), c.address.peer_id().to_string());
            }
            Err(StoreError::NotFound { .. }) => {
                if who.parse::<libp2p::PeerId>().is_ok() {
                    out.insert(who.clone(), who.clone());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn open_or_create(dir: &Path, keys: Arc<Keys>) -> Result<(Engine, u64), SearchError> {
    match Engine::open(dir, keys.clone()) {
        Ok(opened) => Ok(opened),
        Err(e) => {
            tracing::warn!(error = %e, "the search index does not open; building it again from the inbox");
            Ok((Engine::create(dir, keys)?, 0))
        }
    }
}

/// The follower thread's state.
struct Follower {
    shared: Arc<Shared>,
    store: Store,
    dir: PathBuf,
    keys: Arc<Keys>,
    writer: Option<IndexWriter>,
    mark: u64,
}

impl Follower {
    fn run(mut self, ready: watch::Sender<bool>) {
        if let Err(e) = self.first_step() {
            tracing::warn!(error = %e, "the search index could not catch up; building it again");
            if let Err(e) = self.rebuild() {
                tracing::error!(error = %e, "the search index could not be built; search is unavailable");
                self.set_broken(Some(&e));
            }
        }
        let _ = ready.send(true);
        if let Err(e) = self.shared.engine().verify() {
            tracing::warn!(error = %e, "the search index is damaged; building it again");
            if let Err(e) = self.rebuild() {
                tracing::error!(error = %e, "the search index could not be built");
                self.set_broken(Some(&e));
            }
        }
        let mut not_before = Instant::now();
        loop {
            let job = self.shared.bell.wait(not_before);
            if job.close {
                for s in job.syncs {
                    let _ = s.send(Err("the search index is closing".into()));
                }
                break;
            }
            if !job.reindex.is_empty() {
                let result = self.rebuild();
                self.set_broken(result.as_ref().err());
                let result = result.map_err(|e| e.to_string());
                for r in job.reindex {
                    let _ = r.send(result.clone());
                }
            }
            let result = self.step().map(drop);
            if let Err(e) = &result {
                tracing::warn!(error = %e, "the search index could not take in the latest changes; trying again");
                if self.shared.engine().verify().is_err() {
                    let _ = self.rebuild();
                }
                self.shared.bell.with(|p| p.wake = true);
                not_before = Instant::now() + RETRY;
            } else {
                not_before = Instant::now() + COMMIT_EVERY;
            }
            let answer = result.map_err(|e| e.to_string());
            for s in job.syncs {
                let _ = s.send(answer.clone());
            }
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.wait_merging_threads();
        }
    }

    /// Records why the index cannot be built (`None`: it was built).
    fn set_broken(&self, error: Option<&SearchError>) {
        if let Ok(mut broken) = self.shared.broken.lock() {
            *broken = error.map(|e| (e.kind(), e.to_string()));
        }
    }

    fn writer(&mut self) -> Result<&mut IndexWriter, SearchError> {
        if self.writer.is_none() {
            self.writer = Some(self.shared.engine().writer()?);
        }
        self.writer.as_mut().ok_or(SearchError::Closed)
    }

    /// Catches up after opening, then checks the index against the inbox.
    fn first_step(&mut self) -> Result<(), SearchError> {
        let issued = self.store.call_blocking(|db| db.max_seq())?;
        if self.mark > issued {
            return Err(SearchError::Damaged(
                "it holds messages the inbox never had (the database was restored?)".into(),
            ));
        }
        self.count_total()?;
        self.step()?;
        let mark = self.mark;
        let count = self.store.call_blocking(move |db| db.search_census(mark))?;
        let held = self.shared.engine().num_docs();
        if held != count {
            return Err(SearchError::Damaged(format!(
                "it holds {held} messages, the inbox {count}"
            )));
        }
        Ok(())
    }

    /// Counts the inbox for [`IndexStatus::total`]: when a catch-up or a rebuild starts, not at
    /// every step (a count of a million rows is not free, and only a progress bar reads it).
    fn count_total(&self) -> Result<(), SearchError> {
        let total = self.store.call_blocking(|db| db.inbox_count())?;
        self.shared.total.store(total, Ordering::Relaxed);
        Ok(())
    }

    /// Lets go of what was deleted or redacted, takes in what is new, commits if anything changed.
    fn step(&mut self) -> Result<bool, SearchError> {
        let engine = self.shared.engine();
        let purges = self.store.call_blocking(|db| db.search_purges())?;
        let mut changed = false;
        if !purges.is_empty() {
            self.purge(&engine, purges)?;
            changed = true;
        }
        let mut added = false;
        loop {
            let after = self.mark;
            let docs = self
                .store
                .call_blocking(move |db| db.search_feed(after, PAGE))?;
            let Some(last) = docs.last().map(|d| d.seq) else {
                break;
            };
            let writer = self.writer()?;
            for d in &docs {
                writer.add_document(engine.document(d))?;
            }
            self.mark = last;
            added = true;
            self.shared
                .indexed
                .fetch_add(docs.len() as u64, Ordering::Relaxed);
            if docs.len() < PAGE as usize {
                break;
            }
        }
        if added {
            let mark = self.mark;
            engine.commit(self.writer()?, mark)?;
            changed = true;
        }
        Ok(changed)
    }

    /// Deletes `purges` from the index (a redacted message goes back in with its metadata only),
    /// commits, merges the segments that held them so that their words leave the files, and
    /// collects the files no longer used; then tells the store.
    fn purge(
        &mut self,
        engine: &Engine,
        purges: Vec<(u64, Option<FeedDoc>)>,
    ) -> Result<(), SearchError> {
        let searcher = engine.reader.searcher();
        let mut segments = HashSet::new();
        for (seq, _) in &purges {
            let term = engine.seq_term(*seq);
            for segment in searcher.segment_readers() {
                let inverted = segment.inverted_index(engine.fields.seq)?;
                if inverted
                    .get_term_info(&term)
                    .map_err(SearchError::Io)?
                    .is_some()
                {
                    segments.insert(segment.segment_id());
                }
            }
        }
        drop(searcher);
        let mark = self.mark;
        let writer = self.writer()?;
        for (seq, doc) in &purges {
            writer.delete_term(engine.seq_term(*seq));
            if let Some(doc) = doc.as_ref().filter(|_| *seq <= mark) {
                writer.add_document(engine.document(doc))?;
            }
        }
        engine.commit(writer, mark)?;
        let live: HashSet<_> = engine.index.searchable_segment_ids()?.into_iter().collect();
        let merge: Vec<_> = segments.into_iter().filter(|s| live.contains(s)).collect();
        if !merge.is_empty() {
            writer.merge(&merge).wait()?;
        }
        engine.reader.reload()?;
        writer.garbage_collect_files().wait()?;
        let seqs: Vec<u64> = purges.iter().map(|(s, _)| *s).collect();
        self.store
            .call_blocking(move |db| db.search_purged(&seqs))?;
        Ok(())
    }

    /// Starts afresh: an empty index, then every message of the inbox.
    fn rebuild(&mut self) -> Result<u64, SearchError> {
        self.shared.rebuilding.store(true, Ordering::Relaxed);
        let result = self.rebuild_inner();
        self.shared.rebuilding.store(false, Ordering::Relaxed);
        result
    }

    fn rebuild_inner(&mut self) -> Result<u64, SearchError> {
        if let Some(writer) = self.writer.take() {
            let _ = writer.wait_merging_threads();
        }
        let engine = Engine::create(&self.dir, self.keys.clone())?;
        if let Ok(mut e) = self.shared.engine.write() {
            *e = Arc::new(engine);
        }
        self.mark = 0;
        self.shared.indexed.store(0, Ordering::Relaxed);
        self.count_total()?;
        // Everything still to purge is gone with the old index.
        let pending: Vec<u64> = self
            .store
            .call_blocking(|db| db.search_purges())?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        self.store
            .call_blocking(move |db| db.search_purged(&pending))?;
        self.step()?;
        if self.mark == 0 {
            // An empty inbox: commit anyway so the index exists on disk.
            let engine = self.shared.engine();
            engine.commit(self.writer()?, 0)?;
        }
        Ok(self.shared.engine().num_docs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MessageId;
    use crate::store::Received;

    fn received(sender: libp2p::PeerId, body: &str) -> Received {
        Received {
            id: MessageId::random(),
            sender,
            sent_at_ms: 1,
            subject: Some("subject line".into()),
            body: body.into(),
            attachments: vec![],
            actions: vec![],
            one_time_key: None,
        }
    }

    async fn ids(search: &Search, store: &Store, q: &str) -> Vec<String> {
        search
            .search(store, q, 100, Sort::Date)
            .await
            .expect("search")
            .into_iter()
            .map(|h| h.item.id().to_owned())
            .collect()
    }

    fn terms(engine: &Engine, field: tantivy::schema::Field) -> Vec<Vec<u8>> {
        let searcher = engine.reader.searcher();
        let mut out = Vec::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field).expect("inverted index");
            let mut stream = inverted.terms().stream().expect("terms");
            while stream.advance() {
                out.push(stream.key().to_vec());
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn newest_first_takes_the_newest_hits_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Arc::new(Keys::generate());
        let store = Store::open(&dir.path().join("pigeon.db"), keys.clone())
            .await
            .expect("store");
        let search = Search::open(&dir.path().join("search"), keys, store.clone())
            .await
            .expect("open");
        let sender = Keys::generate().peer_id();
        // Four commits, so four segments; every third message has the word.
        let mut with_word = Vec::new();
        for round in 0..4u64 {
            let batch: Vec<Received> = (0..15)
                .map(|i| received(sender, if i % 3 == 0 { "common word" } else { "other" }))
                .collect();
            with_word.extend(
                batch
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 3 == 0)
                    .map(|(_, m)| m.id.to_string()),
            );
            store
                .call(move |db| db.store_received(&batch, 1000 + round).map(drop))
                .await
                .expect("store");
            search.sync().await.expect("sync");
        }
        assert!(
            search
                .shared
                .engine()
                .reader
                .searcher()
                .segment_readers()
                .len()
                > 1
        );
        with_word.reverse();
        for limit in [1, 3, 5, 7, 19, 20, 50] {
            let got: Vec<String> = search
                .search(&store, "common", limit, Sort::Date)
                .await
                .expect("search")
                .into_iter()
                .map(|h| h.item.id().to_owned())
                .collect();
            let want: Vec<String> = with_word.iter().take(limit).cloned().collect();
            assert_eq!(got, want, "limit {limit}");
        }
        search.close().await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sent_messages_are_found_with_in_sent_and_to_and_leave_when_redacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Arc::new(Keys::generate());
        let store = Store::open(&dir.path().join("pigeon.db"), keys.clone())
            .await
            .expect("store");
        let (bob, carol) = (Keys::generate(), Keys::generate());
        let (bob_peer, carol_address) = (bob.peer_id(), carol.address());
        let bob_address = bob.address();
        let sent_msg_ids = store
            .call(move |db| {
                db.add_contact("bob", &bob_address, &[])?;
                db.add_contact("carol", &carol_address, &[])?;
                let mut ids = Vec::new();
                for (to, text) in [(&bob, "invoice for bob"), (&carol, "invoice for carol")] {
                    let p = crate::envelope::Payload {
                        id: MessageId::random(),
                        sent_at_ms: 5,
                        subject: None,
                        body: text.into(),
                        attachments: vec![],
                    };
                    let me = Keys::generate();
                    let env =
                        crate::envelope::seal(&me, &to.peer_id(), to.address().enc_public(), &p)
                            .expect("seal");
                    db.enqueue_with_policy(
                        &p.id,
                        &to.peer_id(),
                        &p,
                        &env,
                        &[],
                        5,
                        crate::config::ForwardSecrecy::Off,
                    )?;
                    ids.push(p.id);
                }
                Ok(ids)
            })
            .await
            .expect("send");
        let sent_ids: Vec<String> = sent_msg_ids.iter().map(ToString::to_string).collect();
        let got = received(bob_peer, "an invoice from bob");
        let got_id = got.id.to_string();
        store
            .call(move |db| db.store_received(&[got], 10).map(drop))
            .await
            .expect("store");
        let search = Search::open(&dir.path().join("search"), keys.clone(), store.clone())
            .await
            .expect("open");
        search.sync().await.expect("sync");

        // Received only, unless the query says where to look.
        assert_eq!(
            ids(&search, &store, "invoice").await,
            std::slice::from_ref(&got_id)
        );
        let mut sent_hits = ids(&search, &store, "invoice in:sent").await;
        sent_hits.sort();
        let mut want = sent_ids.clone();
        want.sort();
        assert_eq!(sent_hits, want);
        assert_eq!(
            ids(&search, &store, "to:carol").await,
            std::slice::from_ref(&sent_ids[1])
        );
        assert_eq!(ids(&search, &store, "invoice in:all").await.len(), 3);
        assert_eq!(
            ids(&search, &store, "from:bob in:all").await,
            std::slice::from_ref(&got_id)
        );
        let hit = &search
            .search(&store, "invoice to:bob", 10, Sort::Date)
            .await
            .expect("search")[0];
        assert!(
            matches!(&hit.item, Listed::Sent(i) if i.to == "bob"),
            "{hit:?}"
        );
        assert_eq!(hit.snippet, "[invoice] for bob");

        // Redacted, its words leave the index; its metadata stays findable.
        let (id, msg_id) = (sent_ids[0].clone(), sent_msg_ids[0]);
        store
            .call(move |db| {
                db.mark_delivered(&[msg_id], 20)?;
                db.redact_sent(&id, 30).map(drop)
            })
            .await
            .expect("redact");
        search.sync().await.expect("sync");
        assert_eq!(
            ids(&search, &store, "invoice to:bob").await,
            Vec::<String>::new()
        );
        assert_eq!(
            ids(&search, &store, "to:bob").await,
            std::slice::from_ref(&sent_ids[0])
        );
        search.close().await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_and_redacted_words_leave_every_segment_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Arc::new(Keys::generate());
        let store = Store::open(&dir.path().join("pigeon.db"), keys.clone())
            .await
            .expect("store");
        let sender = Keys::generate().peer_id();
        let batch = vec![
            received(sender, "alpha redactedterm"),
            received(sender, "beta deletedterm"),
            received(sender, "gamma keptterm"),
        ];
        let ids_of: Vec<String> = batch.iter().map(|m| m.id.to_string()).collect();
        store
            .call(move |db| db.store_received(&batch, 1000).map(drop))
            .await
            .expect("store");
        let index = dir.path().join("search");
        let search = Search::open(&index, keys.clone(), store.clone())
            .await
            .expect("open");
        search.sync().await.expect("sync");
        assert_eq!(
            ids(&search, &store, "redactedterm").await,
            [ids_of[0].clone()]
        );
        // More segments, so that the merge has to pick the right one.
        let more = vec![received(sender, "delta later")];
        store
            .call(move |db| db.store_received(&more, 2000).map(drop))
            .await
            .expect("store");
        search.sync().await.expect("sync");

        let (r, d) = (ids_of[0].clone(), ids_of[1].clone());
        store
            .call(move |db| {
                db.redact_message(&r, 3000)?;
                db.remove_message(&d)
            })
            .await
            .expect("scrub");
        search.sync().await.expect("sync");
        assert!(ids(&search, &store, "redactedterm").await.is_empty());
        assert!(ids(&search, &store, "deletedterm").await.is_empty());
        assert_eq!(ids(&search, &store, "keptterm").await, [ids_of[2].clone()]);
        let engine = search.shared.engine();
        let words = terms(&engine, engine.fields.text);
        for gone in ["redactedterm", "alpha", "deletedterm", "beta"] {
            assert!(
                !words.contains(&gone.as_bytes().to_vec()),
                "{gone} is still a term"
            );
        }
        assert!(words.contains(&b"keptterm".to_vec()));
        // The redacted message is still there for filters; the deleted one is not.
        assert_eq!(engine.num_docs(), 3);
        // No file of an older segment is left.
        let live: HashSet<String> = engine
            .index
            .searchable_segment_ids()
            .expect("segments")
            .into_iter()
            .map(|s| s.uuid_string())
            .collect();
        for entry in std::fs::read_dir(&index)
            .expect("dir")
            .map_while(Result::ok)
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or_default().to_owned();
            assert!(
                name == "meta.json" || name == ".managed.json" || live.contains(&stem),
                "{name} is left over"
            );
        }
        assert_eq!(
            store
                .call(|db| db.search_purges())
                .await
                .expect("purges")
                .len(),
            0
        );
        search.close().await;

        // Reopened: caught up from its mark, the same answers.
        let search = Search::open(&index, keys, store.clone())
            .await
            .expect("reopen");
        assert_eq!(ids(&search, &store, "keptterm").await, [ids_of[2].clone()]);
        assert_eq!(ids(&search, &store, "delta").await.len(), 1);
        search.close().await;
        store.close().await;
    }
}
