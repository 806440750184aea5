//! `rtpload`: the RTP side of bench/relay.
//!
//! `rtpload load TARGETS BASE PPS SECS WARMUP`: for stream i (line i of TARGETS, "CALLER_PORT
//! CALLEE_PORT", the relay's ports on 127.0.0.1) a "caller" socket on BASE+2i sends to
//! CALLER_PORT and a "callee" socket on BASE+2i+1 sends to CALLEE_PORT, each PPS packets a
//! second (172-byte RTP packets: PCMU, 20 ms); every socket counts what it receives. Prints one
//! JSON line: packets sent and received during the SECS after WARMUP seconds, and how many
//! streams delivered both ways.
//!
//! `rtpload turn SERVER_PORT USER PASSWORD STREAMS BASE PPS SECS WARMUP`: the same load
//! through a TURN server on 127.0.0.1 (bench/turn): for stream i a "client" socket on BASE+2i
//! makes an allocation (long-term credentials), binds a channel to the "peer" socket on
//! BASE+2i+1, and sends ChannelData to the server while the peer sends plain datagrams to
//! the relayed address; both count what comes back. Same JSON line.
//!
//! `rtpload echo FIRST STREAMS BASE`: the machine's limit for the same traffic: sockets on
//! FIRST+2i (facing the caller) and FIRST+2i+1 (facing the callee); what arrives on one goes
//! out of the other to the generator's socket on that side, with recvmmsg/sendmmsg and nothing
//! else. Runs until killed.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BATCH: usize = 32;
const SLOT: usize = 2048;
const PACKET: usize = 172;

fn die(msg: &str) -> ! {
    eprintln!("rtpload: {msg}");
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| die(&format!("missing or bad {what}")))
}

fn bind(port: u16) -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| die(&format!("bind 127.0.0.1:{port}: {e}")));
    s.set_nonblocking(true).expect("non-blocking");
    let size: libc::c_int = 1 << 21;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket and an int option.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                4,
            )
        };
    }
    s
}

