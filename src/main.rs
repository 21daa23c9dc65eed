//! `tooldb-node`: the command line. Configuration precedence: defaults <
//! `--config` file < `TOOLDB_*` environment < flags.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tooldb_node::config::Config;

mod cli;

#[derive(Parser)]
#[command(
    name = "tooldb-node",
    version,
    about = "A Rust server for Tool Db networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: websocket for Tool Db peers, HTTP /health and /peers;
    /// announces itself and finds the other servers of its topic on the DHT.
    Serve(ServeArgs),
    /// Look a topic up on the DHT without announcing; print each server
    /// endpoint found as one JSON line {"host":..,"port":..}.
    Discover(cli::DiscoverArgs),
    /// Run a plain DHT node with no bootstrap of its own: the first node of
    /// a private DHT. It serves mainline-family clients (this program, the
    /// Rust `mainline` crate) only: JS `bittorrent-dht`/`discovery-channel`
    /// and libtorrent use 2-byte KRPC transaction ids, which it ignores.
    DhtBootstrap(cli::DhtBootstrapArgs),
    /// Offline demo: a private DHT plus N servers on 127.0.0.1 that find and
    /// connect to each other, printing what happens as JSON lines.
    Cluster(cli::ClusterArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see config/default.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    topic: Option<String>,
    /// Address to bind.
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A server to dial and keep connected (HOST:PORT); repeatable.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// A DHT bootstrap node (HOST:PORT); repeatable. Default: the public ones.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    dht_bootstrap: Vec<String>,
    /// UDP port of our DHT node (0 = any free port).
    #[arg(long)]
    dht_port: Option<u16>,
    /// Do not use the DHT.
    #[arg(long)]
    no_dht: bool,
    /// Proof of work: leading zeros required in record hashes.
    #[arg(long)]
    pow: Option<u32>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        if let Some(v) = self.topic {
            c.topic = v;
        }
        if let Some(v) = self.host {
            c.host = v;
        }
        if let Some(v) = self.port {
            c.port = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if !self.peers.is_empty() {
            c.peers = self.peers;
        }
        if !self.dht_bootstrap.is_empty() {
            c.dht_bootstrap = self.dht_bootstrap;
        }
        if let Some(v) = self.dht_port {
            c.dht_port = v;
        }
        if self.no_dht {
            c.no_dht = true;
        }
        if let Some(v) = self.pow {
            c.pow = v;
        }
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args.into_config()?),
        Command::Discover(args) => cli::discover(args),
        Command::DhtBootstrap(args) => cli::dht_bootstrap(args),
        Command::Cluster(args) => cli::cluster(args),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let bind = format!("{}:{}", config.host, config.port);
    let listener: TcpListener = bind
        .parse::<SocketAddr>()
        .ok()
        .map_or_else(|| TcpListener::bind(&bind), TcpListener::bind)
        .with_context(|| format!("cannot listen on {bind}"))?;
    actix::System::new().block_on(async move {
        let node = tooldb_node::server::start(config, listener)?;
        let stopper = node.stopper();
        actix_rt::spawn(async move {
            cli::wait_for_signal().await;
            stopper.stop().await;
        });
        node.run().await.context("server failed")
    })
}
