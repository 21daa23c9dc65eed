//! CRDT change sets: servers keep the union of every change they have seen
//! for a key (PROTOCOL.md). Tool Db stores the merged set only when the
//! incoming record is newer, and so loses changes that arrive out of order;
//! ours always keeps the union.
//!
//! What a server keeps per key is `Kept`: the signed change lists (records
//! that verify on their own: `v` hashes to `h`, `s` signs `h`), from which
//! the merged set is derived, so every change it holds is proved by some
//! author's signature. Only changes a JS Tool Db server sent as a merged
//! set (checked by signature alone, as Tool Db allows no better), or that
//! were stored before this layout, are kept apart as `unsigned`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::record::{CrdtKind, Record, RecordError};

/// The fields that make a change the same change, per CRDT kind. A LIST's
/// `v` is compared as JSON (Tool Db's `===` duplicates object inserts).
fn identity_fields(kind: CrdtKind) -> &'static [&'static str] {
    match kind {
        CrdtKind::Map => &["k", "i", "a", "t"],
        CrdtKind::Counter => &["i", "a", "t"],
        CrdtKind::List => &["i", "t", "v"],
    }
}

/// A change's identity as canonical text (see `identity_fields`).
pub fn identity_of(kind: CrdtKind, change: &Value) -> String {
    identity(kind, change)
}

fn identity(kind: CrdtKind, change: &Value) -> String {
    let parts: Vec<&Value> = identity_fields(kind)
        .iter()
        .map(|f| change.get(*f).unwrap_or(&Value::Null))
        .collect();
    // serde_json's Map is ordered by key, so this text is canonical.
    serde_json::to_string(&parts).expect("JSON values serialise")
}

/// The change list of a CRDT record's `v`.
pub fn changes(record: &Record) -> Result<Vec<Value>, RecordError> {
    match serde_json::from_str::<Value>(record.value_raw()) {
        Ok(Value::Array(a)) => Ok(a),
        _ => Err(RecordError::InvalidData(format!(
            "crdt record {:?}: v must be an array of changes",
            record.key
        ))),
    }
}

/// Appends to `base` every change of `extra` it does not hold; returns how
/// many were added.
pub fn union(kind: CrdtKind, base: &mut Vec<Value>, extra: Vec<Value>) -> usize {
    let mut seen: std::collections::HashSet<String> =
        base.iter().map(|c| identity(kind, c)).collect();
    let mut added = 0;
    for change in extra {
        if seen.insert(identity(kind, &change)) {
            base.push(change);
            added += 1;
        }
    }
    added
}

/// Merges an incoming CRDT record into the stored one. Returns the record
/// text to store, or `None` when the stored one already holds everything.
/// The newer record's metadata (k a n t h s c) is kept, with `v` replaced by
/// the union, as Tool Db servers do.
pub fn merge(stored: &Record, incoming: &Record) -> Result<Option<String>, RecordError> {
    let kind = incoming.crdt.ok_or_else(|| {
        RecordError::InvalidData(format!("record {:?} is not a CRDT", incoming.key))
    })?;
    if stored.crdt != Some(kind) {
        // Another kind (or a plain value) under this key: the newer wins whole.
        return Ok((incoming.timestamp > stored.timestamp).then(|| incoming.raw().to_owned()));
    }
    let mut merged = changes(stored)?;
    let added = union(kind, &mut merged, changes(incoming)?);
    let newer = incoming.timestamp > stored.timestamp
        || (incoming.timestamp == stored.timestamp && incoming.hash > stored.hash);
    if added == 0 && !newer {
        return Ok(None);
    }
    let base = if newer { incoming } else { stored };
    let mut obj: Map<String, Value> = serde_json::from_str(base.raw())
        .map_err(|e| RecordError::InvalidData(format!("record: {e}")))?;
    obj.insert("v".into(), Value::Array(merged));
    Ok(Some(Value::Object(obj).to_string()))
}

/// Most signed change lists kept for one key: so at most this many
/// authors per key. A list whose changes a newer list holds is dropped,
/// so clients that read before they write keep one list between them.
pub const MAX_LISTS_PER_KEY: usize = 256;

