//! WebTorrent tracker discovery, the pure part: the info hashes servers
//! announce under, the record a server puts in its "offer", the tracker
//! messages we send, and the checks a received message and offer must
//! pass. The `TrackerChannel` actor (`src/actors/tracker_channel.rs`) does
//! the websocket I/O with these.
//!
//! This is what Tool Db's hybrid network adapter (`packages/hybrid-network`
//! in the tool-db repository) does, read from its source: a server
//! announces every 30 s on websocket trackers under
//! `info_hash = sha256hex(serverName).slice(-20)` with an offer whose `sdp`
//! is not SDP but the JSON `{host, port, ssl, name, pubKey, signature}`
//! (`signature`: the peer key's signature of `host`); a client calling
//! `findServer(name)` announces on the same info hash without offers, gets
//! the server's offer forwarded by the tracker at the server's next
//! announce, and dials `ssl ? "wss://" + host : "ws://" + host + ":" + port`.
//!
//! Ours: a server also announces under the info hash of
//! `TOPIC_NAME_PREFIX + topic` (`topic_server_name`), so a client that
//! knows only the topic finds every server of it, with the hybrid
//! adapter's own `findServer` too. An offer found is only a candidate: it
//! is dialed and verified like any endpoint (signed ping, topic). Junk
//! costs bounded work: frames over `MAX_TRACKER_FRAME_BYTES` close the
//! tracker socket, offers are checked here (`endpoint_of_offer`), at most
//! `MAX_OFFERS_PER_SEC` are looked at per tracker, offer ids are remembered
//! in a bounded memory (`OffersSeen`), and an endpoint is forwarded at most
//! once per `REFORWARD_EVERY`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::crypto::sha256_hex;
use crate::endpoint::Endpoint;

/// What the hybrid adapter announces every (`announceSecs`).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(30);
/// Prefix of the server name a topic is announced under, so a topic and
/// a server name never share an info hash.
pub const TOPIC_NAME_PREFIX: &str = "tooldb-topic:";
/// Largest tracker frame read; a bigger one closes the tracker socket (an
/// announce answer or a forwarded offer is a few hundred bytes).
pub const MAX_TRACKER_FRAME_BYTES: usize = 64 * 1024;
/// Offers a server puts in one announce. The tracker forwards offer `i` to
/// the `i`-th of that many random peers of the swarm (the hybrid adapter
/// sends one), so several reach a finder even when other servers share
/// the info hash.
pub const OFFERS_PER_ANNOUNCE: usize = 8;
/// Longest host accepted in an offer (a DNS name is at most 253 bytes).
pub const MAX_HOST_BYTES: usize = 253;
/// Offer ids remembered so a repeated one is not handled twice.
pub const MAX_OFFER_IDS: usize = 1024;
/// Tracker endpoints remembered for re-forwarding decisions.
pub const MAX_OFFERED_ENDPOINTS: usize = 64;
/// An endpoint offered again is forwarded again at most this often.
pub const REFORWARD_EVERY: Duration = Duration::from_secs(5);
/// Offers handled per second per tracker; the rest are dropped.
pub const MAX_OFFERS_PER_SEC: u32 = 64;

/// Why a tracker URL, message or offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    #[error("{url:?} is not a websocket tracker URL (ws:// or wss://)")]
    BadUrl { url: String },
    #[error("tracker message is not JSON: {reason}")]
    NotJson { reason: String },
    #[error("tracker {url} refused the announce: {reason}")]
    Failure { url: String, reason: String },
    #[error("offer refused: {reason}")]
    BadOffer { reason: String },
}

/// Checks a tracker URL: `ws://` or `wss://` and something after it.
pub fn check_url(url: &str) -> Result<(), TrackerError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        _ => Err(TrackerError::BadUrl {
            url: url.to_owned(),
        }),
    }
}

