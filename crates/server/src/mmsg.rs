//! Batched datagram I/O: `recvmmsg`/`sendmmsg` move many datagrams per system call (Linux).
//! The buffers are allocated once per socket; the pointers the kernel needs are rebuilt
//! before each call, so nothing here is self-referential.

use socket2::SockAddr;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Largest UDP payload we accept (RFC 3261 messages are far smaller).
const SLOT: usize = 65535;

/// Receive buffers for up to `n` datagrams per call, with the kernel's header arrays kept
/// from call to call (only their pointers are refreshed).
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// Headers for `forward`, kept apart so a forward never disturbs what `get` reads.
    out_hdrs: Vec<libc::mmsghdr>,
    out_iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
    addr_lens: Vec<libc::socklen_t>,
    /// The datagram was longer than its slot (MSG_TRUNC): only its head was kept.
    truncated: Vec<bool>,
}

// SAFETY: the raw pointers inside `iovs` and `hdrs` only ever point into this struct's own
// heap buffers, which move with it; they are rewritten before every use.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `n` datagrams per call, each up to the largest UDP payload.
    pub fn new(n: usize) -> RecvBatch {
        RecvBatch::with_slot(n, SLOT)
    }

    /// `n` datagrams of at most `slot` bytes each per call (longer ones are truncated).
    pub fn with_slot(n: usize, slot: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; slot]).collect(),
            // SAFETY: these are plain old data; all-zero is a valid value of each.
            out_hdrs: (0..n)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
            out_iovs: (0..n)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
            // SAFETY: these are plain old data; all-zero is a valid value of each.
            addrs: (0..n)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
            iovs: (0..n)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
            hdrs: (0..n)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
            lens: vec![0; n],
            addr_lens: vec![0; n],
            truncated: vec![false; n],
        }
    }

    /// How many datagrams one call can receive.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Receives as many waiting datagrams as fit, without blocking. `WouldBlock` when none.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: `hdrs` points at `iovs`, `addrs` and `bufs`, all owned by self, alive and
        // not moved during the call; the lengths match the allocations.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        for i in 0..got {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.addr_lens[i] = self.hdrs[i].msg_hdr.msg_namelen;
            self.truncated[i] = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(got)
    }

    /// Whether the `i`-th datagram of the last `recv` was longer than its slot.
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated.get(i).copied().unwrap_or(false)
    }

    /// The `i`-th datagram of the last `recv` and its source (None for a non-IP source).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let data = &self.bufs[i][..self.lens[i].min(self.bufs[i].len())];
        // SAFETY: the kernel wrote a socket address of `addr_lens[i]` bytes into addrs[i].
        let addr = unsafe { SockAddr::new(self.addrs[i], self.addr_lens[i]) };
        (data, addr.as_socket())
    }
}

impl RecvBatch {
    /// Sends the datagrams of the last `recv` whose bit is set in `keep` (bit i for datagram
    /// i, so at most 64) to `dest` from `fd`, in one call and without copying them: the media
    /// relay's whole per-packet path. Returns how many went out.
    pub fn forward(
        &mut self,
        fd: RawFd,
        got: usize,
        keep: u64,
        dest: &SockAddr,
    ) -> io::Result<usize> {
        let mut n = 0;
        for i in 0..got.min(64).min(self.bufs.len()) {
            if keep & (1 << i) == 0 {
                continue;
            }
            self.out_iovs[n] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.lens[i].min(self.bufs[i].len()),
            };
            n += 1;
        }
        for i in 0..n {
            let h = &mut self.out_hdrs[i];
            h.msg_hdr.msg_name = dest.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = dest.len();
            h.msg_hdr.msg_iov = &mut self.out_iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: the headers point at `out_iovs`, `bufs` and `dest`, all alive and unmoved
        // during the call; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                self.out_hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Asks the kernel to queue ICMP errors (port or host unreachable) on the socket, so that
/// `unreachable` can say which destination could not be reached.
pub fn report_unreachable(fd: RawFd, ipv6: bool) {
    let one: libc::c_int = 1;
    let (level, opt) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    // SAFETY: a valid socket and an int option.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Drains the socket's error queue: the destinations that answered with an ICMP error
/// (RFC 3263 §4.3 counts them as failed at once).
pub fn unreachable(fd: RawFd) -> Vec<SocketAddr> {
    let mut out = vec![];
    for _ in 0..64 {
        // SAFETY: plain old data, filled by the kernel.
        let mut name: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut data = [0u8; 512];
        let mut control = [0u8; 512];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: as above.
        let mut hdr: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        hdr.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = control.len();
        // SAFETY: every pointer refers to the locals above, alive during the call.
        let n = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            break;
        }
        // SAFETY: the kernel wrote the original destination's address into `name`.
        let addr = unsafe { SockAddr::new(name, hdr.msg_namelen) };
        if let Some(a) = addr.as_socket() {
            out.push(a);
        }
    }
    out
}

/// Whether an error from a socket call is an ICMP report of an earlier datagram (queued by
/// `report_unreachable`) rather than a failure of this call.
pub fn is_icmp_report(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN)
    )
}

