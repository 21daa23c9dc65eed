//! `ServerBook`: which servers a client knows and which to dial next. Plain
//! logic, no sockets (tested below): the `ClientCore` actor asks it what to
//! dial and tells it what happened.
//!
//! Endpoints come from any source (static `--peer`s, DHT lookups, the
//! `servers` list of a pong). A server's identity is the address of its
//! verified peer record; the book keeps one connection per identity, never
//! dials an identity marked bad, and backs a failing endpoint off
//! (`backoff_delay`, reset only after a verified pong).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::backoff::backoff_delay;
pub use crate::endpoint::Endpoint;
use crate::messages::hub::ConnId;

/// Most endpoints remembered; learned ones beyond it are ignored.
pub const MAX_KNOWN_ENDPOINTS: usize = 256;

/// Where an endpoint was learned; static ones are preferred, then DHT
/// results, LAN announcements, then servers listed by other servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Static,
    Dht,
    /// An mDNS announcement on the LAN.
    Lan,
    /// An offer forwarded by a WebTorrent tracker.
    Tracker,
    Listed,
}

#[derive(Debug, Clone)]
struct Entry {
    endpoint: Endpoint,
    source: Source,
    /// The address of the server there, once a pong (or a listing) said so.
    identity: Option<String>,
    failures: u32,
    retry_at: Option<Instant>,
    /// A connection to it exists (dialing or identified).
    conn: Option<ConnId>,
}

/// What the core should do with a connection whose pong verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identified {
    /// Keep it: the first connection to this server.
    Keep,
    /// Close it: another connection already reaches this server.
    Duplicate { existing: ConnId },
    /// Close it: this server was marked bad.
    Bad,
}

/// Backoff knobs.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Debug, Default)]
pub struct ServerBook {
    entries: Vec<Entry>,
    /// Identity → its identified connection.
    connected: HashMap<String, ConnId>,
    bad: HashSet<String>,
}

impl ServerBook {
    /// Adds an endpoint; returns whether it was new. A known endpoint only
    /// gains the identity if it had none.
    pub fn add(&mut self, endpoint: Endpoint, source: Source, identity: Option<String>) -> bool {
        if let Some(e) = self.entries.iter_mut().find(|e| e.endpoint == endpoint) {
            if e.identity.is_none() {
                e.identity = identity;
            }
            e.source = e.source.min(source);
            return false;
        }
        if self.entries.len() >= MAX_KNOWN_ENDPOINTS && source != Source::Static {
            return false;
        }
        self.entries.push(Entry {
            endpoint,
            source,
            identity,
            failures: 0,
            retry_at: None,
            conn: None,
        });
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Connections open or being opened.
    pub fn active(&self) -> usize {
        self.entries.iter().filter(|e| e.conn.is_some()).count()
    }

    fn usable(&self, e: &Entry, now: Instant) -> bool {
        e.conn.is_none()
            && e.retry_at.is_none_or(|t| t <= now)
            && e.identity
                .as_ref()
                .is_none_or(|id| !self.bad.contains(id) && !self.connected.contains_key(id))
    }

    /// Endpoints to dial now so that `wanted` connections are open or
    /// opening: usable ones, fewest failures first, then by source, then
    /// in the order learned. The caller reports each dial with `dialing`.
    pub fn pick(&self, now: Instant, wanted: usize) -> Vec<Endpoint> {
        let missing = wanted.saturating_sub(self.active());
        let mut candidates: Vec<(usize, &Entry)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| self.usable(e, now))
            .collect();
        candidates.sort_by_key(|(i, e)| (e.failures, e.source, *i));
        let mut seen_identities = HashSet::new();
        candidates
            .into_iter()
            // Two endpoints known to be one server: dial one of them.
            .filter(|(_, e)| {
                e.identity
                    .as_ref()
                    .is_none_or(|id| seen_identities.insert(id))
            })
            .take(missing)
            .map(|(_, e)| e.endpoint.clone())
            .collect()
    }

    /// The earliest time a backed-off endpoint becomes usable.
    pub fn next_retry(&self) -> Option<Instant> {
        self.entries.iter().filter_map(|e| e.retry_at).min()
    }

    pub fn dialing(&mut self, endpoint: &Endpoint, conn: ConnId) {
        if let Some(e) = self.entries.iter_mut().find(|e| &e.endpoint == endpoint) {
            e.conn = Some(conn);
        }
    }