/// The hybrid adapter's info hash of a server name:
/// `sha256hex(name).slice(-20)` (20 hex characters; the tracker takes
/// them as 20 bytes).
pub fn info_hash(server_name: &str) -> String {
    let hex = sha256_hex(server_name.as_bytes());
    hex[hex.len() - 20..].to_owned()
}

/// The server name a topic is announced under: `tooldb-topic:` + topic.
/// A browser finds any server of the topic with the hybrid adapter's
/// `findServer(topic_server_name(topic))`.
pub fn topic_server_name(topic: &str) -> String {
    format!("{TOPIC_NAME_PREFIX}{topic}")
}

/// The default server name: the node's address (so a browser knowing a
/// server's key finds where it is now).
pub fn default_server_name(address: &str) -> String {
    address.to_owned()
}

/// What a server's offer says, as the hybrid adapter's `ServerPeerData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerOffer {
    pub host: String,
    pub port: u16,
    pub ssl: bool,
    pub name: String,
    pub pub_key: String,
    pub signature: String,
}

/// The `host` and `port` an offer names for our websocket. The adapter
/// dials `wss://HOST` when `ssl` is set, port 443 implied: a TLS node on
/// another port puts the port in `host` (`HOST:PORT`), which the adapter
/// then dials as `wss://HOST:PORT`.
pub fn offered_host(host: &str, port: u16, ssl: bool) -> String {
    if ssl && port != 443 {
        format!("{host}:{port}")
    } else {
        host.to_owned()
    }
}

/// The `announce` a server sends: `offers` copies of its record, each
/// with its own random offer id.
pub fn server_announce(info_hash: &str, peer_id: &str, sdp: &str, offers: usize) -> String {
    let offers: Vec<Value> = (0..offers.max(1))
        .map(|_| json!({"offer": {"type": "offer", "sdp": sdp}, "offer_id": random_id(20)}))
        .collect();
    json!({
        "action": "announce",
        "info_hash": info_hash,
        "peer_id": peer_id,
        "numwant": offers.len(),
        "offers": offers,
    })
    .to_string()
}

/// The `announce` a finder sends (the adapter's `findServer`): no offers.
pub fn finder_announce(info_hash: &str, peer_id: &str) -> String {
    json!({"action": "announce", "info_hash": info_hash, "peer_id": peer_id, "numwant": 1})
        .to_string()
}

/// A random alphanumeric string (Tool Db's `textRandom`).
pub fn random_id(len: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A peer id for the tracker: 20 characters, as the tracker requires.
/// Our client id when it has 20 (every Tool Db address does), as the
/// hybrid adapter's `getClientAddress()`.
pub fn peer_id_of(client_id: &str) -> String {
    if client_id.chars().count() == 20 && client_id.is_ascii() {
        client_id.to_owned()
    } else {
        random_id(20)
    }
}

/// A tracker message, as far as we act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerMessage {
    /// The answer to one of our announces.
    Announced { info_hash: String },
    /// Another peer's offer, forwarded by the tracker.
    Offer {
        info_hash: String,
        peer_id: String,
        offer_id: String,
        sdp: String,
    },
    /// The tracker refused something.
    Failure { reason: String },
    /// Anything else (scrape answers, WebRTC answers): ignored.
    Other,
}

/// Longest "failure reason" kept (it goes to the log).
const MAX_REASON_CHARS: usize = 200;

