//! The outbound websocket dialer shared by `PeerConnection` (server to
//! server) and the client's `ServerConnection`: awc dial with a deadline
//! and a frame limit, split into the sink a `flow::spawn_writer` task owns
//! and the frame stream the actor reads through `flow::Gated`. (awc stays
//! inside this file.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_codec::Framed;
use actix_http::ws::{self, CloseReason, Frame, ProtocolError};
use bytestring::ByteString;
use futures_util::stream::{SplitSink, SplitStream, StreamExt};

use crate::endpoint::Endpoint;

pub type WsSink = SplitSink<Framed<awc::BoxedSocket, ws::Codec>, ws::Message>;
pub type WsStream = SplitStream<Framed<awc::BoxedSocket, ws::Codec>>;
pub type WsItem = Result<Frame, ProtocolError>;

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
#[error("dialing {url}: {reason}")]
pub struct DialError {
    pub url: String,
    pub reason: String,
}

impl DialError {
    /// The server's TLS certificate was refused (a configuration problem
    /// worth a warning: a missing --tls-ca-file, a wrong name, expiry),
    /// as rustls words it.
    pub fn certificate_refused(&self) -> bool {
        self.reason.contains("invalid peer certificate")
    }
}

/// Most endpoints whose scheme is remembered; the memory is cleared when
/// full (it is relearned at the next dials).
pub const MAX_REMEMBERED_SCHEMES: usize = 4096;

/// Why the extra roots cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use {path} as a CA for wss dials: {reason}")]
pub struct TrustError {
    pub path: PathBuf,
    pub reason: String,
}

static CLIENT_TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

fn schemes() -> &'static Mutex<HashMap<Endpoint, bool>> {
    static SCHEMES: OnceLock<Mutex<HashMap<Endpoint, bool>>> = OnceLock::new();
    SCHEMES.get_or_init(Mutex::default)
}

fn tls_config(extra: &[PathBuf]) -> Result<rustls::ClientConfig, TrustError> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in extra {
        let err = |reason: String| TrustError {
            path: path.clone(),
            reason,
        };
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TrustError {
        path: PathBuf::new(),
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Trusts the PEM roots in `files` for wss dials, besides the webpki
/// roots. Once per process, before the first dial (later calls keep the
/// first set and say so).
pub fn trust_extra_roots(files: &[PathBuf]) -> Result<(), TrustError> {
    let config = Arc::new(tls_config(files)?);
    if CLIENT_TLS.set(config).is_err() {
        tracing::warn!("the CA roots for wss dials were already set; keeping the first ones");
    }
    Ok(())
}

fn client_tls() -> Arc<rustls::ClientConfig> {
    CLIENT_TLS
        .get_or_init(|| {
            // The webpki roots alone cannot fail to load.
            Arc::new(tls_config(&[]).expect("the webpki roots load"))
        })
        .clone()
}

/// Remembers whether `endpoint` speaks TLS (from a verified record, a
/// `wss://` peer or a dial that worked).
pub fn remember_scheme(endpoint: &Endpoint, tls: bool) {
    let mut map = schemes().lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_REMEMBERED_SCHEMES && !map.contains_key(endpoint) {
        map.clear();
    }
    map.insert(endpoint.clone(), tls);
}

/// The scheme tried first for `endpoint`: the remembered one, else TLS
/// only for port 443 (Tool Db's rule).
pub fn first_scheme(endpoint: &Endpoint) -> bool {
    let map = schemes().lock().unwrap_or_else(|e| e.into_inner());
    map.get(endpoint).copied().unwrap_or(endpoint.port == 443)
}

/// Dials `endpoint`'s websocket, with the scheme we know for it first and
/// the other after a refusal; fails after `timeout` in all.
pub async fn dial(
    endpoint: &Endpoint,
    timeout: Duration,
    max_frame_bytes: usize,
) -> Result<(WsSink, WsStream), DialError> {
    let deadline = Instant::now() + timeout;
    let first = first_scheme(endpoint);
    let err = match dial_with(endpoint, first, timeout, max_frame_bytes).await {
        Ok(ws) => {
            remember_scheme(endpoint, first);
            return Ok(ws);
        }
        Err(e) => e,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if err.1 || left.is_zero() {
        return Err(err.0);
    }
    match dial_with(endpoint, !first, left, max_frame_bytes).await {
        Ok(ws) => {
            tracing::debug!(peer = %endpoint, tls = !first, "dialed with the other scheme");
            remember_scheme(endpoint, !first);
            Ok(ws)
        }
        Err((other, _)) => Err(DialError {
            url: err.0.url,
            reason: format!("{}; then {}: {}", err.0.reason, other.url, other.reason),
        }),
    }
}

/// The websocket URL for `endpoint` with or without TLS.
pub fn url_for(endpoint: &Endpoint, tls: bool) -> String {
    match (tls, endpoint.port) {
        (true, 443) => format!("wss://{}", endpoint.host),
        (true, port) => format!("wss://{}:{port}", endpoint.host),
        (false, port) => format!("ws://{}:{port}", endpoint.host),
    }
}

/// One dial; the error says whether it timed out.
async fn dial_with(
    endpoint: &Endpoint,
    tls: bool,
    timeout: Duration,
    max_frame_bytes: usize,
) -> Result<(WsSink, WsStream), (DialError, bool)> {
    let url = url_for(endpoint, tls);
    let client = if tls {
        awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(client_tls()))
            .timeout(timeout)
            .finish()
    } else {
        awc::Client::builder().timeout(timeout).finish()
    };
    let connect = client
        .ws(url.as_str())
        .max_frame_size(max_frame_bytes)
        .connect();
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((_resp, framed))) => Ok(framed.split()),
        Ok(Err(e)) => {
            let timed_out = matches!(
                e,
                awc::error::WsClientError::SendRequest(awc::error::SendRequestError::Timeout)
            );
            Err((
                DialError {
                    url,
                    reason: e.to_string(),
                },
                timed_out,
            ))
        }
        Err(_) => Err((
            DialError {
                url,
                reason: format!("no answer within {} ms", timeout.as_millis()),
            },
            true,
        )),
    }
}

