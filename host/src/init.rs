//! `pigeon init`: a new home with fresh keys, an empty database and a commented configuration.

use std::sync::Arc;

use crate::config::TEMPLATE;
use crate::error::Result;
use crate::home::{Home, Role, write_atomic};
use crate::keys::Keys;
use crate::keys::address::Address;
use crate::keys::keystore::{self, KdfParams};
use crate::store::Store;

/// Creates a home at `home`, sealing the new keys under `passphrase`. Fails, changing nothing, if
/// the home is already initialised.
pub async fn create_home(home: &Home, passphrase: &str) -> Result<Address> {
    home.create_dir()?;
    let _lock = home.try_lock(Role::Command("init"))?;
    let keys = Keys::generate();
    let address = keys.address();
    if !home.config().exists() {
        write_atomic(&home.config(), TEMPLATE.as_bytes())?;
    }
    let keys = Arc::new(keys);
    // Creates and migrates the database, on the store's thread like every other use of it.
    Store::open(&home.database(), keys.clone())
        .await?
        .close()
        .await;
    // The keystore goes last: a home counts as initialised only once it exists.
    keystore::write(&home.keystore(), &keys, passphrase, KdfParams::default())?;
    Ok(address)
}
