//! Contacts: a name, the contact's address (PeerId and X25519 key) and the multiaddrs to dial.

use libp2p::{Multiaddr, PeerId};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{Db, StoreError, now_ms};
use crate::config::ForwardSecrecy;
use crate::keys::address::Address;
use crate::keys::at_rest::AtRest;

/// A contact as stored.
#[derive(Debug, Clone)]
pub struct Contact {
    /// The local name.
    pub name: String,
    /// The contact's address.
    pub address: Address,
    /// Where to dial it.
    pub addrs: Vec<Multiaddr>,
    /// Its own forward secrecy policy (`contacts set --forward-secrecy`); `None`: the config's.
    pub forward_secrecy: Option<ForwardSecrecy>,
}

impl Db {
    /// Adds a contact; a taken name or an already-known peer is a conflict.
    pub fn add_contact(
        &mut self,
        name: &str,
        address: &Address,
        addrs: &[Multiaddr],
    ) -> Result<(), StoreError> {
        let peer = address.peer_id().to_string();
        let tx = self.conn.transaction()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT name FROM contacts WHERE name = ?1 OR peer_id = ?2",
                params![name, peer],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(existing) = existing {
            return Err(StoreError::Conflict(if existing == name {
                format!("a contact named {name:?} exists already")
            } else {
                format!("that address is already the contact {existing:?}")
            }));
        }
        let address = address.to_string();
        let (key_id, seal) =
            self.keys
                .at_rest()
                .seal(TABLE, &peer, &sealed_fields(name, &address, None));
        tx.execute(
            "INSERT INTO contacts (name, peer_id, address, added_at, seal, key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, peer, address, now_ms() as i64, seal, key_id],
        )?;
        for addr in addrs {
            tx.execute(
                "INSERT OR IGNORE INTO contact_addrs (peer_id, addr) VALUES (?1, ?2)",
                params![peer, addr.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The PeerIds of every contact: who may speak the message protocols.
    pub fn contact_peer_ids(&self) -> Result<std::collections::HashSet<PeerId>, StoreError> {
        Ok(self
            .contacts()?
            .iter()
            .map(|c| c.address.peer_id())
            .collect())
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("{SELECT} ORDER BY name"))?;
        let rows = stmt.query_map([], Row::read)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(self.contact_from_row(row?)?);
        }
        Ok(out)
    }

    /// The contact called `name`.
    pub fn contact_by_name(&self, name: &str) -> Result<Contact, StoreError> {
        let row = self
            .conn
            .query_row(&format!("{SELECT} WHERE name = ?1"), [name], Row::read)
            .optional()?;
        match row {
            Some(row) => self.contact_from_row(row),
            None => Err(StoreError::NotFound {
                what: "contact",
                name: name.to_owned(),
            }),
        }
    }

    /// The contact with PeerId `peer`, if any.
    pub fn contact_by_peer(&self, peer: &PeerId) -> Result<Option<Contact>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("{SELECT} WHERE peer_id = ?1"),
                [peer.to_string()],
                Row::read,
            )
            .optional()?;
        row.map(|row| self.contact_from_row(row)).transpose()
    }

    /// Removes the contact called `name`, its addresses, and the one-time keys exchanged with it
    /// (the secrets handed to it and the keys received from it).
    pub fn remove_contact(&mut self, name: &str) -> Result<(), StoreError> {
        let contact = self.contact_by_name(name)?;
        let peer = contact.address.peer_id().to_string();
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM contacts WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM contact_addrs WHERE peer_id = ?1", [&peer])?;
        tx.execute("DELETE FROM otk_secrets WHERE holder = ?1", [&peer])?;
        tx.execute("DELETE FROM otk_pool WHERE owner = ?1", [&peer])?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the forward secrecy policy of the contact called `name` (`None`: the config's). The
    /// policy is part of the contact's seal, so an edit of the row without the data key cannot
    /// turn forward secrecy off behind the owner's back.
    pub fn set_contact_forward_secrecy(
        &mut self,
        name: &str,
        policy: Option<ForwardSecrecy>,
    ) -> Result<(), StoreError> {
        let contact = self.contact_by_name(name)?;
        let peer = contact.address.peer_id().to_string();
        let (key_id, seal) = self.keys.at_rest().seal(
            TABLE,
            &peer,
            &sealed_fields(name, &contact.address.to_string(), policy),
        );
        self.conn.execute(
            "UPDATE contacts SET forward_secrecy = ?2, seal = ?3, key_id = ?4 WHERE peer_id = ?1",
            params![peer, policy.map(ForwardSecrecy::as_str), seal, key_id],
        )?;
        Ok(())
    }

    /// The multiaddrs known for `peer`.
    pub fn addrs_of(&self, peer: &PeerId) -> Result<Vec<Multiaddr>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT addr FROM contact_addrs WHERE peer_id = ?1 ORDER BY addr")?;
        let rows = stmt.query_map([peer.to_string()], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(
                row?.parse()
                    .map_err(|_| StoreError::Corrupt("contact address"))?,
            );
        }
        Ok(out)
    }

    /// A contact from its row, once the row's seal proves its name, peer id and address are the
    /// ones the owner stored.
    fn contact_from_row(&self, row: Row) -> Result<Contact, StoreError> {
        let (Some(seal), Some(key_id)) = (&row.seal, row.key_id) else {
            return Err(StoreError::Corrupt("contact row without its seal"));
        };
        let sealed = self.open_sealed(TABLE, &row.peer_id, key_id, seal)?;
        let forward_secrecy = match row.forward_secrecy.as_deref() {
            None => None,
            Some(p) => Some(
                ForwardSecrecy::parse(p)
                    .ok_or(StoreError::Corrupt("contact forward secrecy policy"))?,
            ),
        };
        if sealed != sealed_fields(&row.name, &row.address, forward_secrecy) {
            return Err(StoreError::Corrupt(
                "contact row that disagrees with its seal",
            ));
        }
        let address = Address::parse_stored(&row.address)
            .map_err(|_| StoreError::Corrupt("contact address"))?;
        if address.peer_id().to_string() != row.peer_id {
            return Err(StoreError::Corrupt("contact peer id"));
        }
        let addrs = self.addrs_of(&address.peer_id())?;
        Ok(Contact {
            name: row.name,
            address,
            addrs,
            forward_secrecy,
        })
    }
}

pub(super) const TABLE: &str = "contacts";
const SELECT: &str = "SELECT name, peer_id, address, seal, key_id, forward_secrecy FROM contacts";

/// A contacts row as stored.
struct Row {
    name: String,
    peer_id: String,
    address: String,
    seal: Option<Vec<u8>>,
    key_id: Option<u32>,
    forward_secrecy: Option<String>,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            name: r.get(0)?,
            peer_id: r.get(1)?,
            address: r.get(2)?,
            seal: r.get(3)?,
            key_id: r.get(4)?,
            forward_secrecy: r.get(5)?,
        })
    }
}

