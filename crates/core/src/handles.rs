//! Small copyable ids for what the core keeps (server and client transactions, proxy
//! contexts), and the table that holds transactions under them. The formatted match key of
//! a transaction (RFC 3261 §17.1.3, §17.2.3) is used once, to find the id of an incoming
//! message's transaction; timers, branches, contexts and the edge's send-failure report carry
//! the id, which is copied, never allocated or hashed as a string.

use std::collections::HashMap;
use std::marker::PhantomData;

/// A slot number and the generation of what the slot held when the id was made: an id kept
/// by a timer or the edge after its transaction ended never names the transaction that
/// reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Raw {
    slot: u32,
    generation: u32,
}

/// Ids a `Table` hands out.
pub(crate) trait Handle: Copy {
    fn from_raw(raw: RawHandle) -> Self;
    fn raw(self) -> RawHandle;
}

/// The inside of an id, opaque outside this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RawHandle(Raw);

macro_rules! handle {
    ($(#[$doc:meta])* $vis:vis $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis struct $name(RawHandle);

        impl Handle for $name {
            fn from_raw(raw: RawHandle) -> Self {
                $name(raw)
            }
            fn raw(self) -> RawHandle {
                self.0
            }
        }
    };
}

handle!(
    /// A server transaction (a request we received).
    pub(crate) ServerTxId
);
handle!(
    /// A client transaction (a request we sent). The edge gets it with a request to send and
    /// gives it back if the request could not be sent (`Core::handle_send_failure`).
    pub ClientTxId
);

/// A proxy's response context (one forwarded request and its branches). Its number also
/// comes from the core's token counter, as before the type existed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct CtxId(pub u64);

struct Slot<T> {
    generation: u32,
    /// The match key (kept to remove it from the index) and the transaction.
    entry: Option<(String, T)>,
}

/// Transactions in a slab under ids `H`, with one index from their match key to the id.
pub(crate) struct Table<H, T> {
    slots: Vec<Slot<T>>,
    /// Free slots, the last freed first (its memory is the likeliest to be in cache).
    free: Vec<u32>,
    index: HashMap<String, H>,
    _handle: PhantomData<H>,
}

impl<H, T> Default for Table<H, T> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            _handle: PhantomData,
        }
    }
}

impl<H: Handle, T> Table<H, T> {
    /// Stores `value` under its match key; a transaction already under that key is replaced
    /// (and its id no longer finds anything).
    pub(crate) fn insert(&mut self, key: String, value: T) -> H {
        if let Some(old) = self.index.get(&key).copied() {
            self.remove(old);
        }
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                // More than 4 billion transactions at once cannot be held in memory anyway.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let s = &mut self.slots[slot as usize];
        let id = H::from_raw(RawHandle(Raw {
            slot,
            generation: s.generation,
        }));
        self.index.insert(key.clone(), id);
        s.entry = Some((key, value));
        id
    }

    /// The id of the transaction with this match key.
    pub(crate) fn find(&self, key: &str) -> Option<H> {
        self.index.get(key).copied()
    }

    fn slot(&self, id: H) -> Option<&(String, T)> {
        let RawHandle(raw) = id.raw();
        let s = self.slots.get(raw.slot as usize)?;
        if s.generation != raw.generation {
            return None;
        }
        s.entry.as_ref()
    }

    pub(crate) fn get(&self, id: H) -> Option<&T> {
        self.slot(id).map(|(_, v)| v)
    }

    /// The transaction and its match key.
    pub(crate) fn get_keyed(&self, id: H) -> Option<(&str, &T)> {
        self.slot(id).map(|(k, v)| (k.as_str(), v))
    }

    pub(crate) fn get_mut(&mut self, id: H) -> Option<&mut T> {
        let RawHandle(raw) = id.raw();
        let s = self.slots.get_mut(raw.slot as usize)?;
        if s.generation != raw.generation {
            return None;
        }
        s.entry.as_mut().map(|(_, v)| v)
    }

    pub(crate) fn contains(&self, id: H) -> bool {
        self.slot(id).is_some()
    }

    pub(crate) fn remove(&mut self, id: H) -> Option<T> {
        let RawHandle(raw) = id.raw();
        let s = self.slots.get_mut(raw.slot as usize)?;
        if s.generation != raw.generation {
            return None;
        }
        let (key, value) = s.entry.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(raw.slot);
        self.index.remove(&key);
        Some(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every transaction with its id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (H, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let (_, v) = s.entry.as_ref()?;
            let raw = Raw {
                slot: i as u32,
                generation: s.generation,
            };
            Some((H::from_raw(RawHandle(raw)), v))
        })
    }

    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::{ServerTxId, Table};

    #[test]
    fn a_stale_id_finds_nothing_in_a_reused_slot() {
        let mut t: Table<ServerTxId, u32> = Table::default();
        let a = t.insert("a".into(), 1);
        assert_eq!(t.find("a"), Some(a));
        assert_eq!(t.remove(a), Some(1));
        let b = t.insert("b".into(), 2);
        assert_ne!(a, b, "same slot, new generation");
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(b), Some(&2));
        assert_eq!(t.find("a"), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_key_inserted_again_replaces_the_old_transaction() {
        let mut t: Table<ServerTxId, u32> = Table::default();
        let a = t.insert("k".into(), 1);
        let b = t.insert("k".into(), 2);
        assert_eq!(t.get(a), None);
        assert_eq!(t.find("k"), Some(b));
        assert_eq!(t.get_keyed(b), Some(("k", &2)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.iter().count(), 1);
    }
}
