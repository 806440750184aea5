//! The life of one branch of a forwarded request (RFC 3261 §16.6–16.10), as one enum: sent,
//! ringing, owing or having sent a CANCEL, finished. It owns only the state and its
//! transitions; the proxy owns the branches (in their response context) and does the sending
//! the transitions ask for, so that a branch can never be, say, cancelled before it rang or
//! ringing after its final response.

/// Where a branch is in its life. `abandoned` marks a branch the hunt gave up on (its ring
/// time ran out): it is being cancelled, and its final response does not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Sent; nothing but (at most) a 100 has come back.
    Trying,
    /// A CANCEL was asked for before the branch answered provisionally: it goes out with the
    /// first provisional response (§9.1: a CANCEL before any response could overtake the
    /// request).
    CancelOwed { abandoned: bool },
    /// Answered provisionally (180, 183...): ringing.
    Ringing,
    /// CANCEL sent; waiting for the final response (normally 487).
    Cancelling { abandoned: bool },
    /// A final response came, or one was made up locally (timeout, unreachable).
    Done { status: u16, abandoned: bool },
}

/// A branch's life, opaque outside this module: it changes only through the transitions
/// below, so no code can put a branch into a state its messages did not lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BranchState(Life);

impl BranchState {
    /// A new branch: sent, nothing back yet.
    pub(crate) fn new() -> BranchState {
        BranchState(Life::Trying)
    }

    /// Ringing: answered provisionally, no CANCEL asked for.
    pub(crate) fn is_ringing(&self) -> bool {
        self.0 == Life::Ringing
    }

    /// A provisional response. True when a CANCEL owed must be sent now.
    pub(crate) fn provisional(&mut self) -> bool {
        match self.0 {
            Life::Trying => {
                self.0 = Life::Ringing;
                false
            }
            Life::CancelOwed { abandoned } => {
                self.0 = Life::Cancelling { abandoned };
                true
            }
            Life::Ringing | Life::Cancelling { .. } | Life::Done { .. } => false,
        }
    }

    /// The branch is to be cancelled (the caller's CANCEL, a 2xx or 6xx elsewhere). True when
    /// the CANCEL must be sent now; before the branch rang it is only owed.
    pub(crate) fn cancel(&mut self) -> bool {
        self.cancel_as(false)
    }

    /// The hunt gives up on the branch: cancelled as by `cancel`, and its final response
    /// will not count. A finished branch stays as it is.
    pub(crate) fn abandon(&mut self) -> bool {
        self.cancel_as(true)
    }

    fn cancel_as(&mut self, abandon: bool) -> bool {
        match self.0 {
            Life::Trying => {
                self.0 = Life::CancelOwed { abandoned: abandon };
                false
            }
            Life::CancelOwed { abandoned } => {
                self.0 = Life::CancelOwed {
                    abandoned: abandoned || abandon,
                };
                false
            }
            Life::Ringing => {
                self.0 = Life::Cancelling { abandoned: abandon };
                true
            }
            Life::Cancelling { abandoned } => {
                self.0 = Life::Cancelling {
                    abandoned: abandoned || abandon,
                };
                false
            }
            Life::Done { .. } => false,
        }
    }

    /// A final response (a later one, such as a second 2xx, replaces the status).
    pub(crate) fn finish(&mut self, status: u16) {
        self.0 = Life::Done {
            status,
            abandoned: self.is_abandoned(),
        };
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.0, Life::Done { .. })
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        matches!(
            self.0,
            Life::CancelOwed { abandoned: true }
                | Life::Cancelling { abandoned: true }
                | Life::Done {
                    abandoned: true,
                    ..
                }
        )
    }

    /// Whether the branch's request may go to the next server of its domain after a failure
    /// (RFC 3263 §4.3): not once it is finished, or to be cancelled (a CANCEL owed or sent):
    /// a branch being cancelled must not ring anywhere new (RFC 3261 §16.7 step 5: no new
    /// branch after a 6xx).
    pub(crate) fn may_retry(&self) -> bool {
        matches!(self.0, Life::Trying | Life::Ringing)
    }
}

#[cfg(test)]
mod tests {
    use super::Life::*;
    use super::{BranchState, Life};

    fn st(l: Life) -> BranchState {
        BranchState(l)
    }

    #[test]
    fn a_cancel_before_ringing_waits_for_the_first_provisional() {
        let mut s = BranchState::new();
        assert!(!s.cancel());
        assert_eq!(s, st(CancelOwed { abandoned: false }));
        assert!(s.provisional(), "the owed CANCEL goes out now");
        assert_eq!(s, st(Cancelling { abandoned: false }));
        assert!(!s.provisional(), "and only once");
        s.finish(487);
        assert_eq!(
            s,
            st(Done {
                status: 487,
                abandoned: false
            })
        );
    }

    #[test]
    fn a_ringing_branch_is_cancelled_at_once_and_only_once() {
        let mut s = BranchState::new();
        assert!(!s.provisional());
        assert_eq!(s, st(Ringing));
        assert!(s.cancel());
        assert!(!s.cancel());
        assert!(!s.abandon(), "already cancelled: no second CANCEL");
        assert!(s.is_abandoned());
        s.finish(487);
        assert_eq!(
            s,
            st(Done {
                status: 487,
                abandoned: true
            })
        );
    }

    #[test]
    fn a_finished_branch_stays_finished() {
        let mut s = BranchState::new();
        s.finish(200);
        assert!(!s.cancel());
        assert!(!s.abandon());
        assert!(!s.provisional());
        assert!(!s.is_abandoned());
        assert!(!s.may_retry());
        // A 2xx retransmission passed up again.
        s.finish(204);
        assert_eq!(
            s,
            st(Done {
                status: 204,
                abandoned: false
            })
        );
    }

    #[test]
    fn retry_only_while_not_cancelled_or_abandoned() {
        assert!(st(Trying).may_retry());
        assert!(st(Ringing).may_retry());
        assert!(!st(CancelOwed { abandoned: false }).may_retry());
        assert!(!st(CancelOwed { abandoned: true }).may_retry());
        assert!(!st(Cancelling { abandoned: false }).may_retry());
    }
}
