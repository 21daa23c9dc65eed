//! Tool Db records (`VerificationData`): parsing that keeps the raw text,
//! verification in Tool Db's order with our stricter rules, and the
//! deterministic last-writer-wins rule (PROTOCOL.md, "Records").
//!
//! A record is stored and forwarded as the exact text it arrived in; only
//! CRDT merges create new text (servers replace `v` with the merged set).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::crypto;

/// Records more than this far in the future are refused. Tool Db allows
/// 30 s, which lets anyone block a global key (and an owner their own) for
/// that long; clocks kept by NTP, as phones' and servers' are, differ by far
/// less than a second.
pub const MAX_FUTURE_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrdtKind {
    Map,
    List,
    Counter,
}

impl CrdtKind {
    /// The wire name (`c`).
    pub fn as_str(self) -> &'static str {
        match self {
            CrdtKind::Map => "MAP",
            CrdtKind::List => "LIST",
            CrdtKind::Counter => "COUNTER",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "MAP" => Some(CrdtKind::Map),
            "LIST" => Some(CrdtKind::List),
            "COUNTER" => Some(CrdtKind::Counter),
            _ => None,
        }
    }
}

/// Why a record was refused, named as Tool Db names its verification results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("InvalidData: {0}")]
    InvalidData(String),
    #[error("InvalidTimestamp: {t} is more than 5 s in the future")]
    InvalidTimestamp { t: u64 },
    #[error("AddressMismatch: key {key:?} is in another user's namespace")]
    AddressMismatch { key: String },
    #[error("InvalidKey: key {key:?} contains '.' outside a user namespace")]
    InvalidKey { key: String },
    #[error("CantOverwrite: frozen key {key:?} belongs to another author")]
    CantOverwrite { key: String },
    #[error("NoProofOfWork: hash does not start with {zeros} zeros")]
    NoProofOfWork { zeros: u32 },
    #[error("InvalidHashNonce: h does not match the record's v, a, t and n")]
    InvalidHashNonce,
    #[error("InvalidSignature: {0}")]
    InvalidSignature(#[from] crypto::SignatureError),
    /// Ours: `k` is not covered by the hash, so a signed record could be
    /// replayed under another key; each signature stays with its first key.
    #[error("Rekeyed: this signed record belongs to key {first:?}, not {key:?}")]
    Rekeyed { key: String, first: String },
    /// Ours: a frozen key's owner is kept against writes back-dated past the
    /// takeover window (the oldest write would win for ever otherwise).
    #[error("BackDated: frozen key {key:?} is held by a write more than {window_s} s newer than this one")]
    BackDated { key: String, window_s: u64 },
    /// Ours: the record, or the CRDT change set a merge would make, is
    /// over the node's limit.
    #[error("TooLarge: key {key:?} would hold {size} bytes, over the limit of {limit} (max_record_bytes)")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// Ours: a CRDT key keeps at most this many signed change lists (so
    /// at most this many authors), each needed for changes no other holds.
    #[error("TooManyLists: key {key:?} holds {limit} signed change lists already, the most kept per key")]
    TooManyLists { key: String, limit: usize },
}

/// A parsed record that still holds its exact wire text.
#[derive(Debug, Clone)]
pub struct Record {
    raw: Box<RawValue>,
    pub key: String,
    pub address: String,
    pub nonce: u64,
    pub timestamp: u64,
    pub hash: String,
    pub sig: String,
    value: Box<RawValue>,
    pub crdt: Option<CrdtKind>,
}

