//! The commands besides `serve`: `discover`, `dht-bootstrap`, `cluster`.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Value};
use tooldb_node::actors::dht_channel::{bootstrap_node, DhtChannel, DhtSettings};
use tooldb_node::messages::dht::{EndpointsFound, JoinTopic};

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received");
}

#[derive(Args)]
pub struct DiscoverArgs {
    #[arg(long, default_value = "tool-db-default")]
    topic: String,
    /// A DHT bootstrap node (HOST:PORT); repeatable. Default: the public ones.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    dht_bootstrap: Vec<String>,
    /// Seconds to keep looking.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Prints each endpoint once, as a JSON line.
struct Printer {
    seen: HashSet<SocketAddrV4>,
}

impl Actor for Printer {
    type Context = Context<Self>;
}

impl Handler<EndpointsFound> for Printer {
    type Result = ();
    fn handle(&mut self, msg: EndpointsFound, _: &mut Self::Context) {
        for ep in msg.endpoints {
            if self.seen.insert(ep) {
                println!(
                    "{}",
                    json!({"host": ep.ip().to_string(), "port": ep.port()})
                );
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "usize")]
struct CountSeen;

impl Handler<CountSeen> for Printer {
    type Result = usize;
    fn handle(&mut self, _: CountSeen, _: &mut Self::Context) -> usize {
        self.seen.len()
    }
}

pub fn discover(args: DiscoverArgs) -> anyhow::Result<()> {
    let found = actix::System::new().block_on(async move {
        let printer = Printer {
            seen: HashSet::new(),
        }
        .start();
        let settings = DhtSettings {
            bootstrap: args.dht_bootstrap,
            port: Some(0),
            ..DhtSettings::default()
        };
        // Passive: port None never announces.
        let dht = DhtChannel::supervised(settings, printer.clone().recipient());
        dht.do_send(JoinTopic {
            topic: args.topic.clone(),
            port: None,
        });
        // The lookup schedule repeats lookups until the deadline.
        actix_rt::time::sleep(Duration::from_secs(args.timeout)).await;
        printer.send(CountSeen).await.unwrap_or(0)
    });
    if found == 0 {
        bail!("no server found for this topic within the timeout");
    }
    Ok(())
}

#[derive(Args)]
pub struct DhtBootstrapArgs {
    /// Address to bind the DHT node's UDP socket (HOST:PORT).
    #[arg(long, default_value = "0.0.0.0:6881")]
    bind: SocketAddr,
}

pub fn dht_bootstrap(args: DhtBootstrapArgs) -> anyhow::Result<()> {
    let dht = bootstrap_node(args.bind)
        .context("cannot start the DHT node")?
        .as_async();
    actix::System::new().block_on(async move {
        let addr = dht.info().await.local_addr();
        println!("{}", json!({"dht_bootstrap": addr.to_string()}));
        tracing::info!(addr = %addr, "DHT bootstrap node running; serves mainline-family clients only");
        wait_for_signal().await;
        drop(dht);
    });
    Ok(())
}

#[derive(Args)]
pub struct ClusterArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value = "tool-db-cluster-demo")]
    topic: String,
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Stop as soon as every server is connected to every other.
    #[arg(long)]
    exit_when_connected: bool,
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let boot = bootstrap_node("127.0.0.1:0".parse()?)
        .context("cannot start the private DHT")?
        .as_async();
    let boot_addr = actix::System::new()
        .block_on(boot.info())
        .local_addr()
        .to_string();
    println!("{}", json!({"event": "dht_bootstrap", "addr": boot_addr}));
    let exe = std::env::current_exe()?;
    let mut children = Children(vec![]);
    let mut ports = vec![];
    for i in 0..args.nodes {
        let port = free_tcp_port()?;
        // Each server's /metrics on a port of its own.
        let metrics = free_tcp_port()?;
        let log = std::fs::File::create(dir.path().join(format!("node{i}.log")))?;
        let child = Command::new(&exe)
            .args([
                "serve",
                "--no-lan",
                "--host",
                "127.0.0.1",
                "--dht-port",
                "0",
                "--topic",
                &args.topic,
            ])
            .args(["--port", &port.to_string(), "--dht-bootstrap", &boot_addr])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("node{i}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a server")?;
        children.0.push(child);
        ports.push(port);
        println!(
            "{}",
            json!({"event": "started", "node": i, "port": port, "metrics_port": metrics})
        );
    }
    let started = Instant::now();
    let deadline = (args.seconds > 0).then(|| started + Duration::from_secs(args.seconds));
    actix::System::new().block_on(async move {
        let client = awc::Client::default();
        let mut known: BTreeMap<(usize, String), String> = BTreeMap::new();
        let mut converged = false;
        let signal = wait_for_signal();
        tokio::pin!(signal);
        loop {
            let mut full = true;
            for (i, port) in ports.iter().enumerate() {
                let url = format!("http://127.0.0.1:{port}/peers");
                let view: Value = match client.get(url).send().await {
                    Ok(mut r) => r.json().limit(16 << 20).await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                let servers = view["servers"].as_array().cloned().unwrap_or_default();
                let mut connected = 0;
                for s in &servers {
                    let port = s["peer"]["port"].as_u64().unwrap_or(0);
                    let state = s["state"].as_str().unwrap_or("?").to_owned();
                    if state == "connected" {
                        connected += 1;
                    }
                    let key = (i, format!("127.0.0.1:{port}"));
                    if known.get(&key) != Some(&state) {
                        println!(
                            "{}",
                            json!({"event": "peer", "node": i, "server": key.1, "state": state,
                                   "at_ms": started.elapsed().as_millis() as u64})
                        );
                        known.insert(key, state);
                    }
                }
                if connected < ports.len() - 1 {
                    full = false;
                }
            }
            if full && !converged {
                converged = true;
                println!(
                    "{}",
                    json!({"event": "all_connected", "nodes": ports.len(),
                           "seconds": started.elapsed().as_secs_f64()})
                );
                if args.exit_when_connected {
                    return Ok(());
                }
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                if converged {
                    return Ok(());
                }
                bail!("the servers did not all connect within {} s", args.seconds);
            }
            tokio::select! {
                _ = &mut signal => return Ok(()),
                _ = actix_rt::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    })?;
    drop(children);
    drop(boot);
    Ok(())
}
