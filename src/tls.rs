//! TLS on the websocket port (wss, and https for `/health`, `/peers` and
//! the rest): a certificate chain and its key from PEM files, reloaded when
//! they change.
//!
//! The rustls `ServerConfig` asks a [`CertResolver`] for the certificate at
//! each handshake (with or without SNI: there is one certificate). The
//! resolver holds the current [`CertifiedKey`] behind a lock; a watcher
//! thread ([`Watcher`]) polls the files' modification time and length
//! every [`RELOAD_POLL`] and swaps in the new pair once both parse and the
//! key matches the certificate. New handshakes then get the new
//! certificate; open connections keep theirs. Bad files at start are an
//! error ([`load_certified_key`]); bad files at reload are one warning, and
//! the old certificate stays. The ACME issuer (`actors::acme`) feeds the
//! same resolver with [`CertResolver::set`], and answers `tls-alpn-01`
//! through it: a handshake offering only the `acme-tls/1` protocol gets
//! the challenge certificate for its SNI name (RFC 8737).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the watcher looks at the certificate and key files.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Largest certificate or key file read, bytes (a chain is a few KiB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// The ALPN protocol of `tls-alpn-01` validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS needs both a certificate and a key file (--tls-cert and --tls-key, or [tls] cert_file and key_file): only the {given} was given")]
    OnlyOne { given: &'static str },
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS {what} file {path} is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("the TLS certificate file {path} is not PEM certificates: {reason}")]
    BadCertPem { path: PathBuf, reason: String },
    #[error("the TLS certificate file {path} holds no PEM certificate")]
    NoCert { path: PathBuf },
    #[error("the TLS key file {path} holds no PEM private key ({reason})")]
    BadKeyPem { path: PathBuf, reason: String },
    #[error("the TLS key in {path} is not a usable private key: {source}")]
    UnusableKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the TLS certificate in {path} cannot be read: {source}")]
    BadCert {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the TLS key {key} does not match the certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

/// The certificate chain file and its key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// Both paths or neither (empty = not given); one alone is an error.
    pub fn from_paths(cert: &Path, key: &Path) -> Result<Option<CertFiles>, TlsError> {
        match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
            (true, true) => Ok(None),
            (false, true) => Err(TlsError::OnlyOne {
                given: "certificate",
            }),
            (true, false) => Err(TlsError::OnlyOne { given: "key" }),
            (false, false) => Ok(Some(CertFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })),
        }
    }

    /// Loads and checks the pair.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        load_certified_key(&self.cert, &self.key)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Reads a PEM certificate chain (leaf first) and its PEM private key
/// (PKCS#8, PKCS#1 or SEC1), and checks that the key is the leaf's.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_pem("certificate", cert_path)?;
    let key_pem = read_pem("key", key_path)?;
    certified_key_from_pem(&cert_pem, &key_pem, cert_path, key_path)
}

/// Like [`load_certified_key`] from PEM text already read; the paths
/// only name the pair in errors.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertPem {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKeyPem {
        path: key_path.to_owned(),
        reason: e.to_string(),
    })?;
    certified_key(chain, key).map_err(|e| match e {
        CertKeyError::Key(source) => TlsError::UnusableKey {
            path: key_path.to_owned(),
            source,
        },
        CertKeyError::Mismatch => TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        },
        CertKeyError::Cert(source) => TlsError::BadCert {
            path: cert_path.to_owned(),
            source,
        },
    })
}

/// A chain and its key without the match check: for the `tls-alpn-01`
/// certificate, whose critical acmeIdentifier extension the check's
/// parser refuses (the validator reads it; nobody else gets it).
pub fn certified_key_unchecked(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, rustls::Error> {
    let signer = provider().key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(chain, signer))
}

/// Why a chain and a key do not make a [`CertifiedKey`].
#[derive(Debug)]
pub enum CertKeyError {
    Key(rustls::Error),
    Mismatch,
    Cert(rustls::Error),
}

