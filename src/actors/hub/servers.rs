//! The verified servers this hub knows (from server pings and pong lists),
//! bounded: at most `cap` are kept, and a new one displaces the oldest
//! record of a server that is not connected. A pong lists at most
//! `listed` of them, the connected ones first, so a pong can never grow
//! past what a peer parses (a list poisoned with junk records cannot cut
//! our servers off from each other). And it lists only servers that are
//! connected or once answered our own dial with their signed record: a
//! record merely passed on in someone's pong is dialed, not passed on.

use std::collections::{HashMap, HashSet};

use crate::peer::Peer;

pub struct KnownServers {
    by_address: HashMap<String, Peer>,
    /// Addresses whose endpoint answered a dial of ours (a subset of the keys).
    verified: HashSet<String>,
    cap: usize,
    listed: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Learned {
    New,
    Updated,
    Unchanged,
    /// Full of connected servers: not kept.
    Dropped,
}

impl KnownServers {
    pub fn new(cap: usize, listed: usize) -> Self {
        KnownServers {
            by_address: HashMap::new(),
            verified: HashSet::new(),
            cap: cap.max(1),
            listed,
        }
    }

    /// Keeps `peer` (already verified, of our topic, not us).
    pub fn learn(&mut self, peer: Peer, connected: &HashSet<String>) -> Learned {
        if let Some(known) = self.by_address.get_mut(&peer.address) {
            if known.timestamp >= peer.timestamp {
                return Learned::Unchanged;
            }
            *known = peer;
            return Learned::Updated;
        }
        if self.by_address.len() >= self.cap {
            let oldest = self
                .by_address
                .values()
                .filter(|p| !connected.contains(p.client_id()))
                .min_by_key(|p| p.timestamp)
                .map(|p| p.address.clone());
            match oldest {
                Some(a) => {
                    self.by_address.remove(&a);
                    self.verified.remove(&a);
                }
                None => return Learned::Dropped,
            }
        }
        self.by_address.insert(peer.address.clone(), peer);
        Learned::New
    }

    /// The server at `address` answered a dial of ours with its record.
    pub fn mark_verified(&mut self, address: &str) {
        if self.by_address.contains_key(address) {
            self.verified.insert(address.to_owned());
        }
    }

    pub fn is_verified(&self, address: &str) -> bool {
        self.verified.contains(address)
    }

    /// Whether a listed record is news: unknown, or newer than the one kept.
    pub fn is_news(&self, address: &str, timestamp: u64) -> bool {
        self.by_address
            .get(address)
            .is_none_or(|p| p.timestamp < timestamp)
    }

    /// The servers a pong lists after our own record: connected ones
    /// first, then the most recently signed of those that answered a dial,
    /// at most `listed`.
    pub fn pong_list(&self, connected: &HashSet<String>) -> Vec<&Peer> {
        let mut all: Vec<&Peer> = self
            .by_address
            .values()
            .filter(|p| connected.contains(p.client_id()) || self.verified.contains(&p.address))
            .collect();
        all.sort_by_key(|p| {
            (
                !connected.contains(p.client_id()),
                std::cmp::Reverse(p.timestamp),
            )
        });
        all.truncate(self.listed);
        all
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.by_address.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyScheme, NodeKey};

    fn peer(ts: u64) -> Peer {
        let k = NodeKey::generate(KeyScheme::Secp256k1);
        Peer::sign(&k, "t", "127.0.0.1", 1, ts)
    }

    #[test]
    fn bounded_by_evicting_the_oldest_unconnected() {
        let mut s = KnownServers::new(2, 10);
        let (a, b, c) = (peer(1), peer(2), peer(3));
        let connected: HashSet<String> = [a.client_id().to_owned()].into();
        assert_eq!(s.learn(a.clone(), &connected), Learned::New);
        assert_eq!(s.learn(b.clone(), &connected), Learned::New);
        assert_eq!(s.learn(c.clone(), &connected), Learned::New);
        let kept: HashSet<String> = s.iter().map(|p| p.address.clone()).collect();
        assert!(kept.contains(&a.address), "connected, kept though oldest");
        assert!(!kept.contains(&b.address));
        let all: HashSet<String> = [a.client_id().to_owned(), c.client_id().to_owned()].into();
        assert_eq!(s.learn(peer(4), &all), Learned::Dropped);
    }

    #[test]
    fn a_pong_lists_connected_first_and_at_most_its_cap() {
        let mut s = KnownServers::new(10, 2);
        let none = HashSet::new();
        let old = peer(1);
        s.learn(old.clone(), &none);
        for ts in [5, 9] {
            let p = peer(ts);
            s.learn(p.clone(), &none);
            s.mark_verified(&p.address);
        }
        let connected: HashSet<String> = [old.client_id().to_owned()].into();
        let list = s.pong_list(&connected);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].address, old.address);
        assert_eq!(list[1].timestamp, 9);
    }

    #[test]
    fn a_pong_lists_no_record_that_never_answered_a_dial() {
        let mut s = KnownServers::new(10, 10);
        let none = HashSet::new();
        let (heard, dialed) = (peer(7), peer(3));
        s.learn(heard.clone(), &none);
        s.learn(dialed.clone(), &none);
        s.mark_verified(&dialed.address);
        let list = s.pong_list(&none);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].address, dialed.address);
        assert!(!s.is_news(&heard.address, 7) && s.is_news(&heard.address, 8));
    }
}
