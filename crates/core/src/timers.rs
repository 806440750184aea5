//! The core's one timer queue. Entries are hints: when one fires, its owner checks whether it
//! is really due (a transaction may have moved on), so nothing is ever removed early.

use crate::handles::{ClientTxId, CtxId, ServerTxId};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerRef {
    Server(ServerTxId),
    Client(ClientTxId),
    /// Timer C of a proxy context's branch.
    TimerC(CtxId, usize),
    /// Registrations of an address-of-record may have expired.
    Expiry(String),
    /// A hunt stage's ring time (context, stage generation).
    Hunt(CtxId, u32),
    /// A ring group's overall time.
    HuntOverall(CtxId),
    /// A keep-alive ping of a contact behind NAT (user, contact) may be due.
    NatPing(String, String),
    /// A call's media counters are due a look (no-media timeout), by Call-ID.
    Media(String),
    /// The relay's port reserve could not be filled: ask again.
    RelayRetry,
    /// TURN allocations, permissions and channels may have expired.
    TurnSweep,
    /// A provider's registration or keep-alive may be due (by name).
    Trunk(String),
    /// Waiting messages may have grown too old.
    MailboxSweep,
    /// The store has not said whether it kept this message: it did not.
    MailboxStore(u64),
    /// Subscriptions and publications may have expired.
    PresenceSweep,
    /// A subscription's NOTIFY held back by the rate may go now.
    PresenceNotify(u64),
}

#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, u64, TimerRef)>>,
    seq: u64,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, at: Instant, what: TimerRef) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, what)));
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerRef> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse((_, _, t))| t)
    }
}
