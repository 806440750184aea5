//! RFC 3261 §17 transaction state machines, with the RFC 6026 "Accepted" states, without I/O.
//!
//! The owner (the proxy core) parses messages, builds the bytes to send and tells a machine what
//! happened, passing the current time in as `now`; the machine decides states, retransmissions
//! and timeouts and returns [`Action`]s for the owner to carry out. Timers are deadlines exposed
//! through `poll_timeout`; the owner calls `handle_timeout` once the earliest one is reached.
//!
//! Timers that are zero on reliable transports (D, I, J, K) are never scheduled: the machine
//! terminates in the same call that would have started them. A timer that fires late is re-armed
//! from the `now` it was handled at, so a late owner gets one retransmission, not a burst.

use bytes::Bytes;
use std::time::{Duration, Instant};

/// The RFC 3261 timer base values every transaction derives its timers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip estimate (default 500 ms): first retransmit interval; 64*T1 is the give-up time.
    pub t1: Duration,
    /// Cap on the retransmit interval of non-INVITE requests and INVITE finals (default 4 s).
    pub t2: Duration,
    /// Maximum lifetime of a message in the network (default 5 s): Timers I and K.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64*T1: Timers B, F, H, L, M and J (unreliable).
    fn give_up(&self) -> Duration {
        self.t1 * 64
    }

    /// Timer D: at least 32 s, and never shorter than the server's retransmission window.
    fn timer_d(&self) -> Duration {
        Duration::from_secs(32).max(self.give_up())
    }
}

/// What the owner must do on behalf of a transaction, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes to the transaction's peer (first send or retransmission).
    Transmit(Bytes),
    /// Timer B/F (client: TU treats it as a 408) or Timer H (server: the ACK never came) fired.
    Timeout,
    /// The owner reported a transport failure; the TU treats it as a 503 / gives up.
    TransportError,
    /// The transaction is over and the owner may drop it; always the last action of a list.
    Terminated,
}

/// Whether an incoming response or ACK must go up to the TU/core or was consumed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Hand the message to the TU (or to the core, for an ACK to a 2xx).
    PassUp,
    /// The transaction consumed the message (retransmission or stray); drop it.
    Absorb,
}

/// A retransmission timer: next deadline and the interval that led to it.
#[derive(Debug, Clone, Copy)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

impl Retransmit {
    /// First retransmission T1 after `now`; `None` on reliable transports.
    fn start(now: Instant, reliable: bool, timers: &Timers) -> Option<Self> {
        (!reliable).then(|| Retransmit {
            at: now + timers.t1,
            interval: timers.t1,
        })
    }

    /// Re-arms after firing at `now` with the next interval.
    fn rearm(&mut self, now: Instant, interval: Duration) {
        self.interval = interval;
        self.at = now + interval;
    }
}

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| at <= now)
}

/// One `Transmit` of the stored bytes, or nothing.
fn resend(bytes: &Option<Bytes>) -> Vec<Action> {
    bytes.iter().cloned().map(Action::Transmit).collect()
}

fn earliest(deadlines: &[Option<Instant>]) -> Option<Instant> {
    deadlines.iter().flatten().min().copied()
}

/// The methods all four machines share: `$state::Terminated` is final, `end` is the deadline
/// ending the current state and `$retransmit` (if the machine has one) its retransmission timer.
macro_rules! common_methods {
    ($machine:ident, $state:ident $(, $retransmit:ident)?) => {
        impl $machine {
            /// Current state.
            pub fn state(&self) -> $state {
                self.state
            }

            /// Whether the transaction is over and may be dropped.
            pub fn is_terminated(&self) -> bool {
                self.state == $state::Terminated
            }

            /// Earliest pending timer, if any: call `handle_timeout` once it is reached.
            pub fn poll_timeout(&self) -> Option<Instant> {
                earliest(&[self.end $(, self.$retransmit.map(|r| r.at))?])
            }

            /// The transport failed to send for this transaction (§17.1.4, §17.2.4).
            pub fn on_transport_error(&mut self) -> Vec<Action> {
                let mut out = Vec::new();
                if !self.is_terminated() {
                    out.push(Action::TransportError);
                    self.terminate(&mut out);
                }
                out
            }

            fn terminate(&mut self, out: &mut Vec<Action>) {
                self.state = $state::Terminated;
                self.end = None;
                $(self.$retransmit = None;)?
                out.push(Action::Terminated);
            }
        }
    };
}

