//! The TURN server's control side in virtual time: the challenge, allocation with a SIP
//! account's password or a page's time-limited credentials, the peer policy, permissions,
//! channels, refresh and expiry, quotas, and bans for guessed passwords.

use super::*;
use sip::turn::{attr, Class, Writer};

const CLIENT: &str = "127.0.0.1:40000";
const TURN: &str = "127.0.0.1:3478";

fn turn_flow(remote: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        local: addr(TURN),
        remote: addr(remote),
        conn: None,
    }
}

/// A TURN client with its credentials (user name, password) and the nonce it last got.
struct Client {
    user: String,
    password: String,
    nonce: Option<String>,
    remote: &'static str,
    next: u8,
}

impl Client {
    fn new(user: &str, password: &str) -> Client {
        Client {
            user: user.into(),
            password: password.into(),
            nonce: None,
            remote: CLIENT,
            next: 0,
        }
    }

    /// A request of `method`, signed once a nonce is known; `add` writes its attributes.
    fn request(&mut self, method: u16, add: impl Fn(&mut Writer)) -> Vec<u8> {
        self.next += 1;
        let txid = [self.next; 12];
        let mut w = Writer::new(method, Class::Request, &txid);
        add(&mut w);
        match &self.nonce {
            Some(n) => {
                w.attr(attr::USERNAME, self.user.as_bytes())
                    .challenge("example.test", n);
                let key = sip::turn::long_term_key(&self.user, "example.test", &self.password);
                w.finish(Some(&key))
            }
            None => w.finish(None),
        }
    }
}

impl T {
    /// Sends a TURN request; the one answer, as (class, error code, the answer's bytes).
    fn turn(
        &mut self,
        c: &mut Client,
        method: u16,
        add: impl Fn(&mut Writer),
    ) -> (Class, u16, Vec<u8>) {
        let data = c.request(method, add);
        self.core.handle_turn(self.now, turn_flow(c.remote), &data);
        let answers: Vec<Vec<u8>> = self
            .core
            .take_actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { data, .. } => Some(data.to_vec()),
                other => {
                    self.stash.push(other);
                    None
                }
            })
            .collect();
        let Some(bytes) = answers.into_iter().last() else {
            return (Class::Indication, 0, vec![]);
        };
        let m = sip::turn::parse(&bytes).expect("a STUN answer");
        let code = error_code(&bytes);
        if let Some(n) = nonce_of(&bytes) {
            c.nonce = Some(n);
        }
        (m.class.unwrap(), code, bytes)
    }

    /// Allocates for `c` (answering the challenge first) and binds the relayed address the
    /// edge would; the allocation's id.
    fn allocate(&mut self, c: &mut Client) -> u64 {
        let (class, code, _) = self.turn(c, sip::turn::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        if c.nonce.is_some() && class == Class::Error && code == 401 {
            let (class, code, _) = self.turn(c, sip::turn::ALLOCATE, |w| {
                w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            });
            assert_eq!((class, code), (Class::Indication, 0), "waits for the edge");
        }
        let id = self
            .stash
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::TurnAllocate { id, .. } => Some(*id),
                _ => None,
            })
            .expect("the edge is asked for a relayed address");
        self.core
            .handle_turn_allocated(self.now, id, Some(addr("127.0.0.1:50000")));
        let answer = self.core.take_actions();
        let Some(Action::Send { data, .. }) = answer.first() else {
            panic!("no answer to the allocation: {answer:?}");
        };
        let m = sip::turn::parse(data).unwrap();
        assert_eq!(m.class, Some(Class::Success));
        let key = sip::turn::long_term_key(&c.user, "example.test", &c.password);
        assert!(m.integrity_ok(data, &key), "signed with the user's key");
        id
    }
}

fn error_code(bytes: &[u8]) -> u16 {
    find_attr(bytes, attr::ERROR_CODE).map_or(0, |v| u16::from(v[2]) * 100 + u16::from(v[3]))
}