/// Whether `a` is the newer record of one key (the metadata a merged set
/// takes): newer `t`, then the larger `h`.
fn newer(a: &Record, b: &Record) -> bool {
    a.timestamp > b.timestamp || (a.timestamp == b.timestamp && a.hash > b.hash)
}

fn identities(kind: CrdtKind, record: &Record) -> Result<HashSet<String>, RecordError> {
    Ok(changes(record)?.iter().map(|c| identity(kind, c)).collect())
}

/// What a server keeps for one CRDT key (see the module doc).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Kept {
    /// Records each proved whole by its signature (`hash_matches`).
    pub signed: Vec<Record>,
    /// Changes accepted on signature only, as one merged record.
    #[serde(default)]
    pub unsigned: Option<Record>,
}

impl Kept {
    /// A merged set stored before this layout: a list if it still hashes
    /// (one put, never merged), else changes we cannot prove.
    pub fn from_legacy(stored: Record) -> Kept {
        if stored.hash_matches() {
            Kept {
                signed: vec![stored],
                unsigned: None,
            }
        } else {
            Kept {
                signed: vec![],
                unsigned: Some(stored),
            }
        }
    }

    fn records(&self) -> impl Iterator<Item = &Record> {
        self.signed.iter().chain(self.unsigned.iter())
    }

    /// The record whose metadata the merged set carries.
    pub fn newest(&self) -> Option<&Record> {
        self.records()
            .fold(None, |best: Option<&Record>, r| match best {
                Some(b) if !newer(r, b) => Some(b),
                _ => Some(r),
            })
    }

    /// Bytes kept (bounded by `max_record_bytes`).
    pub fn bytes(&self) -> usize {
        self.records().map(|r| r.raw().len()).sum()
    }

    /// Adds a verified record of this key and kind. A record whose `v`
    /// hashes to its `h` is kept as a list (and the older records it holds
    /// whole are dropped); any other goes into `unsigned`. Returns false
    /// when nothing changes: it adds no change and is not newer. (A list
    /// that proves changes held only unsigned adds them: they can travel.)
    pub fn add(&mut self, incoming: Record) -> Result<bool, RecordError> {
        let kind = incoming.crdt.ok_or_else(|| {
            RecordError::InvalidData(format!("record {:?} is not a CRDT", incoming.key))
        })?;
        let ids = identities(kind, &incoming)?;
        let signed = incoming.hash_matches();
        let mut held = HashSet::new();
        for r in self.signed.iter() {
            held.extend(identities(kind, r)?);
        }
        let mut proved = held.clone();
        if let Some(u) = &self.unsigned {
            if !signed {
                held.extend(identities(kind, u)?);
            }
        }
        let adds = ids.iter().any(|i| !held.contains(i));
        let is_newest = self.newest().is_none_or(|n| newer(&incoming, n));
        if !adds && !is_newest {
            return Ok(false);
        }
        // An older record whose changes the incoming one holds adds nothing.
        let redundant = |r: &Record| -> Result<bool, RecordError> {
            Ok(!newer(r, &incoming) && identities(kind, r)?.is_subset(&ids))
        };
        if signed {
            let mut keep = Vec::with_capacity(self.signed.len() + 1);
            for r in self.signed.drain(..) {
                if !redundant(&r)? {
                    keep.push(r);
                }
            }
            self.signed = keep;
            // Unsigned changes all proved by lists now need no keeping.
            proved.extend(ids.iter().cloned());
            if let Some(u) = self.unsigned.take() {
                if newer(&u, &incoming) || !identities(kind, &u)?.is_subset(&proved) {
                    self.unsigned = Some(u);
                }
            }
            self.signed.push(incoming);
            if self.signed.len() > MAX_LISTS_PER_KEY {
                return Err(RecordError::TooManyLists {
                    key: self.signed[0].key.clone(),
                    limit: MAX_LISTS_PER_KEY,
                });
            }
        } else {
            self.unsigned = Some(match self.unsigned.take() {
                None => incoming,
                Some(u) => match merge(&u, &incoming)? {
                    Some(text) => Record::parse_str(&text)?,
                    None => u,
                },
            });
        }
        Ok(true)
    }