common_methods!(ClientInvite, ClientInviteState, retransmit);
common_methods!(ClientNonInvite, ClientNonInviteState, retransmit);
common_methods!(ServerInvite, ServerInviteState, retransmit);
common_methods!(ServerNonInvite, ServerNonInviteState);

/// State of a [`ClientInvite`] (RFC 3261 figure 5, RFC 6026 figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    /// INVITE sent, nothing heard; Timers A and B run.
    Calling,
    /// A provisional arrived; no retransmissions, no timeout (the TU runs Timer C).
    Proceeding,
    /// A 300-699 arrived and was ACKed; Timer D absorbs its retransmissions.
    Completed,
    /// A 2xx arrived; Timer M lets retransmitted 2xx through to the TU.
    Accepted,
    /// Over; the owner may drop the transaction.
    Terminated,
}

/// INVITE client transaction (§17.1.1 + RFC 6026): owns the INVITE bytes and, once built, the ACK
/// for a non-2xx final, and retransmits them.
#[derive(Debug)]
pub struct ClientInvite {
    state: ClientInviteState,
    reliable: bool,
    timers: Timers,
    request: Bytes,
    ack: Option<Bytes>,
    got_provisional: bool,
    /// Timer A (Calling, unreliable only).
    retransmit: Option<Retransmit>,
    /// The deadline ending the current state: Timer B (Calling), D (Completed) or M (Accepted).
    end: Option<Instant>,
}

impl ClientInvite {
    /// Starts the transaction by sending `request` (the INVITE); returns it with that first send.
    pub fn new(
        now: Instant,
        reliable: bool,
        timers: &Timers,
        request: Bytes,
    ) -> (Self, Vec<Action>) {
        let tx = ClientInvite {
            state: ClientInviteState::Calling,
            reliable,
            timers: *timers,
            request: request.clone(),
            ack: None,
            got_provisional: false,
            retransmit: Retransmit::start(now, reliable, timers),
            end: Some(now + timers.give_up()),
        };
        (tx, vec![Action::Transmit(request)])
    }

    /// Whether a provisional response arrived: a CANCEL may only be sent after one (§9.1).
    pub fn has_received_provisional(&self) -> bool {
        self.got_provisional
    }

    /// Fires the timers due at `now`: Timer A retransmits, B times out, D and M terminate.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if due(self.end, now) {
            if self.state == ClientInviteState::Calling {
                out.push(Action::Timeout);
            }
            self.terminate(&mut out);
        } else if let Some(a) = self.retransmit.as_mut().filter(|a| a.at <= now) {
            a.rearm(now, a.interval * 2);
            out.push(Action::Transmit(self.request.clone()));
        }
        out
    }

    /// A response with `status` matched this transaction; `ack` builds the ACK for a non-2xx
    /// final (it needs the response's To tag) and is called at most once.
    pub fn on_response(
        &mut self,
        now: Instant,
        status: u16,
        ack: impl FnOnce() -> Bytes,
    ) -> (Disposition, Vec<Action>) {
        use ClientInviteState::*;
        match (self.state, status) {
            (Calling | Proceeding, 100..=199) => {
                self.state = Proceeding;
                self.got_provisional = true;
                self.retransmit = None;
                self.end = None;
                (Disposition::PassUp, Vec::new())
            }
            (Calling | Proceeding, 200..=299) => {
                self.state = Accepted;
                self.retransmit = None;
                self.end = Some(now + self.timers.give_up());
                (Disposition::PassUp, Vec::new())
            }
            (Calling | Proceeding, 300..=699) => {
                let ack = ack();
                let mut out = vec![Action::Transmit(ack.clone())];
                self.retransmit = None;
                if self.reliable {
                    self.terminate(&mut out);
                } else {
                    self.state = Completed;
                    self.ack = Some(ack);
                    self.end = Some(now + self.timers.timer_d());
                }
                (Disposition::PassUp, out)
            }
            (Completed, 300..=699) => (Disposition::Absorb, resend(&self.ack)),
            (Accepted, 200..=299) => (Disposition::PassUp, Vec::new()),
            _ => (Disposition::Absorb, Vec::new()),
        }
    }
}

