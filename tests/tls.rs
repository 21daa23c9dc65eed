//! TLS on the websocket port from certificate files (issue 12 part 1): a
//! test CA and leaves for 127.0.0.1 made with rcgen, clients that trust
//! only that CA; wss and https on one port; new files served to new
//! handshakes while open connections stay; bad files refused at start and
//! warned about (old certificate kept) at reload. Clients dial 127.0.0.1
//! by IP address, so their handshakes carry no SNI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::tls::{https_get, served_cert, tls_connect_from, Ca, Leaf};
use common::{cli, free_port, wait_for, NodeProc, RawPeer};
use rustls::ClientConfig;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;

/// The certificate and key files a node serves from.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(leaf: &Leaf) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("chain.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        files.write(leaf);
        files
    }

    /// Rewrites both files in place, certificate first (as a careless
    /// operator would: the watcher sees the pair mismatched for a moment).
    fn write(&self, leaf: &Leaf) {
        std::fs::write(&self.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&self.key, &leaf.key_pem).unwrap();
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            path_str(&self.cert),
            "--tls-key".into(),
            path_str(&self.key),
        ]
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn start_tls_node(files: &Files, config: &Arc<ClientConfig>) -> NodeProc {
    start_tls_node_env(files, config, &[])
}

fn start_tls_node_env(files: &Files, config: &Arc<ClientConfig>, env: &[(&str, &str)]) -> NodeProc {
    let flags = files.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = NodeProc::spawn_env(&flags, env);
    wait_for("the node's https /health", Duration::from_secs(20), || {
        https_get(node.port, "/health", config).filter(|(status, _)| *status == 200)
    });
    node
}

/// A raw Tool Db peer over wss.
fn wss_peer(port: u16, config: &Arc<ClientConfig>) -> RawPeer {
    wss_from("127.0.0.1", port, config).unwrap_or_else(|(status, body)| {
        panic!("the websocket upgrade was refused: {status} {body}")
    })
}

/// A raw Tool Db peer over wss from `source`; Err: the upgrade was
/// refused, with the HTTP status and body.
fn wss_from(source: &str, port: u16, config: &Arc<ClientConfig>) -> Result<RawPeer, (u16, String)> {
    let stream = tls_connect_from(source, port, config).expect("a TLS handshake");
    match tungstenite::client(
        format!("wss://127.0.0.1:{port}"),
        MaybeTlsStream::Rustls(stream),
    ) {
        Ok((ws, _)) => {
            if let MaybeTlsStream::Rustls(s) = ws.get_ref() {
                s.sock
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
            Ok(RawPeer::on(ws, port))
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(common::refusal(&resp))
        }
        Err(e) => panic!("websocket over TLS from {source}: {e}"),
    }
}

/// Ping, put and get through `peer`.
fn ping_put_get(peer: &mut RawPeer, key: &str, value: Value) {
    let pong = peer.handshake(false);
    assert_eq!(pong["type"], "pong");
    peer.put(key, value.clone());
    peer.wait_value(key, &value);
}

#[test]
fn wss_and_https_are_served_from_certificate_files() {
    let ca = Ca::new();
    let config = ca.client_config();
    let leaf = ca.leaf();
    let files = Files::new(&leaf);
    let node = start_tls_node(&files, &config);

    let (status, body) = https_get(node.port, "/health", &config).unwrap();
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "serving");
    let (status, body) = https_get(node.port, "/peers", &config).unwrap();
    assert_eq!(status, 200);
    let peers: Value = serde_json::from_str(&body).unwrap();
    assert!(peers["self"]["address"].is_string(), "{peers}");
    assert_eq!(served_cert(node.port, &config), Some(leaf.der.clone()));

    let mut peer = wss_peer(node.port, &config);
    ping_put_get(&mut peer, "tls-key", json!("over wss"));

    // A second client reads what the first wrote.
    let mut other = wss_peer(node.port, &config);
    other.handshake(false);
    other.wait_value("tls-key", &json!("over wss"));

    // The port speaks TLS only: plain HTTP gets no answer.
    assert_eq!(common::http_get(node.port, "/health"), None);
}

