//! The relay's port range: even RTP ports (RTCP on the odd one above), handed out oldest-freed
//! first so a port just released does not get stray packets meant for the last call.

use std::collections::VecDeque;

pub(crate) struct PortPool {
    free: VecDeque<u16>,
    range: (u16, u16),
}

impl PortPool {
    /// Every even port of `lo..=hi` whose odd neighbour is in range too.
    pub(crate) fn new(lo: u16, hi: u16) -> PortPool {
        let first = lo + (lo & 1);
        let free = (u32::from(first)..u32::from(hi))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        PortPool {
            free,
            range: (lo, hi),
        }
    }

    /// Whether `port` is in the range the pool was made of.
    pub(crate) fn contains(&self, port: u16) -> bool {
        (self.range.0..=self.range.1).contains(&port)
    }

    pub(crate) fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    pub(crate) fn give_back(&mut self, port: u16) {
        self.free.push_back(port);
    }

    pub(crate) fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ports_oldest_first_until_none() {
        let mut p = PortPool::new(20001, 20009);
        // 20002..=20008: each with its RTCP port inside the range.
        assert_eq!(p.available(), 4);
        let a = p.take().unwrap();
        assert_eq!(a, 20002);
        assert_eq!(p.take(), Some(20004));
        assert_eq!(p.take(), Some(20006));
        assert_eq!(p.take(), Some(20008));
        assert_eq!(p.take(), None);
        assert_eq!(PortPool::new(20000, 20000).available(), 0);
        p.give_back(a);
        assert_eq!(p.take(), Some(20002));
    }
}
