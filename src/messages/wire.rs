//! The Tool Db wire protocol's messages (PROTOCOL.md). One JSON object per
//! text frame, tagged by `type`.
//!
//! Parsing is two-step (read `type`, then the variant's struct) because
//! serde's internally tagged enums buffer their content, which loses the
//! raw text of records that we must hash and forward unchanged.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::Record;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WireMessage {
    Ping(Ping),
    Pong(Pong),
    Get(KeyRequest),
    Put(PutData),
    Subscribe(KeyRequest),
    Query(KeyRequest),
    QueryAck(QueryAck),
    CrdtPut(PutData),
    CrdtGet(KeyRequest),
    Function(FunctionCall),
    FunctionReturn(FunctionReturn),
    Reconcile(Reconcile),
    /// Our extension: "no record of this key here", the answer to a `get`
    /// or `crdtGet` of ours (same id) that the server could not answer
    /// from its store. Sent only to a peer whose ping offered
    /// `Extensions::missing`, so a stock Tool Db peer never sees one.
    Missing(KeyRequest),
    /// Our extension: the answer to a server of ours' `crdtGet` (same id):
    /// the signed change lists of `key`, each verified whole by the asker
    /// (a merged set proves nothing about changes past its newest put's).
    /// Sent only to a server that offered `Extensions::crdt`.
    CrdtLists(CrdtLists),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub is_server: bool,
    /// Kept loose: a client ping with a bad record is still served.
    #[serde(default)]
    pub peer: Option<Value>,
    /// Our extensions (Tool Db ignores unknown fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Extensions>,
}

/// Extensions a `tooldb-node` offers in its `ping` and `pong`; a plain
/// Tool Db peer neither sends nor reads them, so nothing changes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Extensions {
    /// Version of the `reconcile` anti-entropy messages spoken (0 = none).
    #[serde(default)]
    pub reconcile: u32,
    /// Version of the `missing` answer the sender wants for a get miss
    /// (0 = none: it waits out its timeout, as Tool Db clients do).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missing: u32,
    /// Version of signed CRDT lists spoken (0 = none): CRDT keys travel
    /// as the signed change lists they are derived from, each verified
    /// with its hash, never as merged sets (which hash to nothing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crdt: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The anti-entropy version this build speaks.
pub const RECONCILE_VERSION: u32 = 1;
/// The version of the `missing` answer this build speaks.
pub const MISSING_VERSION: u32 = 1;
/// The version of signed CRDT lists this build speaks.
pub const CRDT_LISTS_VERSION: u32 = 1;

impl Extensions {
    /// What a server of ours offers (to servers and in pongs).
    pub fn ours() -> Extensions {
        Extensions {
            reconcile: RECONCILE_VERSION,
            missing: 0,
            crdt: CRDT_LISTS_VERSION,
        }
    }

    /// What our client asks for in its ping: a `missing` answer to a miss.
    pub fn client() -> Extensions {
        Extensions {
            reconcile: 0,
            missing: MISSING_VERSION,
            crdt: 0,
        }
    }

    pub fn wants_missing(ext: &Option<Extensions>) -> bool {
        ext.is_some_and(|e| e.missing == MISSING_VERSION)
    }

    pub fn signs_crdt_lists(ext: &Option<Extensions>) -> bool {
        ext.is_some_and(|e| e.crdt == CRDT_LISTS_VERSION)
    }