#[test]
fn new_files_serve_new_handshakes_while_open_connections_stay() {
    let ca = Ca::new();
    let config = ca.client_config();
    let first = ca.leaf();
    let files = Files::new(&first);
    let node = start_tls_node(&files, &config);
    let mut open = wss_peer(node.port, &config);
    ping_put_get(&mut open, "before", json!(1));

    let second = ca.leaf();
    files.write(&second);
    wait_for(
        "a new handshake to present the new certificate",
        Duration::from_secs(15),
        || (served_cert(node.port, &config)? == second.der).then_some(()),
    );

    // The connection opened under the old certificate still works.
    ping_put_get(&mut open, "after", json!(2));
    let mut fresh = wss_peer(node.port, &config);
    fresh.handshake(false);
    fresh.wait_value("after", &json!(2));
    assert!(node.log().contains("TLS certificate reloaded"));
}

#[test]
fn unusable_files_at_reload_are_a_warning_and_the_old_certificate_stays() {
    let ca = Ca::new();
    let config = ca.client_config();
    let first = ca.leaf();
    let files = Files::new(&first);
    let node = start_tls_node(&files, &config);

    // A new certificate whose key never comes: the key file keeps the old key.
    let second = ca.leaf();
    std::fs::write(&files.cert, &second.cert_pem).unwrap();
    wait_for("the reload warning", Duration::from_secs(15), || {
        node.log()
            .contains("keeping the old certificate")
            .then_some(())
    });
    let log = node.log();
    assert!(log.contains("does not match the certificate"), "{log}");
    assert_eq!(
        log.matches("keeping the old certificate").count(),
        1,
        "one warning per change"
    );
    assert_eq!(served_cert(node.port, &config), Some(first.der.clone()));
    let mut peer = wss_peer(node.port, &config);
    ping_put_get(&mut peer, "still", json!("old certificate"));

    // Garbage instead of a key: still the old certificate.
    std::fs::write(&files.key, "not a key\n").unwrap();
    wait_for("the second warning", Duration::from_secs(15), || {
        (node.log().matches("keeping the old certificate").count() == 2).then_some(())
    });
    assert_eq!(served_cert(node.port, &config), Some(first.der.clone()));

    // The matching key arrives: the new certificate is served.
    std::fs::write(&files.key, &second.key_pem).unwrap();
    wait_for("the new certificate", Duration::from_secs(15), || {
        (served_cert(node.port, &config)? == second.der).then_some(())
    });
}