/// One frame from a dialed server, as the actors act on it.
pub enum Incoming {
    Text(ByteString),
    /// A websocket ping to answer with this payload.
    Ping(bytes::Bytes),
    Close(Option<CloseReason>),
    /// Not for us (pong, binary, continuation, bad UTF-8); logged.
    Ignored(&'static str),
    Error(ProtocolError),
}

impl From<WsItem> for Incoming {
    fn from(item: WsItem) -> Incoming {
        match item {
            Ok(Frame::Text(b)) => match ByteString::try_from(b) {
                Ok(t) => Incoming::Text(t),
                Err(_) => Incoming::Ignored("a non-UTF-8 text frame"),
            },
            Ok(Frame::Ping(b)) => Incoming::Ping(b),
            Ok(Frame::Close(r)) => Incoming::Close(r),
            Ok(Frame::Pong(_)) => Incoming::Ignored("a pong"),
            Ok(Frame::Binary(_)) => Incoming::Ignored("a binary frame"),
            // Tool Db servers (Node.js `ws`) do not fragment messages.
            Ok(Frame::Continuation(_)) => Incoming::Ignored("a fragmented message"),
            Err(e) => Incoming::Error(e),
        }
    }
}

/// What a frame costs of the reading connection's window: its payload.
pub fn frame_cost(item: &WsItem) -> usize {
    match item {
        Ok(Frame::Text(b)) | Ok(Frame::Binary(b)) => b.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod scheme_tests {
    use super::*;

    #[test]
    fn the_first_scheme_is_the_remembered_one_else_tls_for_port_443() {
        let bare = Endpoint::new("scheme-test.invalid", 9000);
        let web = Endpoint::new("scheme-test.invalid", 443);
        assert!(!first_scheme(&bare));
        assert!(first_scheme(&web));
        remember_scheme(&bare, true);
        assert!(first_scheme(&bare));
        remember_scheme(&bare, false);
        assert!(!first_scheme(&bare));
    }

    #[test]
    fn wss_urls_keep_the_port_except_443() {
        let e = Endpoint::new("h", 9000);
        assert_eq!(url_for(&e, true), "wss://h:9000");
        assert_eq!(url_for(&e, false), "ws://h:9000");
        assert_eq!(url_for(&Endpoint::new("h", 443), true), "wss://h");
    }
}
