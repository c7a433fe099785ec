//! The peer health cache: per address, decaying counts of successful and failed dials and the
//! ping round-trip time, kept in the database so it survives restarts.
//!
//! Counts halve every [`HALF_LIFE_MS`], so an address that failed all of last week but works now
//! is trusted again within hours. Dialing tries the healthiest addresses first.

use std::collections::BTreeMap;

use libp2p::{Multiaddr, PeerId};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Db, StoreError, format_time};

/// Counts lose half their weight this often.
pub(crate) const HALF_LIFE_MS: u64 = 6 * 3600 * 1000;
/// Weight of a new RTT sample in the moving average.
const RTT_ALPHA: f64 = 0.3;

/// One address's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddrHealth {
    /// The address.
    pub addr: String,
    /// Decayed count of successful connections.
    pub successes: f64,
    /// Decayed count of failed dials.
    pub failures: f64,
    /// Moving average of ping round trips, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Laplace-smoothed success ratio used to order dials (0 to 1).
    pub score: f64,
    /// When it was last updated (RFC 3339).
    pub updated_at: String,
}

/// A peer's addresses, for `pigeon peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerHealth {
    /// PeerId.
    pub peer_id: String,
    /// Contact name, if it is a contact.
    pub name: Option<String>,
    /// Whether a connection is up now (only known while the node runs).
    pub connected: bool,
    /// Its connections now: direct or relayed, and how each came about (only while the node
    /// runs).
    #[serde(default)]
    pub connections: Vec<crate::net::Link>,
    /// Addresses, healthiest first.
    pub addrs: Vec<AddrHealth>,
}

/// A stored row: successes, failures, RTT, and when they were last updated.
type HealthRow = (f64, f64, Option<f64>, u64);

fn decay(value: f64, since: u64, now: u64) -> f64 {
    let elapsed = now.saturating_sub(since) as f64;
    value * 0.5f64.powf(elapsed / HALF_LIFE_MS as f64)
}

fn score(successes: f64, failures: f64) -> f64 {
    (successes + 1.0) / (successes + failures + 2.0)
}

impl Db {
    /// Records a dial to `addr` that connected (`ok`) or failed.
    pub fn record_dial(
        &mut self,
        peer: &PeerId,
        addr: &Multiaddr,
        ok: bool,
        now: u64,
    ) -> Result<(), StoreError> {
        let (succ, fail, rtt, at) = self
            .health_row(peer, addr)?
            .unwrap_or((0.0, 0.0, None, now));
        let (mut succ, mut fail) = (decay(succ, at, now), decay(fail, at, now));
        if ok {
            succ += 1.0;
        } else {
            fail += 1.0;
        }
        self.write_health(peer, addr, succ, fail, rtt, now)
    }

    /// Records a ping round trip over a connection to `addr`.
    pub fn record_rtt(
        &mut self,
        peer: &PeerId,
        addr: &Multiaddr,
        rtt_ms: f64,
        now: u64,
    ) -> Result<(), StoreError> {
        let (succ, fail, rtt, at) = self
            .health_row(peer, addr)?
            .unwrap_or((1.0, 0.0, None, now));
        let rtt = Some(rtt.map_or(rtt_ms, |old| old + RTT_ALPHA * (rtt_ms - old)));
        self.write_health(
            peer,
            addr,
            decay(succ, at, now),
            decay(fail, at, now),
            rtt,
            now,
        )
    }

    /// Where to dial `peer`: its contact addresses and the ones it was reached at, healthiest first
    /// (ties broken by round-trip time).
    pub fn dial_addrs(&self, peer: &PeerId, now: u64) -> Result<Vec<Multiaddr>, StoreError> {
        let mut ranked: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for addr in self.addrs_of(peer)? {
            ranked.insert(addr.to_string(), (0.5, f64::MAX));
        }
        for h in self.addr_health(peer, now)? {
            ranked.insert(h.addr, (h.score, h.rtt_ms.unwrap_or(f64::MAX)));
        }
        let mut list: Vec<(String, (f64, f64))> = ranked.into_iter().collect();
        list.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then(a.1.1.total_cmp(&b.1.1)));
        Ok(list
            .into_iter()
            .filter_map(|(a, _)| a.parse().ok())
            .collect())
    }

    /// The health of each address known for `peer`, healthiest first.
    pub fn addr_health(&self, peer: &PeerId, now: u64) -> Result<Vec<AddrHealth>, StoreError> {
        addr_health(&self.conn, peer, now)
    }

    /// Every peer with a health record or a contact entry.
    pub fn peers_health(&self, now: u64) -> Result<Vec<PeerHealth>, StoreError> {
        peers_health(&self.conn, now)
    }

    fn health_row(&self, peer: &PeerId, addr: &Multiaddr) -> Result<Option<HealthRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT successes, failures, rtt_ms, updated_at FROM addr_health WHERE peer_id = ?1 AND addr = ?2",
                params![peer.to_string(), addr.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64)),
            )
            .optional()?)
    }

    fn write_health(
        &mut self,
        peer: &PeerId,
        addr: &Multiaddr,
        successes: f64,
        failures: f64,
        rtt_ms: Option<f64>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO addr_health (peer_id, addr, successes, failures, rtt_ms, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (peer_id, addr) DO UPDATE SET successes = ?3, failures = ?4, rtt_ms = ?5, updated_at = ?6",
            params![peer.to_string(), addr.to_string(), successes, failures, rtt_ms, now as i64],
        )?;
        Ok(())
    }
}

