//! Which host goes in our signed peer record (issue 11 part 5): the one
//! other servers dial to reach us, and dial back to prove our server
//! claim. A record saying `127.0.0.1` sends a remote peer to itself.
//!
//! In order: the configured `public_host`; the bind address when it is a
//! specific one; the public address the DHT reports; the address of our
//! interface toward the DHT bootstrap nodes or the LAN (what a peer on a
//! private network without NAT sees); `127.0.0.1` only when we have no
//! other address at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

/// Where `local_ipv4_toward` looks when no bootstrap node is given or none
/// is routable: a TEST-NET-1 address (the default route) and the mDNS group
/// (a LAN with a multicast route only). A UDP `connect` sends nothing.
pub const ROUTE_PROBES: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 9),
    SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353),
];

/// The host for our record. `public_host` and `bind` are the configured
/// `public_host` and `host`; `dht_public` what the DHT reports as our IP;
/// `local` our interface address toward the others (`local_ipv4_toward`).
pub fn record_host(
    public_host: &str,
    bind: &str,
    dht_public: Option<Ipv4Addr>,
    local: Option<Ipv4Addr>,
) -> String {
    if !public_host.is_empty() {
        return public_host.to_owned();
    }
    let wildcard = matches!(bind.parse::<IpAddr>(), Ok(ip) if ip.is_unspecified());
    if !wildcard && !bind.is_empty() {
        return bind.to_owned();
    }
    let usable = |ip: &Ipv4Addr| !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast());
    dht_public
        .filter(usable)
        .or(local.filter(usable))
        .map_or_else(|| Ipv4Addr::LOCALHOST.to_string(), |ip| ip.to_string())
}

/// Whether our record's host follows what the DHT reports later: only
/// when nothing was configured.
pub fn follows_dht(public_host: &str, bind: &str) -> bool {
    public_host.is_empty() && matches!(bind.parse::<IpAddr>(), Ok(ip) if ip.is_unspecified())
}

/// The address of our interface that sends to the first of `targets` the
/// routing table can reach (then to `ROUTE_PROBES`); `None` when none is
/// routable or only loopback is.
pub fn local_ipv4_toward(targets: &[SocketAddrV4]) -> Option<Ipv4Addr> {
    targets
        .iter()
        .chain(ROUTE_PROBES.iter())
        .filter(|t| !t.ip().is_loopback())
        .find_map(|t| {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
            sock.connect(SocketAddr::V4(*t)).ok()?;
            match sock.local_addr().ok()?.ip() {
                IpAddr::V4(ip) if !ip.is_unspecified() && !ip.is_loopback() => Some(ip),
                _ => None,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn configured_hosts_win() {
        let dht = Some(ip("1.2.3.4"));
        assert_eq!(
            record_host("example.org", "0.0.0.0", dht, None),
            "example.org"
        );
        assert_eq!(record_host("", "10.1.2.3", dht, None), "10.1.2.3");
        assert_eq!(record_host("", "127.0.0.1", dht, None), "127.0.0.1");
    }

    /// Issue 11 part 5: a wildcard-bound node with no configured host
    /// signed `127.0.0.1` until the DHT reported its address, and forever
    /// on a DHT where no node reports it (JS `bittorrent-dht`) or with no
    /// DHT: a remote peer then dialed itself to check our claim.
    #[test]
    fn a_wildcard_node_never_signs_loopback_when_it_has_another_address() {
        let lan = Some(ip("192.168.1.7"));
        assert_eq!(
            record_host("", "0.0.0.0", Some(ip("1.2.3.4")), lan),
            "1.2.3.4",
            "the DHT's report first"
        );
        assert_eq!(record_host("", "0.0.0.0", None, lan), "192.168.1.7");
        assert_eq!(record_host("", "::", None, lan), "192.168.1.7");
        assert_eq!(
            record_host("", "0.0.0.0", Some(ip("0.0.0.0")), lan),
            "192.168.1.7",
            "nonsense reports are ignored"
        );
        assert_eq!(
            record_host("", "0.0.0.0", None, None),
            "127.0.0.1",
            "a host with loopback only"
        );
        assert!(follows_dht("", "0.0.0.0"));
        assert!(!follows_dht("", "10.0.0.1"));
        assert!(!follows_dht("example.org", "0.0.0.0"));
    }

    #[test]
    fn the_local_address_toward_a_loopback_target_is_not_used() {
        let lo: SocketAddrV4 = "127.0.0.1:7000".parse().unwrap();
        if let Some(found) = local_ipv4_toward(&[lo]) {
            assert!(!found.is_loopback(), "{found}");
        }
    }
}
