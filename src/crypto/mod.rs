//! Signatures as Tool Db's user adapters make them, and the node's own key.
//!
//! Two schemes, told apart by the form of the address (PROTOCOL.md):
//! - `@tool-db/ecdsa-user`: P-256, address = JWK `x` ‖ `y` (2 × 43 base64url
//!   chars), signature = hex of the 64-byte `r‖s`. Verified with `ring`, which
//!   is about five times faster than RustCrypto's `p256` here.
//! - `@tool-db/web3-user`: secp256k1 `personal_sign` (EIP-191), address =
//!   EIP-55 `0x…`, signature = `0x` + hex of `r‖s‖v`; verified by recovering
//!   the signer's address and comparing it exactly.

mod node_key;

pub use node_key::{client_id_of, KeyScheme, NodeKey, NodeKeyError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use k256::ecdsa::{RecoveryId, Signature as K256Signature, VerifyingKey as K256VerifyingKey};
use sha2::{Digest, Sha256};
use sha3::Keccak256;

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("address {0:?} is neither a P-256 (x‖y base64url) nor an 0x Ethereum address")]
    UnknownAddressForm(String),
    #[error("signature is not well formed for the address's scheme")]
    MalformedSignature,
    #[error("signature does not match the address")]
    Mismatch,
    #[error("an empty message is never signed")]
    EmptyMessage,
}

/// Lower-case hex SHA-256, as Tool Db's `sha256()` returns it.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Which scheme an address belongs to, judged by its form alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    P256,
    Ethereum,
}

pub fn address_kind(address: &str) -> Option<AddressKind> {
    let b = address.as_bytes();
    if b.len() == 42 && address.starts_with("0x") && b[2..].iter().all(u8::is_ascii_hexdigit) {
        Some(AddressKind::Ethereum)
    } else if b.len() == 86
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
    {
        Some(AddressKind::P256)
    } else {
        None
    }
}

/// Verifies that `signature` signs the UTF-8 text `message` under `address`.
pub fn verify(address: &str, message: &[u8], signature: &str) -> Result<(), SignatureError> {
    if message.is_empty() {
        // ecdsa-user refuses an empty message (`!message.h`); Tool Db never signs one.
        return Err(SignatureError::EmptyMessage);
    }
    match address_kind(address) {
        Some(AddressKind::P256) => verify_p256(address, message, signature),
        Some(AddressKind::Ethereum) => verify_eth(address, message, signature),
        None => Err(SignatureError::UnknownAddressForm(address.to_owned())),
    }
}

fn verify_p256(address: &str, message: &[u8], signature: &str) -> Result<(), SignatureError> {
    let x = URL_SAFE_NO_PAD
        .decode(&address[..43])
        .map_err(|_| SignatureError::UnknownAddressForm(address.to_owned()))?;
    let y = URL_SAFE_NO_PAD
        .decode(&address[43..])
        .map_err(|_| SignatureError::UnknownAddressForm(address.to_owned()))?;
    if x.len() != 32 || y.len() != 32 {
        return Err(SignatureError::UnknownAddressForm(address.to_owned()));
    }
    let mut point = [0u8; 65];
    point[0] = 4;
    point[1..33].copy_from_slice(&x);
    point[33..].copy_from_slice(&y);
    let sig = hex::decode(signature).map_err(|_| SignatureError::MalformedSignature)?;
    if sig.len() != 64 {
        return Err(SignatureError::MalformedSignature);
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(message, &sig)
        .map_err(|_| SignatureError::Mismatch)
}

/// EIP-191 `personal_sign` digest of a message.
pub(crate) fn eth_message_digest(message: &[u8]) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(format!("\x19Ethereum Signed Message:\n{}", message.len()).as_bytes());
    h.update(message);
    h.finalize().into()
}

/// EIP-55 checksummed address of a secp256k1 public key.
pub(crate) fn eth_address(key: &K256VerifyingKey) -> String {
    let point = key.to_encoded_point(false);
    let digest = Keccak256::digest(&point.as_bytes()[1..]);
    eip55(&hex::encode(&digest[12..]))
}

/// Applies the EIP-55 mixed-case checksum to 40 lower-case hex chars.
fn eip55(lower_hex: &str) -> String {
    let hash = Keccak256::digest(lower_hex.as_bytes());
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (i, c) in lower_hex.chars().enumerate() {
        let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
        if c.is_ascii_alphabetic() && nibble >= 8 {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn verify_eth(address: &str, message: &[u8], signature: &str) -> Result<(), SignatureError> {
    let hex_sig = signature
        .strip_prefix("0x")
        .ok_or(SignatureError::MalformedSignature)?;
    let bytes = hex::decode(hex_sig).map_err(|_| SignatureError::MalformedSignature)?;
    if bytes.len() != 65 {
        return Err(SignatureError::MalformedSignature);
    }
    let v = match bytes[64] {
        27 | 28 => bytes[64] - 27,
        0 | 1 => bytes[64],
        _ => return Err(SignatureError::MalformedSignature),
    };
    let sig =
        K256Signature::from_slice(&bytes[..64]).map_err(|_| SignatureError::MalformedSignature)?;
    let recid = RecoveryId::from_byte(v).ok_or(SignatureError::MalformedSignature)?;
    let digest = eth_message_digest(message);
    let key = K256VerifyingKey::recover_from_prehash(&digest, &sig, recid)
        .map_err(|_| SignatureError::Mismatch)?;
    if eth_address(&key) == address {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip55_matches_the_eip_examples() {
        // Examples from EIP-55 itself.
        for a in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            assert_eq!(eip55(&a[2..].to_ascii_lowercase()), a);
        }
    }

    #[test]
    fn sha256_hex_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn address_forms_are_told_apart() {
        assert_eq!(
            address_kind("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"),
            Some(AddressKind::Ethereum)
        );
        assert_eq!(address_kind(&"A".repeat(86)), Some(AddressKind::P256));
        assert_eq!(address_kind("hello"), None);
        assert!(matches!(
            verify("hello", b"x", "00"),
            Err(SignatureError::UnknownAddressForm(_))
        ));
    }
}
