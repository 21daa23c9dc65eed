//! `tooldb-node`: the command line. Configuration precedence: defaults <
//! `--config` file < `TOOLDB_*` environment < flags.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tooldb_node::client::{Client, DEFAULT_REQUEST_TIMEOUT};
use tooldb_node::config::{Config, LogFormat};
use tooldb_node::crypto::KeyScheme;

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
    /// Log lines on stderr: text (colour only on a terminal) or json (one
    /// object per line). Default: text, or `log_format` in serve's config.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: websocket for Tool Db peers, HTTP /health and /peers;
    /// announces itself and finds the other servers of its topic on the DHT.
    // Boxed: the server has many more flags than the client commands.
    Serve(Box<ServeArgs>),
    /// Client: sign and write VALUE (JSON, or else a string) under KEY; prints the record.
    Put(PutArgs),
    /// Client: read KEY from the servers, verified; prints the winning record or null.
    Get(KeyArgs),
    /// Client: follow KEY; prints one JSON record per update until killed.
    Watch(KeyArgs),
    /// Client: list the keys starting with PREFIX; prints a JSON array.
    Query(QueryArgs),
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

/// How a client command finds servers and signs.
#[derive(Args)]
struct ClientArgs {
    #[arg(long, default_value = "tool-db-default")]
    topic: String,
    /// A DHT bootstrap node (HOST:PORT); repeatable. Without it and without
    /// --peer, the public Mainline DHT is used. Servers on the LAN are
    /// found too, unless --no-lan.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    dht_bootstrap: Vec<String>,
    /// A server (HOST:PORT, or ws:// / wss://HOST:PORT); repeatable.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// The key that signs records, created if missing (default: a new key
    /// each run). Not the peer identity: each run has a fresh one.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Scheme of a new key: secp256k1 or p256.
    #[arg(long, default_value = "secp256k1", value_parser = parse_scheme)]
    key_scheme: KeyScheme,
    /// Seconds to find a server; also caps each request's wait.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Proof of work: leading zeros in record hashes.
    #[arg(long, default_value_t = 0)]
    pow: u32,
    /// Do not look for servers on the LAN (mDNS).
    #[arg(long)]
    no_lan: bool,
    /// An extra PEM root CA to trust for wss servers (besides the webpki
    /// roots); a server is dialed with wss:// for `--peer wss://HOST:PORT`,
    /// port 443, or when ws:// is refused.
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
    /// A WebTorrent websocket tracker (ws:// or wss://) to find servers
    /// on, by topic (and by --server-name); repeatable. With it and no
    /// --dht-bootstrap, the public DHT is not searched.
    #[arg(long = "tracker", value_name = "URL")]
    trackers: Vec<String>,
    /// Also find the server announced under this name on the trackers.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Also find servers on Hyperswarm (the HyperDHT, sha256(topic)); then
    /// the public Mainline DHT is used only with --dht-bootstrap.
    #[arg(long)]
    hyperswarm: bool,
    /// A HyperDHT bootstrap node (HOST:PORT); repeatable. Default: the
    /// public ones.
    #[arg(long = "hyperswarm-bootstrap", value_name = "HOST:PORT")]
    hyperswarm_bootstrap: Vec<String>,
}

fn parse_scheme(s: &str) -> Result<KeyScheme, String> {
    match s {
        "secp256k1" => Ok(KeyScheme::Secp256k1),
        "p256" => Ok(KeyScheme::P256),
        other => Err(format!("unknown key scheme {other:?} (secp256k1 or p256)")),
    }
}