/// State of a [`ClientNonInvite`] (RFC 3261 figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    /// Request sent, nothing heard; Timer E doubles up to T2, Timer F runs.
    Trying,
    /// A provisional arrived; Timer E retransmits every T2, Timer F still runs.
    Proceeding,
    /// A final arrived; Timer K absorbs its retransmissions.
    Completed,
    /// Over; the owner may drop the transaction.
    Terminated,
}

/// Non-INVITE client transaction (§17.1.2): owns the request bytes and retransmits them.
#[derive(Debug)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    reliable: bool,
    timers: Timers,
    request: Bytes,
    /// Timer E (Trying/Proceeding, unreliable only).
    retransmit: Option<Retransmit>,
    /// Timer F (Trying/Proceeding) or K (Completed).
    end: Option<Instant>,
}

impl ClientNonInvite {
    /// Starts the transaction by sending `request`; returns it with that first send.
    pub fn new(
        now: Instant,
        reliable: bool,
        timers: &Timers,
        request: Bytes,
    ) -> (Self, Vec<Action>) {
        let tx = ClientNonInvite {
            state: ClientNonInviteState::Trying,
            reliable,
            timers: *timers,
            request: request.clone(),
            retransmit: Retransmit::start(now, reliable, timers),
            end: Some(now + timers.give_up()),
        };
        (tx, vec![Action::Transmit(request)])
    }

    /// Fires the timers due at `now`: Timer E retransmits, F times out, K terminates.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if due(self.end, now) {
            if self.state != ClientNonInviteState::Completed {
                out.push(Action::Timeout);
            }
            self.terminate(&mut out);
        } else if let Some(e) = self.retransmit.as_mut().filter(|e| e.at <= now) {
            let next = if self.state == ClientNonInviteState::Proceeding {
                self.timers.t2
            } else {
                (e.interval * 2).min(self.timers.t2)
            };
            e.rearm(now, next);
            out.push(Action::Transmit(self.request.clone()));
        }
        out
    }

    /// A response with `status` matched this transaction: provisionals and the first final go up,
    /// retransmitted finals are absorbed.
    pub fn on_response(&mut self, now: Instant, status: u16) -> (Disposition, Vec<Action>) {
        use ClientNonInviteState::*;
        let mut out = Vec::new();
        match (self.state, status) {
            (Trying | Proceeding, 100..=199) => self.state = Proceeding,
            (Trying | Proceeding, 200..=699) => {
                self.retransmit = None;
                if self.reliable {
                    self.terminate(&mut out);
                } else {
                    self.state = Completed;
                    self.end = Some(now + self.timers.t4);
                }
            }
            _ => return (Disposition::Absorb, out),
        }
        (Disposition::PassUp, out)
    }
}

/// State of a [`ServerInvite`] (RFC 3261 figure 7, RFC 6026 figure 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    /// INVITE received, no final yet; retransmitted INVITEs re-send the last provisional.
    Proceeding,
    /// A 300-699 was sent; Timer G retransmits it until the ACK, Timer H gives up.
    Completed,
    /// The ACK arrived; Timer I absorbs ACK retransmissions.
    Confirmed,
    /// A 2xx was sent; Timer L absorbs INVITE retransmissions, ACKs go to the core.
    Accepted,
    /// Over; the owner may drop the transaction.
    Terminated,
}

/// INVITE server transaction (§17.2.1 + RFC 6026): owns the last response sent and retransmits it.
#[derive(Debug)]
pub struct ServerInvite {
    state: ServerInviteState,
    reliable: bool,
    timers: Timers,
    /// Last provisional (Proceeding) or the final (Completed), re-sent on request retransmission.
    last_response: Option<Bytes>,
    /// Timer G (Completed, unreliable only).
    retransmit: Option<Retransmit>,
    /// Timer H (Completed), I (Confirmed) or L (Accepted).
    end: Option<Instant>,
}

impl ServerInvite {
    /// Creates the transaction, in Proceeding, for an INVITE that just arrived.
    pub fn new(reliable: bool, timers: &Timers) -> Self {
        ServerInvite {
            state: ServerInviteState::Proceeding,
            reliable,
            timers: *timers,
            last_response: None,
            retransmit: None,
            end: None,
        }
    }

