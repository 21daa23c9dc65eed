//! Logs for machines: no ANSI colour codes when stderr is not a terminal,
//! and `--log-format json` (or `log_format = "json"`) writes one JSON
//! object per line, fatal errors included.

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every line of `log` as a JSON object; panics naming the first that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(v) if v.is_object() => v,
            _ => panic!("not a JSON object: {l:?}\n--- log ---\n{log}"),
        })
        .collect()
}

#[test]
fn a_piped_stderr_gets_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(["serve", "--no-dht", "--no-lan", "--metrics-listen", "off"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the node's /health", Duration::from_secs(20), || {
        http_get(port, "/health").filter(|(s, _)| *s == 200)
    });
    // Something logged per connection too.
    let (mut p, _) = RawPeer::client(port);
    p.ws.close(None).unwrap();
    drop(p);
    child.kill().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child.wait().unwrap();
    assert!(log.contains("serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in a piped log:\n{log:?}"
    );
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let node = NodeProc::start(&["--log-format", "json"]);
    let (mut p, _) = RawPeer::client(node.port);
    p.put("logged", serde_json::json!(1));
    p.wait_value("logged", &serde_json::json!(1));
    let lines = wait_for("the node's 'serving' line", Duration::from_secs(10), || {
        let lines = json_lines(&node.log());
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "serving")
            .then_some(lines)
    });
    let serving = lines
        .iter()
        .find(|l| l["fields"]["message"] == "serving")
        .unwrap();
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["fields"]["port"], node.port);
    assert!(serving["timestamp"].is_string(), "{serving}");
    assert!(!node.log().contains('\u{1b}'));
}

#[test]
fn log_format_can_come_from_the_configuration() {
    let node = NodeProc::start_env(&[], &[("TOOLDB_LOG_FORMAT", "json")]);
    wait_for("a JSON log", Duration::from_secs(10), || {
        let lines = json_lines(&node.log());
        (!lines.is_empty()).then_some(())
    });
}

#[test]
fn a_fatal_error_is_a_json_line_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(["serve", "--no-dht", "--no-lan", "--log-format", "json"])
        .args(["--metrics-listen", "nonsense", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&log);
    let last = lines.last().expect("an error line");
    assert_eq!(last["level"], "ERROR", "{log}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("metrics_listen")),
        "{log}"
    );
}

#[test]
fn an_unknown_log_format_is_refused_with_the_choices() {
    let out = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(["serve", "--log-format", "xml"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("text") && err.contains("json"), "{err}");
}