    /// The merged set as one record, as clients get it: the newest
    /// record's metadata with `v` the union of every kept change. When
    /// the newest record holds every change, its own text, unchanged (it
    /// then verifies whole).
    pub fn view(&self) -> Result<Option<String>, RecordError> {
        let Some(newest) = self.newest() else {
            return Ok(None);
        };
        let Some(kind) = newest.crdt else {
            return Ok(Some(newest.raw().to_owned()));
        };
        let mut merged = changes(newest)?;
        let mut added = 0;
        for r in self.records().filter(|r| !std::ptr::eq(*r, newest)) {
            added += union(kind, &mut merged, changes(r)?);
        }
        if added == 0 {
            return Ok(Some(newest.raw().to_owned()));
        }
        let mut obj: Map<String, Value> = serde_json::from_str(newest.raw())
            .map_err(|e| RecordError::InvalidData(format!("record: {e}")))?;
        obj.insert("v".into(), Value::Array(merged));
        Ok(Some(Value::Object(obj).to_string()))
    }
}

/// The value of a MAP change set, as Tool Db's `MapCrdt` computes it:
/// changes sorted by `i`, then SET before DEL, then author; applied in order.
pub fn map_value(changes: &[Value]) -> Map<String, Value> {
    let mut sorted: Vec<&Value> = changes.iter().collect();
    sorted.sort_by(|a, b| {
        let i = |c: &Value| c.get("i").and_then(Value::as_u64).unwrap_or(0);
        let op = |c: &Value| u8::from(c.get("t").and_then(Value::as_str) == Some("DEL"));
        let author = |c: &Value| c.get("a").and_then(Value::as_str).unwrap_or("").to_owned();
        i(a).cmp(&i(b))
            .then(op(a).cmp(&op(b)))
            .then_with(|| author(a).cmp(&author(b)))
    });
    let mut out = Map::new();
    for change in sorted {
        let Some(field) = change.get("k").and_then(Value::as_str) else {
            continue;
        };
        match change.get("t").and_then(Value::as_str) {
            Some("SET") => {
                out.insert(
                    field.to_owned(),
                    change.get("v").cloned().unwrap_or(Value::Null),
                );
            }
            Some("DEL") => {
                out.remove(field);
            }
            _ => {}
        }
    }
    out
}

