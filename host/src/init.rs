//! `pigeon init`: a new home with fresh keys, an empty database and a commented configuration.

use std::sync::Arc;

use crate::config::TEMPLATE;
use crate::error::Result;
use crate::home::{Home, write_atomic};
use crate::keys::Keys;
use crate::keys::address::Address;
use crate::keys::keystore::{self, KdfParams};
use crate::store::Db;

/// Creates a home at `home`, sealing the new keys under `passphrase`. Fails, changing nothing, if
/// the home is already initialised.
pub fn create_home(home: &Home, passphrase: &str) -> Result<Address> {
    home.create_dir()?;
    let _lock = home.try_lock()?;
    let keys = Keys::generate();
    let address = keys.address();
    if !home.config().exists() {
        write_atomic(&home.config(), TEMPLATE.as_bytes())?;
    }
    let keys = Arc::new(keys);
    Db::open(&home.database(), keys.clone())?;
    // The keystore goes last: a home counts as initialised only once it exists.
    keystore::write(&home.keystore(), &keys, passphrase, KdfParams::default())?;
    Ok(address)
}
