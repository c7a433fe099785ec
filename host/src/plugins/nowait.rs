//! `wasi:io/poll` for plugins: nothing a plugin calls may wait.
//!
//! The epoch deadline stops a plugin only while its own code runs. WASI's `poll` and
//! `pollable.block` wait inside the host, where no deadline reaches: a plugin that sleeps
//! (`std::thread::sleep` becomes `subscribe-duration` and `block`) would hold the plugin thread,
//! and with it every delivery, for as long as it asked. Here a pollable that is ready answers at
//! once, as in WASI, and waiting for one that is not is a trap: the call fails like any other
//! and its plugin counts a failure.

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::sync::io::poll::{Host, HostPollable};

/// What a plugin sees when it tries to wait.
const REFUSAL: &str = "a plugin may not wait (sleep, poll or block); hooks must return";

/// [`HasData`] for [`NoWaitTable`].
pub(super) struct NoWait;

impl HasData for NoWait {
    type Data<'a> = NoWaitTable<'a>;
}

/// The store's resource table, seen through the non-waiting `wasi:io/poll`.
pub(super) struct NoWaitTable<'a>(pub(super) &'a mut ResourceTable);

impl NoWaitTable<'_> {
    fn is_ready(&mut self, pollable: &Resource<DynPollable>) -> wasmtime::Result<bool> {
        // Asks without giving up the caller's handle (`ready` takes a borrow).
        HostPollable::ready(self.0, Resource::new_borrow(pollable.rep()))
    }
}

impl Host for NoWaitTable<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let mut ready = Vec::new();
        for (i, pollable) in pollables.iter().enumerate() {
            if self.is_ready(pollable)? {
                ready.push(u32::try_from(i)?);
            }
        }
        if ready.is_empty() {
            wasmtime::bail!(REFUSAL);
        }
        Ok(ready)
    }
}

impl HostPollable for NoWaitTable<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        HostPollable::ready(self.0, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        if self.is_ready(&pollable)? {
            Ok(())
        } else {
            wasmtime::bail!(REFUSAL)
        }
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        HostPollable::drop(self.0, pollable)
    }
}