/// Sends the datagrams in order with as few calls as possible; returns how many went out
/// before the socket would block (the caller sends the rest another way).
/// ICMP errors that surface meanwhile are drained into `unreachable`.
pub fn send_batch(
    fd: RawFd,
    msgs: &[(SocketAddr, &[u8])],
    unreachable_out: &mut Vec<SocketAddr>,
) -> io::Result<usize> {
    let mut sent = 0;
    let mut reports = 0;
    while sent < msgs.len() {
        let chunk = &msgs[sent..msgs.len().min(sent + 64)];
        let addrs: Vec<SockAddr> = chunk.iter().map(|(a, _)| SockAddr::from(*a)).collect();
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(_, d)| libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            })
            .collect();
        // SAFETY: plain old data, pointer fields set below.
        let mut hdrs: Vec<libc::mmsghdr> = (0..chunk.len())
            .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
            .collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = addrs[i].len();
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every pointer refers to `addrs`, `iovs` or the caller's data, all alive
        // during the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if sent > 0 && e.kind() == io::ErrorKind::WouldBlock {
                return Ok(sent);
            }
            // An ICMP error of an earlier datagram surfaces once: send again.
            if is_icmp_report(&e) && reports < 4 {
                reports += 1;
                unreachable_out.extend(unreachable(fd));
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        sent += n as usize;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn an_unreachable_destination_is_named_by_the_error_queue() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        report_unreachable(a.as_raw_fd(), false);
        a.set_nonblocking(true).unwrap();
        // A port nobody listens on: the kernel answers with ICMP port unreachable.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let mut seen = vec![];
        assert_eq!(
            send_batch(a.as_raw_fd(), &[(dead, b"hello")], &mut seen).unwrap(),
            1
        );
        let mut found = vec![];
        for _ in 0..100 {
            found = unreachable(a.as_raw_fd());
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(found, vec![dead]);
        // The socket still sends after the report.
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            send_batch(
                a.as_raw_fd(),
                &[(b.local_addr().unwrap(), b"still")],
                &mut seen
            )
            .unwrap(),
            1
        );
    }

    #[test]
    fn many_datagrams_each_way_in_few_calls() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("datagram {i}").into_bytes())
            .collect();
        let msgs: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (to, p.as_slice())).collect();
        assert_eq!(send_batch(a.as_raw_fd(), &msgs, &mut vec![]).unwrap(), 100);
        let mut batch = RecvBatch::new(32);
        let mut got = vec![];
        for _ in 0..50 {
            match batch.recv(b.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (d, from) = batch.get(i);
                        assert_eq!(from, Some(a.local_addr().unwrap()));
                        got.push(String::from_utf8(d.to_vec()).unwrap());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
            if got.len() == 100 {
                break;
            }
        }
        assert_eq!(got.len(), 100);
        assert_eq!(got[0], "datagram 0");
        assert_eq!(got[99], "datagram 99");
        assert!(
            matches!(batch.recv(b.as_raw_fd()), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        );
    }
}
