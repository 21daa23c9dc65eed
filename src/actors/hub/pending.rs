//! Relayed requests waiting for an answer to pass back: a get or crdtGet
//! we could not answer ourselves was relayed to our servers, and the
//! verified answer goes to the client that asked. Bounded in count and, as
//! ids longer than `MAX_ID_BYTES` are not remembered, in bytes; entries
//! expire after the configured time.

use std::time::{Duration, Instant};

use crate::bounded::ExpiringMap;

/// Most relayed requests waiting at once.
pub const MAX_PENDING: usize = 20_000;
/// Longest request id remembered (Tool Db's ids are 10 characters).
pub const MAX_ID_BYTES: usize = 128;

#[derive(Debug, Clone)]
pub struct Pending {
    pub requester: String,
    /// A Tool Db client resolves `getData` only with a `put` and
    /// `getCrdt` only with a `crdtPut`; any other type with the id hangs it.
    pub answer_kind: &'static str,
}

pub struct PendingRequests {
    map: ExpiringMap<String, Pending>,
    ttl: Duration,
}

impl PendingRequests {
    pub fn new(ttl: Duration) -> Self {
        PendingRequests {
            map: ExpiringMap::new(MAX_PENDING),
            ttl,
        }
    }

    /// Remembers who asked `id`; false if the id is too long to keep.
    pub fn insert(&mut self, id: &str, pending: Pending, now: Instant) -> bool {
        if id.len() > MAX_ID_BYTES {
            return false;
        }
        self.map.insert(id.to_owned(), pending, now + self.ttl, now);
        true
    }

    /// The request `id` waits for an answer: take it (answered once).
    pub fn take(&mut self, id: &str, now: Instant) -> Option<Pending> {
        let key = id.to_owned();
        let p = self.map.get(&key, now).cloned()?;
        self.map.remove(&key);
        Some(p)
    }

    pub fn prune(&mut self, now: Instant) {
        self.map.prune(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_once_and_long_ids_are_not_kept() {
        let mut p = PendingRequests::new(Duration::from_secs(10));
        let now = Instant::now();
        let asked = Pending {
            requester: "c".into(),
            answer_kind: "put",
        };
        assert!(p.insert("abc", asked.clone(), now));
        assert!(p.take("abc", now).is_some());
        assert!(p.take("abc", now).is_none());
        assert!(!p.insert(&"x".repeat(MAX_ID_BYTES + 1), asked, now));
    }
}
