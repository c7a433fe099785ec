//! `keys passwd` and `keys rekey`: the passphrase change and the rekey it starts.

use super::{Ops, Response, Secret};
use crate::error::Result;
use crate::keys::KeysError;
use crate::keys::keystore::{self, Wrapping};

impl Ops {
    /// Checks `current` against the keystore, writes the keystore under `new` with a fresh data
    /// key (restic's order, [`keystore::rewrap`]), installs the key, then rekeys: in the
    /// background with a node, before answering without one.
    pub(super) async fn passwd(
        &self,
        current: &Secret,
        new: &Secret,
        kdf_m_kib: Option<u32>,
        kdf_passes: Option<u32>,
    ) -> Result<Response> {
        let path = self.rekey.keystore().to_owned();
        let (current, new) = (current.clone(), new.clone());
        let keys = self.keys.clone();
        let wrapping = tokio::task::spawn_blocking(move || -> Result<Wrapping> {
            // An earlier change that stopped before its rename left a file nothing uses.
            let pending = keystore::pending_path(&path);
            if pending.exists() {
                std::fs::remove_file(&pending)
                    .map_err(|e| crate::home::HomeError::io("removing", &pending, e))?;
            }
            let opened = keystore::unlock(&path, &current.0)?;
            if opened.peer_id() != keys.peer_id() {
                return Err(KeysError::Damaged {
                    path: path.clone(),
                    reason: "it holds another identity than the running node's".into(),
                }
                .into());
            }
            let mut kdf = opened.wrapping().map(|w| w.kdf()).unwrap_or_default();
            if let Some(m) = kdf_m_kib {
                kdf.m_kib = m;
            }
            if let Some(t) = kdf_passes {
                kdf.t = t;
            }
            let wrapping = Wrapping::new(&new.0, kdf).map_err(|reason| KeysError::KdfLimits {
                path: path.clone(),
                reason,
            })?;
            let dek = keystore::rewrap(&path, &keys, &wrapping)?;
            keys.at_rest().install(dek);
            Ok(wrapping)
        })
        .await
        .map_err(|_| KeysError::Rekey("the passphrase change stopped".into()))??;
        self.keys.set_wrapping(wrapping);
        tracing::info!("passphrase changed; rekeying the data");
        self.carry_rekey_on().await
    }

    /// Runs the rekey: started in the background with a node, to the end without one.
    pub(super) async fn carry_rekey_on(&self) -> Result<Response> {
        if self.node.is_some() {
            self.rekey.start();
        } else {
            self.rekey.run().await?;
        }
        Ok(Response::Keys(self.rekey.status().await?))
    }
}
