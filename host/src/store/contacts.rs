//! Contacts: a name, the contact's address (PeerId and X25519 key) and the multiaddrs to dial.

use libp2p::{Multiaddr, PeerId};
use rusqlite::{OptionalExtension, params};

use super::{Db, StoreError, now_ms};
use crate::keys::address::Address;

/// A contact as stored.
#[derive(Debug, Clone)]
pub struct Contact {
    /// The local name.
    pub name: String,
    /// The contact's address.
    pub address: Address,
    /// Where to dial it.
    pub addrs: Vec<Multiaddr>,
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
        tx.execute(
            "INSERT INTO contacts (name, peer_id, address, added_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, peer, address.to_string(), now_ms() as i64],
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
        let mut stmt = self
            .conn
            .prepare("SELECT name, address FROM contacts ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, address) = row?;
            out.push(self.contact_from_row(name, &address)?);
        }
        Ok(out)
    }

    /// The contact called `name`.
    pub fn contact_by_name(&self, name: &str) -> Result<Contact, StoreError> {
        let address: Option<String> = self
            .conn
            .query_row(
                "SELECT address FROM contacts WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        match address {
            Some(address) => self.contact_from_row(name.to_owned(), &address),
            None => Err(StoreError::NotFound {
                what: "contact",
                name: name.to_owned(),
            }),
        }
    }

    /// The contact with PeerId `peer`, if any.
    pub fn contact_by_peer(&self, peer: &PeerId) -> Result<Option<Contact>, StoreError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT name, address FROM contacts WHERE peer_id = ?1",
                [peer.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(name, address)| self.contact_from_row(name, &address))
            .transpose()
    }

    /// Removes the contact called `name` and its addresses.
    pub fn remove_contact(&mut self, name: &str) -> Result<(), StoreError> {
        let contact = self.contact_by_name(name)?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM contacts WHERE name = ?1", [name])?;
        tx.execute(
            "DELETE FROM contact_addrs WHERE peer_id = ?1",
            [contact.address.peer_id().to_string()],
        )?;
        tx.commit()?;
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

    fn contact_from_row(&self, name: String, address: &str) -> Result<Contact, StoreError> {
        let address: Address = address
            .parse()
            .map_err(|_| StoreError::Corrupt("contact address"))?;
        let addrs = self.addrs_of(&address.peer_id())?;
        Ok(Contact {
            name,
            address,
            addrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use crate::store::test_support::temp_db;

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
