//! CRDT change sets: servers keep the union of every change they have seen
//! for a key (PROTOCOL.md). Tool Db stores the merged set only when the
//! incoming record is newer, and so loses changes that arrive out of order;
//! ours always keeps the union.

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