    /// Fires the timers due at `now`: Timer G retransmits, H times out, I and L terminate.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if due(self.end, now) {
            if self.state == ServerInviteState::Completed {
                out.push(Action::Timeout);
            }
            self.terminate(&mut out);
        } else if let Some(g) = self.retransmit.as_mut().filter(|g| g.at <= now) {
            g.rearm(now, (g.interval * 2).min(self.timers.t2));
            out = resend(&self.last_response);
        }
        out
    }

    /// The INVITE was received again: re-send the last response, if any (absorbed otherwise).
    pub fn on_request_retransmission(&self) -> Vec<Action> {
        match self.state {
            ServerInviteState::Proceeding | ServerInviteState::Completed => {
                resend(&self.last_response)
            }
            _ => Vec::new(),
        }
    }

    /// The TU sends a response with `status`; in Accepted its 2xx retransmissions come here too.
    /// Responses not allowed in the current state are ignored.
    pub fn send_response(&mut self, now: Instant, status: u16, response: Bytes) -> Vec<Action> {
        use ServerInviteState::*;
        match (self.state, status) {
            (Proceeding, 100..=199) => self.last_response = Some(response.clone()),
            (Proceeding, 200..=299) => {
                self.state = Accepted;
                self.last_response = None;
                self.end = Some(now + self.timers.give_up());
            }
            (Accepted, 200..=299) => {}
            (Proceeding, 300..=699) => {
                self.state = Completed;
                self.last_response = Some(response.clone());
                self.retransmit = Retransmit::start(now, self.reliable, &self.timers);
                self.end = Some(now + self.timers.give_up());
            }
            _ => return Vec::new(),
        }
        vec![Action::Transmit(response)]
    }

    /// An ACK matched this transaction. Absorbed in Completed/Confirmed; in Accepted it is the
    /// ACK to a 2xx and must go to the core ([`Disposition::PassUp`]).
    pub fn on_ack(&mut self, now: Instant) -> (Disposition, Vec<Action>) {
        let mut out = Vec::new();
        match self.state {
            ServerInviteState::Completed => {
                self.retransmit = None;
                if self.reliable {
                    self.terminate(&mut out);
                } else {
                    self.state = ServerInviteState::Confirmed;
                    self.end = Some(now + self.timers.t4);
                }
            }
            ServerInviteState::Accepted => return (Disposition::PassUp, out),
            _ => {}
        }
        (Disposition::Absorb, out)
    }
}

/// State of a [`ServerNonInvite`] (RFC 3261 figure 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    /// Request received, nothing sent; retransmitted requests are absorbed.
    Trying,
    /// A provisional was sent; retransmitted requests re-send it.
    Proceeding,
    /// A final was sent; retransmitted requests re-send it until Timer J.
    Completed,
    /// Over; the owner may drop the transaction.
    Terminated,
}

/// Non-INVITE server transaction (§17.2.2): owns the last response sent, re-sent on retransmits.
#[derive(Debug)]
pub struct ServerNonInvite {
    state: ServerNonInviteState,
    reliable: bool,
    timers: Timers,
    last_response: Option<Bytes>,
    /// Timer J (Completed, unreliable only).
    end: Option<Instant>,
}

impl ServerNonInvite {
    /// Creates the transaction, in Trying, for a request that just arrived.
    pub fn new(reliable: bool, timers: &Timers) -> Self {
        ServerNonInvite {
            state: ServerNonInviteState::Trying,
            reliable,
            timers: *timers,
            last_response: None,
            end: None,
        }
    }

