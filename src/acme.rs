//! Certificates over ACME (RFC 8555) for `serve --acme`: one order for the
//! node's public host (a DNS name, or an IP address, RFC 8738), validated
//! with `tls-alpn-01` (RFC 8737) on the node's own TLS port, or with
//! `http-01` when the operator gives us a port-80 listener
//! (`--acme-http-listen`, served by [`serve_http01`]), through the
//! `instant-acme` client. The account key and the certificate live in
//! `DATA_DIR/acme/`; the actor that decides when to run an order is
//! `actors::acme::AcmeIssuer`.
//!
//! What is kept apart from I/O, to be tested without a CA: when to renew
//! ([`renewal_due`]), the SNI name a validator sends for an identifier
//! ([`challenge_sni`]), and the identifier and profile for a host.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::tls::CertResolver;

/// Let's Encrypt's production directory, the default `--acme-directory`.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The profile asked for an IP address identifier: Let's Encrypt issues
/// IP certificates only under it (about six days).
pub const IP_PROFILE: &str = "shortlived";

/// The folder under the data dir, and its files.
pub const ACME_DIR: &str = "acme";
pub const ACCOUNT_FILE: &str = "account.json";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// How long one order may take in all (validation, issuance), so a stuck
/// CA becomes a failed attempt and a retry with backoff.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// The soonest a renewal is scheduled after an issuance, whatever the
/// lifetime, so a CA that backdates or issues very short certificates
/// cannot make the node order in a loop.
pub const MIN_RENEW_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot read the ACME CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("ACME {step} at {directory}: {reason}")]
    Protocol {
        step: &'static str,
        directory: String,
        /// The client's error with its causes (a refused connection is
        /// two levels down).
        reason: String,
        /// The CA no longer knows our account (its state was reset).
        unknown_account: bool,
    },
    #[error("the ACME order for {host} ended {status}")]
    OrderFailed { host: String, status: String },
    #[error("the ACME authorization for {host} is {status}")]
    AuthorizationFailed { host: String, status: String },
    #[error("the ACME server offers no {kind} challenge for {host}")]
    NoChallenge { kind: &'static str, host: String },
    #[error("the ACME order for {host} took longer than {ORDER_TIMEOUT:?}")]
    TimedOut { host: String },
    #[error("cannot make the {what}: {reason}")]
    Key { what: &'static str, reason: String },
    #[error("the certificate the ACME server issued cannot be used: {0}")]
    Issued(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `serve --acme` was told (config `[acme]`, flags).
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub directory: String,
    /// An extra root trusted for the directory's HTTPS.
    pub ca_file: Option<PathBuf>,
    /// Contact addresses (`mailto:` added when missing).
    pub contact: Vec<String>,
    /// The identifier: the host our peer record names.
    pub host: String,
    /// A profile to ask for; empty = [`IP_PROFILE`] for an IP address,
    /// none for a name.
    pub profile: String,
    /// `DATA_DIR/acme`.
    pub dir: PathBuf,
    /// Answer `http-01` (on the `--acme-http-listen` listener) instead of
    /// `tls-alpn-01`.
    pub http01: bool,
}

impl AcmeSettings {
    pub fn identifier(&self) -> Identifier {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(self.host.clone()),
        }
    }

    /// The profile to ask for, if any.
    pub fn wanted_profile(&self) -> Option<&str> {
        if !self.profile.is_empty() {
            return Some(&self.profile);
        }
        self.host.parse::<IpAddr>().is_ok().then_some(IP_PROFILE)
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    fn protocol(&self, step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError + '_ {
        move |source| {
            let unknown_account = matches!(&source, instant_acme::Error::Api(p)
                if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")));
            AcmeError::Protocol {
                step,
                directory: self.directory.clone(),
                reason: with_causes(&source),
                unknown_account,
            }
        }
    }
}

/// The `http-01` answers pending now: token → key authorization.
#[derive(Debug, Clone, Default)]
pub struct Http01Tokens(Arc<RwLock<HashMap<String, String>>>);

impl Http01Tokens {
    fn add(&self, token: &str, key_authorization: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    fn remove(&self, token: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    pub fn get(&self, token: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }
}

/// The path prefix `http-01` validators fetch (RFC 8555 section 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Serves `http-01` answers on `listener` (port 80 for a public CA):
/// `GET /.well-known/acme-challenge/TOKEN` → the key authorization, 404
/// for anything else. Must run inside an actix system.
pub fn serve_http01(
    listener: std::net::TcpListener,
    tokens: Http01Tokens,
) -> std::io::Result<actix_web::dev::Server> {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    async fn answer(req: HttpRequest, tokens: web::Data<Http01Tokens>) -> HttpResponse {
        let token = req.path().strip_prefix(HTTP01_PREFIX).unwrap_or_default();
        match tokens.get(token) {
            Some(key_authorization) => HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(key_authorization),
            None => HttpResponse::NotFound()
                .content_type("text/plain")
                .body("tooldb-node: no such ACME challenge\n"),
        }
    }
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(tokens.clone()))
            .default_service(web::to(answer))
    })
    .workers(1)
    // Validators only: a few connections at a time.
    .max_connections(64)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

/// An error and its sources, joined by ": ".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    // Bounded: error chains are short, but a cycle must not hang us.
    for _ in 0..8 {
        let Some(cause) = next else { break };
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        next = cause.source();
    }
    text
}

/// The SNI name a validator sends for `host` (RFC 8737; for an IP
/// address the reverse-DNS name, RFC 8738 section 6).
pub fn challenge_sni(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let o = ip.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(ip)) => {
            let mut name = String::new();
            for byte in ip.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name + "ip6.arpa"
        }
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// A certificate in hand: what handshakes get, and when to renew it.
pub struct Issued {
    pub key: CertifiedKey,
    pub not_after: SystemTime,
    pub renew_at: SystemTime,
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// at half its lifetime; for one just issued (`fresh`), never sooner than
/// [`MIN_RENEW_WAIT`] from `now`, nor past half of what is left.
pub fn renewal_due(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    fresh: bool,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let half = not_before + lifetime / 2;
    if !fresh || half > now + MIN_RENEW_WAIT {
        return half;
    }
    // Backdated or very short: half of what is left, at least the floor.
    let left = not_after.duration_since(now).unwrap_or_default();
    now + (left / 2).max(MIN_RENEW_WAIT)
}

/// Whether the leaf names `host` (an IP SAN or a DNS SAN).
fn names_host(leaf: &CertificateDer<'_>, host: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let ip: Option<IpAddr> = host.parse().ok();
    san.value.general_names.iter().any(|name| match name {
        GeneralName::DNSName(d) => d.eq_ignore_ascii_case(host),
        GeneralName::IPAddress(bytes) => match (ip, bytes.len()) {
            (Some(IpAddr::V4(v4)), 4) => v4.octets()[..] == bytes[..],
            (Some(IpAddr::V6(v6)), 16) => v6.octets()[..] == bytes[..],
            _ => false,
        },
        _ => false,
    })
}

/// The certificate kept in the data dir from an earlier run, when it is
/// usable and names `settings.host`; None otherwise (then one is ordered).
pub fn load_stored(settings: &AcmeSettings) -> Option<Issued> {
    let (cert, key) = (settings.cert_path(), settings.key_path());
    if !cert.exists() {
        return None;
    }
    let certified = match crate::tls::load_certified_key(&cert, &key) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "the stored ACME certificate cannot be used; ordering a new one");
            return None;
        }
    };
    let leaf = certified.cert.first()?.clone();
    if !names_host(&leaf, &settings.host) {
        tracing::info!(host = %settings.host, "the stored ACME certificate names another host; ordering a new one");
        return None;
    }
    let (not_before, not_after) = crate::tls::leaf_validity(&leaf).ok()?;
    let now = SystemTime::now();
    if not_after <= now {
        tracing::info!("the stored ACME certificate has expired; ordering a new one");
        return None;
    }
    Some(Issued {
        key: certified,
        not_after,
        renew_at: renewal_due(not_before, not_after, now, false),
    })
}

