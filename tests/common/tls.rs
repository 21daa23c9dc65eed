//! TLS helpers for the tests: a test CA (rcgen) and leaves for 127.0.0.1,
//! client configurations trusting chosen roots, a blocking TLS connection
//! from a chosen loopback address (no SNI: the server name is an IP), and
//! an HTTP/1.0 GET over it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A test certificate authority.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

/// A leaf certificate (PEM) and its key (PEM).
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tooldb-node test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for 127.0.0.1 and localhost.
    pub fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A client configuration trusting this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config(std::slice::from_ref(&self.der))
    }
}

/// A client configuration trusting `roots` only.
pub fn client_config(roots_der: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for r in roots_der {
        roots.add(r.clone()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to the node, handshake done; None if it failed.
pub fn tls_connect(
    port: u16,
    config: &Arc<ClientConfig>,
) -> Option<StreamOwned<ClientConnection, TcpStream>> {
    tls_connect_from("127.0.0.1", port, config)
}

/// Like `tls_connect`, from the loopback address `source` (another host
/// to the node's per-address limits).
pub fn tls_connect_from(
    source: &str,
    port: u16,
    config: &Arc<ClientConfig>,
) -> Option<StreamOwned<ClientConnection, TcpStream>> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    let src: std::net::SocketAddr = format!("{source}:0").parse().ok()?;
    sock.bind(&src.into()).ok()?;
    let dst: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    sock.connect(&dst.into()).ok()?;
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // An IP address as the server name: no SNI in the ClientHello.
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let conn = ClientConnection::new(config.clone(), name).ok()?;
    let mut stream = StreamOwned::new(conn, tcp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stream.conn.is_handshaking() {
        if Instant::now() > deadline {
            return None;
        }
        stream.conn.complete_io(&mut stream.sock).ok()?;
    }
    Some(stream)
}

/// The leaf certificate a new handshake presents.
pub fn served_cert(port: u16, config: &Arc<ClientConfig>) -> Option<Vec<u8>> {
    let stream = tls_connect(port, config)?;
    let certs = stream.conn.peer_certificates()?;
    certs.first().map(|c| c.to_vec())
}

/// An HTTP/1.0 GET over TLS: (status, body).
pub fn https_get(port: u16, path: &str, config: &Arc<ClientConfig>) -> Option<(u16, String)> {
    let mut s = tls_connect(port, config)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    s.flush().ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the server closes (with or without close_notify), bounded.
    for _ in 0..1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