#[derive(Args)]
struct PutArgs {
    key: String,
    /// JSON; text that is not JSON is stored as a string.
    value: String,
    /// Write under our user namespace (:ADDRESS.KEY).
    #[arg(long)]
    user: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct KeyArgs {
    key: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct QueryArgs {
    prefix: String,
    #[command(flatten)]
    client: ClientArgs,
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
    /// The host our signed peer record names (what others dial, and what
    /// --acme orders a certificate for): a DNS name or an IP address.
    #[arg(long, value_name = "HOST")]
    public_host: Option<String>,
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
    /// Do not find or announce servers on the LAN (mDNS).
    #[arg(long)]
    no_lan: bool,
    /// Proof of work: leading zeros required in record hashes.
    #[arg(long)]
    pow: Option<u32>,
    /// Serve Prometheus metrics at /metrics on HOST:PORT, or "off"
    /// (default 127.0.0.1:9464).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// TLS on the websocket port (wss, https): the PEM certificate chain,
    /// leaf first. Needs --tls-cert and --tls-key; both are reloaded when
    /// they change.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// An extra PEM root CA to trust when dialing wss servers (besides the
    /// webpki roots and --acme-ca-file).
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
    /// TLS with a certificate obtained and renewed over ACME (default: Let's
    /// Encrypt) for --public-host, validated by tls-alpn-01 on this port
    /// (the CA connects to port 443). Kept in DATA_DIR/acme.
    #[arg(long)]
    acme: bool,
    /// The ACME directory URL (default: Let's Encrypt production).
    #[arg(long, value_name = "URL")]
    acme_directory: Option<String>,
    /// An extra PEM root CA to trust for the ACME directory's HTTPS.
    #[arg(long, value_name = "FILE")]
    acme_ca_file: Option<PathBuf>,
    /// Answer ACME http-01 validation on HOST:PORT (the CA connects to
    /// port 80) instead of tls-alpn-01 on the websocket port.
    #[arg(long, value_name = "HOST:PORT")]
    acme_http_listen: Option<String>,
    /// A contact e-mail address for the ACME account; repeatable.
    #[arg(long = "acme-contact", value_name = "EMAIL")]
    acme_contact: Vec<String>,
    /// Announce on this WebTorrent websocket tracker (ws:// or wss://), as
    /// Tool Db's hybrid adapter does, by server name and by topic;
    /// repeatable.
    #[arg(long = "tracker", value_name = "URL")]
    trackers: Vec<String>,
    /// The name browsers find this server by on the trackers (default:
    /// the node's address).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Also join sha256(topic) on the HyperDHT (Hyperswarm, with
    /// holepunching) and speak Tool Db over its connections.
    #[arg(long)]
    hyperswarm: bool,
    /// A HyperDHT bootstrap node (HOST:PORT); repeatable. Default: the
    /// public HyperDHT bootstrap nodes.
    #[arg(long = "hyperswarm-bootstrap", value_name = "HOST:PORT")]
    hyperswarm_bootstrap: Vec<String>,
}

impl ServeArgs {
    fn to_config(&self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        if let Some(v) = &self.topic {
            c.topic = v.clone();
        }
        if let Some(v) = &self.host {
            c.host = v.clone();
        }
        if let Some(v) = self.port {
            c.port = v;
        }
        if let Some(v) = &self.public_host {
            c.public_host = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if !self.peers.is_empty() {
            c.peers = self.peers.clone();
        }
        if !self.dht_bootstrap.is_empty() {
            c.dht_bootstrap = self.dht_bootstrap.clone();
        }
        if let Some(v) = self.dht_port {
            c.dht_port = v;
        }
        if self.no_dht {
            c.no_dht = true;
        }
        if self.no_lan {
            c.lan = false;
        }
        if let Some(v) = self.pow {
            c.pow = v;
        }
        if let Some(v) = &self.metrics_listen {
            c.metrics_listen = v.clone();
        }
        if let Some(v) = &self.tls_cert {
            c.tls.cert_file = v.clone();
        }
        if let Some(v) = &self.tls_key {
            c.tls.key_file = v.clone();
        }
        if let Some(v) = &self.tls_ca_file {
            c.tls.ca_file = v.clone();
        }
        if self.acme {
            c.acme.enabled = true;
        }
        if let Some(v) = &self.acme_directory {
            c.acme.directory = v.clone();
        }
        if let Some(v) = &self.acme_ca_file {
            c.acme.ca_file = v.clone();
        }
        if let Some(v) = &self.acme_http_listen {
            c.acme.http_listen = v.clone();
        }
        if !self.acme_contact.is_empty() {
            c.acme.contact = self.acme_contact.clone();
        }
        if !self.trackers.is_empty() {
            c.trackers.urls = self.trackers.clone();
        }
        if let Some(v) = &self.server_name {
            c.trackers.server_name = v.clone();
        }
        tooldb_node::server::tracker_urls(&c.trackers.urls)?;
        if self.hyperswarm {
            c.hyperswarm.enabled = true;
        }
        if !self.hyperswarm_bootstrap.is_empty() {
            c.hyperswarm.bootstrap = self.hyperswarm_bootstrap.clone();
        }
        // Checked here too, so the error names the flags before anything starts.
        c.tls.files()?;
        Ok(c)
    }
}

/// The log format in force, once logging is set up.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Caps glibc's malloc arenas at the core count (at least 2), unless the
/// operator set `MALLOC_ARENA_MAX`. glibc makes up to 8 per core, one per
/// thread that allocates (actix workers, the crypto and storage pools,
/// sled's threads), and each keeps what it freed: a 30 MB burst to a
/// stuck subscriber grew the node by 38-51 MiB, 32-35 with 2 arenas.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// How often a server hands freed memory back to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands the pages malloc holds free back to the system, every
/// `TRIM_EVERY`. glibc returns memory only from the top of an arena, so
/// after a burst (or the HTTP buffers of thousands of upgrades) the free
/// pages between live allocations stayed resident: `versus_js` saw ~50 MiB
/// kept after its bursts. malloc_trim(0) releases them (MADV_DONTNEED); it
/// walks the free lists, well under a millisecond at these sizes.
fn start_malloc_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only releases free memory; it takes
                // the arenas' locks itself.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no malloc trimmer: freed memory stays resident");
        }
    }
}