/// Each address of `peer` with its decayed counts and score, best first.
pub(super) fn addr_health(
    conn: &rusqlite::Connection,
    peer: &PeerId,
    now: u64,
) -> Result<Vec<AddrHealth>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT addr, successes, failures, rtt_ms, updated_at FROM addr_health WHERE peer_id = ?1",
    )?;
    let rows = stmt.query_map([peer.to_string()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (addr, succ, fail, rtt_ms, at): (String, f64, f64, Option<f64>, i64) = row?;
        let (succ, fail) = (decay(succ, at as u64, now), decay(fail, at as u64, now));
        out.push(AddrHealth {
            addr,
            successes: succ,
            failures: fail,
            rtt_ms,
            score: score(succ, fail),
            updated_at: format_time(at as u64),
        });
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(out)
}

/// Every peer with a health record or a contact entry (no connection known: that is the node's).
pub(super) fn peers_health(
    conn: &rusqlite::Connection,
    now: u64,
) -> Result<Vec<PeerHealth>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT p.peer_id, c.name FROM (SELECT peer_id FROM addr_health UNION SELECT peer_id FROM contacts) p
         LEFT JOIN contacts c ON c.peer_id = p.peer_id ORDER BY c.name IS NULL, c.name, p.peer_id",
    )?;
    let rows: Vec<(String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (peer_id, name) in rows {
        let peer: PeerId = peer_id
            .parse()
            .map_err(|_| StoreError::Corrupt("peer id"))?;
        out.push(PeerHealth {
            addrs: addr_health(conn, &peer, now)?,
            peer_id,
            name,
            connected: false,
            connections: Vec::new(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use crate::store::test_support::temp_db;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}")
            .parse()
            .expect("multiaddr")
    }

    #[test]
    fn healthy_addresses_come_first_and_failures_fade() {
        let (_dir, mut db, _keys) = temp_db();
        let bob = Keys::generate();
        db.add_contact("bob", &bob.address(), &[addr(1), addr(2), addr(3)])
            .expect("contact");
        let peer = bob.peer_id();
        let t0 = 1_000_000;
        for _ in 0..5 {
            db.record_dial(&peer, &addr(1), false, t0).expect("fail");
        }
        db.record_dial(&peer, &addr(2), true, t0).expect("ok");
        db.record_rtt(&peer, &addr(2), 3.0, t0).expect("rtt");
        // 2 has worked, 3 is unknown, 1 keeps failing.
        assert_eq!(
            db.dial_addrs(&peer, t0).expect("order"),
            vec![addr(2), addr(3), addr(1)]
        );
        // Four half-lives later the failures weigh a sixteenth; one success puts 1 back on top of 3.
        let later = t0 + 4 * HALF_LIFE_MS;
        db.record_dial(&peer, &addr(1), true, later).expect("ok");
        let h = db.addr_health(&peer, later).expect("health");
        let one = h
            .iter()
            .find(|h| h.addr == addr(1).to_string())
            .expect("addr 1");
        assert!((one.failures - 5.0 / 16.0).abs() < 1e-9, "{}", one.failures);
        assert_eq!(db.dial_addrs(&peer, later).expect("order")[2], addr(3));
        let peers = db.peers_health(later).expect("peers");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].name.as_deref(), Some("bob"));
        assert_eq!(
            peers[0]
                .addrs
                .iter()
                .find(|a| a.rtt_ms.is_some())
                .and_then(|a| a.rtt_ms),
            Some(3.0)
        );
    }
}