    pub fn reconciles(ext: &Option<Extensions>) -> bool {
        ext.is_some_and(|e| e.reconcile == RECONCILE_VERSION)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pong {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub is_server: bool,
    /// Kept loose: each listed record is verified on its own, bad ones dropped.
    #[serde(default)]
    pub servers: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Extensions>,
}

/// One step of an anti-entropy reconciliation between two of our servers
/// (an extension type: Tool Db peers drop unknown types).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reconcile {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    pub step: crate::reconcile::Step,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrdtLists {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    pub key: String,
    pub lists: Vec<Record>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRequest {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutData {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    pub data: Record,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryAck {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionCall {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    pub function: String,
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionReturn {
    pub id: String,
    #[serde(default)]
    pub to: Vec<String>,
    pub code: String,
    #[serde(rename = "return", default)]
    pub value: Value,
}

/// Why a frame is not a message we handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    #[error("message has no string `type`")]
    NoType,
    /// Not an error of the sender: extensions use new types (ignored).
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("bad {kind} message: {reason}")]
    Invalid { kind: String, reason: String },
    #[error("JSON nested deeper than {limit} levels (max_json_depth)")]
    TooDeep { limit: usize },
    #[error("message id of {len} bytes is over the limit of {limit} (max_id_bytes)")]
    IdTooLong { len: usize, limit: usize },
}

/// Bounds checked before a frame becomes a message.
#[derive(Debug, Clone, Copy)]
pub struct WireLimits {
    pub max_depth: usize,
    pub max_id_bytes: usize,
}

impl WireLimits {
    pub fn from(limits: &crate::config::Limits) -> WireLimits {
        WireLimits {
            max_depth: limits.max_json_depth,
            max_id_bytes: limits.max_id_bytes,
        }
    }
}

/// Whether `text` nests arrays and objects deeper than `limit`: one pass
/// over the bytes, skipping strings, before anything recursive touches it.
pub fn nests_deeper_than(text: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

impl WireMessage {
    /// `parse`, after checking the nesting depth, then the id's length.
    pub fn parse_limited(text: &str, limits: WireLimits) -> Result<WireMessage, WireError> {
        if nests_deeper_than(text, limits.max_depth) {
            return Err(WireError::TooDeep {
                limit: limits.max_depth,
            });
        }
        let msg = Self::parse(text)?;
        let len = msg.id().len();
        if len > limits.max_id_bytes {
            return Err(WireError::IdTooLong {
                len,
                limit: limits.max_id_bytes,
            });
        }
        Ok(msg)
    }

    pub fn parse(text: &str) -> Result<WireMessage, WireError> {
        let head: TypeOnly =
            serde_json::from_str(text).map_err(|e| WireError::NotJson(e.to_string()))?;
        let kind = head.kind.ok_or(WireError::NoType)?;
        fn body<T: for<'de> Deserialize<'de>>(kind: &str, text: &str) -> Result<T, WireError> {
            serde_json::from_str(text).map_err(|e| WireError::Invalid {
                kind: kind.to_owned(),
                reason: e.to_string(),
            })
        }
        Ok(match kind.as_ref() {
            "ping" => WireMessage::Ping(body(&kind, text)?),
            "pong" => WireMessage::Pong(body(&kind, text)?),
            "get" => WireMessage::Get(body(&kind, text)?),
            "put" => WireMessage::Put(body(&kind, text)?),
            "subscribe" => WireMessage::Subscribe(body(&kind, text)?),
            "query" => WireMessage::Query(body(&kind, text)?),
            "queryAck" => WireMessage::QueryAck(body(&kind, text)?),
            "crdtPut" => WireMessage::CrdtPut(body(&kind, text)?),
            "crdtGet" => WireMessage::CrdtGet(body(&kind, text)?),
            "function" => WireMessage::Function(body(&kind, text)?),
            "functionReturn" => WireMessage::FunctionReturn(body(&kind, text)?),
            "reconcile" => WireMessage::Reconcile(body(&kind, text)?),
            "missing" => WireMessage::Missing(body(&kind, text)?),
            "crdtLists" => WireMessage::CrdtLists(body(&kind, text)?),
            other => return Err(WireError::UnknownType(other.to_owned())),
        })
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("wire messages serialise")
    }

    /// The wire name of the type, for dedupe and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            WireMessage::Ping(_) => "ping",
            WireMessage::Pong(_) => "pong",
            WireMessage::Get(_) => "get",
            WireMessage::Put(_) => "put",
            WireMessage::Subscribe(_) => "subscribe",
            WireMessage::Query(_) => "query",
            WireMessage::QueryAck(_) => "queryAck",
            WireMessage::CrdtPut(_) => "crdtPut",
            WireMessage::CrdtGet(_) => "crdtGet",
            WireMessage::Function(_) => "function",
            WireMessage::FunctionReturn(_) => "functionReturn",
            WireMessage::Reconcile(_) => "reconcile",
            WireMessage::Missing(_) => "missing",
            WireMessage::CrdtLists(_) => "crdtLists",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            WireMessage::Ping(m) => &m.id,
            WireMessage::Pong(m) => &m.id,
            WireMessage::Get(m)
            | WireMessage::Subscribe(m)
            | WireMessage::Query(m)
            | WireMessage::CrdtGet(m)
            | WireMessage::Missing(m) => &m.id,
            WireMessage::Put(m) | WireMessage::CrdtPut(m) => &m.id,
            WireMessage::QueryAck(m) => &m.id,
            WireMessage::Function(m) => &m.id,
            WireMessage::FunctionReturn(m) => &m.id,
            WireMessage::Reconcile(m) => &m.id,
            WireMessage::CrdtLists(m) => &m.id,
        }
    }

    pub fn to_list(&self) -> &[String] {
        match self {
            WireMessage::Ping(m) => &m.to,
            WireMessage::Pong(m) => &m.to,
            WireMessage::Get(m)
            | WireMessage::Subscribe(m)
            | WireMessage::Query(m)
            | WireMessage::CrdtGet(m)
            | WireMessage::Missing(m) => &m.to,
            WireMessage::Put(m) | WireMessage::CrdtPut(m) => &m.to,
            WireMessage::QueryAck(m) => &m.to,
            WireMessage::Function(m) => &m.to,
            WireMessage::FunctionReturn(m) => &m.to,
            WireMessage::Reconcile(m) => &m.to,
            WireMessage::CrdtLists(m) => &m.to,
        }
    }

    pub fn set_to(&mut self, to: Vec<String>) {
        match self {
            WireMessage::Ping(m) => m.to = to,
            WireMessage::Pong(m) => m.to = to,
            WireMessage::Get(m)
            | WireMessage::Subscribe(m)
            | WireMessage::Query(m)
            | WireMessage::CrdtGet(m)
            | WireMessage::Missing(m) => m.to = to,
            WireMessage::Put(m) | WireMessage::CrdtPut(m) => m.to = to,
            WireMessage::QueryAck(m) => m.to = to,
            WireMessage::Function(m) => m.to = to,
            WireMessage::FunctionReturn(m) => m.to = to,
            WireMessage::Reconcile(m) => m.to = to,
            WireMessage::CrdtLists(m) => m.to = to,
        }
    }
}

/// Our answer to a request refused at a limit: an `error` frame with a
/// fresh id (Tool Db clients ignore unknown types, and a frame with the
/// request's own id would consume their listener for it), naming the
/// request in `re` and `request` when it could be read.
pub fn error_frame(to: &[String], refused: Option<(&str, &str)>, error: &str) -> String {
    let mut frame = serde_json::json!({
        "type": "error",
        "id": new_message_id(),
        "to": to,
        "error": error,
    });
    if let Some((kind, request_id)) = refused {
        frame["re"] = request_id.into();
        frame["request"] = kind.into();
    }
    frame.to_string()
}

/// A random message id as Tool Db makes them: 10 alphanumerics.
pub fn new_message_id() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(10)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_keeps_the_record_text_through_a_round_trip() {
        let rec = r#"{"k":"x","a":"A","n":0,"t":1,"h":"h","s":"s","v":{"z":1,"a":[2]},"c":null}"#;
        let text = format!(r#"{{"type":"put","id":"abc","to":["q"],"data":{rec}}}"#);
        let msg = WireMessage::parse(&text).unwrap();
        assert_eq!(msg.kind(), "put");
        assert_eq!(msg.to_text(), text);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert!(matches!(
            WireMessage::parse("nope"),
            Err(WireError::NotJson(_))
        ));
        assert!(matches!(
            WireMessage::parse("[1,2]"),
            Err(WireError::NotJson(_))
        ));
        assert_eq!(
            WireMessage::parse(r#"{"id":"x"}"#).unwrap_err(),
            WireError::NoType
        );
        assert_eq!(
            WireMessage::parse(r#"{"type":"gossip","id":"x"}"#).unwrap_err(),
            WireError::UnknownType("gossip".into())
        );
        let err = WireMessage::parse(r#"{"type":"get","id":"x"}"#).unwrap_err();
        assert!(
            matches!(&err, WireError::Invalid { kind, reason } if kind == "get" && reason.contains("key"))
        );
        let err = WireMessage::parse(r#"{"type":"get","id":"x","key":5}"#).unwrap_err();
        assert!(matches!(err, WireError::Invalid { .. }));
        let err = WireMessage::parse(r#"{"type":"put","id":"x","data":{"k":"a"}}"#).unwrap_err();
        assert!(
            matches!(&err, WireError::Invalid { reason, .. } if reason.contains("missing field")),
            "{err}"
        );
    }

    #[test]
    fn depth_and_id_length_are_bounded_before_parsing() {
        let limits = WireLimits {
            max_depth: 8,
            max_id_bytes: 16,
        };
        let nested = |n: usize| {
            format!(
                r#"{{"type":"function","id":"a","function":"f","args":{}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(WireMessage::parse_limited(&nested(7), limits).is_ok());
        assert_eq!(
            WireMessage::parse_limited(&nested(8), limits).unwrap_err(),
            WireError::TooDeep { limit: 8 }
        );
        // Brackets inside strings (escaped quotes too) are not nesting.
        let in_string = format!(r#"{{"type":"get","id":"a","key":"\"{}"}}"#, "[".repeat(100));
        assert!(WireMessage::parse_limited(&in_string, limits).is_ok());
        let long_id = format!(r#"{{"type":"get","id":"{}","key":"k"}}"#, "i".repeat(17));
        assert_eq!(
            WireMessage::parse_limited(&long_id, limits).unwrap_err(),
            WireError::IdTooLong { len: 17, limit: 16 }
        );
    }

    #[test]
    fn camel_case_fields_on_the_wire() {
        let text =
            r#"{"type":"pong","id":"p","to":["s"],"clientId":"c","isServer":true,"servers":[]}"#;
        let msg = WireMessage::parse(text).unwrap();
        assert_eq!(msg.to_text(), text);
        let f = r#"{"type":"functionReturn","id":"f","to":[],"code":"OK","return":[1]}"#;
        assert_eq!(WireMessage::parse(f).unwrap().to_text(), f);
    }
}