fn nonce_of(bytes: &[u8]) -> Option<String> {
    find_attr(bytes, attr::NONCE).map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn find_attr(bytes: &[u8], t: u16) -> Option<Vec<u8>> {
    let mut at = 20;
    while at + 4 <= bytes.len() {
        let ty = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if ty == t {
            return Some(bytes[at + 4..at + 4 + len].to_vec());
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

fn peer(w: &mut Writer, p: &str) {
    w.xor_address(attr::XOR_PEER_ADDRESS, p.parse().unwrap());
}

#[test]
fn a_sip_account_allocates_and_permits_public_peers_only() {
    let mut t = T::new();
    let mut c = Client::new("alice", "secret");
    // No credentials: the challenge, with the domain as realm.
    let (class, code, bytes) = t.turn(&mut c, sip::turn::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!((class, code), (Class::Error, 401));
    assert_eq!(
        find_attr(&bytes, attr::REALM).as_deref(),
        Some(&b"example.test"[..])
    );
    let id = t.allocate(&mut c);
    assert_eq!(t.core.turn_allocations(t.now).len(), 1);

    // The server's own network is refused by default; a public peer is allowed.
    let (_, code, _) = t.turn(&mut c, sip::turn::CREATE_PERMISSION, |w| {
        peer(w, "127.0.0.1:9")
    });
    assert_eq!(code, 403);
    let (class, _, _) = t.turn(&mut c, sip::turn::CREATE_PERMISSION, |w| {
        peer(w, "198.51.100.7:9")
    });
    assert_eq!(class, Class::Success);
    assert!(t
        .stash
        .iter()
        .any(|a| matches!(a, Action::TurnPermit { id: i, allow: true, .. } if *i == id)));

    // A channel: bound, and its peer permitted.
    let (class, _, _) = t.turn(&mut c, sip::turn::CHANNEL_BIND, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
        peer(w, "198.51.100.8:5000");
    });
    assert_eq!(class, Class::Success);
    assert!(t.stash.iter().any(|a| matches!(
        a,
        Action::TurnChannel {
            channel: 0x4001,
            peer: Some(_),
            ..
        }
    )));
    // The same channel for another peer is refused.
    let (_, code, _) = t.turn(&mut c, sip::turn::CHANNEL_BIND, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
        peer(w, "198.51.100.9:5000");
    });
    assert_eq!(code, 400);

    // A second Allocate on the same 5-tuple is a mismatch; Refresh 0 ends it.
    let (_, code, _) = t.turn(&mut c, sip::turn::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(code, 437);
    let (class, _, _) = t.turn(&mut c, sip::turn::REFRESH, |w| {
        w.lifetime(0);
    });
    assert_eq!(class, Class::Success);
    assert!(t
        .stash
        .iter()
        .any(|a| matches!(a, Action::TurnRelease { id: i } if *i == id)));
    assert!(t.core.turn_allocations(t.now).is_empty());
}

#[test]
fn a_pages_time_limited_credentials_work_and_expire() {
    let mut t = T::new();
    let unix = t.core.unix(t.now);
    let cred = turn::mint(t.core.calls.turn.settings(), "bob", unix).unwrap();
    let mut c = Client::new(&cred.username, &cred.credential);
    t.allocate(&mut c);
    let views = t.core.turn_allocations(t.now);
    assert_eq!(
        views[0].user, "bob",
        "counted against the user they were made for"
    );

    // The same credentials a day later: refused.
    let mut late = Client::new(&cred.username, &cred.credential);
    late.remote = "127.0.0.1:40001";
    t.advance(Duration::from_secs(86_400 + 10));
    let _ = t.turn(&mut late, sip::turn::ALLOCATE, |_| {});
    let (_, code, _) = t.turn(&mut late, sip::turn::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(code, 401);
    // The first allocation was never refreshed: it expired long ago.
    assert!(t.core.turn_allocations(t.now).is_empty());
}

#[test]
fn the_quota_of_allocations_per_user_holds() {
    let mut t = T::new();
    for i in 0..10u16 {
        let mut c = Client::new("carol", "secret");
        c.remote = Box::leak(format!("127.0.0.1:{}", 41000 + i).into_boxed_str());
        t.allocate(&mut c);
    }
    let mut c = Client::new("carol", "secret");
    c.remote = "127.0.0.1:42000";
    let _ = t.turn(&mut c, sip::turn::ALLOCATE, |_| {});
    let (_, code, _) = t.turn(&mut c, sip::turn::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(code, 486);
}

#[test]
fn guessed_turn_passwords_ban_the_source() {
    let mut t = T::new();
    let mut c = Client::new("alice", "wrong");
    let _ = t.turn(&mut c, sip::turn::ALLOCATE, |_| {});
    for _ in 0..5 {
        let (_, code, _) = t.turn(&mut c, sip::turn::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert_eq!(code, 401);
    }
    // Banned: nothing comes back, even with the right password.
    c.password = "secret".into();
    let (_, code, bytes) = t.turn(&mut c, sip::turn::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!((code, bytes.len()), (0, 0));
}

fn tcp_flow(conn: ConnId) -> Flow {
    Flow {
        transport: Transport::Tcp,
        local: addr(TURN),
        remote: addr(CLIENT),
        conn: Some(conn),
    }
}

impl T {
    /// A signed request from `c` over stream connection `conn`; the actions it produced.
    fn turn_on(
        &mut self,
        c: &mut Client,
        conn: ConnId,
        method: u16,
        add: impl Fn(&mut Writer),
    ) -> Vec<Action> {
        let data = c.request(method, add);
        self.core.handle_turn(self.now, tcp_flow(conn), &data);
        self.core.take_actions()
    }
}

fn answer_of(actions: &[Action]) -> Option<(Class, Option<u16>, Option<u32>)> {
    actions.iter().find_map(|a| match a {
        Action::Send { data, .. } => {
            sip::turn::parse(data).map(|m| (m.class.unwrap(), m.error_code, m.connection_id))
        }
        _ => None,
    })
}

#[test]
fn a_tcp_relay_connects_to_a_peer_and_the_client_binds_the_connection() {
    let mut t = T::new();
    let mut c = Client::new("alice", "secret");
    let tcp = |w: &mut Writer| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    };
    // Over UDP, a TCP relay is refused (RFC 6062 §5.1).
    let _ = t.turn(&mut c, sip::turn::ALLOCATE, tcp);
    let (_, code, _) = t.turn(&mut c, sip::turn::ALLOCATE, tcp);
    assert_eq!(code, 400);
    // Over the client's TCP connection 1 it is made.
    let out = t.turn_on(&mut c, 1, sip::turn::ALLOCATE, tcp);
    let id = out
        .iter()
        .find_map(|a| match a {
            Action::TurnAllocate { id, tcp: true, .. } => Some(*id),
            _ => None,
        })
        .expect("a TCP relay asked of the edge");
    t.core
        .handle_turn_allocated(t.now, id, Some(addr("127.0.0.1:50000")));
    assert_eq!(
        answer_of(&t.core.take_actions()).map(|a| a.0),
        Some(Class::Success)
    );

    // Connect: the edge connects, the answer carries the CONNECTION-ID.
    let out = t.turn_on(&mut c, 1, sip::turn::CONNECT, |w| {
        peer(w, "198.51.100.7:443")
    });
    let connection = out
        .iter()
        .find_map(|a| match a {
            Action::TurnConnect { connection, .. } => Some(*connection),
            _ => None,
        })
        .expect("the edge connects");
    t.core.handle_turn_connected(t.now, connection, true);
    let (class, _, cid) = answer_of(&t.core.take_actions()).unwrap();
    assert_eq!((class, cid), (Class::Success, Some(connection)));
    // The same peer again: 446.
    let out = t.turn_on(&mut c, 1, sip::turn::CONNECT, |w| {
        peer(w, "198.51.100.7:443")
    });
    assert_eq!(answer_of(&out).and_then(|a| a.1), Some(446));

    // ConnectionBind on the client's new connection 2 joins them.
    let out = t.turn_on(&mut c, 2, sip::turn::CONNECTION_BIND, |w| {
        w.attr(attr::CONNECTION_ID, &connection.to_be_bytes());
    });
    assert_eq!(answer_of(&out).map(|a| a.0), Some(Class::Success));
    assert!(out.iter().any(
        |a| matches!(a, Action::TurnJoin { connection: c2, data_conn: 2 } if *c2 == connection)
    ));
    // It cannot be bound twice.
    let out = t.turn_on(&mut c, 3, sip::turn::CONNECTION_BIND, |w| {
        w.attr(attr::CONNECTION_ID, &connection.to_be_bytes());
    });
    assert_eq!(answer_of(&out).and_then(|a| a.1), Some(400));

    // A peer connecting in without a permission is dropped; with one, the client hears of
    // it, and the connection goes if nobody binds it within 30 s.
    assert_eq!(
        t.core
            .handle_turn_peer(t.now, id, addr("198.51.100.9:5000")),
        None
    );
    let out = t.turn_on(&mut c, 1, sip::turn::CREATE_PERMISSION, |w| {
        peer(w, "198.51.100.9:0")
    });
    assert_eq!(answer_of(&out).map(|a| a.0), Some(Class::Success));
    let incoming = t
        .core
        .handle_turn_peer(t.now, id, addr("198.51.100.9:5000"))
        .expect("announced");
    let attempt = t.core.take_actions();
    assert!(attempt.iter().any(|a| matches!(a, Action::Send { data, .. }
        if sip::turn::parse(data).is_some_and(|m| m.method == sip::turn::CONNECTION_ATTEMPT
            && m.connection_id == Some(incoming)))));
    t.advance(Duration::from_secs(40));
    t.stash.extend(t.core.take_actions());
    assert!(t
        .stash
        .iter()
        .any(|a| matches!(a, Action::TurnDropConnection { connection: c2 } if *c2 == incoming)));
}

#[test]
fn a_retransmitted_allocate_gets_its_answer_again_and_dont_fragment_is_refused() {
    let mut t = T::new();
    let mut c = Client::new("alice", "secret");
    t.allocate(&mut c);
    // The same request again (its answer was lost): the same success, not 437.
    let key = sip::turn::long_term_key("alice", "example.test", "secret");
    let mut w = Writer::new(sip::turn::ALLOCATE, Class::Request, &[c.next; 12]);
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::USERNAME, b"alice")
        .challenge("example.test", c.nonce.as_deref().unwrap());
    let again = w.finish(Some(&key));
    t.core.handle_turn(t.now, turn_flow(CLIENT), &again);
    let out = t.core.take_actions();
    let m = out
        .iter()
        .find_map(|a| match a {
            Action::Send { data, .. } => sip::turn::parse(data).map(|m| (m.class, m.relayed)),
            _ => None,
        })
        .expect("an answer");
    assert_eq!(m, (Some(Class::Success), Some(addr("127.0.0.1:50000"))));
    assert_eq!(
        t.core.turn_allocations(t.now).len(),
        1,
        "no second allocation"
    );

    // DONT-FRAGMENT cannot be honoured: 420 naming it (RFC 8656 §7.2).
    let mut other = Client::new("alice", "secret");
    other.remote = "127.0.0.1:40009";
    other.nonce = c.nonce.clone();
    let (_, code, bytes) = t.turn(&mut other, sip::turn::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::DONT_FRAGMENT, &[]);
    });
    assert_eq!(code, 420);
    assert_eq!(
        find_attr(&bytes, attr::UNKNOWN_ATTRIBUTES),
        Some(vec![0x00, 0x1A])
    );
}

#[test]
fn an_allocation_holds_at_most_its_quota_of_permissions() {
    let mut t = T::new();
    let mut c = Client::new("alice", "secret");
    t.allocate(&mut c);
    // 65 peers at once, over the 64 an allocation may have: refused whole.
    let (_, code, _) = t.turn(&mut c, sip::turn::CREATE_PERMISSION, |w| {
        for i in 0..65u8 {
            peer(w, &format!("198.51.100.{}:9", i + 1));
        }
    });
    assert_eq!(code, 508);
    let (class, _, _) = t.turn(&mut c, sip::turn::CREATE_PERMISSION, |w| {
        for i in 0..64u8 {
            peer(w, &format!("198.51.100.{}:9", i + 1));
        }
    });
    assert_eq!(class, Class::Success);
}
