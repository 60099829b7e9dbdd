//! `rentcar-host`: parses the command line, sets up logging, loads the
//! configuration and hands over to the library.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rentcar_host::{Config, Gateway, Runtime};
use tracing_subscriber::EnvFilter;

/// Every request allocates a store, its WASI contexts and the guest's
/// strings; glibc's allocator spent ~10% of the host's CPU on them. Built
/// without transparent huge pages (`no_thp`), which cost 45 MiB of RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Runs the car-rental bounded contexts as sandboxed WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Loads the components of a runtime.toml and serves their HTTP API.
    Serve(Serve),
    /// Deploys a new version of a component to a running host.
    Deploy {
        /// The component to replace, e.g. `payment`.
        name: String,
        /// The new version's wasm file.
        file: PathBuf,
        /// The host's address.
        #[arg(long, env = "RENTCAR_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The admin API's bearer token.
        #[arg(long, env = "RENTCAR_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Prints a bearer token for the API, signed with the host's HS256
    /// secret (`[auth] hs256_secret`, `RENTCAR_JWT_SECRET`, or the one the
    /// host made in its data directory).
    Token {
        /// Whom the token stands for (`sub`); a customer's orders are theirs.
        #[arg(long)]
        sub: String,
        /// A role (repeat for several): `customer`, `admin`.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// How long the token is valid: `90s`, `15m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = rentcar_host::parse_ttl)]
        ttl: Duration,
        /// The runtime configuration (issuer, audience, secret).
        #[arg(long, env = "RENTCAR_CONFIG", default_value = "runtime.toml")]
        config: PathBuf,
        /// The host's data directory (overrides `server.data_dir`).
        #[arg(long, env = "RENTCAR_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Secret of HS256 tokens (overrides `auth.hs256_secret`).
        #[arg(long, env = "RENTCAR_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
    },
}

#[derive(clap::Args)]
struct Serve {
    /// The runtime configuration.
    #[arg(long, env = "RENTCAR_CONFIG", default_value = "runtime.toml")]
    config: PathBuf,
    /// The node this process is, when the config places components on
    /// nodes (`[nodes.NAME]`): it runs that node's components.
    #[arg(long, env = "RENTCAR_NODE")]
    node: Option<String>,
    /// Address to listen on (overrides `server.listen`, or the node's
    /// url); port 0 picks a free port.
    #[arg(long, env = "RENTCAR_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory of the databases and the event log (overrides
    /// `server.data_dir`).
    #[arg(long, env = "RENTCAR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Directory of the compiled components' cache (overrides
    /// `server.cache_dir`; default: `cache` in the data directory).
    #[arg(long, env = "RENTCAR_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Bearer token of the admin API (overrides `admin.token`).
    #[arg(long, env = "RENTCAR_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Secret of HS256 tokens (overrides `auth.hs256_secret`).
    #[arg(long, env = "RENTCAR_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The secret nodes prove themselves to each other with (overrides
    /// `cluster.secret`).
    #[arg(long, env = "RENTCAR_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Swap a component in (through the readiness gate) whenever its
    /// wasm file changes on disk.
    #[arg(long)]
    watch: bool,
}

impl Serve {
    /// The configuration with the command line's overrides.
    fn config(self) -> anyhow::Result<Config> {
        let mut config = Config::load(&self.config)?;
        if let Some(secret) = self.jwt_secret {
            config.auth.hs256_secret = Some(secret);
        }
        if let Some(secret) = self.cluster_secret {
            config.cluster.secret = Some(secret);
        }
        if let Some(data_dir) = self.data_dir {
            config.server.data_dir = data_dir;
        }
        if self.cache_dir.is_some() {
            config.server.cache_dir = self.cache_dir;
        }
        if let Some(token) = self.admin_token {
            config.admin.token = Some(token);
        }
        config.become_node(self.node.as_deref(), self.listen)?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,cranelift=warn,wasmtime=warn")),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk) must not fail the
        // request that logs: tracing-subscriber would report it with
        // `eprintln!`, which panics when stderr fails.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let serve = match cli.command {
        Command::Serve(serve) => serve,
        Command::Deploy { name, file, url, token } => return deploy(&name, &file, &url, &token).await,
        Command::Token {
            sub,
            roles,
            ttl,
            config,
            data_dir,
            jwt_secret,
        } => {
            let mut config = Config::load(&config)?;
            if let Some(data_dir) = data_dir {
                config.server.data_dir = data_dir;
            }
            if let Some(secret) = jwt_secret {
                config.auth.hs256_secret = Some(secret);
            }
            let token = rentcar_host::token(&config, &sub, &roles, ttl)?;
            writeln!(std::io::stdout(), "{token}").context("cannot print the token")?;
            return Ok(());
        }
    };
    let watch = serve.watch;
    let config = serve.config()?;
    if let Some(node) = &config.this_node {
        tracing::info!(node = %node, components = ?config.local().map(|(name, _)| name).collect::<Vec<_>>(), "this node");
    }
    let addr = config.server.listen;
    let runtime = Runtime::load(config).await?;
    let gateway = Gateway::load(&runtime.config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // Listen for SIGTERM before saying so: a signal sent as soon as the line
    // appears must drain, not kill.
    let shutdown = shutdown_signal()?;
    tracing::info!(addr = %local, console = %format!("http://{local}/console"), "serving");
    // The one line on stderr that tests and scripts wait for (and that
    // must not stop the host when stderr cannot be written).
    let _ = writeln!(std::io::stderr(), "listening on http://{local}");
    rentcar_host::serve(listener, runtime, gateway, watch, shutdown).await
}

/// `rentcar-host deploy`: uploads the file to the admin API and reports.
async fn deploy(name: &str, file: &std::path::Path, url: &str, token: &str) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let endpoint = format!("{}/admin/components/{name}", url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .put(&endpoint)
        .bearer_auth(token)
        .body(wasm)
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{status}: {}", body["message"].as_str().unwrap_or("deploy failed"));
    }
    tracing::info!(component = name, version = %body["version"], previous = %body["previousVersion"], "deployed");
    eprintln!(
        "deployed {name}: version {} (previous {})",
        body["version"], body["previousVersion"]
    );
    Ok(())
}

/// A future that resolves on ctrl-c (SIGINT) or SIGTERM; both are listened
/// for from the moment it is made.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
}
