//! `serve --acme` against Pebble, Let's Encrypt's test ACME server (Debian
//! package `pebble`, installed by .ci/run), all on 127.0.0.1: Pebble's own
//! HTTPS listener has a leaf of a test CA (passed to the node with
//! `--acme-ca-file`), it validates `tls-alpn-01` by connecting to the node's
//! port (its `tlsPort`), and the node orders for the IP address its record
//! names (127.0.0.1). `certificateValidityPeriod` makes certificates short
//! enough that renewal happens inside a test. Clients trust only the root
//! Pebble signs with (new at every Pebble start, read from its management
//! port) and send no SNI, as browsers do for an IP address.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::tls::{client_config, https_get, served_cert, Ca};
use common::{free_port, wait_for, NodeProc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use serde_json::json;

const PEBBLE: &str = "/usr/bin/pebble";

/// A Pebble process; killed when dropped.
struct Pebble {
    child: Child,
    dir: PathBuf,
    ca: Arc<ClientConfig>,
    /// The directory's port.
    port: u16,
    management: u16,
    /// The ports validations connect to: tls-alpn-01 (the node's) and http-01.
    tls_port: u16,
    http_port: u16,
    validity_secs: u64,
}

impl Pebble {
    /// Starts Pebble on free ports; `tls_port` is the node's port.
    fn start(dir: &Path, ca: &Ca, tls_port: u16, validity_secs: u64) -> Pebble {
        let http_port = free_port();
        Self::start_on(
            dir,
            ca,
            [free_port(), free_port(), tls_port, http_port],
            validity_secs,
        )
    }

    /// `ports`: the directory, management, tls-alpn-01 and http-01 ports.
    fn start_on(dir: &Path, ca: &Ca, ports: [u16; 4], validity_secs: u64) -> Pebble {
        let [port, management, tls_port, http_port] = ports;
        assert!(
            Path::new(PEBBLE).exists(),
            "{PEBBLE} is missing: apt-get install pebble (.ci/run does)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let leaf = ca.leaf();
        std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("pebble.log"))
            .unwrap();
        let child = Command::new(PEBBLE)
            .arg("-config")
            .arg(&config_path)
            // No random sleep before validations; no rejected nonces.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order is validated again (a renewal answers a challenge too).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble runs");
        let pebble = Pebble {
            child,
            dir: dir.to_owned(),
            ca: ca.client_config(),
            port,
            management,
            tls_port,
            http_port,
            validity_secs,
        };
        wait_for("Pebble's directory", Duration::from_secs(20), || {
            https_get(pebble.port, "/dir", &pebble.ca).filter(|(s, _)| *s == 200)
        });
        pebble
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// A client configuration trusting only the root this Pebble signs with.
    fn root_trust(&self) -> Arc<ClientConfig> {
        let (status, pem) = https_get(self.management, "/roots/0", &self.ca).unwrap();
        assert_eq!(status, 200, "{pem}");
        let root = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        client_config(&[root])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Stops this Pebble and starts a new one on the same ports (a new
    /// root, and no memory of accounts).
    fn restart(mut self, ca: &Ca) -> Pebble {
        self.stop();
        let ports = [self.port, self.management, self.tls_port, self.http_port];
        Pebble::start_on(&self.dir.clone(), ca, ports, self.validity_secs)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Flags for a node ordering from `pebble`, trusting its HTTPS through
/// `ca_file`.
fn acme_flags(pebble_directory: &str, ca_file: &Path) -> Vec<String> {
    vec![
        "--acme".into(),
        "--acme-directory".into(),
        pebble_directory.into(),
        "--acme-ca-file".into(),
        ca_file.to_str().unwrap().into(),
        "--acme-contact".into(),
        "ops@example.org".into(),
    ]
}

fn spawn_node(dir: &Path, port: u16, flags: &[String]) -> NodeProc {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    NodeProc::spawn_in_env(dir, port, &flags, &[])
}

/// The leaf a handshake trusting `trust` gets, once there is one.
fn wait_cert(node: &NodeProc, trust: &Arc<ClientConfig>, what: &str) -> Vec<u8> {
    wait_for(what, Duration::from_secs(60), || {
        served_cert(node.port, trust)
    })
}

/// Test files in one temporary directory: the node's data, Pebble's.
struct Setup {
    tmp: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    port: u16,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let ca_file = tmp.path().join("test-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Setup {
            tmp,
            ca,
            ca_file,
            port: free_port(),
        }
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn pebble_dir(&self) -> PathBuf {
        self.tmp.path().join("pebble")
    }
}

#[test]
fn a_certificate_is_obtained_served_without_sni_and_renewed_at_half_its_lifetime() {
    let s = Setup::new();
    // 30 s certificates: renewed about 15 s after issuance.
    let pebble = Pebble::start(&s.pebble_dir(), &s.ca, s.port, 30);
    let metrics_port = free_port();
    let mut flags = acme_flags(&pebble.directory(), &s.ca_file);
    flags.extend([
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ]);
    let node = spawn_node(&s.data(), s.port, &flags);
    let trust = pebble.root_trust();
    let first = wait_cert(&node, &trust, "the node to serve a certificate from Pebble");

    // https and wss on the ACME certificate, for a client that trusts
    // only Pebble's root and names the server by IP (no SNI).
    let (status, body) = https_get(node.port, "/health", &trust).unwrap();
    assert_eq!(status, 200, "{body}");
    let mut open = tls_peer(node.port, &trust);
    let pong = open.handshake(false);
    assert_eq!(pong["type"], "pong");
    open.put("acme-before", json!(1));
    open.wait_value("acme-before", &json!(1));
    let stored = s.data().join("acme");
    assert!(stored.join("cert.pem").exists() && stored.join("key.pem").exists());
    assert!(stored.join("account.json").exists());

    // The expiry an operator alerts on: about 30 s ahead.
    let expiry = metric(
        metrics_port,
        "tooldb_tls_certificate_expiry_timestamp_seconds",
    );
    let now = tooldb_node::record::now_ms() as f64 / 1000.0;
    assert!(expiry > now && expiry < now + 60.0, "{expiry} vs {now}");
    assert!(metric(metrics_port, "tooldb_acme_certificates_issued_total") >= 1.0);

    let second = wait_for(
        "a renewed certificate for new handshakes",
        Duration::from_secs(90),
        || served_cert(node.port, &trust).filter(|c| *c != first),
    );
    assert_ne!(first, second);
    // The connection made under the first certificate is still served.
    open.put("acme-after", json!(2));
    open.wait_value("acme-after", &json!(2));
    let log = node.log();
    assert!(log.contains("ACME certificate obtained"), "{log}");
    assert!(!log.contains("ACME order failed"), "{log}");
    assert!(
        log.matches("ACME certificate obtained").count() >= 2,
        "{log}"
    );
    // The node answered a tls-alpn-01 challenge (it offers no other
    // here). Only the first order must: a CA may reuse the still valid
    // authorization for the renewal (Let's Encrypt does; Debian's Pebble
    // did so once in CI despite PEBBLE_AUTHZREUSE=0), and the renewal is
    // proved by the second certificate above.
    let validated = pebble
        .log()
        .matches("set VALID by completed challenge")
        .count();
    assert!(validated >= 1, "{}", pebble.log());
}

/// Also: the real npm tool-db client over wss on the ACME certificate.
#[test]
fn a_restarted_node_serves_its_stored_certificate_without_a_new_order() {
    let s = Setup::new();
    let pebble = Pebble::start(&s.pebble_dir(), &s.ca, s.port, 3600);
    let flags = acme_flags(&pebble.directory(), &s.ca_file);
    let mut node = spawn_node(&s.data(), s.port, &flags);
    let trust = pebble.root_trust();
    let first = wait_cert(&node, &trust, "the first certificate");
    node.kill();

    let node = spawn_node(&s.data(), s.port, &flags);
    let again = wait_cert(&node, &trust, "the certificate after a restart");
    assert_eq!(first, again);
    let log = node.log();
    assert!(
        log.contains("serving the ACME certificate from the data dir"),
        "{log}"
    );
    assert!(!log.contains("ACME: ordering a certificate"), "{log}");

    // The real npm tool-db client (Node.js sends no SNI to an IP address)
    // trusting only Pebble's root: put and get over wss.
    let (_, root_pem) = https_get(pebble.management, "/roots/0", &pebble.ca).unwrap();
    let root_file = s.tmp.path().join("pebble-root.pem");
    std::fs::write(&root_file, root_pem).unwrap();
    let url = format!("wss://127.0.0.1:{}", node.port);
    let r = common::scenario_env(
        "put-get",
        &["--server", &url],
        &[("NODE_EXTRA_CA_CERTS", root_file.to_str().unwrap())],
    );
    assert_eq!(r["connected"], json!({"A": true, "B": true}), "{r}");
    assert_eq!(r["got"], r["put"], "{r}");
}

#[test]
fn a_failed_renewal_keeps_the_old_certificate_and_is_retried_with_backoff() {
    let s = Setup::new();
    // The directory is down at start: the first order fails and is retried.
    let pebble_port = free_port();
    let management = free_port();
    let directory = format!("https://127.0.0.1:{pebble_port}/dir");
    let node = spawn_node(&s.data(), s.port, &acme_flags(&directory, &s.ca_file));
    wait_for("a failed first order", Duration::from_secs(30), || {
        node.log().contains("ACME order failed").then_some(())
    });
    let log = node.log();
    assert!(
        log.contains("TLS handshakes fail until a certificate is obtained"),
        "{log}"
    );
    assert!(log.contains(&format!("127.0.0.1:{pebble_port}")), "{log}");

    let ports = [pebble_port, management, s.port, free_port()];
    let pebble = Pebble::start_on(&s.pebble_dir(), &s.ca, ports, 20);
    let trust = pebble.root_trust();
    let first = wait_cert(&node, &trust, "a certificate once the directory is up");

    // The directory goes away before the renewal: the old certificate stays.
    let mut pebble = pebble;
    pebble.stop();
    wait_for("a failed renewal", Duration::from_secs(60), || {
        node.log()
            .contains("ACME renewal failed; keeping the current certificate")
            .then_some(())
    });
    assert_eq!(served_cert(node.port, &trust), Some(first.clone()));

    // A new Pebble (new root, no accounts): the node makes a new account
    // and gets a certificate from it.
    let pebble = pebble.restart(&s.ca);
    let trust = pebble.root_trust();
    let renewed = wait_cert(&node, &trust, "a certificate from the new Pebble");
    assert_ne!(renewed, first);
    let log = node.log();
    assert!(log.contains("does not know our account"), "{log}");
}

/// With --acme-http-listen the node answers http-01 there (port 80 for a
/// public CA) instead of tls-alpn-01, and still serves the certificate on
/// its TLS port.
#[test]
fn http_01_is_answered_on_the_given_listener() {
    let s = Setup::new();
    let http_port = free_port();
    let ports = [free_port(), free_port(), s.port, http_port];
    let pebble = Pebble::start_on(&s.pebble_dir(), &s.ca, ports, 3600);
    let mut flags = acme_flags(&pebble.directory(), &s.ca_file);
    flags.extend([
        "--acme-http-listen".into(),
        format!("127.0.0.1:{http_port}"),
    ]);
    let node = spawn_node(&s.data(), s.port, &flags);
    let trust = pebble.root_trust();
    wait_cert(&node, &trust, "a certificate validated over http-01");
    let log = node.log();
    assert!(log.contains("answering ACME http-01 validation"), "{log}");
    assert!(log.contains("challenge=\"http-01\""), "{log}");
    // Anything but a pending token is a 404 there.
    let (status, _) = common::http_get(http_port, "/.well-known/acme-challenge/nope").unwrap();
    assert_eq!(status, 404);
}

/// One sample's value from the node's /metrics.
fn metric(port: u16, name: &str) -> f64 {
    let (status, body) = common::http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

/// A raw Tool Db peer over wss trusting `trust`.
fn tls_peer(port: u16, trust: &Arc<ClientConfig>) -> common::RawPeer {
    let stream = common::tls::tls_connect(port, trust).expect("a TLS handshake");
    let (ws, _) = tungstenite::client(
        format!("wss://127.0.0.1:{port}"),
        tungstenite::stream::MaybeTlsStream::Rustls(stream),
    )
    .expect("a websocket over TLS");
    if let tungstenite::stream::MaybeTlsStream::Rustls(s) = ws.get_ref() {
        s.sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    common::RawPeer::on(ws, port)
}