/// What a contact's seal holds: its name and address (the peer id is the seal's associated data),
/// and its own forward secrecy policy when it has one (after a NUL, which no address holds; a
/// contact without one keeps the seal it had before policies existed).
fn sealed_fields(name: &str, address: &str, policy: Option<ForwardSecrecy>) -> Vec<u8> {
    let mut out = (name.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(address.as_bytes());
    if let Some(policy) = policy {
        out.push(0);
        out.extend_from_slice(policy.as_str().as_bytes());
    }
    out
}

/// Seals the contact rows stored before rows were sealed (inside the caller's transaction).
pub(super) fn seal_unsealed(tx: &Transaction<'_>, at_rest: &AtRest) -> Result<(), StoreError> {
    let rows: Vec<(String, String, String)> = tx
        .prepare("SELECT name, peer_id, address FROM contacts WHERE seal IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (name, peer_id, address) in rows {
        let (key_id, seal) = at_rest.seal(TABLE, &peer_id, &sealed_fields(&name, &address, None));
        tx.execute(
            "UPDATE contacts SET seal = ?2, key_id = ?3 WHERE peer_id = ?1",
            params![peer_id, seal, key_id],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use crate::store::test_support::temp_db;

    #[test]
    fn a_contacts_forward_secrecy_policy_is_kept_and_sealed() {
        let (_dir, mut db, _keys) = temp_db();
        let bob = Keys::generate().address();
        db.add_contact("bob", &bob, &[]).expect("add");
        assert_eq!(
            db.contact_by_name("bob").expect("bob").forward_secrecy,
            None
        );
        db.set_contact_forward_secrecy("bob", Some(ForwardSecrecy::Require))
            .expect("set");
        assert_eq!(
            db.contact_by_name("bob").expect("bob").forward_secrecy,
            Some(ForwardSecrecy::Require)
        );
        // Turning it off behind the owner's back, without the data key, is seen as damage.
        db.conn
            .execute("UPDATE contacts SET forward_secrecy = 'off'", [])
            .expect("tamper");
        assert!(matches!(
            db.contact_by_name("bob"),
            Err(StoreError::Corrupt(_))
        ));
        db.conn
            .execute("UPDATE contacts SET forward_secrecy = 'require'", [])
            .expect("put back");
        db.set_contact_forward_secrecy("bob", None)
            .expect("default");
        assert_eq!(
            db.contact_by_name("bob").expect("bob").forward_secrecy,
            None
        );
        assert!(matches!(
            db.set_contact_forward_secrecy("carol", None),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn add_list_remove_and_conflicts() {
        let (_dir, mut db, _keys) = temp_db();
        let bob = Keys::generate().address();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/7717".parse().expect("multiaddr");
        db.add_contact("bob", &bob, std::slice::from_ref(&addr))
            .expect("add");
        let listed = db.contacts().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].addrs, vec![addr]);
        assert_eq!(
            db.contact_by_peer(&bob.peer_id())
                .expect("by peer")
                .map(|c| c.name),
            Some("bob".into())
        );
        let dup = db
            .add_contact("bob", &Keys::generate().address(), &[])
            .expect_err("same name");
        assert!(matches!(dup, StoreError::Conflict(_)));
        let same = db.add_contact("robert", &bob, &[]).expect_err("same peer");
        assert!(same.to_string().contains("\"bob\""), "{same}");
        db.remove_contact("bob").expect("remove");
        assert!(db.contacts().expect("list").is_empty());
        assert!(db.addrs_of(&bob.peer_id()).expect("addrs").is_empty());
        assert!(matches!(
            db.remove_contact("bob"),
            Err(StoreError::NotFound { .. })
        ));
    }
}