fn sockaddr(port: u16) -> libc::sockaddr_in {
    let a = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// recvmmsg buffers, and sendmmsg of what was received to one destination.
struct Batch {
    bufs: Vec<[u8; SLOT]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            bufs: vec![[0u8; SLOT]; BATCH],
            // SAFETY: plain old data.
            iovs: vec![unsafe { std::mem::zeroed() }; BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    fn recv(&mut self, fd: i32) -> usize {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            self.hdrs[i].msg_hdr = unsafe { std::mem::zeroed() };
            self.hdrs[i].msg_hdr.msg_iov = &mut self.iovs[i];
            self.hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the headers point into self's buffers for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }

    fn send(&mut self, fd: i32, n: usize, dest: &libc::sockaddr_in) {
        for i in 0..n {
            self.iovs[i].iov_len = self.hdrs[i].msg_len as usize;
            self.hdrs[i].msg_hdr.msg_name = (dest as *const libc::sockaddr_in) as *mut _;
            self.hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: as in recv; the destination outlives the call.
        unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
    }
}

struct Epoll(i32);

impl Epoll {
    fn new() -> Epoll {
        // SAFETY: plain system call.
        Epoll(unsafe { libc::epoll_create1(0) })
    }

    fn add(&self, fd: i32, token: u64) {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid descriptors and event.
        unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }

    fn wait(&self, events: &mut [libc::epoll_event], ms: i32) -> usize {
        // SAFETY: `events` has room for its length.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, ms) };
        n.max(0) as usize
    }
}

fn echo(args: &[String]) {
    let first: u16 = arg(args, 2, "FIRST");
    let streams: u16 = arg(args, 3, "STREAMS");
    let base: u16 = arg(args, 4, "BASE");
    let socks: Vec<UdpSocket> = (0..streams * 2).map(|i| bind(first + i)).collect();
    // Socket k forwards out of socket k^1 to the generator's socket on the other side.
    let dests: Vec<libc::sockaddr_in> =
        (0..streams * 2).map(|k| sockaddr(base + (k ^ 1))).collect();
    let ep = Epoll::new();
    for (k, s) in socks.iter().enumerate() {
        ep.add(s.as_raw_fd(), k as u64);
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut batch = Batch::new();
    loop {
        let n = ep.wait(&mut events, -1);
        for ev in &events[..n] {
            let k = ev.u64 as usize;
            let got = batch.recv(socks[k].as_raw_fd());
            if got > 0 {
                batch.send(socks[k ^ 1].as_raw_fd(), got, &dests[k ^ 1]);
            }
        }
    }
}

fn rtp_packet(ssrc: u32) -> [u8; PACKET] {
    let mut p = [0xd5u8; PACKET]; // PCMU silence
    p[0] = 0x80;
    p[1] = 0; // PCMU
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// Sends one packet from every socket PPS times a second (the RTP sequence number and
/// timestamp at `rtp_at[k]` of socket k's packet advancing), counts what each socket receives,
/// and prints the JSON line: what was sent and received during the SECS after WARMUP.
fn drive(
    socks: &[UdpSocket],
    dests: &[libc::sockaddr_in],
    mut packets: Vec<Vec<u8>>,
    rtp_at: &[usize],
    pps: u32,
    (secs, warmup): (f64, f64),
) {
    let n = socks.len() / 2;
    let ep = Epoll::new();
    for (k, s) in socks.iter().enumerate() {
        ep.add(s.as_raw_fd(), k as u64);
    }
    let mut received = vec![0u64; n * 2];
    let mut sent_total = 0u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let mut batch = Batch::new();
    let interval = Duration::from_secs_f64(1.0 / f64::from(pps.max(1)));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut next_send = start;
    let mut seq: u16 = 0;
    let mut counted_from: Option<(u64, Vec<u64>)> = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if counted_from.is_none() && now >= measure_from {
            counted_from = Some((sent_total, received.clone()));
        }
        if now >= next_send {
            // One packet from every socket: each direction of each stream at PPS.
            seq = seq.wrapping_add(1);
            for (k, s) in socks.iter().enumerate() {
                let (p, at) = (&mut packets[k], rtp_at[k]);
                p[at + 2..at + 4].copy_from_slice(&seq.to_be_bytes());
                let ts = u32::from(seq).wrapping_mul(160);
                p[at + 4..at + 8].copy_from_slice(&ts.to_be_bytes());
                let d = &dests[k];
                // SAFETY: a valid socket, buffer and address.
                let r = unsafe {
                    libc::sendto(
                        s.as_raw_fd(),
                        p.as_ptr().cast(),
                        p.len(),
                        libc::MSG_DONTWAIT,
                        (d as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if r > 0 {
                    sent_total += 1;
                }
            }
            next_send += interval;
            if next_send + interval * 5 < Instant::now() {
                // Far behind (the generator itself is the limit): do not burst to catch up.
                next_send = Instant::now() + interval;
            }
        }
        let wait_ms = next_send
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(5) as i32;
        let got = ep.wait(&mut events, wait_ms);
        for ev in &events[..got] {
            let k = ev.u64 as usize;
            loop {
                let r = batch.recv(socks[k].as_raw_fd());
                received[k] += r as u64;
                if r < BATCH {
                    break;
                }
            }
        }
    }
    let (sent0, recv0) = counted_from.unwrap_or((0, vec![0; n * 2]));
    let recv_window: u64 = received.iter().zip(&recv0).map(|(a, b)| a - b).sum();
    let both_ways = (0..n)
        .filter(|i| received[2 * i] > 0 && received[2 * i + 1] > 0)
        .count();
    println!(
        "{{\"streams\": {n}, \"pps_per_direction\": {pps}, \"secs\": {secs}, \"sent\": {}, \"received\": {recv_window}, \"streams_both_ways\": {both_ways}}}",
        sent_total - sent0
    );
}

fn load(args: &[String]) -> io::Result<()> {
    let targets = std::fs::read_to_string(&args[2])?;
    let base: u16 = arg(args, 3, "BASE");
    let pps: u32 = arg(args, 4, "PPS");
    let secs: f64 = arg(args, 5, "SECS");
    let warmup: f64 = arg(args, 6, "WARMUP");
    let pairs: Vec<(u16, u16)> = targets
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    if pairs.is_empty() {
        die("no targets");
    }
    let n = pairs.len();
    let socks: Vec<UdpSocket> = (0..n * 2).map(|k| bind(base + k as u16)).collect();
    let dests: Vec<libc::sockaddr_in> = pairs
        .iter()
        .flat_map(|(a, b)| [sockaddr(*a), sockaddr(*b)])
        .collect();
    let packets: Vec<Vec<u8>> = (0..n * 2)
        .map(|k| rtp_packet(k as u32 + 1).to_vec())
        .collect();
    drive(
        &socks,
        &dests,
        packets,
        &vec![0; n * 2],
        pps,
        (secs, warmup),
    );
    Ok(())
}

/// One request to the TURN server and its answer (retried a few times: UDP).
fn transact(sock: &UdpSocket, server: u16, req: &[u8]) -> io::Result<Vec<u8>> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 2048];
    for _ in 0..6 {
        sock.send_to(req, (Ipv4Addr::LOCALHOST, server))?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            sock.set_nonblocking(true)?;
            return Ok(buf[..n].to_vec());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the TURN server does not answer",
    ))
}

/// Sets up stream `i`'s allocation and channel; the relayed address.
fn turn_stream(
    client: &UdpSocket,
    server: u16,
    user: &str,
    password: &str,
    channel: u16,
    peer: SocketAddrV4,
    i: usize,
) -> io::Result<SocketAddrV4> {
    use sip::turn::{attr, Class, Writer};
    let txid = |k: u8| {
        let mut t = [k; 12];
        t[..8].copy_from_slice(&(i as u64).to_be_bytes());
        t
    };
    let bad = |what: &str, m: &[u8]| {
        let code = sip::turn::parse(m).and_then(|m| m.error_code);
        io::Error::other(format!("stream {i}: {what}: error {code:?}"))
    };
    let mut w = Writer::new(sip::turn::ALLOCATE, Class::Request, &txid(1));
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let challenge = transact(client, server, &w.finish(None))?;
    let m = sip::turn::parse(&challenge).ok_or_else(|| bad("no challenge", &challenge))?;
    let (realm, nonce) = (
        m.realm.unwrap_or_default().to_string(),
        m.nonce.unwrap_or_default().to_string(),
    );
    let key = sip::turn::long_term_key(user, &realm, password);
    let signed = |method: u16, k: u8, add: &dyn Fn(&mut Writer)| {
        let mut w = Writer::new(method, Class::Request, &txid(k));
        add(&mut w);
        w.attr(attr::USERNAME, user.as_bytes())
            .challenge(&realm, &nonce);
        w.finish(Some(&key))
    };
    let ok = transact(
        client,
        server,
        &signed(sip::turn::ALLOCATE, 2, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
    )?;
    let relayed = match sip::turn::parse(&ok).and_then(|m| m.relayed) {
        Some(std::net::SocketAddr::V4(a)) => a,
        _ => return Err(bad("allocation refused", &ok)),
    };
    let bound = transact(
        client,
        server,
        &signed(sip::turn::CHANNEL_BIND, 3, &|w| {
            w.attr(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            );
            w.xor_address(attr::XOR_PEER_ADDRESS, std::net::SocketAddr::V4(peer));
        }),
    )?;
    if sip::turn::parse(&bound).and_then(|m| m.class) != Some(Class::Success) {
        return Err(bad("channel refused", &bound));
    }
    Ok(relayed)
}

fn turn_load(args: &[String]) -> io::Result<()> {
    let server: u16 = arg(args, 2, "SERVER_PORT");
    let user: String = arg(args, 3, "USER");
    let password: String = arg(args, 4, "PASSWORD");
    let n: usize = arg(args, 5, "STREAMS");
    let base: u16 = arg(args, 6, "BASE");
    let pps: u32 = arg(args, 7, "PPS");
    let secs: f64 = arg(args, 8, "SECS");
    let warmup: f64 = arg(args, 9, "WARMUP");
    let socks: Vec<UdpSocket> = (0..n * 2).map(|k| bind(base + k as u16)).collect();
    let mut packets: Vec<Vec<u8>> = Vec::with_capacity(n * 2);
    let mut dests: Vec<libc::sockaddr_in> = Vec::with_capacity(n * 2);
    for i in 0..n {
        let channel = 0x4000 + (i as u16 % 0x1000);
        let peer = SocketAddrV4::new(Ipv4Addr::LOCALHOST, base + 2 * i as u16 + 1);
        let relayed = turn_stream(&socks[2 * i], server, &user, &password, channel, peer, i)?;
        // The client's ChannelData to the server; the peer's datagram to the relayed address.
        let mut cd = sip::turn::channel_header(channel, PACKET).to_vec();
        cd.extend_from_slice(&rtp_packet(2 * i as u32 + 1));
        packets.push(cd);
        packets.push(rtp_packet(2 * i as u32 + 2).to_vec());
        dests.push(sockaddr(server));
        dests.push(sockaddr(relayed.port()));
    }
    // The allocations are made: the warm-up starts now (the runner waits for this line).
    eprintln!("ready");
    let rtp_at: Vec<usize> = (0..n * 2).map(|k| if k % 2 == 0 { 4 } else { 0 }).collect();
    drive(&socks, &dests, packets, &rtp_at, pps, (secs, warmup));
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("echo") => echo(&args),
        Some("turn") => {
            if let Err(e) = turn_load(&args) {
                die(&e.to_string())
            }
        }
        Some("load") => {
            if let Err(e) = load(&args) {
                die(&e.to_string())
            }
        }
        _ => die(
            "usage: rtpload load TARGETS BASE PPS SECS WARMUP | rtpload echo FIRST STREAMS BASE \
             | rtpload turn SERVER_PORT USER PASSWORD STREAMS BASE PPS SECS WARMUP",
        ),
    }
}
