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
}

/// Most binding writes committed in one transaction.
const STORE_BATCH: usize = 1024;
/// How long a registration change may wait for the next commit: one transaction per this
/// interval instead of one per REGISTER (a crash loses at most this much; phones re-register).
const STORE_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// Starts the writer thread, which owns `store`, and returns the sender for its work. The
/// thread ends, after a last commit, when every sender is gone.
pub fn spawn_store(mut store: SqliteStore) -> std::sync::mpsc::Sender<StoreOp> {
    use std::sync::mpsc::TryRecvError;
    let (tx, rx) = std::sync::mpsc::channel::<StoreOp>();
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(STORE_BATCH);
            // Wait for the first change, then sleep through the batching window and take all
            // that came meanwhile: while this thread sleeps, senders never have to wake it
            // (one futex wake and two context switches per REGISTER otherwise).
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                let mut slept = false;
                let mut open = true;
                loop {
                    while let Some(op) = next.take() {
                        match op {
                            StoreOp::Put(b) => batch.push(BindingWrite::Put(b)),
                            StoreOp::Delete { aor, contact } => {
                                batch.push(BindingWrite::Delete { aor, contact })
                            }
                            StoreOp::Load(reply) => {
                                flush(&mut store, &mut batch);
                                let _ = reply.send(store.users().and_then(|u| Ok((u, store.plan()?))));
                            }
                            StoreOp::Forward(f) => {
                                flush(&mut store, &mut batch);
                                if let Err(e) = store.put_forward(&f) {
                                    tracing::error!(user = %f.user, "cannot store the forwarding set from the phone: {e}; it applies until the next restart or reload");
                                }
                            }
                        }
                        if batch.len() >= STORE_BATCH {
                            flush(&mut store, &mut batch);
                        }
                        match rx.try_recv() {
                            Ok(op) => next = Some(op),
                            Err(TryRecvError::Empty) => {}
                            Err(TryRecvError::Disconnected) => open = false,
                        }
                    }
                    if slept || !open || batch.is_empty() {
                        break;
                    }
                    std::thread::sleep(STORE_DELAY);
                    slept = true;
                    next = rx.try_recv().ok();
                }
                flush(&mut store, &mut batch);
                if !open {
                    break;
                }
            }
            flush(&mut store, &mut batch);
        })
        .ok();
    tx
}

/// Writes a batch; on failure names every registration it could not keep.
fn flush(store: &mut SqliteStore, batch: &mut Vec<BindingWrite>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.write_bindings(batch) {
        for w in batch.iter() {
            match w {
                BindingWrite::Put(b) => tracing::error!(user = %b.aor, contact = %b.contact,
                    "store write failed: {e}; the registration is kept in memory only and will not survive a restart"),
                BindingWrite::Delete { aor, contact } => tracing::error!(user = %aor, %contact,
                    "store delete failed: {e}; the binding may come back after a restart until it expires"),
            }
        }
    }
    batch.clear();
}