/// A chain (leaf first) and the leaf's key, checked to match.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CertKeyError> {
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(CertKeyError::Key)?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(CertKeyError::Mismatch),
        Err(source) => Err(CertKeyError::Cert(source)),
    }
}

/// The certificate every handshake gets (swapped whole on reload or
/// renewal; none yet while ACME obtains the first), and the `tls-alpn-01`
/// challenge certificates by SNI name.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Set to the current certificate's expiry (Unix seconds).
    expiry: Option<prometheus_client::metrics::gauge::Gauge>,
}

/// The leaf's validity window (notBefore, notAfter).
pub fn leaf_validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> CertResolver {
        CertResolver {
            current: RwLock::new(Some(Arc::new(key))),
            challenges: RwLock::default(),
            expiry: None,
        }
    }

    /// Keeps `gauge` at the current certificate's expiry from now on.
    pub fn with_expiry_gauge(mut self, gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        self.expiry = Some(gauge);
        if let Some(key) = self.current() {
            self.record_expiry(&key);
        }
        self
    }

    fn record_expiry(&self, key: &CertifiedKey) {
        let Some(gauge) = &self.expiry else { return };
        let not_after = key
            .cert
            .first()
            .and_then(|leaf| leaf_validity(leaf).ok())
            .and_then(|(_, t)| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        gauge.set(not_after);
    }

    /// A resolver with no certificate yet: handshakes fail (except
    /// `tls-alpn-01` ones) until [`CertResolver::set`].
    pub fn empty() -> CertResolver {
        CertResolver::default()
    }

    /// New handshakes use `key` from now on.
    pub fn set(&self, key: CertifiedKey) {
        self.record_expiry(&key);
        let key = Arc::new(key);
        // A poisoned lock still holds a whole value: replace it.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `acme-tls/1` handshakes naming `sni` get `key` until
    /// [`CertResolver::remove_challenge`].
    pub fn add_challenge(&self, sni: &str, key: CertifiedKey) {
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sni.to_ascii_lowercase(), Arc::new(key));
    }

    pub fn remove_challenge(&self, sni: &str) {
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sni.to_ascii_lowercase());
    }

    fn challenge(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let challenges = self.challenges.read().unwrap_or_else(|e| e.into_inner());
        match sni {
            Some(name) => challenges.get(&name.to_ascii_lowercase()).cloned(),
            // A validator that sends no SNI: the one pending challenge.
            None if challenges.len() == 1 => challenges.values().next().cloned(),
            None => None,
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only the challenge certificate, never the real one (RFC 8737).
            return self.challenge(hello.server_name());
        }
        self.current()
    }
}

/// A rustls server configuration (ring, TLS 1.2 and 1.3, no client
/// certificates) that takes its certificate from `resolver`; with `acme`,
/// it also speaks `acme-tls/1` for `tls-alpn-01` validation.
pub fn server_config(resolver: Arc<CertResolver>, acme: bool) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    if acme {
        // actix-web puts its own protocols (http/1.1) before these.
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    }
    Ok(config)
}

/// What the watcher compares: each file's modification time and length
/// (None: unreadable right now).
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(files: &CertFiles) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    [one(&files.cert), one(&files.key)]
}

/// The reload decisions, apart from the thread and the clock.
#[derive(Debug)]
struct Reloader {
    /// The stamp of the files last acted on (loaded, or warned about).
    settled: Stamp,
    /// A changed stamp that failed to load once: a writer may be between
    /// the two files, so it is retried at the next poll before a warning.
    pending: Option<Stamp>,
}

/// What one poll does.
#[derive(Debug)]
enum Outcome {
    Unchanged,
    Loaded(Box<CertifiedKey>),
    /// Not loadable yet; looked at again next poll.
    Waiting,
    Rejected(TlsError),
}

