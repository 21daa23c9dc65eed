//! Anti-entropy between our servers: range-based set reconciliation over
//! the items (key, digest) of two stores, so that the bytes exchanged grow
//! with the difference, not with the store.
//!
//! Why this scheme: keys are already sorted in sled, so a key range is a
//! cheap scan; a range's fingerprint is an order-free sum of item hashes,
//! so both sides compute it independently; ranges that match are settled
//! with one fingerprint, ranges that differ are split into `BUCKETS`
//! sub-ranges (one round trip per level, about log16(n) levels) until a
//! side holds at most `LIST_THRESHOLD` items there and lists them.
//! Bucketed hashing alone would need a fixed depth; a Merkle tree would
//! need to be maintained on every write. Each side then sends the records
//! the other lacks or holds differently; every record goes through normal
//! verification and the winner rule, so a peer can slip in nothing a
//! client could not.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::record::Record;

/// Sub-ranges a differing range is split into.
pub const BUCKETS: usize = 16;
/// A side holding at most this many items in a differing range lists them.
pub const LIST_THRESHOLD: usize = 32;

/// 16 bytes identifying a key's stored state.
pub type Digest = [u8; 16];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub digest: Digest,
}

/// What identifies a stored record's state: its `h` for a plain record; for
/// a CRDT also its change set, in an order-free form (merged sets equal as
/// sets must digest equal whatever order their changes arrived in).
pub fn digest_of(record: &Record) -> Digest {
    let mut h = Sha256::new();
    h.update(record.hash.as_bytes());
    if let Some(kind) = record.crdt {
        let mut changes: Vec<String> = crate::crdt::changes(record)
            .unwrap_or_default()
            .iter()
            .map(|c| crate::crdt::identity_of(kind, c))
            .collect();
        changes.sort();
        for c in changes {
            h.update([0u8]);
            h.update(c.as_bytes());
        }
    }
    truncate(&h.finalize()[..])
}

fn truncate(b: &[u8]) -> Digest {
    let mut d = [0u8; 16];
    d.copy_from_slice(&b[..16]);
    d
}

fn item_hash(item: &Item) -> u128 {
    let mut h = Sha256::new();
    h.update(item.key.as_bytes());
    h.update([0u8]);
    h.update(item.digest);
    u128::from_le_bytes(truncate(&h.finalize()[..]))
}

/// Fingerprint of a set of items: the wrapping sum of their hashes.
pub fn fingerprint(items: &[Item]) -> u128 {
    items
        .iter()
        .fold(0u128, |acc, i| acc.wrapping_add(item_hash(i)))
}

/// A key range `[lo, hi)`; `None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub lo: Option<String>,
    pub hi: Option<String>,
}

impl Range {
    pub fn all() -> Range {
        Range { lo: None, hi: None }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lo.as_deref().is_none_or(|lo| key >= lo)
            && self.hi.as_deref().is_none_or(|hi| key < hi)
    }
}

/// One range with the sender's fingerprint and item count there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeFp {
    #[serde(flatten)]
    pub range: Range,
    /// Hex of the 128-bit fingerprint.
    pub fp: String,
    pub n: usize,
}

/// One message of a reconciliation, carried in `reconcile` frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Step {
    /// "Here is what I hold in these ranges."
    Ranges { ranges: Vec<RangeFp> },
    /// "These are all my items in this range" (keys with hex digests).
    Items {
        range: Range,
        items: Vec<(String, String)>,
    },
    /// "Send me your records for these keys."
    Need { keys: Vec<String> },
}

/// What one side does with an incoming step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Steps to send back.
    pub reply: Vec<Step>,
    /// Keys whose records to send to the other side.
    pub send: Vec<String>,
}

/// Items of `sorted` (sorted by key) that fall in `range`.
pub fn in_range<'a>(sorted: &'a [Item], range: &Range) -> &'a [Item] {
    let start = match &range.lo {
        None => 0,
        Some(lo) => sorted.partition_point(|i| i.key.as_str() < lo.as_str()),
    };
    let end = match &range.hi {
        None => sorted.len(),
        Some(hi) => sorted.partition_point(|i| i.key.as_str() < hi.as_str()),
    };
    &sorted[start..end.max(start)]
}

fn range_fp(range: Range, items: &[Item]) -> RangeFp {
    RangeFp {
        range,
        fp: format!("{:032x}", fingerprint(items)),
        n: items.len(),
    }
}

