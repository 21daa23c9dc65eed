//! Bounded memories: Tool Db's processed-id and sent-hash sets grow forever;
//! ours forget the oldest entries past a capacity, and pending requests
//! expire after a deadline.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Instant;

/// A set that forgets its oldest entries past `capacity`.
#[derive(Debug)]
pub struct BoundedSet<T> {
    set: HashSet<T>,
    order: VecDeque<T>,
    capacity: usize,
}

impl<T: Hash + Eq + Clone> BoundedSet<T> {
    pub fn new(capacity: usize) -> Self {
        BoundedSet {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Inserts `value`; returns false if it was already remembered.
    pub fn insert(&mut self, value: T) -> bool {
        if self.set.contains(&value) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(value.clone());
        self.order.push_back(value);
        true
    }

    pub fn contains(&self, value: &T) -> bool {
        self.set.contains(value)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// A map whose entries expire at a deadline, with a cap on live entries.
#[derive(Debug)]
pub struct ExpiringMap<K, V> {
    map: HashMap<K, (Instant, V)>,
    order: VecDeque<(Instant, K)>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        ExpiringMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn insert(&mut self, key: K, value: V, expires: Instant, now: Instant) {
        self.prune(now);
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some((_, k)) => {
                    self.map.remove(&k);
                }
                None => break,
            }
        }
        self.order.push_back((expires, key.clone()));
        self.map.insert(key, (expires, value));
    }

    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(deadline, _)| *deadline > now)
            .map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        // Its queue entry stays until it expires; prune skips it then.
        self.map.remove(key).map(|(_, v)| v)
    }

    pub fn prune(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.order.front() {
            if *deadline > now {
                break;
            }
            let (deadline, k) = self.order.pop_front().expect("front exists");
            // Only remove if the entry was not re-inserted with a later deadline.
            if self.map.get(&k).is_some_and(|(d, _)| *d == deadline) {
                self.map.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounded_set_forgets_the_oldest() {
        let mut s = BoundedSet::new(2);
        assert!(s.insert(1));
        assert!(!s.insert(1));
        assert!(s.insert(2));
        assert!(s.insert(3));
        assert_eq!(s.len(), 2);
        assert!(!s.contains(&1));
        assert!(s.contains(&3));
    }

    #[test]
    fn expiring_map_expires_and_caps() {
        let now = Instant::now();
        let mut m = ExpiringMap::new(2);
        m.insert("a", 1, now + Duration::from_secs(1), now);
        assert_eq!(m.get(&"a", now), Some(&1));
        assert_eq!(m.get(&"a", now + Duration::from_secs(2)), None);
        m.insert("b", 2, now + Duration::from_secs(10), now);
        m.insert("c", 3, now + Duration::from_secs(10), now);
        assert_eq!(m.len(), 2, "capacity holds");
        m.prune(now + Duration::from_secs(20));
        assert!(m.is_empty());
    }
}
