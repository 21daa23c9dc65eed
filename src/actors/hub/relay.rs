//! What went to whom: the sent-hash memory (a server never relays or
//! pushes the same record to the same client twice) and the `to` lists of
//! relayed messages. Hashes are kept as 64-bit digests, so the memory per
//! client is bounded in bytes whatever a record's `h` looks like.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::bounded::BoundedSet;

/// A 64-bit digest of a string kept in a memory (not a security boundary:
/// a collision only skips one push).
pub fn digest(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

pub struct SentMemory {
    per_client: HashMap<String, BoundedSet<u64>>,
    cap: usize,
}

impl SentMemory {
    pub fn new(cap: usize) -> Self {
        SentMemory {
            per_client: HashMap::new(),
            cap,
        }
    }

    /// Remembers that `hash` went to `client`; false if it already had.
    pub fn mark(&mut self, client: &str, hash: &str) -> bool {
        let cap = self.cap;
        self.per_client
            .entry(client.to_owned())
            .or_insert_with(|| BoundedSet::new(cap))
            .insert(digest(hash))
    }

    pub fn forget(&mut self, client: &str) {
        self.per_client.remove(client);
    }
}

/// The `to` list of a relayed message: who saw it, plus the sender and us.
pub fn relay_to(to: &[String], sender: &str, us: &str) -> Vec<String> {
    let mut out = to.to_vec();
    for id in [sender, us] {
        if !out.iter().any(|x| x == id) {
            out.push(id.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hash_goes_to_each_client_once() {
        let mut m = SentMemory::new(10);
        assert!(m.mark("a", "h1"));
        assert!(!m.mark("a", "h1"));
        assert!(m.mark("b", "h1"));
        m.forget("a");
        assert!(m.mark("a", "h1"));
    }

    #[test]
    fn relay_to_adds_sender_and_us_once() {
        let to = vec!["x".to_string(), "s".to_string()];
        assert_eq!(relay_to(&to, "s", "me"), vec!["x", "s", "me"]);
    }
}
