//! The store's writer thread: registration changes from the core are batched into one
//! transaction per interval, off the event loop, so a slow disk never stalls signalling; reads
//! of users and settings for a reload go through it too, after the writes queued before them.

use super::{BindingWrite, SqliteStore, Store};
use crate::core::{StoredBinding, User};
use crate::plan::settings::{ForwardSpec, PlanSettings};

/// Writes from the core to the store, done on their own thread so a slow disk never stalls
/// signalling.
pub enum StoreOp {
    /// Store a registration (new or refreshed); batched.
    Put(StoredBinding),
    /// Remove one registration; batched.
    Delete {
        /// The user's key (`name`, or `name@domain` in a further domain).
        aor: String,
        /// The contact URI as registered.
        contact: String,
    },
    /// Read the users and the stored phone-system settings (after the writes before it).
    Load(std::sync::mpsc::Sender<Result<(Vec<User>, PlanSettings), String>>),
    /// Store a user's forwarding as set from a phone (after the writes before it); a failure
    /// is logged, and the forwarding then lasts until the next restart or reload.
    Forward(ForwardSpec),
    /// Keep a message for an offline user at once, and say whether it was kept.
    PutMessage(
        crate::core::mailbox::WaitingMessage,
        Box<dyn FnOnce(bool) + Send>,
    ),
    /// Forget a message (delivered, replaced or expired).
    DeleteMessage(u64),
}

/// Most binding writes committed in one transaction.
const STORE_BATCH: usize = 1024;
/// How long a registration change may wait for the next commit: one transaction per this
/// interval instead of one per REGISTER (a crash loses at most this much; phones re-register).
const STORE_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
/// How often writes that failed (a full disk) are tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Registration writes waiting for the disk (failed, kept for the next try).
static PENDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Registration writes that failed and wait to be tried again (0 when the store is up to
/// date but for the last `STORE_DELAY`).
pub fn pending() -> usize {
    PENDING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The writer's state: the batch being gathered, and the writes that failed and are kept,
/// one per registration (the latest), until the disk takes them.
struct Writer {
    store: SqliteStore,
    batch: Vec<BindingWrite>,
    failed: std::collections::HashMap<(String, String), BindingWrite>,
    /// Failed attempts in a row (logged at the first, and when they end).
    failures: u32,
}

fn key_of(w: &BindingWrite) -> (String, String) {
    match w {
        BindingWrite::Put(b) => (b.aor.clone(), b.contact.clone()),
        BindingWrite::Delete { aor, contact } => (aor.clone(), contact.clone()),
    }
}

impl Writer {
    /// Writes what failed before and the batch, in one transaction. On failure everything is
    /// kept and tried again (`RETRY`), so nothing the phones were told is lost once space is
    /// back; the first failure and the recovery are each one log line.
    fn flush(&mut self) {
        if self.batch.is_empty() && self.failed.is_empty() {
            return;
        }
        for w in self.batch.drain(..) {
            self.failed.insert(key_of(&w), w);
        }
        let all: Vec<BindingWrite> = self.failed.values().cloned().collect();
        match self.store.write_bindings(&all) {
            Ok(()) => {
                if self.failures > 0 {
                    tracing::warn!(
                        writes = all.len(),
                        attempts = self.failures,
                        "store writes caught up: every registration is stored again"
                    );
                }
                self.failed.clear();
                self.failures = 0;
            }
            Err(e) => {
                if self.failures == 0 {
                    tracing::error!(
                        writes = all.len(),
                        "store write failed: {e}; registrations are kept in memory and written \
                         as soon as the store takes them (tried every {} s)",
                        RETRY.as_secs()
                    );
                } else {
                    tracing::debug!(writes = all.len(), "store write failed again: {e}");
                }
                self.failures = self.failures.saturating_add(1);
            }
        }
        PENDING.store(self.failed.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts the writer thread, which owns `store`, and returns the sender for its work. The
/// thread ends, after a last commit, when every sender is gone.
pub fn spawn_store(store: SqliteStore) -> std::sync::mpsc::Sender<StoreOp> {
    use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
    let (tx, rx) = std::sync::mpsc::channel::<StoreOp>();
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let mut w = Writer {
                store,
                batch: Vec::with_capacity(STORE_BATCH),
                failed: std::collections::HashMap::new(),
                failures: 0,
            };
            loop {
                // Wait for the first change (or, with writes waiting for the disk, the next
                // try), then sleep through the batching window and take all that came
                // meanwhile: while this thread sleeps, senders never have to wake it.
                let first = if w.failed.is_empty() {
                    rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    rx.recv_timeout(RETRY)
                };
                let first = match first {
                    Ok(op) => op,
                    Err(RecvTimeoutError::Timeout) => {
                        w.flush();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let mut next = Some(first);
                let mut slept = false;
                let mut open = true;
                loop {
                    while let Some(op) = next.take() {
                        match op {
                            StoreOp::Put(b) => w.batch.push(BindingWrite::Put(b)),
                            StoreOp::Delete { aor, contact } => {
                                w.batch.push(BindingWrite::Delete { aor, contact })
                            }
                            StoreOp::Load(reply) => {
                                w.flush();
                                let s = &w.store;
                                let _ = reply.send(s.users().and_then(|u| Ok((u, s.plan()?))));
                            }
                            StoreOp::PutMessage(m, done) => {
                                let kept = match w.store.put_message(&m) {
                                    Ok(()) => true,
                                    Err(e) => {
                                        tracing::error!(user = %m.user, "cannot store a message for an offline user: {e}");
                                        false
                                    }
                                };
                                done(kept);
                            }
                            StoreOp::DeleteMessage(id) => {
                                if let Err(e) = w.store.delete_message(id) {
                                    tracing::error!(message = id, "cannot delete a delivered message: {e}; it may be delivered again after a restart");
                                }
                            }
                            StoreOp::Forward(f) => {
                                w.flush();
                                if let Err(e) = w.store.put_forward(&f) {
                                    tracing::error!(user = %f.user, "cannot store the forwarding set from the phone: {e}; it applies until the next restart or reload");
                                }
                            }
                        }
                        if w.batch.len() >= STORE_BATCH {
                            w.flush();
                        }
                        match rx.try_recv() {
                            Ok(op) => next = Some(op),
                            Err(TryRecvError::Empty) => {}
                            Err(TryRecvError::Disconnected) => open = false,
                        }
                    }
                    if slept || !open || w.batch.is_empty() {
                        break;
                    }
                    std::thread::sleep(STORE_DELAY);
                    slept = true;
                    next = rx.try_recv().ok();
                }
                w.flush();
                if !open {
                    break;
                }
            }
            w.flush();
        })
        .ok();
    tx
}