/// Splits `range` (whose items are `items`, sorted) into up to `BUCKETS`
/// sub-ranges covering it exactly, with boundaries at item keys.
pub fn split(range: &Range, items: &[Item]) -> Vec<RangeFp> {
    let n = items.len();
    let buckets = BUCKETS.min(n.max(1));
    let mut out = Vec::with_capacity(buckets);
    let mut lo = range.lo.clone();
    for b in 1..=buckets {
        let end = n * b / buckets;
        let start = n * (b - 1) / buckets;
        let hi = if b == buckets {
            range.hi.clone()
        } else {
            Some(items[end].key.clone())
        };
        let sub = Range {
            lo: lo.clone(),
            hi: hi.clone(),
        };
        out.push(range_fp(sub, &items[start..end]));
        lo = hi;
    }
    out
}

/// The first step of the side that starts a reconciliation.
pub fn start(own: &[Item]) -> Step {
    Step::Ranges {
        ranges: split(&Range::all(), own),
    }
}

fn items_step(range: Range, items: &[Item]) -> Step {
    Step::Items {
        range,
        items: items
            .iter()
            .map(|i| (i.key.clone(), hex::encode(i.digest)))
            .collect(),
    }
}

/// The ranges of a step that overlap none before them, in key order: our
/// own steps never overlap, and answering a peer's overlapping copies of
/// one range each would multiply the work and the reply.
fn disjoint(ranges: &[RangeFp]) -> Vec<&RangeFp> {
    let mut sorted: Vec<&RangeFp> = ranges.iter().collect();
    // `None` as lo is the lowest bound.
    sorted.sort_by(|a, b| a.range.lo.cmp(&b.range.lo));
    let mut kept: Vec<&RangeFp> = vec![];
    // The end of the last kept range; `Some(None)` is unbounded.
    let mut end: Option<Option<&str>> = None;
    for r in sorted {
        let clear = match end {
            None => true,
            Some(None) => false,
            Some(Some(hi)) => r.range.lo.as_deref().is_some_and(|lo| lo >= hi),
        };
        let empty = matches!((&r.range.lo, &r.range.hi), (Some(lo), Some(hi)) if lo >= hi);
        if clear && !empty {
            end = Some(r.range.hi.as_deref());
            kept.push(r);
        }
    }
    kept
}

