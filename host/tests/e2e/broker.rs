//! A real Kafka-protocol broker for the tests: tansu, in memory, started
//! per test process (or per test, when it must go away), and a proxy in
//! front of it that can cut the host off from it.
//!
//! `cargo xtask test` installs tansu into a cache outside the clone and
//! names it in `RENTCAR_TANSU`; for its pass on Kafka it starts one broker,
//! names it in `RENTCAR_TEST_BROKERS` and sets `RENTCAR_TEST_BUS=kafka`, so
//! that every host the tests start runs its events there.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

pub struct Broker {
    child: Child,
    /// `host:port` clients bootstrap from.
    pub address: String,
}

impl Broker {
    /// A broker on a free port of its own.
    pub fn start() -> anyhow::Result<Broker> {
        let port = free_port()?;
        Broker::start_advertising(port, port)
    }

    /// A broker listening on `port` that tells clients to reach it on
    /// `advertised` (a proxy's port).
    pub fn start_advertising(port: u16, advertised: u16) -> anyhow::Result<Broker> {
        let mut command = Command::new(tansu()?);
        command
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().context("cannot start tansu")?;
        let address = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&address).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("tansu did not listen on {address} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker { child, address })
    }
}

impl Broker {
    /// Stops the broker's process where it stands (SIGSTOP): it answers
    /// nothing, and its connections stay open, until [`Broker::resume`].
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused broker go on (SIGCONT), with everything it held.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed: {status}");
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tansu binary: `RENTCAR_TANSU`, else where `cargo xtask test`
/// installs it.
fn tansu() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("RENTCAR_TANSU") {
        Some(path) => PathBuf::from(path),
        None => dirs_cache().join("rentcar/tansu-0.6.0/bin/tansu"),
    };
    if !path.is_file() {
        bail!(
            "{} is missing: run the tests with `cargo xtask test`, which installs tansu",
            path.display()
        );
    }
    Ok(path)
}

/// The user's cache directory, where `cargo xtask test` installs tools.
pub fn dirs_cache() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether the tests run their hosts on Kafka (`RENTCAR_TEST_BUS=kafka`).
pub fn on_kafka() -> bool {
    std::env::var("RENTCAR_TEST_BUS").as_deref() == Ok("kafka")
}

/// The broker every host of this test process shares on Kafka:
/// `RENTCAR_TEST_BROKERS`, else one started for the process (which
/// outlives it: `cargo xtask test` starts and stops its own).
pub fn shared() -> anyhow::Result<String> {
    if let Ok(brokers) = std::env::var("RENTCAR_TEST_BROKERS") {
        return Ok(brokers);
    }
    static SHARED: OnceLock<Broker> = OnceLock::new();
    if let Some(broker) = SHARED.get() {
        return Ok(broker.address.clone());
    }
    let broker = Broker::start()?;
    Ok(SHARED.get_or_init(|| broker).address.clone())
}

/// A copy of `config` (beside `data_dir`) whose events go to the Kafka at
/// `brokers`, under topics and groups of this data directory's own, so
/// that hosts sharing a broker do not meet, and a restarted one finds its
/// own.
pub fn on_broker(config: &Path, data_dir: &Path, brokers: &str) -> anyhow::Result<PathBuf> {
    let mut table: toml::Table = std::fs::read_to_string(config)?.parse()?;
    if table
        .get("bus")
        .and_then(|bus| bus.get("kind"))
        .and_then(toml::Value::as_str)
        == Some("kafka")
    {
        // Already on a broker of its own.
        return Ok(config.to_path_buf());
    }
    let base = config.parent().context("a config file is in a directory")?;
    if let Some(components) = table.get_mut("components").and_then(toml::Value::as_table_mut) {
        for (_, component) in components.iter_mut() {
            if let Some(path) = component.get_mut("path")
                && let Some(relative) = path.as_str()
            {
                *path = toml::Value::String(base.join(relative).display().to_string());
            }
        }
    }
    let digest = {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        data_dir.hash(&mut hasher);
        hasher.finish()
    };
    let bus = table
        .entry("bus")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .context("[bus] is a table")?;
    bus.insert("kind".into(), "kafka".into());
    bus.insert("brokers".into(), brokers.into());
    bus.insert("topic_prefix".into(), format!("t{digest:x}.").into());
    let path = data_dir.with_extension("kafka.toml");
    std::fs::write(&path, toml::to_string(&table)?)?;
    Ok(path)
}

/// A TCP proxy in front of a broker: cut, it drops its connections and
/// refuses new ones, as a broker that went away would.
pub struct Proxy {
    pub port: u16,
    cut: tokio::sync::watch::Sender<Option<CancellationToken>>,
}

impl Proxy {
    /// Listens on a free port and forwards to `target` once cut off no more.
    pub async fn start(target: u16) -> anyhow::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, state) = tokio::sync::watch::channel(Some(CancellationToken::new()));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // `None`: cut; the connection closes at once.
                let Some(open) = state.borrow().clone() else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.cancelled() => {}
                    }
                });
            }
        });
        Ok(Proxy { port, cut })
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        if let Some(open) = self.cut.send_replace(None) {
            open.cancel();
        }
    }

    pub fn restore(&self) {
        self.cut.send_replace(Some(CancellationToken::new()));
    }
}
