//! Forward secrecy's traffic in one-time keys: handing fresh ones to a contact that asks
//! (`/pigeon/otk/2`, or `/1` with older nodes), and asking a contact for more when this node's
//! pool of its keys runs low.
//!
//! The keys themselves are [`crate::keys::one_time`]; where they are kept, [`crate::store`]
//! (`store/one_time.rs`). A secret is stored durably before its key is handed out, so that a
//! message sealed to any key handed out can be opened; a received key is kept only once its
//! owner's signature for this node checks out.

use std::sync::Arc;

use libp2p::PeerId;

use crate::keys::Keys;
use crate::keys::one_time::{self, SignedKey};
use crate::net::Net;
use crate::net::protocol::{MAX_HELD_IDS, MAX_ONE_TIME_KEYS, OtkId, OtkRequest};
use crate::store::{ONE_TIME_KEYS_PER_CONTACT, Store, now_ms};

// A contact can list every key of this node's it may hold.
const _: () = assert!(ONE_TIME_KEYS_PER_CONTACT as usize <= MAX_HELD_IDS);

/// A contact's keys are asked for when this node holds fewer than this many of them.
pub const POOL_LOW: u64 = 16;
/// A received key must have at least this long to live (a contact cannot make this node keep
/// asking by handing out keys that expire at once)...
const MIN_KEY_LIFE_MS: u64 = 3600 * 1000;
/// ... and at most this long (matching `delivery.one_time_key_lifetime`'s bound).
const MAX_KEY_LIFE_MS: u64 = crate::config::MAX_ONE_TIME_KEY_LIFETIME_MS;

/// The keys to answer `request` from `peer` (a contact: the protocol is gated) with: fresh ones,
/// as many as asked up to what the contact may hold unused, their secrets stored first. None when
/// anything fails: the contact asks again at its next connection.
pub async fn hand_out(
    keys: &Arc<Keys>,
    store: &Store,
    peer: PeerId,
    request: &OtkRequest,
    lifetime_ms: u64,
) -> Vec<SignedKey> {
    let now = now_ms();
    let held = request.held.map(u64::from);
    let held_ids: Option<Vec<[u8; 16]>> = request
        .held_ids
        .as_ref()
        .map(|ids| ids.iter().map(|id| id.0).collect());
    let out = match store
        .call(move |db| {
            let lost = match (held_ids, held) {
                (Some(ids), _) => db.forget_secrets_not_held(&peer, &ids, now)?,
                (None, Some(held)) => db.forget_lost_secrets(&peer, held, now)?,
                (None, None) => 0,
            };
            if lost > 0 {
                tracing::info!(%peer, lost, "a contact lost one-time keys of this node; forgot them");
            }
            db.one_time_secrets_out(&peer, now)
        })
        .await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot count the one-time keys handed out");
            return Vec::new();
        }
    };
    let n = u64::from(request.want.min(MAX_ONE_TIME_KEYS))
        .min(ONE_TIME_KEYS_PER_CONTACT.saturating_sub(out)) as usize;
    if n == 0 {
        return Vec::new();
    }
    let maker = keys.clone();
    let expires = now.saturating_add(lifetime_ms);
    let made = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| one_time::make(&maker, &peer, expires))
            .unzip::<_, _, Vec<_>, Vec<_>>()
    })
    .await;
    let Ok((secrets, signed)) = made else {
        return Vec::new();
    };
    match store
        .call(move |db| db.store_one_time_secrets(&peer, &secrets, now))
        .await
    {
        Ok(stored) => {
            // Only the keys whose secrets were stored go out (concurrent requests share the bound).
            let mut signed = signed;
            signed.truncate(stored);
            tracing::debug!(%peer, keys = signed.len(), "handed out one-time keys");
            signed
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot store one-time keys; none handed out");
            Vec::new()
        }
    }
}