/// Handles one incoming step against our own sorted items.
pub fn respond(own: &[Item], step: &Step) -> Outcome {
    let mut out = Outcome::default();
    match step {
        Step::Ranges { ranges } => {
            let mut differing = vec![];
            for r in disjoint(ranges) {
                let mine = in_range(own, &r.range);
                let fp = format!("{:032x}", fingerprint(mine));
                if fp == r.fp && mine.len() == r.n {
                    continue;
                }
                // Only a small side of ours is listed: a peer claiming an
                // empty range over a big store of ours would otherwise get
                // every key of it in one frame. A big side of ours splits
                // (the peer, small there, then lists its own).
                if mine.len() <= LIST_THRESHOLD {
                    out.reply.push(items_step(r.range.clone(), mine));
                } else {
                    differing.extend(split(&r.range, mine));
                }
            }
            if !differing.is_empty() {
                out.reply.push(Step::Ranges { ranges: differing });
            }
        }
        Step::Items { range, items } => {
            let mine = in_range(own, range);
            let theirs: std::collections::HashMap<&str, &str> = items
                .iter()
                .map(|(k, d)| (k.as_str(), d.as_str()))
                .collect();
            let mut need = vec![];
            for i in mine {
                match theirs.get(i.key.as_str()) {
                    Some(d) if *d == hex::encode(i.digest) => {}
                    // They lack it or hold it differently: ours goes over
                    // (their winner rule keeps whichever wins).
                    Some(_) => {
                        out.send.push(i.key.clone());
                        need.push(i.key.clone());
                    }
                    None => out.send.push(i.key.clone()),
                }
            }
            let mine_keys: std::collections::HashSet<&str> =
                mine.iter().map(|i| i.key.as_str()).collect();
            for (k, _) in items {
                if !mine_keys.contains(k.as_str()) {
                    need.push(k.clone());
                }
            }
            if !need.is_empty() {
                out.reply.push(Step::Need { keys: need });
            }
        }
        Step::Need { keys } => out.send.extend(keys.iter().cloned()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn item(k: &str, d: u8) -> Item {
        Item {
            key: k.into(),
            digest: [d; 16],
        }
    }

    /// Runs a whole reconciliation between two in-memory stores where the
    /// larger digest wins; returns (messages, bytes of steps).
    fn run(a: &mut BTreeMap<String, u8>, b: &mut BTreeMap<String, u8>) -> (usize, usize) {
        let items =
            |m: &BTreeMap<String, u8>| m.iter().map(|(k, d)| item(k, *d)).collect::<Vec<_>>();
        let mut queue = vec![(true, start(&items(a)))];
        let (mut msgs, mut bytes) = (0, 0);
        while let Some((to_b, step)) = queue.pop() {
            msgs += 1;
            bytes += serde_json::to_string(&step).unwrap().len();
            assert!(msgs < 10_000, "reconciliation must terminate");
            let (own, other) = if to_b {
                (&mut *b, &mut *a)
            } else {
                (&mut *a, &mut *b)
            };
            let out = respond(&items(own), &step);
            for k in out.send {
                let d = own[&k];
                let e = other.entry(k).or_insert(0);
                *e = (*e).max(d);
            }
            for s in out.reply {
                queue.push((!to_b, s));
            }
        }
        (msgs, bytes)
    }

    fn store(n: usize, d: u8) -> BTreeMap<String, u8> {
        (0..n).map(|i| (format!("key{i:06}"), d)).collect()
    }

    #[test]
    fn equal_stores_settle_in_one_round() {
        let mut a = store(10_000, 1);
        let mut b = a.clone();
        let (msgs, _) = run(&mut a, &mut b);
        assert_eq!(msgs, 1);
    }

    #[test]
    fn both_sides_end_with_every_winner() {
        let mut a = store(5_000, 1);
        let mut b = a.clone();
        for i in (0..5_000).step_by(97) {
            a.insert(format!("key{i:06}"), 9); // a wins these
        }
        for i in (0..5_000).step_by(131) {
            b.insert(format!("key{i:06}"), 7); // b wins these unless a also changed them
        }
        a.insert("only-a".into(), 3);
        b.insert("only-b".into(), 4);
        b.remove("key000050");
        run(&mut a, &mut b);
        assert_eq!(a, b);
        assert_eq!(a["key000097"], 9);
        assert_eq!(a["key000131"], 7);
        assert_eq!(a["key000000"], 9, "changed on both: the larger wins");
        assert!(
            a.contains_key("only-b") && b.contains_key("only-a") && b.contains_key("key000050")
        );
    }

    #[test]
    fn bytes_grow_with_the_difference_not_the_store() {
        let mut a = store(50_000, 1);
        let mut b = a.clone();
        for i in 0..10 {
            b.insert(format!("key{:06}", i * 4_999), 2);
        }
        let (_, small) = run(&mut a, &mut b);
        assert_eq!(a, b);
        let full: usize = a.keys().map(|k| k.len() + 40).sum();
        assert!(
            small * 20 < full,
            "{small} bytes for 10 differences vs {full} for a full listing"
        );
    }

    #[test]
    fn empty_sides_reconcile() {
        let mut a = store(100, 1);
        let mut b = BTreeMap::new();
        run(&mut a, &mut b);
        assert_eq!(a, b);
        let mut c = BTreeMap::new();
        let mut d = store(100, 1);
        run(&mut c, &mut d);
        assert_eq!(c, d);
    }

    #[test]
    fn overlapping_ranges_are_answered_once() {
        let own: Vec<Item> = (0..20).map(|i| item(&format!("k{i:03}"), 1)).collect();
        let claim = RangeFp {
            range: Range::all(),
            fp: "0".repeat(32),
            n: 0,
        };
        let inner = RangeFp {
            range: Range {
                lo: Some("k005".into()),
                hi: Some("k010".into()),
            },
            ..claim.clone()
        };
        let step = Step::Ranges {
            ranges: vec![claim.clone(); 100]
                .into_iter()
                .chain(std::iter::once(inner))
                .collect(),
        };
        let out = respond(&own, &step);
        assert_eq!(out.reply.len(), 1, "{:?}", out.reply);
        match &out.reply[0] {
            Step::Items { items, .. } => assert_eq!(items.len(), 20),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_claimed_empty_range_over_a_big_store_is_split_not_listed() {
        let own: Vec<Item> = (0..50_000).map(|i| item(&format!("k{i:06}"), 1)).collect();
        let step = Step::Ranges {
            ranges: vec![RangeFp {
                range: Range::all(),
                fp: "0".repeat(32),
                n: 0,
            }],
        };
        let out = respond(&own, &step);
        let bytes = serde_json::to_string(&out.reply).unwrap().len();
        assert!(bytes < 10_000, "a {bytes}-byte answer to a 1-range claim");
        assert!(matches!(&out.reply[..], [Step::Ranges { ranges }] if ranges.len() == BUCKETS));
    }

    #[test]
    fn split_covers_the_range_exactly() {
        let items: Vec<Item> = (0..100).map(|i| item(&format!("k{i:03}"), 1)).collect();
        let parts = split(&Range::all(), &items);
        assert_eq!(parts.len(), BUCKETS);
        assert_eq!(parts.iter().map(|p| p.n).sum::<usize>(), 100);
        assert_eq!(parts[0].range.lo, None);
        assert_eq!(parts.last().unwrap().range.hi, None);
        for w in parts.windows(2) {
            assert_eq!(w[0].range.hi, w[1].range.lo);
        }
    }
}