/// Parses a tracker frame (already bounded by `MAX_TRACKER_FRAME_BYTES`).
/// Fields of unexpected types make a message `Other`, never an error: an
/// honest tracker forwards other peers' offers verbatim, and a peer's junk
/// must not cost us the tracker.
pub fn parse_message(text: &str) -> Result<TrackerMessage, TrackerError> {
    let v: Value = serde_json::from_str(text).map_err(|e| TrackerError::NotJson {
        reason: e.to_string(),
    })?;
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    if let Some(reason) = v.get("failure reason") {
        let reason = reason
            .as_str()
            .map_or_else(|| reason.to_string(), str::to_owned)
            .chars()
            .take(MAX_REASON_CHARS)
            .collect();
        return Ok(TrackerMessage::Failure { reason });
    }
    if field("action") != Some("announce") || v.get("answer").is_some() {
        return Ok(TrackerMessage::Other);
    }
    let info_hash = field("info_hash").unwrap_or_default().to_owned();
    let Some(offer) = v.get("offer") else {
        return Ok(TrackerMessage::Announced { info_hash });
    };
    match (offer.get("sdp").and_then(Value::as_str), field("offer_id")) {
        (Some(sdp), Some(offer_id)) => Ok(TrackerMessage::Offer {
            info_hash,
            peer_id: field("peer_id").unwrap_or_default().to_owned(),
            offer_id: offer_id.to_owned(),
            sdp: sdp.to_owned(),
        }),
        _ => Ok(TrackerMessage::Other),
    }
}

fn bad(reason: impl Into<String>) -> TrackerError {
    TrackerError::BadOffer {
        reason: reason.into(),
    }
}

/// A host as an offer may name it: a DNS name or an IPv4 address (or a
/// bracketed IPv6 one), nothing that changes the URL built from it.
fn plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_BYTES
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
}

/// The endpoint an offer's `sdp` names, as the hybrid adapter dials it:
/// `ssl` = `wss://HOST` (port 443; a `HOST:PORT` host keeps its port),
/// else `ws://HOST:PORT`. The caller remembers an `ssl` endpoint as TLS
/// (`transport::remember_scheme`), so it is dialed with wss first on any
/// port.
pub fn endpoint_of_offer(sdp: &str) -> Result<(Endpoint, ServerOffer), TrackerError> {
    let offer: ServerOffer =
        serde_json::from_str(sdp).map_err(|e| bad(format!("not a server record: {e}")))?;
    if !plausible_host(&offer.host) {
        return Err(bad("implausible host"));
    }
    let endpoint = if offer.ssl {
        match offer.host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port: u16 = p.parse().map_err(|_| bad("bad port in host"))?;
                if port == 0 {
                    return Err(bad("port 0"));
                }
                Endpoint::new(h, port)
            }
            Some(_) => return Err(bad("implausible host")),
            None => Endpoint::new(offer.host.clone(), 443),
        }
    } else {
        if offer.port == 0 {
            return Err(bad("port 0"));
        }
        if offer.host.contains(':') && !offer.host.starts_with('[') {
            return Err(bad("host with a port"));
        }
        Endpoint::new(offer.host.clone(), offer.port)
    };
    Ok((endpoint, offer))
}

/// Bounded memory of what a tracker channel forwarded: offer ids handled
/// (a repeated id is dropped, as the adapter's `handledOffers`, but
/// bounded), when each endpoint was last forwarded, and a per-second
/// budget of offers.
#[derive(Debug, Default)]
pub struct OffersSeen {
    ids: HashSet<String>,
    order: VecDeque<String>,
    forwarded: HashMap<Endpoint, Instant>,
    second: Option<Instant>,
    in_second: u32,
}

