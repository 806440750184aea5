//! The location table (RFC 3261 §10): the contacts each user has registered, in memory. The
//! registrar changes it; the proxy reads it; the store keeps a copy for restarts.

use super::Flow;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Binding {
    /// The contact URI as registered (without `<>` and header parameters).
    pub contact: String,
    pub expires: Instant,
    pub q: f32,
    pub call_id: String,
    pub cseq: u32,
    /// The flow the REGISTER arrived on: responses and requests for this contact reuse it.
    pub flow: Flow,
    pub user_agent: String,
}

#[derive(Default)]
pub struct Location {
    map: HashMap<String, Vec<Binding>>,
}

impl Location {
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

    pub fn bindings_mut(&mut self, aor: &str) -> &mut Vec<Binding> {
        self.map.entry(aor.to_string()).or_default()
    }

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
        gone
    }

    pub fn remove_empty(&mut self, aor: &str) {
        if self.map.get(aor).is_some_and(Vec::is_empty) {
            self.map.remove(aor);
        }
    }

    pub fn aors(&self) -> usize {
        self.map.len()
    }

    pub fn contacts(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<Binding>)> {
        self.map.iter()
    }
}
