//! `tooldb-node`: the command line. Configuration precedence: defaults <
//! `--config` file < `TOOLDB_*` environment < flags.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tooldb_node::config::Config;

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
    /// Run the server: websocket for Tool Db peers, HTTP /health and /peers.
    Serve(ServeArgs),
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
    /// A DHT bootstrap node (HOST:PORT); repeatable.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    dht_bootstrap: Vec<String>,
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
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    if !config.no_dht {
        tracing::warn!(
            "DHT discovery is not built into this version yet; serving with static --peer entries only"
        );
    }
    let bind = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&bind).with_context(|| format!("cannot listen on {bind}"))?;
    actix::System::new().block_on(async move {
        let node = tooldb_node::server::start(config, listener)?;
        node.run().await.context("server failed")
    })
}