/// The account file: credentials, and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file; private (0600) where it matters.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), AcmeError> {
    use std::io::Write as _;
    let err = |source| AcmeError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The HTTPS client for the directory: the webpki roots, plus the
/// `ca_file` roots when given.
fn http_client(settings: &AcmeSettings) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &settings.ca_file {
        let ca_err = |reason: String| AcmeError::CaFile {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AcmeError::Key {
        what: "ACME client's TLS configuration",
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}

/// The account for `settings.directory`: the stored one, or a new one
/// (then stored). A stored account of another directory is replaced.
async fn account(settings: &AcmeSettings) -> Result<Account, AcmeError> {
    let path = settings.dir.join(ACCOUNT_FILE);
    let stored: Option<StoredAccount> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(stored) = stored.filter(|s| s.directory == settings.directory) {
        return Account::builder_with_http(http_client(settings)?)
            .from_credentials(stored.credentials)
            .await
            .map_err(settings.protocol("account (stored)"));
    }
    let contact: Vec<String> = settings
        .contact
        .iter()
        .map(|c| {
            if c.contains(':') {
                c.clone()
            } else {
                format!("mailto:{c}")
            }
        })
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(http_client(settings)?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(settings.protocol("new account"))?;
    let stored = StoredAccount {
        directory: settings.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| AcmeError::Key {
        what: "account file",
        reason: e.to_string(),
    })?;
    write_atomic(&path, &json, true)?;
    tracing::info!(directory = %settings.directory, id = %account.id(), "ACME account created");
    Ok(account)
}

/// The self-signed `tls-alpn-01` certificate for `host` carrying the
/// digest of the key authorization (RFC 8737 section 3).
fn challenge_cert(host: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let key_err = |e: rcgen::Error| AcmeError::Key {
        what: "tls-alpn-01 certificate",
        reason: e.to_string(),
    };
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(key_err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(key_err)?;
    let cert = params.self_signed(&key).map_err(key_err)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    crate::tls::certified_key_unchecked(vec![cert.der().clone()], der).map_err(|e| AcmeError::Key {
        what: "tls-alpn-01 certificate",
        reason: e.to_string(),
    })
}

/// Removes the challenge answers when the order ends, however it ends.
struct ChallengeGuard<'a> {
    resolver: &'a CertResolver,
    tokens: &'a Http01Tokens,
    sni: Vec<String>,
    http_tokens: Vec<String>,
}

impl Drop for ChallengeGuard<'_> {
    fn drop(&mut self) {
        for sni in &self.sni {
            self.resolver.remove_challenge(sni);
        }
        for token in &self.http_tokens {
            self.tokens.remove(token);
        }
    }
}

/// Runs one order to the end: account, order, `tls-alpn-01` answered
/// through `resolver` (or `http-01` through `tokens`), a new key and its
/// CSR, the chain. Stores the key and chain in the data dir. The
/// resolver's current certificate is not touched (the caller sets it), so
/// the old one serves until then.
pub async fn obtain(
    settings: &AcmeSettings,
    resolver: &CertResolver,
    tokens: &Http01Tokens,
) -> Result<Issued, AcmeError> {
    let host = settings.host.clone();
    match tokio::time::timeout(ORDER_TIMEOUT, order(settings, resolver, tokens)).await {
        Ok(result) => result,
        Err(_) => Err(AcmeError::TimedOut { host }),
    }
}

async fn order(
    settings: &AcmeSettings,
    resolver: &CertResolver,
    tokens: &Http01Tokens,
) -> Result<Issued, AcmeError> {
    std::fs::create_dir_all(&settings.dir).map_err(|source| AcmeError::Write {
        path: settings.dir.clone(),
        source,
    })?;
    let account = account(settings).await?;
    match order_with(settings, resolver, tokens, &account).await {
        Err(AcmeError::Protocol {
            unknown_account: true,
            ..
        }) => {
            // A CA whose state was reset: a new account at the next try.
            let path = settings.dir.join(ACCOUNT_FILE);
            tracing::warn!(path = %path.display(), "the ACME server does not know our account; a new one is made at the next try");
            let _ = std::fs::remove_file(&path);
            Err(AcmeError::OrderFailed {
                host: settings.host.clone(),
                status: "with an unknown account".into(),
            })
        }
        other => other,
    }
}

async fn order_with(
    settings: &AcmeSettings,
    resolver: &CertResolver,
    tokens: &Http01Tokens,
    account: &Account,
) -> Result<Issued, AcmeError> {
    let identifiers = [settings.identifier()];
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(profile) = settings.wanted_profile() {
        // Only a profile the directory offers (Pebble 2.4 offers none).
        if account.profiles().any(|p| p.name == profile) {
            new_order = new_order.profile(profile);
        } else {
            tracing::info!(
                profile,
                "the ACME directory does not offer this profile; ordering without one"
            );
        }
    }
    let mut order = account
        .new_order(&new_order)
        .await
        .map_err(settings.protocol("new order"))?;
    let mut guard = ChallengeGuard {
        resolver,
        tokens,
        sni: vec![],
        http_tokens: vec![],
    };
    let (kind, name) = if settings.http01 {
        (ChallengeType::Http01, "http-01")
    } else {
        (ChallengeType::TlsAlpn01, "tls-alpn-01")
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(settings.protocol("authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::AuthorizationFailed {
                        host: settings.host.clone(),
                        status: format!("{other:?}"),
                    })
                }
            }
            let mut challenge =
                authz
                    .challenge(kind.clone())
                    .ok_or_else(|| AcmeError::NoChallenge {
                        kind: name,
                        host: settings.host.clone(),
                    })?;
            let key_authorization = challenge.key_authorization();
            if settings.http01 {
                tokens.add(&challenge.token, key_authorization.as_str());
                guard.http_tokens.push(challenge.token.clone());
            } else {
                let sni = challenge_sni(&settings.host);
                let digest = key_authorization.digest();
                resolver.add_challenge(&sni, challenge_cert(&settings.host, digest.as_ref())?);
                guard.sni.push(sni);
            }
            challenge
                .set_ready()
                .await
                .map_err(settings.protocol("challenge ready"))?;
        }
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(ORDER_TIMEOUT);
    let status = order
        .poll_ready(&polling)
        .await
        .map_err(settings.protocol("order validation"))?;
    drop(guard);
    if status != OrderStatus::Ready {
        return Err(AcmeError::OrderFailed {
            host: settings.host.clone(),
            status: format!("{status:?}"),
        });
    }
    let key_err = |e: rcgen::Error| AcmeError::Key {
        what: "certificate key or CSR",
        reason: e.to_string(),
    };
    let key = rcgen::KeyPair::generate().map_err(key_err)?;
    let mut params = rcgen::CertificateParams::new(vec![settings.host.clone()]).map_err(key_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(key_err)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(settings.protocol("finalize"))?;
    let chain_pem = order
        .poll_certificate(&polling)
        .await
        .map_err(settings.protocol("certificate download"))?;
    let key_pem = key.serialize_pem();
    let (cert_path, key_path) = (settings.cert_path(), settings.key_path());
    let certified = crate::tls::certified_key_from_pem(
        chain_pem.as_bytes(),
        key_pem.as_bytes(),
        &cert_path,
        &key_path,
    )
    .map_err(|e| AcmeError::Issued(e.to_string()))?;
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| AcmeError::Issued("an empty chain".into()))?;
    let (not_before, not_after) = crate::tls::leaf_validity(leaf).map_err(AcmeError::Issued)?;
    // Key first: a crash between the two leaves a pair that does not
    // match, which the next start treats as no certificate.
    write_atomic(&key_path, key_pem.as_bytes(), true)?;
    write_atomic(&cert_path, chain_pem.as_bytes(), false)?;
    Ok(Issued {
        key: certified,
        not_after,
        renew_at: renewal_due(not_before, not_after, SystemTime::now(), true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renewal_is_at_half_the_lifetime() {
        // Six days, checked on day one: renewed on day three.
        let day = 86_400;
        assert_eq!(renewal_due(at(0), at(6 * day), at(day), false), at(3 * day));
        assert_eq!(renewal_due(at(0), at(6 * day), at(1), true), at(3 * day));
    }

    #[test]
    fn a_stored_certificate_past_half_is_due_at_once() {
        assert!(renewal_due(at(0), at(100), at(80), false) <= at(80));
    }

    #[test]
    fn a_fresh_backdated_certificate_is_not_renewed_in_a_loop() {
        // Backdated so that half its lifetime has passed at issuance.
        let due = renewal_due(at(0), at(100), at(60), true);
        assert_eq!(due, at(80));
        // A lifetime shorter than the floor: still the floor.
        assert_eq!(
            renewal_due(at(0), at(4), at(0), true),
            at(0) + MIN_RENEW_WAIT
        );
    }

    #[test]
    fn validators_name_ip_addresses_by_their_reverse_dns_name() {
        assert_eq!(challenge_sni("127.0.0.1"), "1.0.0.127.in-addr.arpa");
        assert_eq!(challenge_sni("192.0.2.10"), "10.2.0.192.in-addr.arpa");
        assert_eq!(challenge_sni("Node.Example.ORG"), "node.example.org");
        assert!(challenge_sni("2001:db8::1").ends_with(".8.b.d.0.1.0.0.2.ip6.arpa"));
        assert!(challenge_sni("2001:db8::1").starts_with("1.0.0.0."));
    }

    #[test]
    fn an_ip_host_asks_for_the_short_lived_profile() {
        let mut s = AcmeSettings {
            directory: LETS_ENCRYPT_DIRECTORY.into(),
            ca_file: None,
            contact: vec![],
            host: "203.0.113.7".into(),
            profile: String::new(),
            dir: PathBuf::from("acme"),
            http01: false,
        };
        assert_eq!(s.wanted_profile(), Some(IP_PROFILE));
        assert!(matches!(s.identifier(), Identifier::Ip(_)));
        s.host = "node.example.org".into();
        assert_eq!(s.wanted_profile(), None);
        assert!(matches!(s.identifier(), Identifier::Dns(_)));
        s.profile = "tlsserver".into();
        assert_eq!(s.wanted_profile(), Some("tlsserver"));
    }
}
