//! tooldb-node against the JS Tool Db server (npm `tool-db` with
//! `@tool-db/leveldb-store`, the one tests/interop builds) in one run, each
//! pinned to core 0 with `taskset`, the load generator on core 1:
//!
//! - the ring ceiling: P-256 verifications per second on core 0;
//! - verified puts/s: 4 writers, 1,000 keys, 20,000 pre-signed P-256 puts,
//!   from the first send until the last put of every writer reads back
//!   (puts of one connection are applied in order, so then all are);
//! - peak RSS during that burst;
//! - RSS with N idle clients (each did its ping/pong), and puts/s with them.
//!
//! Figures, not assertions: `cargo bench --bench versus_js` (needs Node.js
//! and `npm ci` in tests/interop; `IDLE=N` sets the idle clients, 10,000 by
//! default; `ONLY=tooldb|js` runs one side; `OURS_LOG=FILE` and
//! `JS_DEBUG=FILE` keep the servers' logs; `OURS_WRAP=CMD` runs ours under
//! a profiler, e.g. `heaptrack -o FILE`). Ratios are what count: this
//! machine is noisy.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tooldb_node::record::{now_ms, sign_record};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

mod common;
use common::{connect, pin_self_to, rss_mib, settled_rss_mib, Ws};

const KEYS: usize = 1000;
const WRITERS: usize = 4;
const PUTS: usize = 20_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child, #[allow(dead_code)] tempfile::TempDir);
impl Drop for Proc {
    /// SIGTERM first, so a profiler wrapping the server (`OURS_WRAP`)
    /// writes its data; SIGKILL after 10 s.
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server on {port} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_ours() -> (Proc, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // OURS_WRAP="heaptrack -o /tmp/ht": a profiler in front of the server.
    let wrap = std::env::var("OURS_WRAP").unwrap_or_default();
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .args(wrap.split_whitespace())
        .args([
            env!("CARGO_BIN_EXE_tooldb-node"),
            "serve",
            "--no-dht",
            "--no-lan",
        ])
        .args(["--metrics-listen", "off"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env(
            "RUST_LOG",
            if std::env::var("OURS_LOG").is_ok() {
                "info"
            } else {
                "warn"
            },
        )
        // The idle clients plus the load's sockets pass the default cap of
        // 10,000 websockets, a policy rather than a cost.
        .env("TOOLDB_LIMITS__MAX_CONNECTIONS", "20000")
        .stderr(match std::env::var("OURS_LOG") {
            Ok(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            Err(_) => Stdio::null(),
        })
        .spawn()
        .expect("taskset runs");
    wait_listening(port);
    (Proc(child, dir), port)
}

fn start_js() -> Option<(Proc, u16)> {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    if !interop.join("node_modules").exists() {
        eprintln!("versus_js: run `npm ci` in tests/interop for the JS server; skipping it");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new("taskset")
        .args(["-c", "0", "node"])
        .arg(interop.join("run.js"))
        .args(["js-server-only", "--js-port", &port.to_string()])
        .args(std::env::var("JS_DEBUG").map(|_| "--debug").ok())
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(match std::env::var("JS_DEBUG") {
            Ok(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            Err(_) => Stdio::null(),
        })
        .spawn()
        .expect("node runs");
    // It prints one JSON line once it listens and its keys are ready.
    let stdout = child.stdout.take().unwrap();
    // Owned from here: killed and waited for on every path.
    let js = Proc(child, dir);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    if ready["ready"] != true {
        eprintln!("versus_js: the JS server did not start: {line}");
        return None;
    }
    wait_listening(port);
    Some((js, port))
}

/// P-256 verifications per second on core 0 (ring, through our verifier).
fn ring_ceiling() -> f64 {
    let key = tooldb_node::crypto::NodeKey::generate(tooldb_node::crypto::KeyScheme::P256);
    let records: Vec<_> = (0..4000)
        .map(|i| sign_record(&key, "k", &json!(i), now_ms()))
        .collect();
    std::thread::spawn(move || {
        pin_self_to(0);
        let t = Instant::now();
        for r in &records {
            tooldb_node::crypto::verify(&r.address, r.hash.as_bytes(), &r.sig).unwrap();
        }
        records.len() as f64 / t.elapsed().as_secs_f64()
    })
    .join()
    .unwrap()
}

/// A get that waits for the answer; None if none comes in `timeout`.
fn get(ws: &mut Ws, key: &str, timeout: Duration) -> Option<Value> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Tool Db drops a message whose id it has seen: every get has its own.
    let id = format!("g{}x{}", now_ms(), N.fetch_add(1, Ordering::Relaxed));
    ws.send(Message::text(
        json!({"type":"get","id":id,"to":[],"key":key}).to_string(),
    ))
    .ok()?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Message::Text(t)) = ws.read() {
            let v: Value = serde_json::from_str(&t).ok()?;
            if v["id"] == id.as_str() {
                return Some(v["data"]["v"].clone());
            }
        }
    }
    None
}

/// CPU seconds (user + system) the process `pid` has used, all threads.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Verified puts/s, peak RSS (MiB) and CPU µs per put of the server `pid`
/// on `port`.
fn burst(port: u16, pid: u32) -> (f64, f64, f64) {
    let loads = writers(port);
    let (mut reader, _) = connect(port);
    if let MaybeTlsStream::Plain(s) = reader.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let started = Instant::now();
    let cpu_before = cpu_secs(pid);
    let finals: Vec<(String, Value)> = loads.iter().map(|l| (l.2.clone(), l.3.clone())).collect();
    let writers: Vec<_> = loads
        .into_iter()
        .map(|(mut ws, frames, _, _)| {
            std::thread::spawn(move || {
                for f in frames {
                    ws.send(Message::text(f)).unwrap();
                }
                ws.flush().unwrap();
                ws
            })
        })
        .collect();
    let _keep: Vec<Ws> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (k, v) in &finals {
        loop {
            let got = get(&mut reader, k, Duration::from_millis(500));
            if got.as_ref() == Some(v) {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("versus_js: {k} never reached {v}; last read {got:?}");
                stop.store(true, Ordering::Relaxed);
                return (f64::NAN, sampler.join().unwrap(), f64::NAN);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_us = (cpu_secs(pid) - cpu_before) * 1e6 / PUTS as f64;
    stop.store(true, Ordering::Relaxed);
    (PUTS as f64 / secs, sampler.join().unwrap(), cpu_us)
}

/// Connected writers with their pre-signed frames (every put of a key is
/// newer than the last), and each one's last key and value.
fn writers(port: u16) -> Vec<(Ws, Vec<String>, String, Value)> {
    // Values differ per burst, so a burst's last puts are its own.
    let burst = now_ms();
    (0..WRITERS)
        .map(|w| {
            let (ws, key) = connect(port);
            let n = PUTS / WRITERS;
            // Each key's puts one ms apart, ending now: a later burst is
            // newer, and nothing is from the future.
            let per_key = (n / (KEYS / WRITERS)) as u64;
            let t0 = now_ms() - per_key;
            let mut last = (String::new(), Value::Null);
            let frames = (0..n)
                .map(|i| {
                    let k = format!("vs-{}", w * (KEYS / WRITERS) + i % (KEYS / WRITERS));
                    let v = json!({"w": w, "i": i, "burst": burst});
                    let t = t0 + (i / (KEYS / WRITERS)) as u64;
                    let rec = sign_record(&key, &k, &v, t);
                    last = (k, v);
                    format!(
                        r#"{{"type":"put","id":"w{w}-{i}-{burst}","to":[],"data":{}}}"#,
                        rec.raw()
                    )
                })
                .collect();
            (ws, frames, last.0, last.1)
        })
        .collect()
}

fn idle_clients(port: u16, n: usize) -> Vec<Ws> {
    (0..n).map(|_| connect(port).0).collect()
}

fn main() {
    pin_self_to(1);
    let idle: usize = std::env::var("IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let ceiling = ring_ceiling();
    println!("versus_js: {PUTS} signed P-256 puts, {WRITERS} writers, {KEYS} keys; servers on core 0, load on core 1");
    println!("ring ceiling: {ceiling:.0} P-256 verifications/s on core 0");
    let mut rows = vec![];
    type Start = fn() -> Option<(Proc, u16)>;
    let servers: [(&str, Start); 2] = [
        ("tooldb-node", || Some(start_ours())),
        ("js tool-db", start_js),
    ];
    let only = std::env::var("ONLY").unwrap_or_default();
    for (name, start) in servers {
        if !only.is_empty() && !name.contains(only.as_str()) {
            continue;
        }
        let Some((proc_, port)) = start() else {
            continue;
        };
        let pid = proc_.0.id();
        let start_rss = rss_mib(pid);
        let (rate, peak, cpu_us) = burst(port, pid);
        // Throughput with half the idle clients connected (the issue's
        // 5,000), memory with all of them.
        let mut clients = idle_clients(port, idle / 2);
        let (rate_idle, _, _) = burst(port, pid);
        clients.extend(idle_clients(port, idle - idle / 2));
        // Let the handshakes settle before reading memory.
        std::thread::sleep(Duration::from_millis(1000));
        let idle_rss = settled_rss_mib(pid);
        drop(clients);
        println!(
            "{name:<12} {rate:>8.0} puts/s ({cpu_us:.0} µs CPU per put)   peak RSS {peak:>6.1} MiB (start {start_rss:.1})   with {} idle: {rate_idle:>8.0} puts/s ({:.0}%)   {idle} idle clients: {idle_rss:>6.1} MiB",
            idle / 2,
            100.0 * rate_idle / rate
        );
        rows.push((name, rate, idle_rss));
    }
    // The machine is noisy: the ceiling again, after the loads, and the
    // ratio taken against the mean of the two.
    let after = ring_ceiling();
    println!("ring ceiling after the loads: {after:.0}/s");
    let ceiling = (ceiling + after) / 2.0;
    if let [(_, ours, ours_mem), (_, js, js_mem)] = rows[..] {
        println!(
            "ratio: {:.1}x the JS server's puts/s, {:.0}% of the ring ceiling (mean); idle memory {:.2}x the JS server's",
            ours / js,
            100.0 * ours / ceiling,
            ours_mem / js_mem
        );
    }
}
