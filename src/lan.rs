//! LAN discovery, the pure part: the tag a topic is announced under on
//! mDNS (a hash, never the topic itself), the service and instance names,
//! the checks a resolved announcement must pass, and the bounded memory of
//! LAN endpoints forwarded. The `LanChannel` actor (`src/actors/lan.rs`)
//! does the multicast I/O with these.
//!
//! What is found is only a candidate: the peer registry (or the client
//! core) dials it and verifies it like any endpoint (signed ping, topic).
//! Junk announcements cost bounded work: oversize or malformed ones are
//! dropped here, at most `MAX_ADDRS_PER_SERVICE` addresses of each count,
//! at most `MAX_LAN_ENDPOINTS` are remembered, and one endpoint is
//! forwarded at most once per `REFORWARD_EVERY`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The DNS-SD service type every tooldb-node announces.
pub const SERVICE_TYPE: &str = "_tooldb._tcp.local.";
/// TXT key holding the topic tag.
pub const TAG_KEY: &str = "t";
/// Hex characters of the topic hash used as its tag.
pub const TAG_LEN: usize = 16;
/// Prefix hashed with the topic, so the tag is not the topic's plain
/// SHA-256 (or its DHT info hash).
const TAG_DOMAIN: &str = "tooldb-lan:";
/// IPv4 addresses taken from one announcement; the rest are ignored.
pub const MAX_ADDRS_PER_SERVICE: usize = 4;
/// LAN endpoints remembered; past it the one forwarded longest ago is
/// forgotten.
pub const MAX_LAN_ENDPOINTS: usize = 64;
/// An endpoint seen again is forwarded again (the registry may redial a
/// server that came back) at most this often.
pub const REFORWARD_EVERY: Duration = Duration::from_secs(5);
/// Longest instance name accepted (DNS labels hold at most 63 bytes).
pub const MAX_INSTANCE_BYTES: usize = 63;

/// The tag a topic is announced under: the first `TAG_LEN` hex characters
/// of SHA-256("tooldb-lan:" + topic).
pub fn topic_tag(topic: &str) -> String {
    let digest = Sha256::new()
        .chain_update(TAG_DOMAIN.as_bytes())
        .chain_update(topic.as_bytes())
        .finalize();
    let mut tag = hex::encode(digest);
    tag.truncate(TAG_LEN);
    tag
}

/// Our mDNS instance name: the tag and a short node id, so that two
/// servers of one topic on one LAN have distinct names.
pub fn instance_name(tag: &str, node_id: &str) -> String {
    let short: String = node_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("{tag}-{short}")
}

/// Why a resolved announcement is ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LanError {
    #[error("announcement {name:?} is for another topic")]
    OtherTopic { name: String },
    #[error("announcement name of {len} bytes is too long")]
    NameTooLong { len: usize },
    #[error("announcement {name:?} has port 0")]
    NoPort { name: String },
    #[error("announcement {name:?} has no usable IPv4 address")]
    NoAddress { name: String },
    #[error("the mDNS daemon failed: {reason}")]
    Daemon { reason: String },
}

/// The endpoints a resolved announcement offers for `tag`: at most
/// `MAX_ADDRS_PER_SERVICE` of its unicast IPv4 addresses with its port,
/// sorted. Errors say why it is not one of ours or is junk.
pub fn endpoints_of(
    tag: &str,
    name: &str,
    txt_tag: Option<&str>,
    port: u16,
    addrs: impl IntoIterator<Item = Ipv4Addr>,
) -> Result<Vec<SocketAddrV4>, LanError> {
    if name.len() > 255 {
        return Err(LanError::NameTooLong { len: name.len() });
    }
    if txt_tag != Some(tag) {
        return Err(LanError::OtherTopic { name: name.into() });
    }
    if port == 0 {
        return Err(LanError::NoPort { name: name.into() });
    }
    let mut ips: Vec<Ipv4Addr> = addrs
        .into_iter()
        .filter(|ip| {
            !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback())
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips.truncate(MAX_ADDRS_PER_SERVICE);
    if ips.is_empty() {
        return Err(LanError::NoAddress { name: name.into() });
    }
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddrV4::new(ip, port))
        .collect())
}

/// The LAN endpoints forwarded lately, bounded.
#[derive(Debug, Default)]
pub struct LanSeen {
    forwarded: HashMap<SocketAddrV4, Instant>,
}

