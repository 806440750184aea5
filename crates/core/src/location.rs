//! The location table (RFC 3261 §10): the contacts each user has registered, in memory. The
//! registrar changes it; the proxy reads it; the store keeps a copy for restarts.

use super::Flow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// One registered contact of a user (RFC 3261 §10), in memory.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The contact URI as registered (without `<>` and header parameters).
    pub contact: String,
    /// When the registration runs out.
    pub expires: Instant,
    /// The contact's preference (`q`, RFC 3261 §20.10): higher ones are tried first.
    pub q: f32,
    /// The Call-ID of the REGISTER that set it: with `cseq`, a reordered older REGISTER is
    /// told apart (RFC 3261 §10.3 step 7).
    pub call_id: String,
    /// The CSeq number of that REGISTER.
    pub cseq: u32,
    /// The flow the REGISTER arrived on: responses and requests for this contact reuse it.
    pub flow: Flow,
    /// The phone's User-Agent header, for `hedgewitch registrations`.
    pub user_agent: String,
    /// When a keep-alive OPTIONS is next due (phones behind NAT over UDP), and how many in a
    /// row went unanswered.
    pub next_ping: Option<Instant>,
    /// Keep-alive OPTIONS in a row that went unanswered.
    pub missed_pings: u8,
    /// The last keep-alive the phone sent itself on its flow (a STUN Binding request or a
    /// CRLF on the SIP port): a phone that keeps its NAT mapping alive is not pinged.
    pub keepalive_at: Option<Instant>,
    /// RFC 3327: proxies between us and the phone, the one nearest us first; requests for
    /// this contact go through them (as Route entries).
    pub path: Vec<String>,
    /// The phone's instance (`+sip.instance`, RFC 5626 §4.1), when it named one: its GRUUs
    /// (RFC 5627) reach this contact, and with a reg-id it is an outbound flow.
    pub instance: Option<Instance>,
}

/// A phone's instance as it registered a contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The `+sip.instance` value without its quotes: `<urn:uuid:...>`.
    pub id: String,
    /// RFC 5626 outbound: the flow's reg-id, when the phone registered a flow. Such a
    /// contact is reached only over the flow it registered on.
    pub reg_id: Option<u32>,
}

impl Binding {
    /// The instance and reg-id of an RFC 5626 outbound flow.
    pub fn outbound(&self) -> Option<(&str, u32)> {
        let i = self.instance.as_ref()?;
        Some((i.id.as_str(), i.reg_id?))
    }

    /// Whether this contact is phone instance `id` (`<urn:...>`).
    pub fn is_instance(&self, id: &str) -> bool {
        self.instance.as_ref().is_some_and(|i| i.id == id)
    }
}

/// The location table: each user's registered contacts, with indexes by the address a
/// contact names and by the address a phone sends from.
#[derive(Default)]
pub struct Location {
    map: HashMap<String, Vec<Binding>>,
    /// A contact's address (IP and port) -> the user who registered it and the contact, for requests inside a dialog
    /// whose Request-URI is the address of a registered phone (a phone behind NAT is
    /// reached through its registration's flow). Phones answer dialogs from the socket they
    /// registered from, with a Contact that may differ from the registered one in all but
    /// host and port. Entries are dropped with their binding, and checked on use.
    owners: HashMap<SocketAddr, (String, String)>,
    /// The same for contacts that name a host instead (a browser's random `.invalid` one,
    /// RFC 7118 §5): lower-case host and port -> user and contact.
    names: HashMap<String, (String, String)>,
    /// Temporary GRUUs handed out (RFC 5627): token -> user, instance, and the Call-ID of
    /// the registration it was given to. Checked on use; pruned to live registrations when
    /// entries pile up.
    temp_gruus: HashMap<String, (String, String, String)>,
    /// Where UDP phones' packets come from (their NAT mapping) -> user and contact, for the
    /// keep-alives they send. Checked on use; rebuilt when stale entries pile up.
    sources: HashMap<SocketAddr, (String, String)>,
}

impl Location {
    /// Whether one of `aor`'s live registrations came from `ip`.
    pub fn has_source(&self, aor: &str, ip: std::net::IpAddr, now: Instant) -> bool {
        self.get(aor)
            .iter()
            .any(|b| b.expires > now && b.flow.remote.ip() == ip)
    }