/// A new MAP change for `field` (SET with `Some(value)`, DEL with `None`)
/// by `author`, indexed after every change of that field, as `MapCrdt.SET`
/// and `DEL` do.
pub fn map_change(changes: &[Value], author: &str, field: &str, value: Option<Value>) -> Value {
    let i = changes
        .iter()
        .filter(|c| c.get("k").and_then(Value::as_str) == Some(field))
        .filter_map(|c| c.get("i").and_then(Value::as_u64))
        .max()
        .unwrap_or(0)
        + 1;
    match value {
        Some(v) => serde_json::json!({"t": "SET", "k": field, "a": author, "v": v, "i": i}),
        None => serde_json::json!({"t": "DEL", "k": field, "a": author, "i": i}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(t: u64, v: Value) -> Record {
        let text = json!({"k":"m","a":"A","n":0,"t":t,"h":format!("h{t}"),"s":"s","v":v,"c":"MAP"});
        Record::parse_str(&text.to_string()).unwrap()
    }

    fn signed(k: &crate::crypto::NodeKey, t: u64, v: Value) -> Record {
        crate::record::sign_record_with(k, "m", &v, t, Some(CrdtKind::Map), 0)
    }

    fn set(a: &str, field: &str, i: u64) -> Value {
        json!({"t":"SET","k":field,"a":a,"v":i,"i":i})
    }

    #[test]
    fn kept_lists_derive_the_union_and_drop_lists_a_newer_one_holds() {
        use crate::crypto::{KeyScheme, NodeKey};
        let (ka, kb) = (
            NodeKey::generate(KeyScheme::P256),
            NodeKey::generate(KeyScheme::P256),
        );
        let (a, b) = (ka.address().to_owned(), kb.address().to_owned());
        let mut kept = Kept::default();
        assert!(kept.add(signed(&ka, 1, json!([set(&a, "x", 1)]))).unwrap());
        assert!(kept.add(signed(&kb, 2, json!([set(&b, "y", 1)]))).unwrap());
        // A's second put holds its first: the first list is dropped.
        let a2 = signed(&ka, 3, json!([set(&a, "x", 1), set(&a, "z", 2)]));
        assert!(kept.add(a2.clone()).unwrap());
        assert_eq!(kept.signed.len(), 2);
        assert!(kept.unsigned.is_none());
        let view = Record::parse_str(&kept.view().unwrap().unwrap()).unwrap();
        assert_eq!((view.timestamp, view.hash.as_str()), (3, a2.hash.as_str()));
        assert_eq!(changes(&view).unwrap().len(), 3);
        // Again, or an older list it holds: nothing changes.
        assert!(!kept.add(a2.clone()).unwrap());
        assert!(!kept.add(signed(&ka, 1, json!([set(&a, "x", 1)]))).unwrap());
        // A list holding everything is served as it came: it verifies whole.
        let all = signed(
            &kb,
            4,
            json!([set(&a, "x", 1), set(&a, "z", 2), set(&b, "y", 1)]),
        );
        assert!(kept.add(all.clone()).unwrap());
        assert_eq!(kept.signed.len(), 1);
        assert_eq!(kept.view().unwrap().unwrap(), all.raw());
    }

    #[test]
    fn a_merged_set_is_kept_apart_from_the_signed_lists() {
        use crate::crypto::{KeyScheme, NodeKey};
        let k = NodeKey::generate(KeyScheme::P256);
        let a = k.address().to_owned();
        let list = signed(&k, 1, json!([set(&a, "x", 1)]));
        // What a JS Tool Db server sends: its union under the newest h, s.
        let newest = signed(&k, 2, json!([set(&a, "y", 2)]));
        let mut merged: Value = serde_json::from_str(newest.raw()).unwrap();
        merged["v"] = json!([set(&a, "y", 2), set("other", "w", 3)]);
        let merged = Record::parse_str(&merged.to_string()).unwrap();
        assert!(!merged.hash_matches());
        let mut kept = Kept::default();
        kept.add(list.clone()).unwrap();
        kept.add(merged).unwrap();
        assert_eq!(kept.signed.len(), 1, "only what hashes is a list");
        assert_eq!(kept.signed[0].raw(), list.raw());
        let view = Record::parse_str(&kept.view().unwrap().unwrap()).unwrap();
        assert_eq!(changes(&view).unwrap().len(), 3);
        assert_eq!(view.timestamp, 2);
    }

    #[test]
    fn a_merged_set_is_proved_again_by_its_authors_lists() {
        use crate::crypto::{KeyScheme, NodeKey};
        let (ka, kb) = (
            NodeKey::generate(KeyScheme::P256),
            NodeKey::generate(KeyScheme::P256),
        );
        let (a, b) = (ka.address().to_owned(), kb.address().to_owned());
        let la = signed(&ka, 1, json!([set(&a, "x", 1)]));
        let lb = signed(&kb, 2, json!([set(&b, "y", 1)]));
        // A set stored by a build without lists: B's h and s over both.
        let mut merged: Value = serde_json::from_str(lb.raw()).unwrap();
        merged["v"] = json!([set(&b, "y", 1), set(&a, "x", 1)]);
        let merged = Record::parse_str(&merged.to_string()).unwrap();
        let mut kept = Kept::from_legacy(merged.clone());
        assert!(kept.signed.is_empty());
        // A's list adds no change, but proves one: it is kept.
        assert!(kept.add(la).unwrap());
        assert_eq!(kept.signed.len(), 1);
        assert!(kept.unsigned.is_some());
        // B's list proves the rest: nothing is left unproved.
        assert!(kept.add(lb.clone()).unwrap());
        assert_eq!(kept.signed.len(), 2);
        assert!(kept.unsigned.is_none());
        let view = Record::parse_str(&kept.view().unwrap().unwrap()).unwrap();
        assert_eq!(view.hash, merged.hash);
        assert_eq!(changes(&view).unwrap().len(), 2);
    }

    #[test]
    fn the_lists_of_one_key_are_bounded() {
        use crate::crypto::{KeyScheme, NodeKey};
        let k = NodeKey::generate(KeyScheme::Secp256k1);
        let a = k.address().to_owned();
        let mut kept = Kept::default();
        for i in 0..MAX_LISTS_PER_KEY as u64 {
            kept.add(signed(&k, i + 1, json!([set(&a, &format!("f{i}"), i)])))
                .unwrap();
        }
        let over = signed(&k, 1_000, json!([set(&a, "last", 1)]));
        assert!(matches!(
            kept.add(over),
            Err(RecordError::TooManyLists { limit, .. }) if limit == MAX_LISTS_PER_KEY
        ));
    }

    #[test]
    fn out_of_order_changes_are_kept() {
        let newer = rec(2, json!([{"t":"SET","k":"x","v":1,"a":"A","i":0}]));
        let older = rec(1, json!([{"t":"SET","k":"y","v":2,"a":"B","i":0}]));
        let merged = merge(&newer, &older)
            .unwrap()
            .expect("the older change is new here");
        let m = Record::parse_str(&merged).unwrap();
        assert_eq!(m.timestamp, 2, "the newer metadata stays");
        assert_eq!(changes(&m).unwrap().len(), 2);
        // Merging the same again changes nothing.
        assert_eq!(merge(&m, &older).unwrap(), None);
    }

    #[test]
    fn merged_numbers_keep_their_value() {
        // Found by fuzzing: serde_json's default float parser may miss by an
        // ulp, so the merged text (re-serialised from parsed changes) read
        // back as another number, and a LIST change (whose identity holds
        // its `v`) no longer matched itself on the next merge.
        let list = |t: u64, v: &str| {
            let text = format!(
                r#"{{"k":"l","a":"A","n":0,"t":{t},"h":"h{t}","s":"s","v":{v},"c":"LIST"}}"#
            );
            Record::parse_str(&text).unwrap()
        };
        let stored = list(1, r#"[{"t":"INS","i":1,"v":123456789012345680000}]"#);
        let incoming = list(2, r#"[{"t":"INS","i":2,"v":0.1}]"#);
        let merged = merge(&stored, &incoming).unwrap().unwrap();
        let merged = Record::parse_str(&merged).unwrap();
        assert_eq!(
            changes(&merged).unwrap()[0]["v"].as_f64(),
            Some(123456789012345680000.0),
            "{}",
            merged.raw()
        );
        assert_eq!(merge(&merged, &stored).unwrap(), None);
    }

    #[test]
    fn map_value_applies_changes_in_tool_db_order() {
        let mut changes = vec![];
        let c1 = map_change(&changes, "A", "x", Some(json!(1)));
        changes.push(c1);
        let c2 = map_change(&changes, "B", "x", Some(json!(2)));
        assert_eq!(c2["i"], 2);
        changes.push(c2);
        changes.push(map_change(&changes, "A", "y", Some(json!("y"))));
        assert_eq!(
            map_value(&changes),
            json!({"x": 2, "y": "y"}).as_object().cloned().unwrap()
        );
        // Same index: SET before DEL, so the DEL wins.
        changes.push(json!({"t":"DEL","k":"y","a":"Z","i":1}));
        assert_eq!(
            map_value(&changes),
            json!({"x": 2}).as_object().cloned().unwrap()
        );
    }

    #[test]
    fn list_values_compare_as_json() {
        let mut base = vec![json!({"t":"INS","i":1,"v":{"a":1,"b":2}})];
        let added = union(
            CrdtKind::List,
            &mut base,
            vec![json!({"v":{"b":2,"a":1},"i":1,"t":"INS"})],
        );
        assert_eq!(added, 0);
    }

    #[test]
    fn counter_identity_ignores_value_fields_outside_it() {
        let mut base = vec![json!({"t":"ADD","i":0,"a":"A","v":5})];
        assert_eq!(
            union(
                CrdtKind::Counter,
                &mut base,
                vec![json!({"t":"ADD","i":1,"a":"A","v":5})]
            ),
            1
        );
        assert_eq!(
            union(
                CrdtKind::Counter,
                &mut base,
                vec![json!({"t":"ADD","i":1,"a":"A","v":5})]
            ),
            0
        );
    }
}
