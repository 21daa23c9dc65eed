//! The signed peer record servers exchange in `ping` and `pong`:
//! `{topic, timestamp, host, port, address, sig}` where `sig` signs
//! `sha256hex("{topic}-{timestamp}-{host}:{port}")` (PROTOCOL.md), and
//! **ours:** `ssl: true` when the server speaks TLS there (wss).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::{self, client_id_of, NodeKey, SignatureError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub topic: String,
    pub timestamp: u64,
    pub host: String,
    pub port: u16,
    pub address: String,
    pub sig: String,
    /// **ours:** the server speaks TLS on `host:port` (dial `wss://`).
    /// Named after tool-db's own `ssl` option; not signed (the signature
    /// covers only topic, time, host and port, so Tool Db peers still
    /// verify the record); sent only when true. Tool Db's adapters dial
    /// `wss://` for port 443 whatever it says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ssl: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("peer record is malformed: {0}")]
    Malformed(String),
    #[error("peer record is for topic {got:?}, ours is {want:?}")]
    WrongTopic { got: String, want: String },
    #[error("peer record timestamp {timestamp} is outside the accepted window of {window_ms} ms")]
    Stale { timestamp: u64, window_ms: u64 },
    #[error("peer record signature: {0}")]
    Signature(#[from] SignatureError),
}

impl Peer {
    /// The text whose UTF-8 bytes `sig` signs.
    pub fn signed_text(topic: &str, timestamp: u64, host: &str, port: u16) -> String {
        crypto::sha256_hex(format!("{topic}-{timestamp}-{host}:{port}").as_bytes())
    }

    pub fn sign(key: &NodeKey, topic: &str, host: &str, port: u16, timestamp: u64) -> Peer {
        let sig = key.sign(Self::signed_text(topic, timestamp, host, port).as_bytes());
        Peer {
            topic: topic.to_owned(),
            timestamp,
            host: host.to_owned(),
            port,
            address: key.address().to_owned(),
            sig,
            ssl: false,
        }
    }

    /// The record saying whether we serve TLS.
    pub fn with_ssl(mut self, ssl: bool) -> Peer {
        self.ssl = ssl;
        self
    }

    pub fn client_id(&self) -> &str {
        client_id_of(&self.address)
    }

    pub fn from_value(value: &Value) -> Result<Peer, PeerError> {
        Peer::deserialize(value).map_err(|e| PeerError::Malformed(e.to_string()))
    }

    /// Checks the signature only.
    pub fn verify_signature(&self) -> Result<(), PeerError> {
        let text = Self::signed_text(&self.topic, self.timestamp, &self.host, self.port);
        crypto::verify(&self.address, text.as_bytes(), &self.sig)?;
        Ok(())
    }

    /// Full check of a record presented as someone's identity: our topic, a
    /// recent timestamp (so an old record cannot be replayed), a valid signature.
    pub fn verify_fresh(&self, topic: &str, now_ms: u64, window_ms: u64) -> Result<(), PeerError> {
        if self.topic != topic {
            return Err(PeerError::WrongTopic {
                got: self.topic.clone(),
                want: topic.to_owned(),
            });
        }
        if self.timestamp.abs_diff(now_ms) > window_ms {
            return Err(PeerError::Stale {
                timestamp: self.timestamp,
                window_ms,
            });
        }
        self.verify_signature()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyScheme;

    #[test]
    fn signed_peers_verify_and_checks_name_the_fault() {
        for scheme in [KeyScheme::Secp256k1, KeyScheme::P256] {
            let key = NodeKey::generate(scheme);
            let p = Peer::sign(&key, "t", "127.0.0.1", 9000, 1_000_000);
            assert_eq!(p.verify_fresh("t", 1_000_000, 600_000), Ok(()));
            assert!(matches!(
                p.verify_fresh("u", 1_000_000, 600_000),
                Err(PeerError::WrongTopic { .. })
            ));
            assert!(matches!(
                p.verify_fresh("t", 1_000_000 + 600_001, 600_000),
                Err(PeerError::Stale { .. })
            ));
            let mut moved = p.clone();
            moved.port = 9001;
            assert!(matches!(
                moved.verify_signature(),
                Err(PeerError::Signature(_))
            ));
            assert_eq!(p.client_id(), key.client_id());
        }
    }
}
