//! `Endpoint`: where a Tool Db server listens, as `host:port`; how we
//! parse one from the command line or the configuration, and the
//! websocket URL Tool Db dials for it.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Why a string is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not HOST:PORT (a ws:// or wss:// prefix is allowed)")]
pub struct BadEndpoint(pub String);

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
        }
    }

    /// Parses `host:port`, `ws://host:port/` or `wss://host:port`.
    pub fn parse(s: &str) -> Result<Endpoint, BadEndpoint> {
        let bad = || BadEndpoint(s.to_owned());
        let t = s
            .trim()
            .trim_start_matches("ws://")
            .trim_start_matches("wss://")
            .trim_end_matches('/');
        let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint::new(host, port))
    }

    /// The websocket URL Tool Db dials: `wss://HOST` for port 443,
    /// `ws://HOST:PORT` otherwise.
    pub fn url(&self) -> String {
        if self.port == 443 {
            format!("wss://{}", self.host)
        } else {
            format!("ws://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Endpoint {
    type Err = BadEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

/// Written as `host:port`, as `/peers` has always shown endpoints.
impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_or_without_a_scheme() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:9000"),
            Ok(Endpoint::new("127.0.0.1", 9000))
        );
        assert_eq!(Endpoint::parse("ws://a.b:1/"), Ok(Endpoint::new("a.b", 1)));
        assert!(Endpoint::parse("nope").is_err());
        assert!(Endpoint::parse(":1").is_err());
        assert!(Endpoint::parse("h:99999").is_err());
    }

    #[test]
    fn port_443_is_dialed_as_wss() {
        assert_eq!(Endpoint::new("example.org", 443).url(), "wss://example.org");
        assert_eq!(
            Endpoint::new("127.0.0.1", 9000).url(),
            "ws://127.0.0.1:9000"
        );
    }
}