#[test]
fn per_address_admission_sees_each_tls_peer_address() {
    let ca = Ca::new();
    let config = ca.client_config();
    let files = Files::new(&ca.leaf());
    let node = start_tls_node_env(
        &files,
        &config,
        &[
            ("TOOLDB_LIMITS__LIMIT_LOOPBACK", "true"),
            ("TOOLDB_LIMITS__MAX_CONNECTIONS_PER_IP", "2"),
        ],
    );
    let _a = wss_from("127.0.0.2", node.port, &config).expect("first admitted");
    let _b = wss_from("127.0.0.2", node.port, &config).expect("second admitted");
    let Err((status, body)) = wss_from("127.0.0.2", node.port, &config) else {
        panic!("a third websocket from one address was admitted");
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_connections_per_ip"), "{body}");
    // Another address is another host: still admitted, and served.
    let mut other = wss_from("127.0.0.3", node.port, &config).expect("another host admitted");
    ping_put_get(&mut other, "other-host", json!(true));
}

/// The real npm `tool-db` client (tests/interop's harness) puts and reads
/// back over wss, trusting the test CA through NODE_EXTRA_CA_CERTS.
#[test]
fn the_npm_tool_db_client_puts_and_gets_over_wss() {
    let ca = Ca::new();
    let config = ca.client_config();
    let files = Files::new(&ca.leaf());
    let ca_file = files.cert.with_file_name("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let node = start_tls_node(&files, &config);
    let url = format!("wss://127.0.0.1:{}", node.port);
    let r = common::scenario_env(
        "put-get",
        &["--server", &url],
        &[("NODE_EXTRA_CA_CERTS", &path_str(&ca_file))],
    );
    assert_eq!(r["connected"], json!({"A": true, "B": true}), "{r}");
    assert!(!r["put"].is_null(), "{r}");
    assert_eq!(r["got"], r["put"], "{r}");
}

/// The real npm `tool-db` client subscribes over wss and sees every later
/// put another client makes (issue 12 point 4: put, get and subscribe).
#[test]
fn the_npm_tool_db_client_subscribes_over_wss() {
    let ca = Ca::new();
    let config = ca.client_config();
    let files = Files::new(&ca.leaf());
    let ca_file = files.cert.with_file_name("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let node = start_tls_node(&files, &config);
    let url = format!("wss://127.0.0.1:{}", node.port);
    let r = common::scenario_env(
        "subscribe",
        &["--server", &url, "--updates", "3"],
        &[("NODE_EXTRA_CA_CERTS", &path_str(&ca_file))],
    );
    assert_eq!(r["connected"], json!({"A": true, "B": true}), "{r}");
    assert_eq!(r["put"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(r["received"], r["put"], "{r}");
}

/// Our record says `ssl` when we serve TLS, in pongs and on `/peers`, so
/// browsers and servers that read it dial wss (issue 12 point 3); a plain
/// node's record does not carry the field at all (Tool Db's shape).
#[test]
fn pongs_and_peers_say_the_node_speaks_tls() {
    let ca = Ca::new();
    let config = ca.client_config();
    let files = Files::new(&ca.leaf());
    let node = start_tls_node(&files, &config);
    let mut peer = wss_peer(node.port, &config);
    let pong = peer.handshake(false);
    assert_eq!(pong["servers"][0]["ssl"], json!(true), "{pong}");
    let (_, body) = https_get(node.port, "/peers", &config).unwrap();
    let peers: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(peers["self"]["ssl"], json!(true), "{peers}");

    let plain = NodeProc::start(&[]);
    let (_, pong) = RawPeer::client(plain.port);
    assert!(pong["servers"][0].get("ssl").is_none(), "{pong}");
    assert!(plain.peers()["self"].get("ssl").is_none());
}

/// A server given a TLS server as a bare HOST:PORT (as the DHT and the LAN
/// give them) reaches it over wss, verifying its certificate against
/// --tls-ca-file, and records flow; without that CA it does not connect,
/// and the log says why.
#[test]
fn a_server_dials_a_tls_server_over_wss_and_verifies_its_certificate() {
    let ca = Ca::new();
    let config = ca.client_config();
    let files = Files::new(&ca.leaf());
    let ca_file = files.cert.with_file_name("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let a = start_tls_node(&files, &config);
    let a_id = json!(serde_json::from_str::<Value>(
        &https_get(a.port, "/health", &config).unwrap().1
    )
    .unwrap()["clientId"]
        .clone());
    let peer = format!("127.0.0.1:{}", a.port);

    let b = NodeProc::start(&["--peer", &peer, "--tls-ca-file", &path_str(&ca_file)]);
    wait_for("B connected to A over wss", Duration::from_secs(30), || {
        common::connected_to(&b, &a_id).then_some(())
    });
    // B's /peers says A speaks TLS (A's record, as B keeps it).
    let servers = b.peers()["servers"].clone();
    let listed = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["clientId"] == a_id)
        .unwrap_or_else(|| panic!("A is not in B's /peers: {servers}"));
    assert_eq!(listed["peer"]["ssl"], json!(true), "{listed}");
    let mut writer = wss_peer(a.port, &config);
    ping_put_get(&mut writer, "over-wss-link", json!("from A"));
    let (mut reader, _) = RawPeer::client(b.port);
    reader.wait_value("over-wss-link", &json!("from A"));

    // Without the CA: no connection, and the log names the certificate.
    let untrusting = NodeProc::start(&["--peer", &peer]);
    let wss_url = format!("wss://127.0.0.1:{}", a.port);
    wait_for(
        "the failed wss dial in the log",
        Duration::from_secs(30),
        || {
            let log = untrusting.log();
            (log.contains(&wss_url) && log.to_lowercase().contains("certificate")).then_some(())
        },
    );
    assert!(!common::connected_to(&untrusting, &a_id));
}

/// Our CLI client puts and gets over wss: with `--tls-ca-file` it reaches
/// a TLS node given as `wss://HOST:PORT` or as a bare HOST:PORT; without
/// the CA it fails and says the certificate is why.
#[test]
fn the_cli_client_puts_and_gets_over_wss() {
    let ca = Ca::new();
    let config = ca.client_config();
    let files = Files::new(&ca.leaf());
    let ca_file = files.cert.with_file_name("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let node = start_tls_node(&files, &config);
    let ca_path = path_str(&ca_file);
    let wss = format!("wss://127.0.0.1:{}", node.port);
    let bare = format!("127.0.0.1:{}", node.port);

    let (ok, out, err) = cli(&[
        "put",
        "cli-wss",
        "\"over wss\"",
        "--peer",
        &wss,
        "--tls-ca-file",
        &ca_path,
    ]);
    assert!(ok, "{err}");
    let put: Value = serde_json::from_str(&out).unwrap();
    let (ok, out, err) = cli(&["get", "cli-wss", "--peer", &bare, "--tls-ca-file", &ca_path]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got, put);
    assert_eq!(got["v"], json!("over wss"));

    let (ok, _, err) = cli(&["get", "cli-wss", "--peer", &wss, "--timeout", "3"]);
    assert!(!ok, "a get without the CA succeeded");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// Runs `serve` with `extra` flags, expecting it to fail: its stderr.
fn serve_fails(extra: &[String]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let stderr_path = tmp.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--no-dht",
            "--no-lan",
            "--metrics-listen",
            "off",
        ])
        .arg("--port")
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for("serve to exit", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!status.success(), "serve {extra:?} succeeded: {stderr}");
    stderr
}

#[test]
fn bad_files_at_start_are_one_clear_error() {
    let ca = Ca::new();
    let leaf = ca.leaf();
    let other = ca.leaf();
    let files = Files::new(&leaf);
    let dir = files.cert.parent().unwrap().to_owned();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let missing = dir.join("missing.pem");
    let s = |p: &Path| path_str(p);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-cert".into(), s(&files.cert)],
            "only the certificate was given",
        ),
        (
            vec!["--tls-key".into(), s(&files.key)],
            "only the key was given",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&missing),
                "--tls-key".into(),
                s(&files.key),
            ],
            "cannot read the TLS certificate file",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&garbage),
                "--tls-key".into(),
                s(&files.key),
            ],
            "holds no PEM certificate",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&files.cert),
                "--tls-key".into(),
                s(&garbage),
            ],
            "holds no PEM private key",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&files.cert),
                "--tls-key".into(),
                s(&other_key),
            ],
            "does not match the certificate",
        ),
        (
            vec![
                "--acme".into(),
                "--tls-cert".into(),
                s(&files.cert),
                "--tls-key".into(),
                s(&files.key),
            ],
            "exclude each other",
        ),
    ];
    for (flags, expected) in cases {
        let stderr = serve_fails(&flags);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{flags:?}: {stderr}");
        assert!(errors[0].contains(expected), "{flags:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{flags:?}: {stderr}");
    }
}