impl Reloader {
    fn poll(
        &mut self,
        now: Stamp,
        load: impl FnOnce() -> Result<CertifiedKey, TlsError>,
    ) -> Outcome {
        if now == self.settled {
            self.pending = None;
            return Outcome::Unchanged;
        }
        let retry = self.pending == Some(now);
        match load() {
            Ok(key) => {
                self.settled = now;
                self.pending = None;
                Outcome::Loaded(Box::new(key))
            }
            Err(e) if retry => {
                self.settled = now;
                self.pending = None;
                Outcome::Rejected(e)
            }
            Err(_) => {
                self.pending = Some(now);
                Outcome::Waiting
            }
        }
    }
}

/// Keeps a resolver serving the current contents of its files; see
/// [`Watcher::start`].
#[derive(Debug)]
pub struct Watcher {
    files: CertFiles,
    resolver: Weak<CertResolver>,
    reloader: Reloader,
}

/// Loads `files` (an error if they are unusable) into a new resolver
/// that keeps `expiry` at its certificate's expiry, and
/// returns it with the watcher that will keep it current (not started).
pub fn load_watched(
    files: CertFiles,
    expiry: prometheus_client::metrics::gauge::Gauge,
) -> Result<(Arc<CertResolver>, Watcher), TlsError> {
    // Stamped before reading: a change during the read is loaded again.
    let before = stamp(&files);
    let resolver = Arc::new(CertResolver::new(files.load()?).with_expiry_gauge(expiry));
    let watcher = Watcher {
        files,
        resolver: Arc::downgrade(&resolver),
        reloader: Reloader {
            settled: before,
            pending: None,
        },
    };
    Ok((resolver, watcher))
}

impl Watcher {
    /// Starts the thread that reloads the files into the resolver when
    /// they change. It ends once the resolver is dropped (the server's
    /// TLS configuration holds it while the server runs).
    pub fn start(self) -> std::io::Result<()> {
        let Watcher {
            files,
            resolver: weak,
            mut reloader,
        } = self;
        std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || loop {
            std::thread::sleep(RELOAD_POLL);
            let Some(resolver) = weak.upgrade() else {
                return;
            };
            match reloader.poll(stamp(&files), || files.load()) {
                Outcome::Loaded(key) => {
                    resolver.set(*key);
                    tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                }
                Outcome::Rejected(e) => tracing::warn!(
                    error = %e,
                    "TLS certificate files changed but cannot be used; keeping the old certificate"
                ),
                Outcome::Unchanged | Outcome::Waiting => {}
            }
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, len: u64) -> Stamp {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        [Some((t, len)), Some((t, len))]
    }

    fn fail() -> Result<CertifiedKey, TlsError> {
        Err(TlsError::NoCert {
            path: PathBuf::from("c.pem"),
        })
    }

    #[test]
    fn unchanged_files_are_not_read() {
        let mut r = Reloader {
            settled: at(1, 10),
            pending: None,
        };
        let out = r.poll(at(1, 10), || panic!("read although unchanged"));
        assert!(matches!(out, Outcome::Unchanged));
    }

    #[test]
    fn a_bad_change_is_retried_once_then_warned_about_once() {
        let mut r = Reloader {
            settled: at(1, 10),
            pending: None,
        };
        assert!(matches!(r.poll(at(2, 11), fail), Outcome::Waiting));
        assert!(matches!(r.poll(at(2, 11), fail), Outcome::Rejected(_)));
        let out = r.poll(at(2, 11), || panic!("read again after the warning"));
        assert!(matches!(out, Outcome::Unchanged));
    }

    #[test]
    fn a_change_that_goes_on_is_retried_without_a_warning() {
        let mut r = Reloader {
            settled: at(1, 10),
            pending: None,
        };
        assert!(matches!(r.poll(at(2, 11), fail), Outcome::Waiting));
        // The second file arrived meanwhile: a new stamp, a fresh try.
        assert!(matches!(r.poll(at(3, 12), fail), Outcome::Waiting));
    }

    #[test]
    fn only_one_file_is_a_clear_error() {
        let err = CertFiles::from_paths(Path::new("c.pem"), Path::new("")).unwrap_err();
        assert!(err.to_string().contains("only the certificate"), "{err}");
        assert_eq!(
            CertFiles::from_paths(Path::new(""), Path::new("")).unwrap(),
            None
        );
    }
}
