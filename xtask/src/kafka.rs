//! The Kafka-protocol broker the tests run against: tansu, installed once
//! into a cache outside the clone (a cold install takes about 15 minutes),
//! and started for the test pass on Kafka.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

const VERSION: &str = "0.6.0";

/// The tansu binary, installed first if missing: under
/// `$XDG_CACHE_HOME/rentcar/` (else `~/.cache/rentcar/`).
pub fn tansu() -> anyhow::Result<PathBuf> {
    let root = crate::cache_dir()?.join(format!("tansu-{VERSION}"));
    let binary = root.join("bin/tansu");
    if !binary.is_file() {
        eprintln!(
            "xtask: installing tansu {VERSION}, a Kafka-protocol broker, into {} (about 15 minutes, once)",
            root.display()
        );
        // Without `dynostore` tansu has no storage engine.
        crate::run(
            crate::cargo()
                .args([
                    "install",
                    &format!("tansu@{VERSION}"),
                    "--locked",
                    "--features",
                    "dynostore",
                    "--root",
                ])
                .arg(&root),
        )?;
    }
    Ok(binary)
}

/// A broker in memory on a free port, stopped when dropped.
pub struct Broker {
    child: Child,
    /// `host:port` for clients.
    pub address: String,
}

impl Broker {
    pub fn start(tansu: &Path) -> anyhow::Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", tansu.display()))?;
        let address = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&address).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("tansu did not listen on {address} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: tansu listens on {address}");
        Ok(Broker { child, address })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
