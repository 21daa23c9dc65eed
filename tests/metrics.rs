//! Prometheus metrics: a live scrape passes `promtool check metrics`
//! (Debian's `prometheus` package; `.ci/run` installs it), puts move the
//! counters an operator watches, the websocket port does not serve them,
//! and a bad or taken `--metrics-listen` is a clear error.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::record::now_ms;

/// A node with its metrics on a free port; returns it and that port.
fn node_with_metrics() -> (NodeProc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let node = NodeProc::start(&["--metrics-listen", &listen]);
    wait_for("the /metrics listener", Duration::from_secs(10), || {
        http_get(port, "/metrics").filter(|(s, _)| *s == 200)
    });
    (node, port)
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series `series` (name and labels exactly as printed).
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Polls until `series` reaches `at_least`.
fn wait_for_value(port: u16, series: &str, at_least: f64) -> f64 {
    wait_for(series, Duration::from_secs(10), || {
        value(&scrape(port), series).filter(|v| *v >= at_least)
    })
}

/// Runs `promtool check metrics` on `text`; panics with its complaints.
fn promtool_check(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is needed for this test and could not run ({e}): \
             install Debian's `prometheus` package (.ci/run does)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics complains:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_live_scrape_passes_promtool_and_names_what_operators_watch() {
    let (node, port) = node_with_metrics();
    // Something in every family: a client connected and a put made.
    let (mut p, _) = RawPeer::client(node.port);
    p.put("promtool", json!(1));
    wait_for_value(port, "tooldb_puts_accepted_total", 1.0);
    let text = scrape(port);
    promtool_check(&text);
    for name in [
        "tooldb_build_info{version=\"",
        "tooldb_connections{",
        "tooldb_connections_accepted_total",
        "tooldb_connections_closed_total{reason=\"slow_consumer\"}",
        "tooldb_backpressure_pauses_total{reason=\"window\"}",
        "tooldb_frames_received_total",
        "tooldb_sent_bytes_total",
        "tooldb_puts_rejected_total{reason=\"invalid_signature\"}",
        "tooldb_record_verify_duration_seconds_bucket",
        "tooldb_dht_lookups_total{result=\"found\"}",
        "tooldb_dht_announce_duration_seconds_count",
        "tooldb_endpoints_found_total{source=\"dht\"}",
        "tooldb_dial_failures_total{reason=\"connect\"}",
        "tooldb_anti_entropy_rounds_total",
        "tooldb_storage_bytes",
    ] {
        assert!(text.contains(name), "no {name} in the scrape:\n{text}");
    }
    assert!(
        !text.contains(&node.health()["address"].as_str().unwrap()[..20]),
        "no peer address in any label"
    );
    let clients = "tooldb_connections{role=\"client\",direction=\"inbound\"}";
    assert_eq!(value(&text, clients), Some(1.0), "{text}");
    assert!(value(&text, "tooldb_storage_bytes").unwrap() > 0.0);
    assert!(value(&text, "tooldb_record_verify_duration_seconds_count").unwrap() >= 1.0);
    // Its ping and its put.
    assert!(value(&text, "tooldb_frames_received_total").unwrap() >= 2.0);
}

#[test]
fn a_put_moves_accepted_and_a_bad_signature_moves_rejected_by_reason() {
    let (node, port) = node_with_metrics();
    let before = scrape(port);
    assert_eq!(value(&before, "tooldb_puts_accepted_total"), Some(0.0));
    let rejected = "tooldb_puts_rejected_total{reason=\"invalid_signature\"}";
    assert_eq!(value(&before, rejected), Some(0.0));

    let (mut p, _) = RawPeer::client(node.port);
    p.put("counted", json!("yes"));
    wait_for_value(port, "tooldb_puts_accepted_total", 1.0);

    // A record whose signature is another record's: its hash is right, its
    // signature is not.
    let t = now_ms();
    let a = tooldb_node::record::sign_record(&p.key, "forged", &json!(1), t);
    let b = tooldb_node::record::sign_record(&p.key, "forged", &json!(2), t);
    let mut forged: serde_json::Value = serde_json::from_str(b.raw()).unwrap();
    forged["s"] = json!(a.sig);
    p.send(&json!({"type":"put","id":new_message_id(),"to":[p.client_id],"data":forged}));
    p.expect("the error frame", |m| m["type"] == "error");
    let after = wait_for_value(port, rejected, 1.0);
    assert_eq!(after, 1.0);
    let text = scrape(port);
    assert_eq!(
        value(&text, "tooldb_puts_accepted_total"),
        Some(1.0),
        "the forged put is not counted as accepted"
    );
    assert_eq!(
        value(
            &text,
            "tooldb_puts_rejected_total{reason=\"invalid_hash_nonce\"}"
        ),
        Some(0.0)
    );
}

#[test]
fn a_closed_client_is_counted_by_reason_and_leaves_the_gauge() {
    let (node, port) = node_with_metrics();
    let (mut p, _) = RawPeer::client(node.port);
    let open = "tooldb_connections{role=\"client\",direction=\"inbound\"}";
    wait_for_value(port, open, 1.0);
    p.ws.close(None).unwrap();
    let _ = p.recv(Duration::from_secs(2));
    drop(p);
    wait_for_value(
        port,
        "tooldb_connections_closed_total{reason=\"peer_closed\"}",
        1.0,
    );
    wait_for("the gauge back at 0", Duration::from_secs(10), || {
        (value(&scrape(port), open) == Some(0.0)).then_some(())
    });
    assert_eq!(
        value(&scrape(port), "tooldb_connections_accepted_total"),
        Some(1.0)
    );
}

#[test]
fn metrics_are_not_served_on_the_websocket_port() {
    let (node, port) = node_with_metrics();
    let (status, body) = http_get(node.port, "/metrics").expect("the node answers");
    assert_ne!(status, 200, "{body}");
    assert!(!body.contains("tooldb_"), "{body}");
    // And the metrics port serves nothing else.
    let (status, _) = http_get(port, "/health").unwrap();
    assert_eq!(status, 404);
}

#[test]
fn openmetrics_is_served_to_a_scraper_that_asks() {
    use std::io::Read as _;
    let (_node, port) = node_with_metrics();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("# EOF"), "{out}");
}

fn serve_fails(listen: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args([
            "serve",
            "--no-dht",
            "--no-lan",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(free_port().to_string())
        .args(["--metrics-listen", listen, "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started with {listen:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_or_taken_metrics_address_is_a_clear_error() {
    let err = serve_fails("nonsense");
    assert!(
        err.contains("metrics_listen") && err.contains("HOST:PORT"),
        "{err}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = serve_fails(&addr);
    assert!(err.contains("cannot listen for metrics"), "{err}");
}

/// A second node on one machine: the default metrics address is taken
/// (held here, or by another node), and the node serves anyway, without
/// `/metrics`, saying why in its log.
#[test]
fn a_taken_default_metrics_address_only_turns_metrics_off() {
    // Held for the test if free; if not, someone else holds it: taken either way.
    let _held = std::net::TcpListener::bind(tooldb_node::metrics::DEFAULT_LISTEN);
    let node = NodeProc::start(&["--metrics-listen", tooldb_node::metrics::DEFAULT_LISTEN]);
    node.wait_healthy();
    wait_for("the warning", Duration::from_secs(10), || {
        node.log()
            .contains("the default metrics address is taken")
            .then_some(())
    });
}