    /// Live contacts of a user, highest q first.
    pub fn lookup(&self, aor: &str, now: Instant) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self
            .map
            .get(aor)
            .map(|b| b.iter().filter(|b| b.expires > now).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.q.total_cmp(&a.q));
        v
    }

    /// Notes who registered `contact`; returns the address it names, if it is an IP literal.
    pub fn remember(&mut self, contact: &str, aor: &str) -> Option<SocketAddr> {
        match index_key(contact)? {
            IndexKey::Name(name) => {
                // A name another user's live contact holds stays theirs: nobody can take
                // over a browser's dialogs by registering its random host.
                let taken = self.names.get(&name).is_some_and(|(a, c)| {
                    a != aor
                        && self
                            .map
                            .get(a)
                            .is_some_and(|l| l.iter().any(|b| b.contact == *c))
                });
                if !taken
                    && self
                        .names
                        .get(&name)
                        .is_none_or(|(a, c)| a != aor || c != contact)
                {
                    self.names
                        .insert(name, (aor.to_string(), contact.to_string()));
                }
                None
            }
            IndexKey::Ip(k) => {
                // A refresh finds its entry in place: no allocation.
                if self
                    .owners
                    .get(&k)
                    .is_none_or(|(a, c)| a != aor || c != contact)
                {
                    self.owners
                        .insert(k, (aor.to_string(), contact.to_string()));
                }
                Some(k)
            }
        }
    }

    /// Notes where a UDP phone's packets come from.
    pub fn remember_source(&mut self, source: SocketAddr, aor: &str, contact: &str) {
        if self.sources.len() > 2 * self.contacts() + 1024 {
            let live: HashMap<SocketAddr, (String, String)> = self
                .map
                .iter()
                .flat_map(|(a, list)| {
                    list.iter()
                        .map(move |b| (b.flow.remote, (a.clone(), b.contact.clone())))
                })
                .collect();
            self.sources = live;
        }
        self.sources
            .insert(source, (aor.to_string(), contact.to_string()));
    }

    /// Notes the temporary GRUU `token` given to `aor`'s `instance` registered with
    /// `call_id`. When entries pile up (phones that re-register under new Call-IDs), only
    /// those of current registrations are kept.
    pub fn remember_temp_gruu(&mut self, token: &str, aor: &str, instance: &str, call_id: &str) {
        if self.temp_gruus.contains_key(token) {
            return;
        }
        if self.temp_gruus.len() > 2 * self.contacts() + 1024 {
            let map = &self.map;
            self.temp_gruus.retain(|_, (a, i, c)| {
                map.get(a.as_str())
                    .is_some_and(|l| l.iter().any(|b| b.is_instance(i) && b.call_id == *c))
            });
        }
        self.temp_gruus.insert(
            token.to_string(),
            (aor.to_string(), instance.to_string(), call_id.to_string()),
        );
    }

    /// The user and instance temporary GRUU `token` stands for, while that instance has a
    /// contact.
    pub fn temp_gruu(&self, token: &str) -> Option<(&str, &str)> {
        let (aor, instance, _) = self.temp_gruus.get(&token.to_ascii_lowercase())?;
        self.get(aor)
            .iter()
            .any(|b| b.is_instance(instance))
            .then_some((aor.as_str(), instance.as_str()))
    }

    /// The live binding whose phone sends from `source`, if any.
    pub fn by_source_mut(&mut self, source: SocketAddr) -> Option<&mut Binding> {
        let (aor, contact) = self.sources.get(&source)?;
        self.map
            .get_mut(aor)?
            .iter_mut()
            .find(|b| b.contact == *contact && b.flow.remote == source)
    }

    /// Drops `contact`'s entry from the index by address, if the entry is that contact's; the
    /// binding itself is the caller's to remove.
    pub fn forget(&mut self, contact: &str) {
        // Only if it is this contact's entry (another user's phone may share the address).
        match index_key(contact) {
            Some(IndexKey::Name(k)) if self.names.get(&k).is_some_and(|(_, c)| c == contact) => {
                self.names.remove(&k);
            }
            Some(IndexKey::Ip(k)) if self.owners.get(&k).is_some_and(|(_, c)| c == contact) => {
                self.owners.remove(&k);
            }
            _ => {}
        }
    }

    /// Whose live binding has the same host and port as `uri`: their key in the user table.
    pub fn owner_of(&self, uri: &sip::uri::Uri<'_>, now: Instant) -> Option<&str> {
        let (aor, contact) = match uri_name(uri) {
            Some(name) => self.names.get(&name)?,
            None => self.owners.get(&uri_address(uri)?)?,
        };
        let live = self
            .map
            .get(aor)?
            .iter()
            .any(|b| b.expires > now && b.contact == *contact);
        live.then_some(aor.as_str())
    }

    /// A live binding whose contact has the same host and port as `uri`, if any.
    pub fn by_address(&self, uri: &sip::uri::Uri<'_>, now: Instant) -> Option<&Binding> {
        let (aor, contact) = match uri_name(uri) {
            Some(name) => self.names.get(&name)?,
            None => self.owners.get(&uri_address(uri)?)?,
        };
        self.map
            .get(aor)?
            .iter()
            .find(|b| b.expires > now && b.contact == *contact)
    }

    /// Removes every contact that `gone` picks, with its index entries; returns them with
    /// their users, so the store can forget them too.
    pub fn take_where(&mut self, gone: impl Fn(&Binding) -> bool) -> Vec<(String, Binding)> {
        let mut taken = vec![];
        for (aor, list) in self.map.iter_mut() {
            if list.iter().any(&gone) {
                let (out, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(&gone);
                *list = keep;
                taken.extend(out.into_iter().map(|b| (aor.clone(), b)));
            }
        }
        self.map.retain(|_, list| !list.is_empty());
        for (_, b) in &taken {
            self.forget(&b.contact);
        }
        taken
    }

    /// A user's contacts, created empty if the user has none.
    pub fn bindings_mut(&mut self, aor: &str) -> &mut Vec<Binding> {
        self.map.entry(aor.to_string()).or_default()
    }

    /// A user's contacts, expired ones included until purged.
    pub fn get(&self, aor: &str) -> &[Binding] {
        self.map.get(aor).map_or(&[], Vec::as_slice)
    }

    /// Removes expired contacts of `aor`; returns them so the store can forget them too.
    pub fn purge(&mut self, aor: &str, now: Instant) -> Vec<Binding> {
        let Some(list) = self.map.get_mut(aor) else {
            return vec![];
        };
        let (gone, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|b| b.expires <= now);
        *list = keep;
        if list.is_empty() {
            self.map.remove(aor);
        }
        for b in &gone {
            self.forget(&b.contact);
        }
        gone
    }

    /// Forgets a user left with no contacts.
    pub fn remove_empty(&mut self, aor: &str) {
        if self.map.get(aor).is_some_and(Vec::is_empty) {
            self.map.remove(aor);
        }
    }

    /// How many users have contacts.
    pub fn aors(&self) -> usize {
        self.map.len()
    }

    /// How many contacts there are, across users.
    pub fn contacts(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }

    /// Every user with their contacts.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<Binding>)> {
        self.map.iter()
    }
}

/// Where a contact is indexed: by its IP address and port (port 5060 when absent; phones
/// behind NAT write IP addresses in their Contact), or by its host name and port.
enum IndexKey {
    Ip(SocketAddr),
    Name(String),
}

/// The index key of a contact (one parse of its URI).
fn index_key(uri: &str) -> Option<IndexKey> {
    let u = sip::uri::Uri::parse(uri).ok()?;
    match uri_address(&u) {
        Some(a) => Some(IndexKey::Ip(a)),
        None => uri_name(&u).map(IndexKey::Name),
    }
}

fn uri_name(u: &sip::uri::Uri<'_>) -> Option<String> {
    match u.host {
        sip::uri::Host::Name(n) => Some(format!(
            "{}:{}",
            n.to_ascii_lowercase(),
            u.port.unwrap_or(0)
        )),
        sip::uri::Host::Ip(_) => None,
    }
}

fn uri_address(u: &sip::uri::Uri<'_>) -> Option<SocketAddr> {
    match u.host {
        sip::uri::Host::Ip(ip) => Some(SocketAddr::new(ip, u.port.unwrap_or(5060))),
        sip::uri::Host::Name(_) => None,
    }
}