impl OffersSeen {
    /// Whether to look at an offer at all: within this second's budget and
    /// an id not seen before (remembered, oldest forgotten past the cap).
    pub fn admit_offer(&mut self, offer_id: &str, now: Instant) -> bool {
        if self
            .second
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.in_second = 0;
        }
        if self.in_second >= MAX_OFFERS_PER_SEC || offer_id.len() > 64 {
            return false;
        }
        self.in_second += 1;
        if self.ids.contains(offer_id) {
            return false;
        }
        if self.order.len() >= MAX_OFFER_IDS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(offer_id.to_owned());
        self.order.push_back(offer_id.to_owned());
        true
    }

    /// Whether to forward `endpoint` now: new, or last forwarded at least
    /// `REFORWARD_EVERY` ago (the oldest is forgotten past the cap).
    pub fn admit_endpoint(&mut self, endpoint: &Endpoint, now: Instant) -> bool {
        let due = self
            .forwarded
            .get(endpoint)
            .is_none_or(|t| now.saturating_duration_since(*t) >= REFORWARD_EVERY);
        if !due {
            return false;
        }
        if !self.forwarded.contains_key(endpoint) && self.forwarded.len() >= MAX_OFFERED_ENDPOINTS {
            let oldest = self
                .forwarded
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(e, _)| e.clone());
            if let Some(oldest) = oldest {
                self.forwarded.remove(&oldest);
            }
        }
        self.forwarded.insert(endpoint.clone(), now);
        true
    }

    pub fn remembered(&self) -> (usize, usize) {
        (self.ids.len(), self.forwarded.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_hashes_are_the_adapters() {
        // sha256("abc") = ba7816bf...f20015ad; the adapter keeps the last 20.
        assert_eq!(info_hash("abc"), "b00361a396177a9cb410ff61f20015ad"[12..]);
        assert_eq!(info_hash("abc").len(), 20);
        assert_eq!(topic_server_name("t"), "tooldb-topic:t");
        assert_ne!(info_hash("t"), info_hash(&topic_server_name("t")));
    }

    #[test]
    fn the_default_interval_is_the_adapters() {
        let c = crate::config::TrackersConfig::default();
        assert_eq!(Duration::from_secs(c.announce_every_secs), ANNOUNCE_EVERY);
        assert_eq!(ANNOUNCE_EVERY, Duration::from_secs(30));
    }

    #[test]
    fn urls_must_be_websockets() {
        assert!(check_url("ws://127.0.0.1:8000").is_ok());
        assert!(check_url("wss://tracker.webtorrent.dev").is_ok());
        assert!(check_url("http://x").is_err());
        assert!(check_url("ws://").is_err());
    }

    fn sdp(host: &str, port: u16, ssl: bool) -> String {
        json!({"host": host, "port": port, "ssl": ssl, "name": "n", "pubKey": "k", "signature": "s"})
            .to_string()
    }

    #[test]
    fn offers_map_to_what_the_adapter_dials() {
        let (e, o) = endpoint_of_offer(&sdp("10.0.0.1", 9000, false)).unwrap();
        assert_eq!(e.url(), "ws://10.0.0.1:9000");
        assert_eq!(o.name, "n");
        let (e, _) = endpoint_of_offer(&sdp("example.org", 9000, true)).unwrap();
        assert_eq!(e.url(), "wss://example.org", "ssl implies 443");
        let (e, _) = endpoint_of_offer(&sdp("example.org:443", 9000, true)).unwrap();
        assert_eq!(e.url(), "wss://example.org");
        let (e, _) = endpoint_of_offer(&sdp("example.org:9443", 9443, true)).unwrap();
        assert_eq!(
            e,
            Endpoint::new("example.org", 9443),
            "a TLS port other than 443"
        );
        assert!(endpoint_of_offer(&sdp("a/b", 1, false)).is_err());
        assert!(endpoint_of_offer(&sdp("", 1, false)).is_err());
        assert!(endpoint_of_offer(&sdp("h", 0, false)).is_err());
        assert!(endpoint_of_offer(&sdp(&"a".repeat(300), 1, false)).is_err());
        assert!(endpoint_of_offer("v=0\r\no=- 1 2 IN IP4 0.0.0.0").is_err());
        assert!(endpoint_of_offer(r#"{"host":"h","port":70000}"#).is_err());
    }

    #[test]
    fn a_tls_node_on_another_port_names_it_in_host() {
        assert_eq!(offered_host("h", 443, true), "h");
        assert_eq!(offered_host("h", 9443, true), "h:9443");
        assert_eq!(offered_host("h", 9000, false), "h");
    }

    #[test]
    fn tracker_messages_parse() {
        let offer = r#"{"action":"announce","offer":{"type":"offer","sdp":"{}"},"offer_id":"o","peer_id":"p","info_hash":"i"}"#;
        assert_eq!(
            parse_message(offer).unwrap(),
            TrackerMessage::Offer {
                info_hash: "i".into(),
                peer_id: "p".into(),
                offer_id: "o".into(),
                sdp: "{}".into()
            }
        );
        assert_eq!(
            parse_message(r#"{"action":"announce","interval":120,"info_hash":"i","complete":0,"incomplete":1}"#).unwrap(),
            TrackerMessage::Announced { info_hash: "i".into() }
        );
        assert_eq!(
            parse_message(r#"{"failure reason":"invalid info_hash"}"#).unwrap(),
            TrackerMessage::Failure {
                reason: "invalid info_hash".into()
            }
        );
        assert_eq!(
            parse_message(r#"{"action":"announce","answer":{},"offer_id":"o"}"#).unwrap(),
            TrackerMessage::Other
        );
        assert!(parse_message("nope").is_err());
        // Junk another peer put in its offer is Other, not an error.
        assert_eq!(
            parse_message(r#"{"action":7}"#).unwrap(),
            TrackerMessage::Other
        );
        assert_eq!(
            parse_message(r#"{"action":"announce","offer":{"sdp":5},"offer_id":"o"}"#).unwrap(),
            TrackerMessage::Other
        );
        assert_eq!(
            parse_message(r#"{"action":"announce","offer":[1],"offer_id":{}}"#).unwrap(),
            TrackerMessage::Other
        );
        assert_eq!(parse_message("[1,2]").unwrap(), TrackerMessage::Other);
    }

    #[test]
    fn announces_are_what_the_tracker_expects() {
        let a: Value = serde_json::from_str(&server_announce("h", "p", "{}", 3)).unwrap();
        assert_eq!(a["action"], "announce");
        assert_eq!(a["offers"].as_array().unwrap().len(), 3);
        assert_eq!(a["offers"][0]["offer"]["sdp"], "{}");
        assert_eq!(a["offers"][0]["offer_id"].as_str().unwrap().len(), 20);
        assert_ne!(a["offers"][0]["offer_id"], a["offers"][1]["offer_id"]);
        let f: Value = serde_json::from_str(&finder_announce("h", "p")).unwrap();
        assert!(f.get("offers").is_none());
        assert_eq!(peer_id_of("abcdefghijklmnopqrst"), "abcdefghijklmnopqrst");
        assert_eq!(peer_id_of("short").len(), 20);
    }

    #[test]
    fn offer_memory_is_bounded() {
        let mut seen = OffersSeen::default();
        let t0 = Instant::now();
        assert!(seen.admit_offer("a", t0));
        assert!(!seen.admit_offer("a", t0), "repeat");
        let admitted = (0..1000)
            .filter(|i| seen.admit_offer(&format!("x{i}"), t0))
            .count();
        // The repeat counted against the budget too: looking costs.
        assert_eq!(admitted as u32, MAX_OFFERS_PER_SEC - 2, "per-second budget");
        for s in 1..40u64 {
            let t = t0 + Duration::from_secs(s);
            for i in 0..100 {
                seen.admit_offer(&format!("{s}-{i}"), t);
            }
        }
        assert!(seen.remembered().0 <= MAX_OFFER_IDS);
        for i in 0..500u16 {
            seen.admit_endpoint(&Endpoint::new("h", i + 1), t0);
        }
        assert_eq!(seen.remembered().1, MAX_OFFERED_ENDPOINTS);
        let e = Endpoint::new("z", 1);
        assert!(seen.admit_endpoint(&e, t0));
        assert!(!seen.admit_endpoint(&e, t0 + Duration::from_secs(1)));
        assert!(seen.admit_endpoint(&e, t0 + REFORWARD_EVERY));
    }
}
