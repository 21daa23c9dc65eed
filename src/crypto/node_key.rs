//! The node's own identity: created on first start in the data dir (mode
//! 0600) and reused after. secp256k1 by default; P-256 when configured.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use k256::ecdsa::SigningKey as K256SigningKey;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};

use super::{eth_address, eth_message_digest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyScheme {
    #[default]
    Secp256k1,
    P256,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    #[error("cannot read or write the node key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node key file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the node key file {path} holds a {found:?} key but {wanted:?} is configured")]
    WrongScheme {
        path: PathBuf,
        found: KeyScheme,
        wanted: KeyScheme,
    },
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    scheme: KeyScheme,
    /// secp256k1: hex of the 32-byte scalar; P-256: base64 of the PKCS#8 document.
    secret: String,
}

enum Inner {
    Secp256k1(K256SigningKey),
    P256 { pair: EcdsaKeyPair, pkcs8: Vec<u8> },
}

/// A signing identity. `Debug` never prints the secret.
pub struct NodeKey {
    inner: Inner,
    address: String,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("scheme", &self.scheme())
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate(scheme: KeyScheme) -> Self {
        match scheme {
            KeyScheme::Secp256k1 => Self::from_k256(K256SigningKey::random(&mut rand::rngs::OsRng)),
            KeyScheme::P256 => {
                let rng = SystemRandom::new();
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .expect("the system RNG works");
                Self::from_pkcs8(doc.as_ref()).expect("ring parses the key it made")
            }
        }
    }

    fn from_k256(key: K256SigningKey) -> Self {
        let address = eth_address(key.verifying_key());
        NodeKey {
            inner: Inner::Secp256k1(key),
            address,
        }
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| e.to_string())?;
        let point = pair.public_key().as_ref();
        let address = format!(
            "{}{}",
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65])
        );
        Ok(NodeKey {
            inner: Inner::P256 {
                pair,
                pkcs8: pkcs8.to_vec(),
            },
            address,
        })
    }

    /// Loads the key at `path`, or creates one there (mode 0600) if none exists.
    pub fn load_or_create(path: &Path, scheme: KeyScheme) -> Result<Self, NodeKeyError> {
        let io = |source| NodeKeyError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::read_to_string(path) {
            Ok(text) => {
                let key = Self::from_file_text(&text).map_err(|reason| NodeKeyError::Corrupt {
                    path: path.to_owned(),
                    reason,
                })?;
                if key.scheme() != scheme {
                    return Err(NodeKeyError::WrongScheme {
                        path: path.to_owned(),
                        found: key.scheme(),
                        wanted: scheme,
                    });
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(scheme);
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io)?;
                }
                key.save(path).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_file_text(text: &str) -> Result<Self, String> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match file.scheme {
            KeyScheme::Secp256k1 => {
                let bytes = hex::decode(file.secret.trim()).map_err(|e| e.to_string())?;
                let key = K256SigningKey::from_slice(&bytes).map_err(|e| e.to_string())?;
                Ok(Self::from_k256(key))
            }
            KeyScheme::P256 => {
                let bytes = STANDARD
                    .decode(file.secret.trim())
                    .map_err(|e| e.to_string())?;
                Self::from_pkcs8(&bytes)
            }
        }
    }

    /// Writes the key, readable by the owner only; the file is created with
    /// mode 0600 so the secret is never briefly world-readable.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let secret = match &self.inner {
            Inner::Secp256k1(k) => hex::encode(k.to_bytes()),
            Inner::P256 { pkcs8, .. } => STANDARD.encode(pkcs8),
        };
        let text = serde_json::to_string_pretty(&KeyFile {
            scheme: self.scheme(),
            secret,
        })
        .expect("a key file serialises");
        let tmp = path.with_extension("tmp");
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    }

    pub fn scheme(&self) -> KeyScheme {
        match self.inner {
            Inner::Secp256k1(_) => KeyScheme::Secp256k1,
            Inner::P256 { .. } => KeyScheme::P256,
        }
    }

    /// The address in the user adapter's format (PROTOCOL.md).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Tool Db's client id: the last 20 characters of the address.
    pub fn client_id(&self) -> &str {
        client_id_of(&self.address)
    }

    /// Signs UTF-8 text the way the matching Tool Db user adapter does.
    pub fn sign(&self, message: &[u8]) -> String {
        match &self.inner {
            Inner::Secp256k1(key) => {
                let digest = eth_message_digest(message);
                let (sig, recid) = key
                    .sign_prehash_recoverable(&digest)
                    .expect("signing a 32-byte digest cannot fail");
                let mut bytes = sig.to_bytes().to_vec();
                bytes.push(27 + recid.to_byte());
                format!("0x{}", hex::encode(bytes))
            }
            Inner::P256 { pair, .. } => {
                let sig = pair
                    .sign(&SystemRandom::new(), message)
                    .expect("the system RNG works");
                hex::encode(sig.as_ref())
            }
        }
    }
}

/// The last 20 characters of an address (Tool Db's client id).
pub fn client_id_of(address: &str) -> &str {
    let n = address.len();
    &address[n.saturating_sub(20)..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{address_kind, verify, AddressKind, SignatureError};

    #[test]
    fn both_schemes_sign_what_verify_accepts() {
        for (scheme, kind) in [
            (KeyScheme::Secp256k1, AddressKind::Ethereum),
            (KeyScheme::P256, AddressKind::P256),
        ] {
            let key = NodeKey::generate(scheme);
            assert_eq!(address_kind(key.address()), Some(kind));
            let sig = key.sign(b"hello");
            assert_eq!(verify(key.address(), b"hello", &sig), Ok(()));
            assert_eq!(
                verify(key.address(), b"hellO", &sig),
                Err(SignatureError::Mismatch)
            );
            let other = NodeKey::generate(scheme);
            assert_eq!(
                verify(other.address(), b"hello", &sig),
                Err(SignatureError::Mismatch)
            );
            assert_eq!(key.client_id().len(), 20);
        }
    }

    #[test]
    fn key_is_created_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("node-key.json");
        let a = NodeKey::load_or_create(&path, KeyScheme::Secp256k1).unwrap();
        let b = NodeKey::load_or_create(&path, KeyScheme::Secp256k1).unwrap();
        assert_eq!(a.address(), b.address());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            NodeKey::load_or_create(&path, KeyScheme::P256),
            Err(NodeKeyError::WrongScheme { .. })
        ));
        let p = dir.path().join("p256.json");
        let c = NodeKey::load_or_create(&p, KeyScheme::P256).unwrap();
        let d = NodeKey::load_or_create(&p, KeyScheme::P256).unwrap();
        assert_eq!(c.address(), d.address());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = NodeKey::generate(KeyScheme::Secp256k1);
        let Inner::Secp256k1(k) = &key.inner else {
            unreachable!()
        };
        let secret = hex::encode(k.to_bytes());
        assert!(!format!("{key:?}").contains(&secret));
    }

    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        fs::write(&path, "not json").unwrap();
        let err = NodeKey::load_or_create(&path, KeyScheme::Secp256k1).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
