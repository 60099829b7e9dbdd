//! `cargo xtask run` stopped by a SIGTERM to the process it started (what
//! a process manager or a script does) stops the host and frees its port.
//!
//! The tests run `xtask serve` (what `run` does after its build) with a
//! config of the probe component alone, on port 0. They need the release
//! host and the probe: run them with `cargo xtask test`, which builds both.

#![cfg(target_os = "linux")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// How long the host may take to start (compiling the probe: ~0.3 s) and
/// to stop (nothing in flight: at once).
const PATIENCE: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A config that runs the probe alone.
fn config(dir: &Path) -> anyhow::Result<PathBuf> {
    let probe = root().join("target/wasm32-wasip2/release/probe.wasm");
    let host = root().join("target/release/rentcar-host");
    for built in [&probe, &host] {
        ensure!(
            built.exists(),
            "{} is missing: run the tests with `cargo xtask test`, which builds it",
            built.display()
        );
    }
    let path = dir.join("probe.toml");
    std::fs::write(
        &path,
        format!("[components.probe]\npath = {probe:?}\nroutes = [\"/probe\"]\n"),
    )?;
    Ok(path)
}

/// A process started in a process group of its own, with whatever it
/// starts; the group is killed when the test ends, whatever happened.
struct Started {
    child: Child,
    /// Lines of its stderr (and its descendants'); disconnects once every
    /// process holding the pipe has exited.
    lines: mpsc::Receiver<String>,
}

impl Started {
    fn spawn(mut command: Command) -> anyhow::Result<Started> {
        let mut child = command
            .process_group(0)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to spawn {command:?}"))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Started { child, lines })
    }

    /// The host's address, from its readiness line, once it has answered
    /// a request (the host prints the line just before it starts waiting
    /// for signals; after an answer it surely waits).
    fn ready(&self) -> anyhow::Result<SocketAddr> {
        let address = self.readiness_line()?;
        let mut stream = TcpStream::connect(address)?;
        stream.write_all(b"GET /probe/seen HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        ensure!(answer.starts_with("HTTP/1.1 "), "not an HTTP answer: {answer:?}");
        Ok(address)
    }

    fn readiness_line(&self) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + PATIENCE;
        let mut log = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = line.strip_prefix("listening on http://") {
                        return Ok(address.parse()?);
                    }
                    log.push(line);
                }
                Err(_) => bail!("no readiness line:\n{}", log.join("\n")),
            }
        }
    }

    fn terminate(&self) -> anyhow::Result<()> {
        kill_process(pid(self.child.id())?, Signal::TERM)?;
        Ok(())
    }

    /// Waits until every process holding its stderr has exited, and
    /// returns how the process we started ended.
    fn wait_all(&mut self) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("a process still holds the host's stderr: still running"),
            }
        }
        Ok(self.child.wait()?)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // The group's id is the id of the process we started.
        if let Ok(group) = pid(self.child.id()) {
            let _ = kill_process_group(group, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

fn pid(id: u32) -> anyhow::Result<Pid> {
    i32::try_from(id)
        .ok()
        .and_then(Pid::from_raw)
        .context("not a process id")
}

fn xtask_serve(config: &Path, data: &Path) -> Command {
    let mut xtask = Command::new(env!("CARGO_BIN_EXE_xtask"));
    xtask
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data);
    xtask
}

/// Once the host has exited, its port can be bound again.
fn assert_port_free(address: SocketAddr) -> anyhow::Result<()> {
    TcpListener::bind(address).with_context(|| format!("{address} is still held"))?;
    Ok(())
}

#[test]
fn sigterm_to_the_started_process_stops_the_host() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut started = Started::spawn(xtask_serve(&config(dir.path())?, &dir.path().join("data")))?;
    let address = started.ready()?;
    started.terminate()?;
    let status = started.wait_all()?;
    // The host itself got the signal and shut down cleanly: xtask is gone
    // (exec), not killed by the signal with the host left behind.
    ensure!(status.success(), "ended with {status}");
    assert_port_free(address)
}

#[test]
fn the_host_stops_when_a_parent_that_does_not_exec_is_terminated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let xtask = xtask_serve(&config(dir.path())?, &dir.path().join("data"));
    // A parent that waits for xtask instead of becoming it, as cargo
    // would if it did not exec: a shell.
    let mut parent = Command::new("sh");
    parent
        .arg("-c")
        .arg("\"$@\" & wait")
        .arg("sh")
        .arg(xtask.get_program())
        .args(xtask.get_args());
    let mut started = Started::spawn(parent)?;
    let address = started.ready()?;
    started.terminate()?;
    let status = started.wait_all()?;
    ensure!(!status.success(), "the shell should have died of the signal: {status}");
    assert_port_free(address)
}
