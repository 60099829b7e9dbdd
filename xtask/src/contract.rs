//! Contract tests: schemathesis (from PyPI, installed once into a virtual
//! environment in the cache) generates requests for every operation of
//! `host/openapi.json`, as the host serves it at `/openapi.json`, and
//! fails on any answer the document does not allow and on any 5xx.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};

const VERSION: &str = "4.32.5";

/// The checks that make a response a contract violation.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// The HS256 secret of the host under test (a throwaway).
const SECRET: &str = "the contract tests' HS256 secret, not a real one";
const ADMIN_TOKEN: &str = "contract-admin-token";

/// schemathesis' `st`, installed first if missing.
pub fn schemathesis() -> anyhow::Result<PathBuf> {
    Ok(crate::python::venv("schemathesis", VERSION)?.join("bin/st"))
}

/// Starts a host on the repository's runtime.toml, gives it a car and an
/// order so that ids lead somewhere, and runs schemathesis against it.
pub fn run(root: &Path, st: &Path) -> anyhow::Result<()> {
    let data = std::env::temp_dir().join(format!("rentcar-contract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let host_binary = root.join("target/release/rentcar-host");
    let mut host = Host::start(root, &host_binary, &root.join("runtime.toml"), &data)?;
    let token = {
        let output = Command::new(&host_binary)
            .args([
                "token", "--sub", "contract", "--role", "customer", "--role", "admin", "--ttl", "2h",
            ])
            .arg("--config")
            .arg(root.join("runtime.toml"))
            .arg("--data-dir")
            .arg(&data)
            .env("RENTCAR_JWT_SECRET", SECRET)
            .output()?;
        anyhow::ensure!(output.status.success(), "rentcar-host token failed");
        String::from_utf8(output.stdout)?.trim().to_string()
    };
    post(&host.address, "/cars", &token, r#"{"name":"Avante","stock":1000}"#)?;
    post(&host.address, "/orders", &token, r#"{"carId":1,"qty":1}"#)?;

    let status = Command::new(st)
        .arg("--config-file")
        .arg(root.join("xtask/schemathesis.toml"))
        .args(["run", &format!("http://{}/openapi.json", host.address)])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        // Stateful chains could stop the very components the other
        // operations need (see xtask/schemathesis.toml).
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40", "--workers", "1", "--no-color"])
        .args(["--generation-database", "none", "--request-timeout", "15"])
        // A health check on the generator, not on the API: now and then it
        // throws away most of one operation's random values (headers must
        // be visible ASCII, say) and gives up, failing a run in which every
        // case passed.
        .args(["--suppress-health-check", "filter_too_much"])
        .arg("--report-dir")
        .arg(root.join("target/schemathesis"))
        .status()
        .context("cannot run schemathesis")?;
    let log = host.stop();
    let _ = std::fs::remove_dir_all(&data);
    if !status.success() {
        eprintln!("---- host log ----\n{log}");
        bail!("the contract tests failed (schemathesis exited with {status})");
    }
    Ok(())
}

struct Host {
    child: Child,
    address: String,
    log: mpsc::Receiver<String>,
}

impl Host {
    fn start(root: &Path, binary: &Path, config: &Path, data: &Path) -> anyhow::Result<Host> {
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .env("RENTCAR_JWT_SECRET", SECRET)
            .env("RENTCAR_ADMIN_TOKEN", ADMIN_TOKEN)
            // The end-to-end tests' cache: loyalty (Python) is compiled once.
            .env("RENTCAR_CACHE_DIR", root.join("target/wasmtime-cache"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (lines, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut early = Vec::new();
        loop {
            let line = log
                .recv_timeout(Duration::from_secs(120))
                .map_err(|_| anyhow::anyhow!("the host did not start:\n{}", early.join("\n")))?;
            if let Some(address) = line.strip_prefix("listening on http://") {
                let address = address.to_string();
                return Ok(Host { child, address, log });
            }
            early.push(line);
        }
    }

    /// Stops the host and returns what it logged.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A POST with a JSON body over a plain connection, expecting a 2xx.
fn post(address: &str, path: &str, token: &str, body: &str) -> anyhow::Result<()> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 2") {
        bail!("POST {path} answered: {answer}");
    }
    Ok(())
}
