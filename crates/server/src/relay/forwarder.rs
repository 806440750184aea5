//! The forwarding thread: one epoll set over every relay socket. A readable socket gives a
//! batch of datagrams (recvmmsg); those from the party that socket faces go out through the
//! paired socket on the other side in one sendmmsg, from the same buffers. Nothing is
//! allocated or copied per packet, and counters are atomics the core reads without asking.

use super::turn::{self, ClientPath, Plane, TurnShared};
use crate::mmsg::RecvBatch;
use socket2::SockAddr;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

/// Datagrams per system call; RTP packets fit a slot with room for video.
const BATCH: usize = 32;
const SLOT: usize = 2048;
/// Batches read from one socket before the others get a turn.
const ROUNDS: usize = 4;
const WAKE: u64 = u64::MAX;

/// What one relayed stream has seen, shared with the core (index 0: caller side, 1: callee).
#[derive(Default)]
pub(crate) struct Shared {
    pub packets: [AtomicU64; 2],
    pub bytes: [AtomicU64; 2],
    /// From an address other than the one latched, or with nowhere to go yet.
    pub dropped: AtomicU64,
    /// The RTP source learned on each side.
    pub latched: Mutex<[Option<SocketAddr>; 2]>,
}

pub(crate) enum Command {
    /// Sockets in the order caller RTP, caller RTCP, callee RTP, callee RTCP.
    Add {
        id: u64,
        socks: [UdpSocket; 4],
        shared: Arc<Shared>,
    },
    /// Where a side said (in SDP) it wants its RTP and RTCP.
    Peer {
        id: u64,
        side: usize,
        rtp: SocketAddr,
        rtcp: SocketAddr,
        /// Where the side's SIP comes from: its packets may come from there too (its NAT).
        signalling: IpAddr,
    },
    Remove {
        id: u64,
    },
    /// A TURN listener's UDP socket: the thread reads it from now on.
    TurnListener {
        sock: UdpSocket,
        local: SocketAddr,
        host: IpAddr,
    },
    /// A TURN allocation's relayed socket, and how to reach its client.
    TurnAdd {
        id: u64,
        sock: UdpSocket,
        client: ClientPath,
        shared: Arc<TurnShared>,
        /// The user's bandwidth bucket, and its rate (bytes a second, 0: none).
        bucket: (u32, u64),
    },
    TurnPermit {
        id: u64,
        peer: IpAddr,
        allow: bool,
        any_port: bool,
    },
    TurnChannel {
        id: u64,
        channel: u16,
        peer: Option<SocketAddr>,
    },
    TurnRemove {
        id: u64,
    },
    /// ChannelData or a Send indication a stream client sent for allocation `id`.
    TurnFromStream {
        id: u64,
        data: bytes::Bytes,
    },
}

struct Leg {
    sock: UdpSocket,
    partner: usize,
    side: usize,
    rtp: bool,
    /// Where the party on this leg's side gets its media: its latched source, else its SDP.
    dest: Option<SockAddr>,
    dest_addr: Option<SocketAddr>,
    sdp: Option<SocketAddr>,
    signalling: Option<IpAddr>,
    latched: bool,
    shared: Arc<Shared>,
}

pub(crate) struct Engine {
    epoll: OwnedFd,
    wake: Arc<OwnedFd>,
    commands: Receiver<Command>,
    legs: Vec<Option<Leg>>,
    free: Vec<usize>,
    streams: HashMap<u64, [usize; 4]>,
    batch: RecvBatch,
    turn: Plane,
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Makes the epoll set and the eventfd that wakes it for commands.
pub(crate) fn handles() -> io::Result<(OwnedFd, Arc<OwnedFd>)> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain system calls; the descriptors are owned from here on.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
    let ev = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    let wake = unsafe { OwnedFd::from_raw_fd(ev) };
    watch(epoll.as_raw_fd(), wake.as_raw_fd(), WAKE)?;
    Ok((epoll, Arc::new(wake)))
}

