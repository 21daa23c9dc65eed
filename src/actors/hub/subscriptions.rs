//! Subscriptions by key (so a put costs the same however many clients are
//! connected) and by client, which follow a client id across reconnects.
//!
//! Bounds, and the policy at each: a client holds at most
//! `max_per_client` subscriptions (more are refused); an anonymous client's
//! subscriptions end with its socket (no one can come back as it); a
//! verified client gone longer than the grace period is forgotten, and at
//! most `max_gone` gone clients are remembered (the oldest go first); all
//! subscriptions together hold at most `max_bytes` (keys, client ids and
//! their entries): past it the clients gone longest are forgotten, and if
//! only connected clients are left, a new subscription is refused.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("client {client} already holds the most subscriptions allowed ({max})")]
    TooMany { client: String, max: usize },
    #[error("the node's subscriptions are full (max_subscription_bytes = {max})")]
    Full { max: usize },
}

/// What one subscription costs: its key and client id, twice indexed, plus
/// the entries' overhead.
fn cost(client: &str, key: &str) -> usize {
    2 * (client.len() + key.len()) + 96
}

pub struct Subscriptions {
    by_key: HashMap<String, HashSet<String>>,
    by_client: HashMap<String, HashSet<String>>,
    gone_since: HashMap<String, Instant>,
    gone_order: VecDeque<(Instant, String)>,
    max_per_client: usize,
    max_gone: usize,
    max_bytes: usize,
    bytes: usize,
}

impl Subscriptions {
    pub fn new(max_per_client: usize, max_gone: usize, max_bytes: usize) -> Self {
        Subscriptions {
            by_key: HashMap::new(),
            by_client: HashMap::new(),
            gone_since: HashMap::new(),
            gone_order: VecDeque::new(),
            max_per_client: max_per_client.max(1),
            max_gone,
            max_bytes,
            bytes: 0,
        }
    }

    /// Forgets the clients gone longest until `need` more bytes fit.
    fn make_room(&mut self, need: usize) -> Result<Vec<String>, SubscribeError> {
        let mut forgotten = vec![];
        while self.bytes + need > self.max_bytes {
            let Some((since, c)) = self.gone_order.pop_front() else {
                return Err(SubscribeError::Full {
                    max: self.max_bytes,
                });
            };
            if self.gone_since.get(&c) == Some(&since) {
                self.forget(&c);
                forgotten.push(c);
            }
        }
        Ok(forgotten)
    }

    /// Subscribes `client` to `key`; returns the gone clients forgotten to
    /// make room.
    pub fn subscribe(&mut self, client: &str, key: &str) -> Result<Vec<String>, SubscribeError> {
        let held = self.by_client.get(client);
        if held.is_some_and(|k| k.contains(key)) {
            return Ok(vec![]);
        }
        if held.map_or(0, |k| k.len()) >= self.max_per_client {
            return Err(SubscribeError::TooMany {
                client: client.to_owned(),
                max: self.max_per_client,
            });
        }
        let forgotten = self.make_room(cost(client, key))?;
        self.bytes += cost(client, key);
        self.by_client
            .entry(client.to_owned())
            .or_default()
            .insert(key.to_owned());
        self.by_key
            .entry(key.to_owned())
            .or_default()
            .insert(client.to_owned());
        Ok(forgotten)
    }