fn main() -> std::process::ExitCode {
    cap_malloc_arenas();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if LOG_FORMAT.get() == Some(&LogFormat::Json) {
                // Machines read stderr as JSON lines: the last one too.
                tracing::error!(error = format!("{e:#}"), "exiting");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Client commands print JSON on stdout; their log stays quiet by default.
    let default_level = match cli.command {
        Command::Put(_) | Command::Get(_) | Command::Watch(_) | Command::Query(_) => "warn",
        _ => "info",
    };
    // Serve's configuration may name the log format: load it first.
    let config = match &cli.command {
        Command::Serve(args) => Some(args.to_config()?),
        _ => None,
    };
    let format = cli
        .log_format
        .or(config.as_ref().map(|c| c.log_format))
        .unwrap_or(LogFormat::Text);
    init_logging(default_level, format);
    match cli.command {
        Command::Serve(args) => serve(config.map_or_else(|| args.to_config(), Ok)?),
        Command::Discover(args) => cli::discover(args),
        Command::DhtBootstrap(args) => cli::dht_bootstrap(args),
        Command::Cluster(args) => cli::cluster(args),
        Command::Put(args) => client_put(args),
        Command::Get(args) => client_get(args),
        Command::Watch(args) => client_watch(args),
        Command::Query(args) => client_query(args),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `default_level`): as
/// text, with ANSI colours only when stderr is a terminal, or as one JSON
/// object per line.
fn init_logging(default_level: &str, format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    let _ = LOG_FORMAT.set(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .init(),
    }
}

/// Runs a client command: connects (failing if no server is found within
/// `--timeout`), runs `f`, closes.
fn with_client<F, Fut>(args: ClientArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    anyhow::ensure!(
        args.timeout.is_finite() && args.timeout > 0.0,
        "--timeout must be a positive number of seconds"
    );
    let timeout = Duration::from_secs_f64(args.timeout);
    if let Some(ca) = &args.tls_ca_file {
        tooldb_node::transport::trust_extra_roots(std::slice::from_ref(ca))?;
    }
    let mut b = Client::builder()
        .topic(args.topic)
        .peers(args.peers.iter().cloned())
        .key_scheme(args.key_scheme)
        .pow(args.pow)
        .connect_timeout(timeout)
        .request_timeout(timeout.min(DEFAULT_REQUEST_TIMEOUT));
    if let Some(path) = args.key_file {
        b = b.key_file(path);
    }
    if !args.no_lan {
        b = b.lan();
    }
    if !args.trackers.is_empty() {
        b = b.trackers(args.trackers.iter().cloned());
    }
    if let Some(name) = args.server_name {
        b = b.server_name(name);
    }
    let hyperswarm = args.hyperswarm || !args.hyperswarm_bootstrap.is_empty();
    if hyperswarm {
        b = b.hyperswarm(args.hyperswarm_bootstrap);
    }
    if !args.dht_bootstrap.is_empty() {
        b = b.dht_bootstrap(args.dht_bootstrap);
    } else if args.peers.is_empty() && args.trackers.is_empty() && !hyperswarm {
        b = b.public_dht();
    }
    actix::System::new().block_on(async move {
        let client = b.connect().await?;
        let result = f(client.clone()).await;
        client.close();
        result
    })
}

/// Prints one line of JSON on stdout, flushed (watchers read line by line).
fn print_line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// `put KEY VALUE`: VALUE as JSON, falling back to a JSON string.
fn client_put(args: PutArgs) -> anyhow::Result<()> {
    let value = serde_json::from_str(&args.value)
        .unwrap_or_else(|_| serde_json::Value::String(args.value.clone()));
    let (key, user) = (args.key, args.user);
    with_client(args.client, |client| async move {
        let record = if user {
            client.put_user(&key, value).await?
        } else {
            client.put(&key, value).await?
        };
        print_line(record.raw())
    })
}

fn client_get(args: KeyArgs) -> anyhow::Result<()> {
    let key = args.key;
    with_client(args.client, |client| async move {
        let record = client.get(&key).await?;
        report_bad_servers(&client).await;
        print_line(record.as_ref().map_or("null", |r| r.raw()))
    })
}

fn client_watch(args: KeyArgs) -> anyhow::Result<()> {
    let key = args.key;
    with_client(args.client, |client| async move {
        let mut updates = client.subscribe(&key).await?;
        while let Some(record) = updates.next().await {
            print_line(record.raw())?;
        }
        anyhow::bail!("the client stopped")
    })
}

fn client_query(args: QueryArgs) -> anyhow::Result<()> {
    let prefix = args.prefix;
    with_client(args.client, |client| async move {
        let keys = client.query(&prefix).await?;
        print_line(&serde_json::to_string(&keys)?)
    })
}

/// Says on stderr which servers answered with forged records.
async fn report_bad_servers(client: &Client) {
    for bad in client.bad_servers().await.unwrap_or_default() {
        eprintln!(
            "warning: server {} ({}) sent a forged record of {:?}: {}",
            bad.endpoint, bad.address, bad.key, bad.reason
        );
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let bind = format!("{}:{}", config.host, config.port);
    let listener: TcpListener = bind
        .parse::<SocketAddr>()
        .ok()
        .map_or_else(|| TcpListener::bind(&bind), TcpListener::bind)
        .with_context(|| format!("cannot listen on {bind}"))?;
    start_malloc_trimmer();
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