fn watch(epoll: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: `ev` is a valid event for the duration of the call.
    check(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(|_| ())
}

/// Wakes the thread after a command was queued.
pub(crate) fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

impl Engine {
    pub(crate) fn new(
        epoll: OwnedFd,
        wake: Arc<OwnedFd>,
        commands: Receiver<Command>,
        control: Option<tokio::sync::mpsc::Sender<crate::event::Event>>,
        relay_ports: (u16, u16),
    ) -> Engine {
        Engine {
            epoll,
            wake,
            commands,
            legs: vec![],
            free: vec![],
            streams: HashMap::new(),
            batch: RecvBatch::with_slot(BATCH, SLOT),
            turn: Plane::new(control, relay_ports),
        }
    }

    /// Runs until the handle is dropped.
    pub(crate) fn run(mut self) {
        // SAFETY: plain old data; all-zero is valid.
        let mut events: Vec<libc::epoll_event> = vec![unsafe { std::mem::zeroed() }; 128];
        loop {
            // SAFETY: `events` has room for the 128 entries the kernel may write.
            let n =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 128, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("media relay stopped: epoll_wait: {e}");
                return;
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                if token == WAKE {
                    if !self.commands() {
                        return;
                    }
                } else if token & (turn::LISTENER | turn::RELAYED) != 0 {
                    self.turn.readable(token, &mut self.batch);
                } else {
                    self.forward(token as usize);
                }
            }
            // What TURN peers sent this round goes to the clients in batches.
            self.turn.flush();
        }
    }

    /// Applies queued commands; false once the handle is gone.
    fn commands(&mut self) -> bool {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer (clears the eventfd).
        unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        loop {
            match self.commands.try_recv() {
                Ok(Command::Add { id, socks, shared }) => self.add(id, socks, shared),
                Ok(Command::Peer {
                    id,
                    side,
                    rtp,
                    rtcp,
                    signalling,
                }) => {
                    if let Some(legs) = self.streams.get(&id) {
                        let (l_rtp, l_rtcp) = (legs[side * 2], legs[side * 2 + 1]);
                        self.set_sdp(l_rtp, rtp, signalling);
                        self.set_sdp(l_rtcp, rtcp, signalling);
                    }
                }
                Ok(Command::Remove { id }) => {
                    for idx in self.streams.remove(&id).into_iter().flatten() {
                        // Closing the socket takes it out of the epoll set.
                        self.legs[idx] = None;
                        self.free.push(idx);
                    }
                }
                Ok(Command::TurnListener { sock, local, host }) => {
                    let fd = sock.as_raw_fd();
                    let token = self.turn.add_listener(sock, local, host);
                    if let Err(e) = watch(self.epoll.as_raw_fd(), fd, token) {
                        tracing::error!("TURN listener not watched: {e}");
                    }
                }
                Ok(Command::TurnAdd {
                    id,
                    sock,
                    client,
                    shared,
                    bucket,
                }) => {
                    let fd = sock.as_raw_fd();
                    let token = self.turn.add(id, sock, client, shared, bucket);
                    if let Err(e) = watch(self.epoll.as_raw_fd(), fd, token) {
                        tracing::error!("TURN relayed socket not watched: {e}");
                    }
                }
                Ok(Command::TurnPermit {
                    id,
                    peer,
                    allow,
                    any_port,
                }) => self.turn.permit(id, peer, allow, any_port),
                Ok(Command::TurnChannel { id, channel, peer }) => {
                    self.turn.channel(id, channel, peer)
                }
                Ok(Command::TurnRemove { id }) => self.turn.remove(id),
                Ok(Command::TurnFromStream { id, data }) => self.turn.relay_from_stream(id, &data),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn add(&mut self, id: u64, socks: [UdpSocket; 4], shared: Arc<Shared>) {
        let mut idx = [0usize; 4];
        for slot in idx.iter_mut() {
            *slot = self.free.pop().unwrap_or_else(|| {
                self.legs.push(None);
                self.legs.len() - 1
            });
        }
        for (i, sock) in socks.into_iter().enumerate() {
            let fd = sock.as_raw_fd();
            let side = i / 2;
            self.legs[idx[i]] = Some(Leg {
                sock,
                // Same component (RTP or RTCP) on the other side.
                partner: idx[(i + 2) % 4],
                side,
                rtp: i % 2 == 0,
                dest: None,
                dest_addr: None,
                sdp: None,
                signalling: None,
                latched: false,
                shared: shared.clone(),
            });
            if let Err(e) = watch(self.epoll.as_raw_fd(), fd, idx[i] as u64) {
                tracing::error!("media relay cannot watch a socket: {e}");
            }
        }
        self.streams.insert(id, idx);
    }

    /// A new SDP address for a side: used until that side's packets show where it really is;
    /// when it changes (re-INVITE to a new address) the side is learned again.
    fn set_sdp(&mut self, idx: usize, addr: SocketAddr, signalling: IpAddr) {
        let Some(leg) = self.legs[idx].as_mut() else {
            return;
        };
        leg.signalling = Some(signalling);
        if leg.sdp == Some(addr) {
            return;
        }
        leg.sdp = Some(addr);
        leg.latched = false;
        leg.dest = Some(SockAddr::from(addr));
        leg.dest_addr = Some(addr);
    }

    fn forward(&mut self, idx: usize) {
        for _ in 0..ROUNDS {
            let Some(leg) = self.legs.get_mut(idx).and_then(Option::as_mut) else {
                return;
            };
            let got = match self.batch.recv(leg.sock.as_raw_fd()) {
                Ok(n) => n,
                Err(_) => return,
            };
            let mut keep = 0u64;
            let mut bytes = 0u64;
            for i in 0..got {
                let (data, src) = self.batch.get(i);
                let Some(src) = src else { continue };
                if !leg.latched {
                    // Symmetric RTP: the side is where its packets come from (its NAT), as
                    // long as they come from the address its SDP or its SIP came from; a
                    // stranger spraying relay ports learns nothing (RTP bleed).
                    let expected = leg.sdp.is_some_and(|s| s.ip() == src.ip())
                        || leg.signalling == Some(src.ip());
                    if !expected {
                        continue;
                    }
                    leg.latched = true;
                    leg.dest = Some(SockAddr::from(src));
                    leg.dest_addr = Some(src);
                    if leg.rtp {
                        if let Ok(mut l) = leg.shared.latched.lock() {
                            l[leg.side] = Some(src);
                        }
                    }
                } else if leg.dest_addr != Some(src) {
                    continue;
                }
                keep |= 1 << i;
                bytes += data.len() as u64;
            }
            let kept = u64::from(keep.count_ones());
            leg.shared.packets[leg.side].fetch_add(kept, Ordering::Relaxed);
            leg.shared.bytes[leg.side].fetch_add(bytes, Ordering::Relaxed);
            let mut lost = got as u64 - kept;
            let partner = leg.partner;
            match self.legs.get(partner).and_then(Option::as_ref) {
                Some(Leg {
                    sock,
                    dest: Some(dest),
                    ..
                }) if kept > 0 => {
                    let sent = self
                        .batch
                        .forward(sock.as_raw_fd(), got, keep, dest)
                        .unwrap_or(0);
                    lost += kept - (sent as u64).min(kept);
                }
                _ => lost += kept,
            }
            if lost > 0 {
                if let Some(leg) = self.legs.get(idx).and_then(Option::as_ref) {
                    leg.shared.dropped.fetch_add(lost, Ordering::Relaxed);
                }
            }
            if got < BATCH {
                return;
            }
        }
    }
}