    /// Bytes the subscriptions hold now (by the `cost` measure).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Clients subscribed to `key`.
    pub fn subscribers(&self, key: &str) -> Vec<String> {
        self.by_key
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The client connected (again): it keeps what it had.
    pub fn client_back(&mut self, client: &str) {
        self.gone_since.remove(client);
    }

    /// The client's last connection closed. Returns the clients forgotten
    /// now (the anonymous one itself, or the oldest gone past the cap).
    pub fn client_left(&mut self, client: &str, anonymous: bool, now: Instant) -> Vec<String> {
        if anonymous {
            self.forget(client);
            return vec![client.to_owned()];
        }
        if !self.by_client.contains_key(client) {
            return vec![];
        }
        self.gone_since.insert(client.to_owned(), now);
        self.gone_order.push_back((now, client.to_owned()));
        let mut forgotten = vec![];
        while self.gone_since.len() > self.max_gone {
            let Some((since, c)) = self.gone_order.pop_front() else {
                break;
            };
            // Entries of clients that came back (or left again later) are stale.
            if self.gone_since.get(&c) == Some(&since) {
                self.forget(&c);
                forgotten.push(c);
            }
        }
        self.compact_order();
        forgotten
    }

    /// Forgets clients gone for `grace` or longer; returns them.
    pub fn forget_expired(&mut self, now: Instant, grace: Duration) -> Vec<String> {
        let expired: Vec<String> = self
            .gone_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(c, _)| c.clone())
            .collect();
        for c in &expired {
            self.forget(c);
        }
        self.compact_order();
        expired
    }

    /// Stale order entries are dropped once they outnumber live ones.
    fn compact_order(&mut self) {
        if self.gone_order.len() > 2 * self.gone_since.len() + 16 {
            let live = &self.gone_since;
            self.gone_order
                .retain(|(since, c)| live.get(c) == Some(since));
        }
    }

    pub fn forget(&mut self, client: &str) {
        self.gone_since.remove(client);
        if let Some(keys) = self.by_client.remove(client) {
            for key in keys {
                self.bytes -= cost(client, &key);
                if let Some(set) = self.by_key.get_mut(&key) {
                    set.remove(client);
                    if set.is_empty() {
                        self.by_key.remove(&key);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    pub fn gone_count(&self) -> usize {
        self.gone_since.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_cap() {
        let mut s = Subscriptions::new(2, 10, 1 << 20);
        s.subscribe("c", "a").unwrap();
        s.subscribe("c", "b").unwrap();
        s.subscribe("c", "a").unwrap();
        assert!(matches!(
            s.subscribe("c", "z"),
            Err(SubscribeError::TooMany { max: 2, .. })
        ));
        assert!(s.subscribers("z").is_empty());
    }

    #[test]
    fn anonymous_clients_are_forgotten_when_they_leave() {
        let mut s = Subscriptions::new(10, 10, 1 << 20);
        s.subscribe("~anon~1", "k").unwrap();
        s.client_left("~anon~1", true, Instant::now());
        assert!(s.subscribers("k").is_empty());
    }

    #[test]
    fn gone_clients_are_bounded_oldest_first_and_expire() {
        let mut s = Subscriptions::new(10, 2, 1 << 20);
        let t0 = Instant::now();
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            s.subscribe(c, "k").unwrap();
            let gone = s.client_left(c, false, t0 + Duration::from_secs(i as u64));
            if *c == "c" {
                assert_eq!(gone, vec!["a".to_string()]);
            }
        }
        assert_eq!(s.gone_count(), 2);
        s.client_back("b");
        let expired = s.forget_expired(t0 + Duration::from_secs(100), Duration::from_secs(50));
        assert_eq!(expired, vec!["c".to_string()]);
        assert_eq!(s.subscribers("k"), vec!["b".to_string()]);
    }

    #[test]
    fn all_subscriptions_are_bounded_in_bytes_gone_clients_first() {
        let one = cost("a", "k1");
        let mut s = Subscriptions::new(100, 100, 3 * one);
        s.subscribe("a", "k1").unwrap();
        s.subscribe("b", "k1").unwrap();
        s.subscribe("c", "k1").unwrap();
        assert_eq!(s.bytes(), 3 * one);
        // Full of connected clients: refused, nothing dropped.
        assert!(matches!(
            s.subscribe("d", "k1"),
            Err(SubscribeError::Full { .. })
        ));
        // A gone client makes room: it goes first.
        s.client_left("b", false, Instant::now());
        assert_eq!(s.subscribe("d", "k1").unwrap(), vec!["b".to_string()]);
        let mut subs = s.subscribers("k1");
        subs.sort();
        assert_eq!(subs, vec!["a", "c", "d"]);
        s.forget("a");
        assert_eq!(s.bytes(), 2 * one);
    }
}
