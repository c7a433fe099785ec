//! What a plugin returns, taken out of its memory with the sizes checked first.
//!
//! The generated bindings copy a returned `list<action>` whole, every string in it included,
//! before the host sees a single element. A guest can point thousands of list elements at one
//! large string, so a few MiB of its memory become gigabytes of the host's. The types here have the
//! canonical ABI of `string` and `list<T>` but look at the length (in the pointer/length pair)
//! before anything is copied: a string over its limit fails the call (nothing is allocated for
//! it), and a list over its limit is cut to its first elements, the others never read.
//!
//! This implements wasmtime's `Lift` by hand, which leans on items wasmtime marks `doc(hidden)`;
//! they are pinned with the wasmtime version, and a change there stops the build, not the check.

use wasmtime::ValRaw;
use wasmtime::component::__internal::{InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};

use super::bindings::{PeerAddress, WitAction, WitDiscoveryAction};

/// Most actions one call may return.
pub(crate) const MAX_ACTIONS: usize = 64;
/// Longest string a plugin may return (labels, addresses, peer ids, an `init` error), in bytes.
pub(crate) const MAX_STRING: usize = 1024;

/// A returned `string` of at most `N` bytes (code units, for a UTF-16 guest).
pub(crate) struct Bounded<const N: usize>(pub String);

/// A returned `list<T>`: its first `N` elements, and how many more it had (never read).
pub(crate) struct BoundedList<T, const N: usize> {
    pub(crate) items: Vec<T>,
    pub(crate) dropped: usize,
}

/// The canonical ABI's tag for a UTF-16 string in the latin1+utf16 encoding: not part of the length.
const UTF16_TAG: u32 = 1 << 31;

/// The length half of a flat pointer/length pair.
fn flat_len(src: &[ValRaw; 2]) -> usize {
    src[1].get_u32() as usize
}

/// The length half of a pointer/length pair in memory (little-endian `u32`s).
fn memory_len(bytes: &[u8]) -> usize {
    match bytes.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
        Some(len) => u32::from_le_bytes(len) as usize,
        // Not a pointer pair at all: let the real lift report it.
        None => 0,
    }
}

/// A pointer/length pair in memory, aligned as the lifting code expects.
#[repr(C, align(8))]
struct Pair([u8; 8]);

fn check(len: usize, max: usize, what: &str) -> wasmtime::Result<()> {
    if len > max {
        wasmtime::bail!("the plugin returned {what} of {len}, more than the {max} allowed");
    }
    Ok(())
}

// SAFETY: the same representation and type check as `String`, which does the lifting.
unsafe impl<const N: usize> ComponentType for Bounded<N> {
    type Lower = <String as ComponentType>::Lower;
    const ABI: wasmtime::component::__internal::CanonicalAbiInfo = <String as ComponentType>::ABI;

    fn typecheck(
        ty: &InterfaceType,
        types: &wasmtime::component::__internal::InstanceType<'_>,
    ) -> wasmtime::Result<()> {
        <String as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: checks the length, then lifts exactly as `String` does.
unsafe impl<const N: usize> Lift for Bounded<N> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        check(flat_len(src) & !(UTF16_TAG as usize), N, "a string")?;
        String::linear_lift_from_flat(cx, ty, src).map(Bounded)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        check(memory_len(bytes) & !(UTF16_TAG as usize), N, "a string")?;
        String::linear_lift_from_memory(cx, ty, bytes).map(Bounded)
    }
}

// SAFETY: the same representation and type check as `Vec<T>`, which does the lifting.
unsafe impl<T: ComponentType, const N: usize> ComponentType for BoundedList<T, N> {
    type Lower = <Vec<T> as ComponentType>::Lower;
    const ABI: wasmtime::component::__internal::CanonicalAbiInfo = <Vec<T> as ComponentType>::ABI;

    fn typecheck(
        ty: &InterfaceType,
        types: &wasmtime::component::__internal::InstanceType<'_>,
    ) -> wasmtime::Result<()> {
        <Vec<T> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifts exactly as `Vec<T>` does, from the same pointer with the length cut to `N`; the
// elements past it are not read.
unsafe impl<T: Lift, const N: usize> Lift for BoundedList<T, N> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let len = flat_len(src);
        let mut cut = *src;
        cut[1] = ValRaw::u32(len.min(N) as u32);
        Ok(BoundedList {
            items: Vec::<T>::linear_lift_from_flat(cx, ty, &cut)?,
            dropped: len.saturating_sub(N),
        })
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let len = memory_len(bytes);
        let mut cut = Pair([0; 8]);
        match bytes.get(..8) {
            Some(pair) => cut.0.copy_from_slice(pair),
            None => wasmtime::bail!("a list's pointer and length do not fit"),
        }
        cut.0[4..].copy_from_slice(&(len.min(N) as u32).to_le_bytes());
        Ok(BoundedList {
            items: Vec::<T>::linear_lift_from_memory(cx, ty, &cut.0)?,
            dropped: len.saturating_sub(N),
        })
    }
}

impl<T, const N: usize> BoundedList<T, N> {
    /// No elements.
    pub(crate) fn empty() -> Self {
        BoundedList {
            items: Vec::new(),
            dropped: 0,
        }
    }
}

type Text = Bounded<MAX_STRING>;

/// `action`, with bounded strings.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(crate) enum RawAction {
    #[component(name = "add-label")]
    AddLabel(Text),
    #[component(name = "remove-label")]
    RemoveLabel(Text),
    #[component(name = "mark-read")]
    MarkRead,
    #[component(name = "archive")]
    Archive,
}

/// `peer-address`, with bounded strings.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(crate) struct RawPeerAddress {
    #[component(name = "peer")]
    peer: Text,
    #[component(name = "address")]
    address: Text,
}

/// `discovery-action`, with bounded strings.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(crate) enum RawDiscoveryAction {
    #[component(name = "dial")]
    Dial(Text),
    #[component(name = "add-address")]
    AddAddress(RawPeerAddress),
    #[component(name = "listen-via-relay")]
    ListenViaRelay(Text),
}

/// What `on-message` returns.
pub(crate) type Actions = BoundedList<RawAction, MAX_ACTIONS>;
/// What `on-event` and `on-tick` return.
pub(crate) type DiscoveryActions = BoundedList<RawDiscoveryAction, MAX_ACTIONS>;
/// What `init` returns.
pub(crate) type InitResult = Result<(), Text>;

impl From<RawAction> for WitAction {
    fn from(a: RawAction) -> WitAction {
        match a {
            RawAction::AddLabel(l) => WitAction::AddLabel(l.0),
            RawAction::RemoveLabel(l) => WitAction::RemoveLabel(l.0),
            RawAction::MarkRead => WitAction::MarkRead,
            RawAction::Archive => WitAction::Archive,
        }
    }
}

impl From<RawDiscoveryAction> for WitDiscoveryAction {
    fn from(a: RawDiscoveryAction) -> WitDiscoveryAction {
        match a {
            RawDiscoveryAction::Dial(s) => WitDiscoveryAction::Dial(s.0),
            RawDiscoveryAction::AddAddress(pa) => WitDiscoveryAction::AddAddress(PeerAddress {
                peer: pa.peer.0,
                address: pa.address.0,
            }),
            RawDiscoveryAction::ListenViaRelay(s) => WitDiscoveryAction::ListenViaRelay(s.0),
        }
    }
}
