//! `pigeon bench search`: how fast the inbox index takes messages in and answers queries.
//!
//! A temporary home's inbox is filled with N generated messages through the store's receive path
//! (sealed like real ones): bodies and subjects drawn from a Zipf-distributed vocabulary of
//! pronounceable words, sizes from a few words to a few pages, eight senders, six labels on about
//! a third of the messages, most of them read, arrival times spread over three years. Then:
//!
//! 1. indexing: a fresh index follows the inbox from nothing (read, open, index, commit), timed;
//! 2. first query: store and index closed and opened again (as after an unlock), the time until
//!    the first query is answered;
//! 3. queries: a mix of one word, AND, OR, phrase, prefix, and filter + word, each many times with
//!    different words, timed end to end (the hits' rows read and decrypted, snippets made).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::envelope::MessageId;
use crate::error::{Error, Result};
use crate::inbox::rules::Action;
use crate::inbox::search::{Search, Sort};
use crate::keys::Keys;
use crate::store::{Received, Store};

/// Words in the vocabulary.
const VOCABULARY: usize = 30_000;
/// Zipf exponent (natural language is close to 1).
const ZIPF_S: f64 = 1.05;
/// Messages stored per transaction while filling the inbox.
const FILL_BATCH: usize = 1000;
/// Runs of each query kind.
const RUNS: usize = 200;
/// Hits asked for per query (a screenful).
const LIMIT: usize = 20;

/// Figures for one kind of query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryFigures {
    /// What kind.
    pub kind: &'static str,
    /// An example of it.
    pub example: String,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean hits returned (at most the limit).
    pub mean_hits: f64,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct SearchRun {
    /// Messages in the inbox.
    pub messages: usize,
    /// Seconds to fill the inbox (not the index's work).
    pub fill_seconds: f64,
    /// Seconds for a fresh index to take every message in.
    pub index_seconds: f64,
    /// Messages indexed per second.
    pub index_per_second: f64,
    /// From opening store and index (keys already unlocked) to the first answered query, ms.
    pub first_query_ms: f64,
    /// Each query kind.
    pub queries: Vec<QueryFigures>,
    /// All queries together: p50 and p99, ms.
    pub all_p50_ms: f64,
    /// All queries together: p99, ms.
    pub all_p99_ms: f64,
    /// The index on disk, bytes.
    pub index_bytes: u64,
    /// The database on disk, bytes.
    pub database_bytes: u64,
}

struct Corpus {
    words: Vec<String>,
    /// Cumulative Zipf weights, for sampling by rank.
    cumulative: Vec<f64>,
}

impl Corpus {
    fn new(rng: &mut StdRng) -> Corpus {
        const ONSETS: [&str; 16] = [
            "b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "br", "st", "tr",
        ];
        const VOWELS: [&str; 8] = ["a", "e", "i", "o", "u", "ai", "ou", "é"];
        let mut words = Vec::with_capacity(VOCABULARY);
        let mut seen = std::collections::HashSet::new();
        while words.len() < VOCABULARY {
            let syllables = rng.gen_range(1..=4);
            let w: String = (0..syllables)
                .map(|_| {
                    format!(
                        "{}{}",
                        ONSETS[rng.gen_range(0..ONSETS.len())],
                        VOWELS[rng.gen_range(0..VOWELS.len())]
                    )
                })
                .collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let mut cumulative = Vec::with_capacity(VOCABULARY);
        let mut total = 0.0;
        for rank in 1..=VOCABULARY {
            total += 1.0 / (rank as f64).powf(ZIPF_S);
            cumulative.push(total);
        }
        Corpus { words, cumulative }
    }

    fn word(&self, rng: &mut StdRng) -> &str {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.gen_range(0.0..total);
        let rank = self.cumulative.partition_point(|&c| c < x);
        &self.words[rank.min(VOCABULARY - 1)]
    }

    fn text(&self, rng: &mut StdRng, words: usize) -> String {
        let mut out = String::with_capacity(words * 7);
        for i in 0..words {
            if i > 0 {
                out.push(if i % 12 == 0 { '\n' } else { ' ' });
            }
            let w = self.word(rng);
            if i % 9 == 0 {
                let mut c = w.chars();
                if let Some(first) = c.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(c.as_str());
                }
            } else {
                out.push_str(w);
            }
        }
        out
    }
}

/// Words per body: mostly short notes, some letters, a few long documents.
fn body_words(rng: &mut StdRng) -> usize {
    match rng.gen_range(0..100) {
        0..=59 => rng.gen_range(5..40),
        60..=94 => rng.gen_range(40..300),
        _ => rng.gen_range(300..2000),
    }
}

const LABELS: [&str; 6] = ["work", "family", "receipts", "travel", "alerts", "later"];

/// Stores `messages` generated messages in `store`'s inbox, from `senders`, spread over three
/// years, in transactions of [`FILL_BATCH`].
async fn fill(
    store: &Store,
    messages: usize,
    rng: &mut StdRng,
    corpus: &Corpus,
    senders: &[libp2p::PeerId],
) -> Result<()> {
    let now = crate::store::now_ms();
    let span = 3 * 365 * 24 * 3600 * 1000u64;
    let mut done = 0;
    while done < messages {
        let n = FILL_BATCH.min(messages - done);
        let batch: Vec<Received> = (0..n)
            .map(|_| {
                let mut actions = Vec::new();
                if rng.gen_bool(0.33) {
                    actions.push(Action::AddLabel(
                        LABELS[rng.gen_range(0..LABELS.len())].to_owned(),
                    ));
                }
                if rng.gen_bool(0.7) {
                    actions.push(Action::MarkRead);
                }
                let words = body_words(rng);
                Received {
                    id: MessageId::random(),
                    sender: senders[rng.gen_range(0..senders.len())],
                    sent_at_ms: now,
                    subject: rng.gen_bool(0.7).then(|| {
                        let n = rng.gen_range(2..7);
                        corpus.text(rng, n)
                    }),
                    body: corpus.text(rng, words),
                    attachments: Vec::new(),
                    actions,
                    one_time_key: None,
                }
            })
            .collect();
        let at = now - span + span * done as u64 / messages.max(1) as u64;
        store
            .call(move |db| db.store_received(&batch, at).map(drop))
            .await?;
        done += n;
    }
    Ok(())
}