    /// Fires Timer J if due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if due(self.end, now) {
            self.terminate(&mut out);
        }
        out
    }

    /// The request was received again: re-send the last response (absorbed in Trying).
    pub fn on_request_retransmission(&self) -> Vec<Action> {
        match self.state {
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed => {
                resend(&self.last_response)
            }
            _ => Vec::new(),
        }
    }

    /// The TU sends a response with `status`; ignored once a final was sent.
    pub fn send_response(&mut self, now: Instant, status: u16, response: Bytes) -> Vec<Action> {
        use ServerNonInviteState::*;
        let mut out = Vec::new();
        match (self.state, status) {
            (Trying | Proceeding, 100..=199) => {
                self.state = Proceeding;
                self.last_response = Some(response.clone());
                out.push(Action::Transmit(response));
            }
            (Trying | Proceeding, 200..=699) => {
                out.push(Action::Transmit(response.clone()));
                if self.reliable {
                    self.terminate(&mut out);
                } else {
                    self.state = Completed;
                    self.last_response = Some(response);
                    self.end = Some(now + self.timers.give_up());
                }
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use Action::{Terminated, Timeout, TransportError};
    use Disposition::{Absorb, PassUp};

    const UDP: bool = false;
    const TCP: bool = true;
    type Log = Vec<(u64, Vec<Action>)>;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }
    fn tx(s: &'static str) -> Action {
        Action::Transmit(b(s))
    }
    /// A virtual time base and `at(ms)` = base + ms.
    fn clock() -> (Instant, impl Fn(u64) -> Instant) {
        let t0 = Instant::now();
        (t0, move |n| t0 + ms(n))
    }
    fn timed_out(at: u64) -> Log {
        vec![(at, vec![Timeout, Terminated])]
    }
    fn no_ack() -> Bytes {
        panic!("ACK must not be built")
    }

    fn client_invite(t0: Instant, reliable: bool) -> ClientInvite {
        let (c, first) = ClientInvite::new(t0, reliable, &Timers::default(), b("INVITE"));
        assert_eq!(first, vec![tx("INVITE")]);
        c
    }
    fn client_non_invite(t0: Instant, reliable: bool) -> ClientNonInvite {
        let (c, first) = ClientNonInvite::new(t0, reliable, &Timers::default(), b("REQ"));
        assert_eq!(first, vec![tx("REQ")]);
        c
    }

    trait Machine {
        fn next(&self) -> Option<Instant>;
        fn fire(&mut self, now: Instant) -> Vec<Action>;
    }
    macro_rules! machine {
        ($($t:ty),*) => {$(
            impl Machine for $t {
                fn next(&self) -> Option<Instant> { self.poll_timeout() }
                fn fire(&mut self, now: Instant) -> Vec<Action> { self.handle_timeout(now) }
            }
        )*};
    }
    machine!(ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite);

    /// Fires every timer up to `t0 + until_ms` in virtual time: (ms since t0, actions) each.
    fn run(m: &mut impl Machine, t0: Instant, until_ms: u64) -> Log {
        let mut log = Vec::new();
        while let Some(at) = m.next().filter(|&at| at <= t0 + ms(until_ms)) {
            let actions = m.fire(at);
            log.push(((at - t0).as_millis() as u64, actions));
        }
        log
    }

    /// One `Transmit(bytes)` at each instant (ms since t0).
    fn retx(instants: &[u64], bytes: &'static str) -> Log {
        instants.iter().map(|&t| (t, vec![tx(bytes)])).collect()
    }

    const CAPPED: [u64; 10] = [
        500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
    ];

    #[test]
    fn client_invite_timer_a_schedule_then_timer_b() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, UDP);
        assert_eq!(c.poll_timeout(), Some(at(500)));
        assert!(c.handle_timeout(at(499)).is_empty());
        let a = [500, 1500, 3500, 7500, 15500, 31500];
        let expected = [retx(&a, "INVITE"), timed_out(32000)].concat();
        assert_eq!(run(&mut c, t0, 100_000), expected);
        assert_eq!(c.state(), ClientInviteState::Terminated);
        assert_eq!(c.poll_timeout(), None);
        assert!(c.handle_timeout(at(200_000)).is_empty());
    }

    #[test]
    fn client_invite_reliable_no_retransmissions_timer_b() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, TCP);
        assert_eq!(c.poll_timeout(), Some(at(32000)));
        assert_eq!(run(&mut c, t0, 100_000), timed_out(32000));
    }

    #[test]
    fn client_invite_late_timer_rearms_from_now_and_b_wins() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, UDP);
        assert_eq!(c.handle_timeout(at(2000)), vec![tx("INVITE")]);
        assert_eq!(c.poll_timeout(), Some(at(3000)));
        assert_eq!(c.handle_timeout(at(40000)), vec![Timeout, Terminated]);
    }

    #[test]
    fn client_invite_provisional_stops_timers_a_and_b() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, UDP);
        assert_eq!(run(&mut c, t0, 2000), retx(&[500, 1500], "INVITE"));
        assert!(!c.has_received_provisional());
        assert_eq!(c.on_response(at(2000), 100, no_ack), (PassUp, vec![]));
        assert_eq!(c.state(), ClientInviteState::Proceeding);
        assert!(c.has_received_provisional());
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.on_response(at(3000), 180, no_ack), (PassUp, vec![]));
        assert!(run(&mut c, t0, 1_000_000).is_empty());
        assert_eq!(c.state(), ClientInviteState::Proceeding);
    }

    #[test]
    fn client_invite_non_2xx_acks_each_final_then_timer_d() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, UDP);
        let built = Cell::new(0);
        let ack = || {
            built.set(built.get() + 1);
            b("ACK")
        };
        assert_eq!(c.on_response(at(1000), 486, ack), (PassUp, vec![tx("ACK")]));
        assert_eq!(c.state(), ClientInviteState::Completed);
        assert_eq!(c.poll_timeout(), Some(at(33000)));
        for t in [2000, 4000] {
            assert_eq!(c.on_response(at(t), 486, ack), (Absorb, vec![tx("ACK")]));
        }
        assert_eq!(c.on_response(at(5000), 180, ack), (Absorb, vec![]));
        assert_eq!(c.on_response(at(5000), 200, ack), (Absorb, vec![]));
        assert_eq!(run(&mut c, t0, 100_000), vec![(33000, vec![Terminated])]);
        assert_eq!(c.on_response(at(34000), 486, ack), (Absorb, vec![]));
        assert_eq!(built.get(), 1);
    }

    #[test]
    fn client_invite_non_2xx_reliable_terminates_at_once() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, TCP);
        c.on_response(at(100), 183, no_ack);
        let r = c.on_response(at(900), 603, || b("ACK"));
        assert_eq!(r, (PassUp, vec![tx("ACK"), Terminated]));
        assert!(c.is_terminated());
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn client_invite_2xx_accepted_passes_retransmissions_until_timer_m() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, UDP);
        c.on_response(at(200), 180, no_ack);
        assert_eq!(c.on_response(at(3000), 200, no_ack), (PassUp, vec![]));
        assert_eq!(c.state(), ClientInviteState::Accepted);
        assert_eq!(c.poll_timeout(), Some(at(35000)));
        for t in [3500, 4500, 6500] {
            assert_eq!(c.on_response(at(t), 200, no_ack), (PassUp, vec![]));
        }
        assert_eq!(c.on_response(at(7000), 486, no_ack), (Absorb, vec![]));
        assert_eq!(c.on_response(at(7000), 180, no_ack), (Absorb, vec![]));
        assert_eq!(run(&mut c, t0, 100_000), vec![(35000, vec![Terminated])]);
    }

    #[test]
    fn client_invite_2xx_in_calling_stops_timer_a() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, UDP);
        assert_eq!(c.on_response(at(700), 200, no_ack), (PassUp, vec![]));
        assert_eq!(run(&mut c, t0, 100_000), vec![(32700, vec![Terminated])]);
    }

    #[test]
    fn client_non_invite_timer_e_capped_at_t2_then_timer_f() {
        let t0 = Instant::now();
        let mut c = client_non_invite(t0, UDP);
        let expected = [retx(&CAPPED, "REQ"), timed_out(32000)].concat();
        assert_eq!(run(&mut c, t0, 100_000), expected);
        assert_eq!(c.state(), ClientNonInviteState::Terminated);
    }

    #[test]
    fn client_non_invite_proceeding_switches_timer_e_to_t2() {
        let (t0, at) = clock();
        let mut c = client_non_invite(t0, UDP);
        assert_eq!(run(&mut c, t0, 600), retx(&[500], "REQ"));
        assert_eq!(c.on_response(at(600), 100), (PassUp, vec![]));
        assert_eq!(c.state(), ClientNonInviteState::Proceeding);
        // The pending E (1.5 s) still fires, then every T2; Timer F keeps running.
        let e = [1500, 5500, 9500, 13500, 17500, 21500, 25500, 29500];
        let expected = [retx(&e, "REQ"), timed_out(32000)].concat();
        assert_eq!(run(&mut c, t0, 100_000), expected);
    }

    #[test]
    fn client_non_invite_final_then_timer_k() {
        let (t0, at) = clock();
        let mut c = client_non_invite(t0, UDP);
        assert_eq!(c.on_response(at(2000), 200), (PassUp, vec![]));
        assert_eq!(c.state(), ClientNonInviteState::Completed);
        assert_eq!(c.poll_timeout(), Some(at(7000)));
        assert_eq!(c.on_response(at(3000), 200), (Absorb, vec![]));
        assert_eq!(c.on_response(at(3000), 180), (Absorb, vec![]));
        assert_eq!(run(&mut c, t0, 100_000), vec![(7000, vec![Terminated])]);
        assert_eq!(c.on_response(at(8000), 200), (Absorb, vec![]));
    }

    #[test]
    fn server_invite_retransmitted_invite_resends_last_provisional() {
        let (t0, at) = clock();
        let mut s = ServerInvite::new(UDP, &Timers::default());
        assert_eq!(s.state(), ServerInviteState::Proceeding);
        assert!(s.on_request_retransmission().is_empty());
        assert_eq!(s.send_response(t0, 100, b("100")), vec![tx("100")]);
        assert_eq!(s.on_request_retransmission(), vec![tx("100")]);
        assert_eq!(s.send_response(at(10), 180, b("180")), vec![tx("180")]);
        assert_eq!(s.on_request_retransmission(), vec![tx("180")]);
        assert_eq!(s.poll_timeout(), None);
        // A stray ACK before any final is ignored.
        assert_eq!(s.on_ack(at(20)), (Absorb, vec![]));
        assert_eq!(s.state(), ServerInviteState::Proceeding);
    }

    #[test]
    fn server_invite_486_timer_g_until_ack_then_timer_i() {
        let (t0, at) = clock();
        let mut s = ServerInvite::new(UDP, &Timers::default());
        s.send_response(t0, 180, b("180"));
        assert_eq!(s.send_response(at(1000), 486, b("486")), vec![tx("486")]);
        assert_eq!(s.state(), ServerInviteState::Completed);
        let g = [1500, 2500, 4500, 8500, 12500];
        assert_eq!(run(&mut s, t0, 13000), retx(&g, "486"));
        assert_eq!(s.on_request_retransmission(), vec![tx("486")]);
        assert!(s.send_response(at(13000), 200, b("200")).is_empty());
        assert_eq!(s.on_ack(at(13000)), (Absorb, vec![]));
        assert_eq!(s.state(), ServerInviteState::Confirmed);
        assert_eq!(s.poll_timeout(), Some(at(18000)));
        assert_eq!(s.on_ack(at(14000)), (Absorb, vec![]));
        assert!(s.on_request_retransmission().is_empty());
        assert_eq!(run(&mut s, t0, 100_000), vec![(18000, vec![Terminated])]);
        assert!(s.is_terminated());
    }

    #[test]
    fn server_invite_timer_h_without_ack() {
        let (t0, at) = clock();
        let mut s = ServerInvite::new(UDP, &Timers::default());
        s.send_response(t0, 486, b("486"));
        let expected = [retx(&CAPPED, "486"), timed_out(32000)].concat();
        assert_eq!(run(&mut s, t0, 100_000), expected);
        assert_eq!(s.on_ack(at(33000)), (Absorb, vec![]));
    }

    #[test]
    fn server_invite_reliable_no_timer_g_and_timer_i_zero() {
        let (t0, at) = clock();
        let mut s = ServerInvite::new(TCP, &Timers::default());
        assert_eq!(s.send_response(t0, 404, b("404")), vec![tx("404")]);
        assert_eq!(s.poll_timeout(), Some(at(32000)));
        assert_eq!(s.on_ack(at(100)), (Absorb, vec![Terminated]));
        assert_eq!(s.poll_timeout(), None);

        let mut s = ServerInvite::new(TCP, &Timers::default());
        s.send_response(t0, 404, b("404"));
        assert_eq!(run(&mut s, t0, 100_000), timed_out(32000));
    }

    #[test]
    fn server_invite_2xx_accepted_until_timer_l() {
        let (t0, at) = clock();
        let mut s = ServerInvite::new(UDP, &Timers::default());
        s.send_response(t0, 180, b("180"));
        assert_eq!(s.send_response(at(1000), 200, b("200")), vec![tx("200")]);
        assert_eq!(s.state(), ServerInviteState::Accepted);
        assert_eq!(s.poll_timeout(), Some(at(33000)));
        assert!(s.on_request_retransmission().is_empty());
        assert_eq!(s.send_response(at(1500), 200, b("200")), vec![tx("200")]);
        assert!(s.send_response(at(1600), 486, b("486")).is_empty());
        assert!(s.send_response(at(1600), 180, b("180")).is_empty());
        assert_eq!(s.on_ack(at(2000)), (PassUp, vec![]));
        assert_eq!(s.state(), ServerInviteState::Accepted);
        assert_eq!(run(&mut s, t0, 100_000), vec![(33000, vec![Terminated])]);
    }

    #[test]
    fn server_non_invite_retransmissions_and_timer_j() {
        let (t0, at) = clock();
        let mut s = ServerNonInvite::new(UDP, &Timers::default());
        assert_eq!(s.state(), ServerNonInviteState::Trying);
        assert!(s.on_request_retransmission().is_empty());
        assert_eq!(s.send_response(t0, 100, b("100")), vec![tx("100")]);
        assert_eq!(s.state(), ServerNonInviteState::Proceeding);
        assert_eq!(s.on_request_retransmission(), vec![tx("100")]);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.send_response(at(1000), 200, b("200")), vec![tx("200")]);
        assert_eq!(s.state(), ServerNonInviteState::Completed);
        assert_eq!(s.on_request_retransmission(), vec![tx("200")]);
        assert!(s.send_response(at(1100), 500, b("500")).is_empty());
        assert!(s.send_response(at(1100), 180, b("180")).is_empty());
        assert_eq!(s.on_request_retransmission(), vec![tx("200")]);
        assert_eq!(s.poll_timeout(), Some(at(33000)));
        assert!(s.handle_timeout(at(32999)).is_empty());
        assert_eq!(run(&mut s, t0, 100_000), vec![(33000, vec![Terminated])]);
        assert!(s.on_request_retransmission().is_empty());
    }

    #[test]
    fn server_non_invite_reliable_timer_j_zero() {
        let t0 = Instant::now();
        let mut s = ServerNonInvite::new(TCP, &Timers::default());
        assert_eq!(
            s.send_response(t0, 200, b("200")),
            vec![tx("200"), Terminated]
        );
        assert!(s.is_terminated());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn client_invite_invalid_status_ignored() {
        let (t0, at) = clock();
        let mut c = client_invite(t0, UDP);
        assert_eq!(c.on_response(t0, 99, no_ack), (Absorb, vec![]));
        assert_eq!(c.on_response(t0, 700, no_ack), (Absorb, vec![]));
        assert_eq!(c.state(), ClientInviteState::Calling);
        assert_eq!(c.poll_timeout(), Some(at(500)));
    }

    #[test]
    fn client_non_invite_reliable_only_timer_f_and_timer_k_zero() {
        let (t0, at) = clock();
        let mut c = client_non_invite(t0, TCP);
        assert_eq!(run(&mut c, t0, 100_000), timed_out(32000));
        let mut c = client_non_invite(t0, TCP);
        assert_eq!(c.on_response(at(50), 481), (PassUp, vec![Terminated]));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn transport_error_terminates_every_machine_once() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut ci = client_invite(t0, UDP);
        let mut cn = client_non_invite(t0, UDP);
        let mut si = ServerInvite::new(UDP, &timers);
        si.send_response(t0, 500, b("500"));
        let mut sn = ServerNonInvite::new(UDP, &timers);
        let errors = [
            ci.on_transport_error(),
            cn.on_transport_error(),
            si.on_transport_error(),
            sn.on_transport_error(),
        ];
        assert!(errors.iter().all(|e| *e == [TransportError, Terminated]));
        assert!(ci.is_terminated() && cn.is_terminated() && si.is_terminated());
        assert!(sn.is_terminated() && si.poll_timeout().is_none() && ci.poll_timeout().is_none());
        assert!(ci.on_transport_error().is_empty() && sn.on_transport_error().is_empty());
        assert!(si.send_response(t0, 200, b("200")).is_empty());
        assert!(si.on_request_retransmission().is_empty());
        assert!(sn.send_response(t0, 200, b("200")).is_empty());
    }

    #[test]
    fn custom_timers_scale_schedules() {
        let (t0, at) = clock();
        let timers = Timers {
            t1: ms(100),
            t2: ms(300),
            t4: ms(1000),
        };
        let (mut c, _) = ClientNonInvite::new(t0, UDP, &timers, b("REQ"));
        let e: Vec<u64> = [100, 300]
            .into_iter()
            .chain((600..6400).step_by(300))
            .collect();
        let expected = [retx(&e, "REQ"), timed_out(6400)].concat();
        assert_eq!(run(&mut c, t0, 100_000), expected);
        // Timer D never drops below 32 s even with a small T1.
        let (mut c, _) = ClientInvite::new(t0, UDP, &timers, b("INVITE"));
        c.on_response(t0, 500, || b("ACK"));
        assert_eq!(c.poll_timeout(), Some(at(32000)));
    }
}