impl LanSeen {
    /// The endpoints of `found` to forward now: new ones, and known ones
    /// last forwarded at least `REFORWARD_EVERY` ago. Remembers them,
    /// forgetting the oldest past `MAX_LAN_ENDPOINTS`.
    pub fn admit(&mut self, found: &[SocketAddrV4], now: Instant) -> Vec<SocketAddrV4> {
        let mut out = vec![];
        for ep in found {
            let due = self
                .forwarded
                .get(ep)
                .is_none_or(|t| now.saturating_duration_since(*t) >= REFORWARD_EVERY);
            if !due || out.contains(ep) {
                continue;
            }
            if !self.forwarded.contains_key(ep) && self.forwarded.len() >= MAX_LAN_ENDPOINTS {
                let oldest = self
                    .forwarded
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(e, _)| *e);
                if let Some(oldest) = oldest {
                    self.forwarded.remove(&oldest);
                }
            }
            self.forwarded.insert(*ep, now);
            out.push(*ep);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.forwarded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forwarded.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Issue 11 part 4: the LAN hears a hash of the topic, never the topic.
    #[test]
    fn the_tag_is_a_short_hash_of_the_topic_not_the_topic() {
        let tag = topic_tag("tool-db-default");
        assert_eq!(tag.len(), TAG_LEN);
        assert!(tag.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!tag.contains("tool"));
        // sha256("tooldb-lan:tool-db-default"), from Python's hashlib.
        assert_eq!(tag, "1ee2554b0faf1a97");
        assert_ne!(topic_tag("other"), tag);
        let name = instance_name(&tag, "0x1234abcdEF567890aaaa");
        assert_eq!(name, "1ee2554b0faf1a97-0x1234abcdEF");
        assert!(name.len() <= MAX_INSTANCE_BYTES);
    }

    #[test]
    fn announcements_of_other_topics_and_junk_are_refused() {
        let tag = topic_tag("t");
        let other = topic_tag("u");
        let lan = [ip("192.168.1.5")];
        assert!(matches!(
            endpoints_of(&tag, "x", Some(&other), 9000, lan),
            Err(LanError::OtherTopic { .. })
        ));
        assert!(matches!(
            endpoints_of(&tag, "x", None, 9000, lan),
            Err(LanError::OtherTopic { .. })
        ));
        assert!(matches!(
            endpoints_of(&tag, "x", Some(&tag), 0, lan),
            Err(LanError::NoPort { .. })
        ));
        let useless = [ip("0.0.0.0"), ip("127.0.0.1"), ip("224.0.0.251")];
        assert!(matches!(
            endpoints_of(&tag, "x", Some(&tag), 9000, useless),
            Err(LanError::NoAddress { .. })
        ));
        let long = "n".repeat(300);
        assert!(matches!(
            endpoints_of(&tag, &long, Some(&tag), 9000, lan),
            Err(LanError::NameTooLong { .. })
        ));
    }

    #[test]
    fn an_announcement_gives_at_most_a_few_endpoints() {
        let tag = topic_tag("t");
        let many = (1..=50).map(|i| Ipv4Addr::new(10, 0, 0, i));
        let got = endpoints_of(&tag, "x", Some(&tag), 9000, many).unwrap();
        assert_eq!(got.len(), MAX_ADDRS_PER_SERVICE);
        assert_eq!(got[0], "10.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn endpoints_are_forwarded_again_only_after_a_while_and_memory_is_capped() {
        let t0 = Instant::now();
        let mut seen = LanSeen::default();
        let a: SocketAddrV4 = "10.0.0.1:9000".parse().unwrap();
        assert_eq!(seen.admit(&[a, a], t0), vec![a], "once per batch");
        assert!(seen.admit(&[a], t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(seen.admit(&[a], t0 + REFORWARD_EVERY), vec![a]);
        let junk: Vec<SocketAddrV4> = (0..1000u16)
            .map(|p| SocketAddrV4::new(ip("10.0.0.2"), p + 1))
            .collect();
        let out = seen.admit(&junk, t0 + REFORWARD_EVERY * 2);
        assert_eq!(out.len(), 1000, "each is new once");
        assert_eq!(seen.len(), MAX_LAN_ENDPOINTS, "but memory is capped");
    }
}