/// Fills `store`'s inbox with `messages` generated messages from eight senders (seeded: every
/// run fills the same inbox), as `bench search` does.
pub(super) async fn fill_inbox(store: &Store, messages: usize) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let corpus = Corpus::new(&mut rng);
    let senders: Vec<libp2p::PeerId> = (0..8).map(|_| Keys::generate().peer_id()).collect();
    fill(store, messages, &mut rng, &corpus, &senders).await
}

/// Fills, indexes and queries an inbox of `messages` messages in a temporary directory.
pub async fn search(messages: usize) -> Result<SearchRun> {
    let dir = tempfile::tempdir().map_err(Error::io("a temporary directory"))?;
    let db_path = dir.path().join("pigeon.db");
    let index_dir = dir.path().join("search");
    let keys = Arc::new(Keys::generate());
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let corpus = Corpus::new(&mut rng);
    let senders: Vec<libp2p::PeerId> = (0..8).map(|_| Keys::generate().peer_id()).collect();

    let store = Store::open(&db_path, keys.clone()).await?;
    let filled = Instant::now();
    fill(&store, messages, &mut rng, &corpus, &senders).await?;
    let fill_seconds = filled.elapsed().as_secs_f64();

    let indexing = Instant::now();
    let search = Search::open(&index_dir, keys.clone(), store.clone()).await?;
    search.sync().await?;
    let index_seconds = indexing.elapsed().as_secs_f64();
    search.close().await;
    store.close().await;

    let opened = Instant::now();
    let store = Store::open(&db_path, keys.clone()).await?;
    let search = Search::open(&index_dir, keys.clone(), store.clone()).await?;
    let first = corpus.words[40].clone();
    search.search(&store, &first, LIMIT, Sort::Date).await?;
    let first_query_ms = opened.elapsed().as_secs_f64() * 1e3;

    let by_rank =
        |rng: &mut StdRng, from: usize, to: usize| corpus.words[rng.gen_range(from..to)].clone();
    type MakeQuery<'a> = Box<dyn Fn(&mut StdRng) -> String + 'a>;
    let kinds: Vec<(&'static str, MakeQuery<'_>)> = vec![
        ("one word", Box::new(move |r| by_rank(r, 10, 2000))),
        (
            "AND",
            Box::new(move |r| format!("{} {}", by_rank(r, 10, 500), by_rank(r, 10, 500))),
        ),
        (
            "OR",
            Box::new(move |r| format!("{} OR {}", by_rank(r, 50, 3000), by_rank(r, 50, 3000))),
        ),
        (
            "phrase",
            Box::new(move |r| format!("\"{} {}\"", by_rank(r, 0, 30), by_rank(r, 0, 30))),
        ),
        (
            "prefix",
            Box::new(move |r| {
                let w = by_rank(r, 10, 1000);
                let stem: String = w.chars().take(3).collect();
                format!("{stem}*")
            }),
        ),
        (
            "label + word",
            Box::new(move |r| {
                format!(
                    "label:{} {}",
                    LABELS[r.gen_range(0..LABELS.len())],
                    by_rank(r, 10, 1000)
                )
            }),
        ),
        (
            "from + word",
            Box::new(move |r| {
                format!(
                    "from:{} {}",
                    senders[r.gen_range(0..8)],
                    by_rank(r, 10, 1000)
                )
            }),
        ),
        (
            "is:unread + word",
            Box::new(move |r| format!("is:unread {}", by_rank(r, 10, 1000))),
        ),
    ];
    let mut queries = Vec::new();
    let mut all = Vec::new();
    for (kind, make) in &kinds {
        let mut times = Vec::with_capacity(RUNS);
        let mut hits = 0usize;
        let example = make(&mut rng);
        for _ in 0..RUNS {
            let q = make(&mut rng);
            let started = Instant::now();
            hits += search.search(&store, &q, LIMIT, Sort::Date).await?.len();
            times.push(started.elapsed());
        }
        all.extend_from_slice(&times);
        queries.push(QueryFigures {
            kind,
            example,
            p50_ms: percentile(&mut times, 0.50),
            p99_ms: percentile(&mut times, 0.99),
            mean_hits: hits as f64 / RUNS as f64,
        });
    }
    search.close().await;
    store.close().await;
    Ok(SearchRun {
        messages,
        fill_seconds,
        index_seconds,
        index_per_second: messages as f64 / index_seconds.max(1e-9),
        first_query_ms,
        all_p50_ms: percentile(&mut all, 0.50),
        all_p99_ms: percentile(&mut all, 0.99),
        queries,
        index_bytes: dir_size(&index_dir),
        database_bytes: dir_size(dir.path()) - dir_size(&index_dir),
    })
}

fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    if times.is_empty() {
        return 0.0;
    }
    let at = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
    times[at].as_secs_f64() * 1e3
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