    fn entry_of(&mut self, conn: ConnId) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.conn == Some(conn))
    }

    /// A connection's pong verified and named `identity`.
    pub fn identified(&mut self, conn: ConnId, identity: &str) -> Identified {
        let bad = self.bad.contains(identity);
        let existing = self.connected.get(identity).copied();
        let Some(e) = self.entry_of(conn) else {
            return Identified::Bad;
        };
        e.identity = Some(identity.to_owned());
        if bad {
            return Identified::Bad;
        }
        if let Some(existing) = existing.filter(|c| *c != conn) {
            return Identified::Duplicate { existing };
        }
        e.failures = 0;
        e.retry_at = None;
        self.connected.insert(identity.to_owned(), conn);
        Identified::Keep
    }

    /// A connection the book did not dial (a Hyperswarm link) identified
    /// `identity`: bad and duplicate as for `identified`.
    pub fn identified_unlisted(&mut self, conn: ConnId, identity: &str) -> Identified {
        if self.bad.contains(identity) {
            return Identified::Bad;
        }
        if let Some(existing) = self.connected.get(identity).copied().filter(|c| *c != conn) {
            return Identified::Duplicate { existing };
        }
        self.connected.insert(identity.to_owned(), conn);
        Identified::Keep
    }

    /// A connection ended. `failed`: it never got a verified pong (or was
    /// closed for misbehaving), so its endpoint backs off longer; one that
    /// was up is redialed after the first backoff step. A duplicate is not
    /// a failure: its endpoint stays skipped while the other is connected.
    pub fn closed(&mut self, conn: ConnId, failed: bool, now: Instant, backoff: Backoff) {
        self.connected.retain(|_, c| *c != conn);
        let Some(e) = self.entry_of(conn) else {
            return;
        };
        e.conn = None;
        e.failures = if failed { e.failures + 1 } else { 1 };
        let jitter: f64 = rand::random();
        e.retry_at = Some(now + backoff_delay(e.failures, backoff.initial, backoff.max, jitter));
    }

    /// Never dial this identity again.
    pub fn mark_bad(&mut self, identity: &str) {
        self.bad.insert(identity.to_owned());
    }

    pub fn is_bad(&self, identity: &str) -> bool {
        self.bad.contains(identity)
    }

    /// The endpoint a connection was opened to.
    pub fn endpoint_of(&self, conn: ConnId) -> Option<&Endpoint> {
        self.entries
            .iter()
            .find(|e| e.conn == Some(conn))
            .map(|e| &e.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    fn ep(port: u16) -> Endpoint {
        Endpoint::new("127.0.0.1", port)
    }

    #[test]
    fn picks_up_to_the_wanted_count_static_first() {
        let mut b = ServerBook::default();
        b.add(ep(3), Source::Listed, Some("C".into()));
        b.add(ep(1), Source::Static, None);
        b.add(ep(2), Source::Dht, None);
        let now = Instant::now();
        assert_eq!(b.pick(now, 2), vec![ep(1), ep(2)]);
        b.dialing(&ep(1), 10);
        assert_eq!(b.pick(now, 2), vec![ep(2)]);
        assert!(!b.add(ep(1), Source::Listed, Some("A".into())), "known");
    }

    #[test]
    fn one_connection_per_identity() {
        let mut b = ServerBook::default();
        b.add(ep(1), Source::Static, None);
        b.add(ep(2), Source::Static, None);
        let now = Instant::now();
        b.dialing(&ep(1), 1);
        b.dialing(&ep(2), 2);
        assert_eq!(b.identified(1, "A"), Identified::Keep);
        assert_eq!(b.identified(2, "A"), Identified::Duplicate { existing: 1 });
        b.closed(2, false, now, B);
        // ep(2) is server A too: not dialed while A is connected.
        assert!(b.pick(now + Duration::from_secs(60), 2).is_empty());
        // A listed endpoint of A is not dialed either.
        b.add(ep(3), Source::Listed, Some("A".into()));
        assert!(b.pick(now + Duration::from_secs(60), 2).is_empty());
        // A goes away: one of its endpoints is dialed again (only one).
        b.closed(1, false, now, B);
        let later = now + Duration::from_secs(60);
        assert_eq!(b.pick(later, 2).len(), 1);
    }

    #[test]
    fn a_dead_server_backs_off_and_another_replaces_it() {
        let mut b = ServerBook::default();
        b.add(ep(1), Source::Static, None);
        b.add(ep(2), Source::Listed, Some("B".into()));
        let now = Instant::now();
        assert_eq!(b.pick(now, 1), vec![ep(1)]);
        b.dialing(&ep(1), 1);
        assert_eq!(b.identified(1, "A"), Identified::Keep);
        b.closed(1, false, now, B);
        // ep(1) backs off; ep(2) replaces it at once.
        assert_eq!(b.pick(now, 1), vec![ep(2)]);
        assert!(b.next_retry().unwrap() > now);
        // Failing dials back off longer and longer.
        b.dialing(&ep(2), 2);
        b.closed(2, true, now, B);
        b.dialing(&ep(2), 3);
        b.closed(3, true, now, B);
        let far = now + Duration::from_secs(60);
        assert_eq!(b.pick(far, 1), vec![ep(1)], "fewest failures first");
    }

    #[test]
    fn bad_servers_are_never_dialed() {
        let mut b = ServerBook::default();
        b.add(ep(1), Source::Static, None);
        let now = Instant::now();
        b.dialing(&ep(1), 1);
        assert_eq!(b.identified(1, "EVIL"), Identified::Keep);
        b.mark_bad("EVIL");
        b.closed(1, true, now, B);
        assert!(b.pick(now + Duration::from_secs(600), 1).is_empty());
        b.add(ep(2), Source::Listed, Some("EVIL".into()));
        assert!(b.pick(now + Duration::from_secs(600), 1).is_empty());
        // Reached again under another endpoint: refused after the pong.
        b.add(ep(3), Source::Dht, None);
        b.dialing(&ep(3), 3);
        assert_eq!(b.identified(3, "EVIL"), Identified::Bad);
    }
}