#[derive(Deserialize)]
struct Fields {
    k: Option<String>,
    a: Option<String>,
    n: Option<u64>,
    t: Option<u64>,
    h: Option<String>,
    s: Option<String>,
    // `v: null` is a value; only an absent `v` is missing.
    #[serde(default, deserialize_with = "present_raw")]
    v: Option<Box<RawValue>>,
    // Absent and `null` differ: Tool Db requires `c` to be present.
    #[serde(default, deserialize_with = "present")]
    c: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl Record {
    /// Parses a record from its JSON text, keeping that text.
    pub fn parse(raw: Box<RawValue>) -> Result<Self, RecordError> {
        let f: Fields = serde_json::from_str(raw.get())
            .map_err(|e| RecordError::InvalidData(format!("record: {e}")))?;
        let missing =
            |name: &str| RecordError::InvalidData(format!("record: missing field {name}"));
        let crdt = match f.c.ok_or_else(|| missing("c"))? {
            Value::Null => None,
            Value::String(s) => Some(
                CrdtKind::parse(&s)
                    .ok_or_else(|| RecordError::InvalidData(format!("record: unknown c {s:?}")))?,
            ),
            other => {
                return Err(RecordError::InvalidData(format!(
                    "record: c must be null or a string, not {other}"
                )))
            }
        };
        Ok(Record {
            key: f.k.ok_or_else(|| missing("k"))?,
            address: f.a.ok_or_else(|| missing("a"))?,
            nonce: f.n.ok_or_else(|| missing("n"))?,
            timestamp: f.t.ok_or_else(|| missing("t"))?,
            hash: f.h.ok_or_else(|| missing("h"))?,
            sig: f.s.ok_or_else(|| missing("s"))?,
            value: f.v.ok_or_else(|| missing("v"))?,
            crdt,
            raw,
        })
    }

    pub fn parse_str(text: &str) -> Result<Self, RecordError> {
        let raw = RawValue::from_string(text.to_owned())
            .map_err(|e| RecordError::InvalidData(format!("record: {e}")))?;
        Self::parse(raw)
    }

    /// The exact JSON text of the record.
    pub fn raw(&self) -> &str {
        self.raw.get()
    }

    pub fn raw_value(&self) -> &RawValue {
        &self.raw
    }

    /// The exact JSON text of `v`.
    pub fn value_raw(&self) -> &str {
        self.value.get()
    }

    /// `JSON.stringify(v) + a + t + n`: the text `h` hashes. JSON.stringify
    /// nests compositionally, so the raw text of `v` is exactly its output.
    pub fn hash_input(&self) -> String {
        format!(
            "{}{}{}{}",
            self.value.get(),
            self.address,
            self.timestamp,
            self.nonce
        )
    }

    /// Whether `h` is the hash of this record's own `v`, `a`, `t` and `n`:
    /// with a verified `s`, the record then proves every byte of its `v`.
    pub fn hash_matches(&self) -> bool {
        crypto::sha256_hex(self.hash_input().as_bytes()) == self.hash
    }

    pub fn is_frozen(&self) -> bool {
        self.key.starts_with("==")
    }

    /// Every check that needs no stored state, in Tool Db's order (the
    /// frozen-key check needs the store and is done by `Storage`).
    pub fn verify(&self, now_ms: u64, pow_zeros: u32) -> Result<(), RecordError> {
        self.verify_with(now_ms, pow_zeros, false)
    }

    /// `verify`, with `crdt_hash`: a CRDT record's change list must hash to
    /// its `h` too. True for records from clients, which sign the change
    /// list they send, and from servers of ours, which send signed lists;
    /// without it anyone could send other changes under a valid signature.
    /// (Merged sets from JS Tool Db servers do not hash: they replace `v`
    /// with their union.)
    pub fn verify_with(
        &self,
        now_ms: u64,
        pow_zeros: u32,
        crdt_hash: bool,
    ) -> Result<(), RecordError> {
        if self.timestamp > now_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(RecordError::InvalidTimestamp { t: self.timestamp });
        }
        check_key(&self.key, &self.address)?;
        if pow_zeros > 0
            && !self
                .hash
                .as_bytes()
                .iter()
                .take(pow_zeros as usize)
                .all(|c| *c == b'0')
            || self.hash.len() < pow_zeros as usize
        {
            return Err(RecordError::NoProofOfWork { zeros: pow_zeros });
        }
        // Ours: the hash is checked always for plain records, so a relay
        // cannot swap `v` under a valid signature. CRDT records without
        // `crdt_hash` are checked by signature only: a JS Tool Db server
        // replaces `v` with the merged set.
        if (self.crdt.is_none() || pow_zeros > 0 || crdt_hash) && !self.hash_matches() {
            return Err(RecordError::InvalidHashNonce);
        }
        crypto::verify(&self.address, self.hash.as_bytes(), &self.sig)?;
        Ok(())
    }