/// What [`refresh`] needs of the node, and the contacts being asked for keys right now.
#[derive(Clone)]
pub struct Refresher {
    keys: Arc<Keys>,
    store: Store,
    net: Net,
    waker: crate::delivery::Waker,
    /// One request per contact at a time: two at once would both say how many keys this node
    /// holds before either answer is kept, and the second would make the contact forget the
    /// first's keys as lost. (One entry per contact ever asked: bounded by the contacts.)
    asking: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Refresher {
    /// A refresher for the node with these parts.
    pub fn new(
        keys: Arc<Keys>,
        store: Store,
        net: Net,
        waker: crate::delivery::Waker,
    ) -> Refresher {
        Refresher {
            keys,
            store,
            net,
            waker,
            asking: Default::default(),
        }
    }
}

/// Tops up the pool of `peer`'s one-time keys ([`replenish`], after any request to `peer` already
/// under way: the second then usually finds the pool full) and seals the messages to it that wait for one, waking the send loop for
/// them. Returns how many messages it sealed.
pub async fn refresh(r: &Refresher, peer: PeerId) -> usize {
    let turn = r
        .asking
        .lock()
        .map(|mut a| a.entry(peer).or_default().clone())
        .ok();
    if let Some(turn) = turn {
        let _turn = turn.lock().await;
        replenish(&r.keys, &r.store, &r.net, peer).await;
    }
    match r
        .store
        .call(move |db| db.seal_waiting(&peer, now_ms()))
        .await
    {
        Ok(0) => 0,
        Ok(sealed) => {
            tracing::debug!(%peer, sealed, "sealed messages that waited for a one-time key");
            r.waker.peer_connected(peer);
            sealed
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot seal the messages waiting for a one-time key");
            0
        }
    }
}

/// How often a node with messages waiting for one-time keys asks their recipients again (a
/// recipient that comes online does not know it is awaited; a connection to it asks at once).
pub const WAITING_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);
/// At most this many recipients are asked per round.
const WAITING_PEERS_PER_ROUND: usize = 64;

/// Until `cancel`: every [`WAITING_RECHECK`], asks the recipients of messages waiting for a
/// one-time key for keys (dialing them), and seals what then can be.
pub async fn run_waiting(r: Refresher, cancel: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(WAITING_RECHECK) => {}
        }
        let peers = match r.store.call(|db| db.waiting_peers()).await {
            Ok(peers) => peers,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the messages waiting for one-time keys");
                continue;
            }
        };
        for peer in peers.into_iter().take(WAITING_PEERS_PER_ROUND) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = refresh(&r, peer) => {}
            }
        }
    }
}

/// Counts a contact's answer to a request for one-time keys.
fn answered(result: &str) {
    crate::metrics::METRICS
        .one_time_key_answers
        .with_label_values(&[result])
        .inc();
}

/// Asks `peer` for one-time keys if this node holds fewer than [`POOL_LOW`] of them, and keeps
/// those that check out (signed by the contact for this node, usable, with between an hour and a
/// year to live). Returns how many it kept.
pub async fn replenish(keys: &Arc<Keys>, store: &Store, net: &Net, peer: PeerId) -> usize {
    let now = now_ms();
    let (held, unused) = match store
        .call(move |db| {
            let unused = db.pool_keys(&peer, now)?;
            if unused >= POOL_LOW {
                return Ok(None);
            }
            Ok(Some((db.one_time_keys_held(&peer, now)?, unused)))
        })
        .await
    {
        Ok(Some(n)) => n,
        Ok(None) => return 0,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot count the one-time keys held; none asked for");
            return 0;
        }
    };
    let want = ONE_TIME_KEYS_PER_CONTACT
        .saturating_sub(unused)
        .min(u64::from(MAX_ONE_TIME_KEYS)) as u16;
    let ids = held
        .ids
        .map(|ids| ids.into_iter().map(OtkId).collect::<Vec<_>>());
    let held = Some(held.count.min(u64::from(u16::MAX)) as u16);
    let addrs = store
        .call(move |db| db.dial_addrs(&peer, now))
        .await
        .unwrap_or_default();
    let response = match net.fetch_one_time_keys(peer, addrs, want, held, ids).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "could not fetch one-time keys");
            answered("failed");
            return 0;
        }
    };
    let Ok(Some(contact)) = store.call(move |db| db.contact_by_peer(&peer)).await else {
        return 0;
    };
    let me = keys.peer_id();
    let (good, bad): (Vec<SignedKey>, Vec<SignedKey>) = response
        .keys
        .into_iter()
        .take(usize::from(want))
        .partition(|k| {
            one_time::verify(k, &contact.address, &me, now).is_ok()
                && (MIN_KEY_LIFE_MS..=MAX_KEY_LIFE_MS)
                    .contains(&k.expires_at_ms.saturating_sub(now))
        });
    let result = if bad.is_empty() {
        "kept"
    } else {
        tracing::warn!(%peer, refused = bad.len(), "a contact's one-time keys did not check out; refused them");
        "refused"
    };
    let kept = store
        .call(move |db| db.add_pool_keys(&peer, &good, now))
        .await;
    answered(result);
    match kept {
        Ok(kept) => {
            tracing::debug!(%peer, kept, "kept one-time keys");
            kept
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot keep one-time keys");
            0
        }
    }
}
