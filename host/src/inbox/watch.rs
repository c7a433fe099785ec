//! `inbox watch`: each message as it is stored, in the order stored, optionally only those a
//! search query matches; and, if asked, each message sent and each change of a sent message's
//! delivery state.
//!
//! Nothing is pushed to a watcher. It keeps where it has got to (the inbox's seq, the sent
//! history's last row, the states of sent messages still on their way), sleeps on
//! [`Store::changes`] (a counter that never blocks the store: a slow watcher just sees a later
//! value), and reads from the store what came after. So a watcher that is slow to write its
//! lines holds up only itself, and it never skips or repeats a message.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::query::{self, Query};
use super::search::LazySearch;
use crate::error::Result;
use crate::store::{OutboxState, Said, Store, StoreError};

/// Messages read from the store per round trip.
const PAGE: u32 = 100;
/// After a change, how long a watcher waits before it looks (changes meanwhile come in the same
/// look); also the most a message waits to be told, beyond the store's own commit.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// What to watch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// Only received messages this search query matches.
    #[serde(default)]
    pub query: Option<String>,
    /// Start after this received message (its id, or a unique prefix) instead of now.
    #[serde(default)]
    pub since: Option<String>,
    /// Also what is sent, and each change of its delivery state.
    #[serde(default)]
    pub sent: bool,
}

/// A watch under way.
pub struct Watcher {
    store: Store,
    search: LazySearch,
    query: Option<Query>,
    changes: watch::Receiver<u64>,
    /// The seq of the last received message looked at.
    seq: u64,
    sent: Option<SentWatch>,
}

/// Where a watch of the sent history has got to.
struct SentWatch {
    /// The last row of the history looked at.
    row: i64,
    /// Messages not yet delivered, with the state last told.
    open: HashMap<String, OutboxState>,
}

impl Watcher {
    /// Starts a watch: from now, or after `spec.since`. A query that does not parse, or a
    /// `since` that names no message, is refused here, before anything is told.
    pub async fn start(store: Store, search: LazySearch, spec: WatchSpec) -> Result<Watcher> {
        let query = spec
            .query
            .as_deref()
            .map(query::parse)
            .transpose()
            .map_err(|e| crate::error::Error::from(super::search::SearchError::from(e)))?;
        // Subscribed before the starting point is read, so no change after it is missed.
        let changes = store.changes();
        let since = spec.since;
        let want_sent = spec.sent;
        let (seq, sent) = store
            .call(move |db| {
                let seq = match since {
                    Some(id) => db.seq_of(&id)?,
                    None => db.max_seq()?,
                };
                let sent = if want_sent {
                    Some(SentWatch {
                        row: db.sent_mark()?,
                        open: db.sent_open()?.into_iter().collect(),
                    })
                } else {
                    None
                };
                Ok((seq, sent))
            })
            .await?;
        if query.is_some() {
            // Opened now, so that a damaged index says so at the start.
            search.get().await?;
        }
        Ok(Watcher {
            store,
            search,
            query,
            changes,
            seq,
            sent,
        })
    }

    /// The next things seen, waiting until there are some. `Err` when the store closes.
    pub async fn next(&mut self) -> Result<Vec<Said>> {
        loop {
            let (events, more) = self.poll().await?;
            if !events.is_empty() {
                return Ok(events);
            }
            if !more {
                self.changes
                    .changed()
                    .await
                    .map_err(|_| StoreError::Closed)?;
                // The outbox changes with every attempt and ack: during a drain, one look per
                // [`LOOK_EVERY`] takes in many changes and keeps the store thread free.
                tokio::time::sleep(LOOK_EVERY).await;
            }
        }
    }

    /// What came since the last look, at most a page of each kind; `more` if there is more.
    async fn poll(&mut self) -> Result<(Vec<Said>, bool)> {
        let after = self.seq;
        let batch = self
            .store
            .call(move |db| db.inbox_after(after, PAGE))
            .await?;
        let more = batch.len() == PAGE as usize;
        let mut out = Vec::new();
        if let Some(&(last, _)) = batch.last() {
            let keep: Option<HashSet<u64>> = match &self.query {
                Some(q) => {
                    let search = self.search.get().await?;
                    let seqs = search.matching(&self.store, q, after, last).await?;
                    Some(seqs.into_iter().collect())
                }
                None => None,
            };
            self.seq = last;
            out.extend(
                batch
                    .into_iter()
                    .filter(|(seq, _)| keep.as_ref().is_none_or(|k| k.contains(seq)))
                    .map(|(_, m)| Said::Received(m)),
            );
        }
        let Some(sent) = self.sent.take() else {
            return Ok((out, more));
        };
        let (sent, items, more_sent) = self
            .store
            .call(move |db| {
                let mut sent = sent;
                let mut items = Vec::new();
                let new = db.sent_after(sent.row, PAGE)?;
                let more = new.len() == PAGE as usize;
                for (row, view) in new {
                    sent.row = row;
                    if view.item.state != OutboxState::Delivered {
                        sent.open.insert(view.item.id.clone(), view.item.state);
                    }
                    items.push(view);
                }
                let ids: Vec<String> = sent.open.keys().cloned().collect();
                let states = db.sent_states(&ids)?;
                for (id, state) in ids.into_iter().zip(states) {
                    match state {
                        // Deleted from the history: nothing more to tell of it.
                        None => {
                            sent.open.remove(&id);
                        }
                        Some(state) if sent.open.get(&id) != Some(&state) => {
                            if state == OutboxState::Delivered {
                                sent.open.remove(&id);
                            } else {
                                sent.open.insert(id.clone(), state);
                            }
                            items.push(db.sent_message(&id)?);
                        }
                        Some(_) => {}
                    }
                }
                Ok((sent, items, more))
            })
            .await?;
        self.sent = Some(sent);
        out.extend(items.into_iter().map(Said::Sent));
        Ok((out, more || more_sent))
    }
}