    pub fn meta(&self) -> RecordMeta<'_> {
        RecordMeta {
            key: &self.key,
            timestamp: self.timestamp,
            address: &self.address,
            hash: &self.hash,
        }
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Record::parse(raw).map_err(D::Error::custom)
    }
}

/// Key rules: `:ADDRESS.key` must name the author; no other `.` anywhere
/// (Tool Db checks dots only in its client; ours checks on the server too).
pub fn check_key(key: &str, address: &str) -> Result<(), RecordError> {
    if let Some(rest) = key.strip_prefix(':') {
        let (owner, name) = rest.split_once('.').unwrap_or((rest, ""));
        if owner != address {
            return Err(RecordError::AddressMismatch {
                key: key.to_owned(),
            });
        }
        if name.contains('.') {
            return Err(RecordError::InvalidKey {
                key: key.to_owned(),
            });
        }
    } else if key.contains('.') {
        return Err(RecordError::InvalidKey {
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// What the winner rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RecordMeta<'a> {
    #[serde(rename = "k")]
    pub key: &'a str,
    #[serde(rename = "t")]
    pub timestamp: u64,
    #[serde(rename = "a")]
    pub address: &'a str,
    #[serde(rename = "h")]
    pub hash: &'a str,
}

/// Whether `incoming` replaces `stored` for their key (last writer wins).
/// Frozen `==` keys: the older write wins, then the smaller address. Plain
/// keys: the newer write wins; ours: equal times go to the larger hash, so
/// every server converges on one record whatever order it saw them in.
pub fn wins(incoming: &RecordMeta<'_>, stored: &RecordMeta<'_>) -> bool {
    use std::cmp::Ordering::*;
    if incoming.key.starts_with("==") {
        match incoming.timestamp.cmp(&stored.timestamp) {
            Less => true,
            Greater => false,
            Equal => match incoming.address.cmp(stored.address) {
                Less => true,
                Greater => false,
                Equal => incoming.hash > stored.hash,
            },
        }
    } else {
        match incoming.timestamp.cmp(&stored.timestamp) {
            Greater => true,
            Less => false,
            Equal => incoming.hash > stored.hash,
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds and signs a plain record, as a Tool Db client's `putData` does.
/// Used by our own clients and tests; a server never re-creates others' records.
pub fn sign_record(key_pair: &crypto::NodeKey, key: &str, value: &Value, timestamp: u64) -> Record {
    sign_record_with(key_pair, key, value, timestamp, None, 0)
}

/// The first nonce from 0 whose `sha256hex(prefix + nonce)` starts with
/// `zeros` zeros, and that hash (Tool Db's `proofOfWork`). `zeros == 0`
/// gives nonce 0.
pub fn proof_of_work(prefix: &str, zeros: u32) -> (u64, String) {
    let mut n = 0u64;
    loop {
        let h = crypto::sha256_hex(format!("{prefix}{n}").as_bytes());
        if h.bytes().take(zeros as usize).all(|c| c == b'0') {
            return (n, h);
        }
        n += 1;
    }
}

/// Builds and signs a record: plain (`crdt` None) or a CRDT whose `value` is
/// its change list, with `pow_zeros` leading zeros of proof of work in `h`
/// (`h = sha256hex(JSON(v) + a + t + n)`). `pow_zeros` 16 means about 65,000
/// hashes; callers with large values should run this off their event loop.
pub fn sign_record_with(
    key_pair: &crypto::NodeKey,
    key: &str,
    value: &Value,
    timestamp: u64,
    crdt: Option<CrdtKind>,
    pow_zeros: u32,
) -> Record {
    let v = serde_json::to_string(value).expect("a JSON value serialises");
    let a = key_pair.address();
    let (n, h) = proof_of_work(&format!("{v}{a}{timestamp}"), pow_zeros);
    let s = key_pair.sign(h.as_bytes());
    let c = crdt.map_or_else(
        || "null".to_owned(),
        |k| serde_json::to_string(k.as_str()).unwrap(),
    );
    let text = format!(
        r#"{{"k":{},"a":{},"n":{n},"t":{timestamp},"h":{},"s":{},"v":{v},"c":{c}}}"#,
        serde_json::to_string(key).unwrap(),
        serde_json::to_string(a).unwrap(),
        serde_json::to_string(&h).unwrap(),
        serde_json::to_string(&s).unwrap(),
    );
    Record::parse_str(&text).expect("a record we built parses")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyScheme, NodeKey};
    use serde_json::json;

    fn key() -> NodeKey {
        NodeKey::generate(KeyScheme::P256)
    }

    #[test]
    fn a_signed_record_verifies_and_keeps_its_text() {
        let k = key();
        let r = sign_record(&k, "greeting", &json!({"b": [1, 2], "a": "x"}), now_ms());
        assert_eq!(r.verify(now_ms(), 0), Ok(()));
        // A JS client's key order is kept byte for byte (serde would sort it).
        let text =
            r#"{"k":"x","a":"A","n":0,"t":1,"h":"h","s":"s","v":{"b":[1,2],"a":"x"},"c":null}"#;
        let r = Record::parse_str(text).unwrap();
        assert_eq!(r.raw(), text);
        assert_eq!(r.value_raw(), r#"{"b":[1,2],"a":"x"}"#);
        assert_eq!(r.hash_input(), r#"{"b":[1,2],"a":"x"}A10"#);
    }

    #[test]
    fn tampered_value_fails_the_hash_even_without_proof_of_work() {
        let k = key();
        let r = sign_record(&k, "x", &json!("honest"), now_ms());
        let forged = Record::parse_str(&r.raw().replace("honest", "forged")).unwrap();
        assert_eq!(
            forged.verify(now_ms(), 0),
            Err(RecordError::InvalidHashNonce)
        );
    }

    #[test]
    fn a_crdt_change_list_from_a_client_must_hash_to_its_signature() {
        let k = key();
        let changes = json!([{"t":"SET","a":k.address(),"k":"admin","v":false,"i":1}]);
        let r = sign_record_with(&k, "c", &changes, now_ms(), Some(CrdtKind::Map), 0);
        assert_eq!(r.verify_with(now_ms(), 0, true), Ok(()));
        let injected = Record::parse_str(&r.raw().replace("false", "true")).unwrap();
        assert_eq!(
            injected.verify_with(now_ms(), 0, true),
            Err(RecordError::InvalidHashNonce)
        );
        // From a JS Tool Db server (a merged set) the signature alone is checked.
        assert_eq!(injected.verify_with(now_ms(), 0, false), Ok(()));
    }

    #[test]
    fn missing_fields_and_null_c_are_told_apart() {
        let k = key();
        let r = sign_record(&k, "x", &json!(1), now_ms());
        let no_c = r.raw().replace(r#","c":null"#, "");
        assert!(
            matches!(Record::parse_str(&no_c), Err(RecordError::InvalidData(m)) if m.contains("c"))
        );
        for f in ["k", "a", "n", "t", "h", "s", "v"] {
            let mut v: Value = serde_json::from_str(r.raw()).unwrap();
            v.as_object_mut().unwrap().remove(f);
            let err = Record::parse_str(&v.to_string()).unwrap_err();
            assert!(
                matches!(&err, RecordError::InvalidData(m) if m.contains(f)),
                "{f}: {err}"
            );
        }
        assert!(Record::parse_str(r#"{"k":1}"#).is_err());
        assert!(Record::parse_str("[1]").is_err());
    }

    #[test]
    fn future_timestamps_are_refused() {
        let k = key();
        let now = now_ms();
        // Tool Db allows 30 s; we allow the skew NTP-kept clocks have.
        let r = sign_record(&k, "x", &json!(1), now + 6_000);
        assert_eq!(
            r.verify(now, 0),
            Err(RecordError::InvalidTimestamp { t: now + 6_000 })
        );
        let ok = sign_record(&k, "x", &json!(1), now + 4_000);
        assert_eq!(ok.verify(now, 0), Ok(()));
    }

    #[test]
    fn namespaces_and_dots() {
        let k = key();
        let mine = format!(":{}.profile", k.address());
        assert_eq!(
            sign_record(&k, &mine, &json!(1), now_ms()).verify(now_ms(), 0),
            Ok(())
        );
        let other = key();
        let theirs = format!(":{}.profile", other.address());
        assert!(matches!(
            sign_record(&k, &theirs, &json!(1), now_ms()).verify(now_ms(), 0),
            Err(RecordError::AddressMismatch { .. })
        ));
        assert!(matches!(
            sign_record(&k, "a.b", &json!(1), now_ms()).verify(now_ms(), 0),
            Err(RecordError::InvalidKey { .. })
        ));
    }

    #[test]
    fn proof_of_work_is_required_when_configured() {
        let k = key();
        let r = sign_record(&k, "x", &json!(1), now_ms());
        if !r.hash.starts_with("000") {
            assert_eq!(
                r.verify(now_ms(), 3),
                Err(RecordError::NoProofOfWork { zeros: 3 })
            );
        }
    }

    #[test]
    fn proof_of_work_records_verify_with_their_zeros() {
        for scheme in [KeyScheme::Secp256k1, KeyScheme::P256] {
            let k = NodeKey::generate(scheme);
            let r = sign_record_with(&k, "x", &json!({"a": 1}), now_ms(), None, 3);
            assert!(r.hash.starts_with("000"), "{}", r.hash);
            assert_eq!(r.verify(now_ms(), 3), Ok(()));
            let m = sign_record_with(&k, "m", &json!([]), now_ms(), Some(CrdtKind::Map), 2);
            assert_eq!(m.crdt, Some(CrdtKind::Map));
            assert_eq!(m.verify(now_ms(), 2), Ok(()));
        }
        assert_eq!(proof_of_work("abc", 0).0, 0);
    }

    #[test]
    fn bad_signature_is_refused() {
        let k = key();
        let r = sign_record(&k, "x", &json!(1), now_ms());
        let other = sign_record(&key(), "x", &json!(1), r.timestamp);
        let mixed = r.raw().replace(&r.sig, &other.sig);
        assert!(matches!(
            Record::parse_str(&mixed).unwrap().verify(now_ms(), 0),
            Err(RecordError::InvalidSignature(_))
        ));
    }

    fn meta<'a>(key: &'a str, t: u64, a: &'a str, h: &'a str) -> RecordMeta<'a> {
        RecordMeta {
            key,
            timestamp: t,
            address: a,
            hash: h,
        }
    }

    #[test]
    fn winner_rule_is_deterministic() {
        // plain: newer wins, tie → larger hash, whatever the order seen.
        assert!(wins(&meta("k", 2, "a", "0"), &meta("k", 1, "a", "f")));
        assert!(!wins(&meta("k", 1, "a", "f"), &meta("k", 2, "a", "0")));
        assert!(wins(&meta("k", 1, "a", "b"), &meta("k", 1, "a", "a")));
        assert!(!wins(&meta("k", 1, "a", "a"), &meta("k", 1, "a", "b")));
        assert!(!wins(&meta("k", 1, "a", "a"), &meta("k", 1, "a", "a")));
        // frozen: older wins, tie → smaller address.
        assert!(wins(&meta("==k", 1, "z", "0"), &meta("==k", 2, "a", "0")));
        assert!(!wins(&meta("==k", 2, "a", "0"), &meta("==k", 1, "z", "0")));
        assert!(wins(&meta("==k", 1, "a", "0"), &meta("==k", 1, "b", "0")));
        assert!(!wins(&meta("==k", 1, "b", "0"), &meta("==k", 1, "a", "0")));
    }
}
