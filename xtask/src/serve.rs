//! `cargo xtask run` and `serve`: hand the process over to `rentcar-host
//! serve`.
//!
//! A process manager or a script stops `cargo xtask run` with a SIGTERM to
//! the process it started. On Unix cargo replaces itself with xtask (its
//! `run` execs), so that process is xtask; were xtask to wait for the host
//! as its child, the signal would end xtask alone and leave the host
//! running, holding the port. So xtask `exec`s the host instead: the
//! process that was started *is* the host, and a SIGTERM reaches it (it
//! drains and exits). On Linux the host also gets a parent-death signal
//! (SIGTERM), for a parent that does not exec: when whoever started
//! `cargo xtask run` exits, the host stops too instead of living on as an
//! orphan. (The signal follows the parent *thread*: a parent that spawns
//! it from a thread that ends before the host should stop ends the host.)

use std::path::Path;
use std::process::Command;

/// The process that started xtask, noted when xtask starts: the
/// parent-death signal fires only for a parent that exits after it is set,
/// so one that is already gone by then must be noticed by hand.
pub struct Parent(#[cfg_attr(not(target_os = "linux"), expect(dead_code, reason = "Linux only"))] Option<u32>);

impl Parent {
    pub fn current() -> Parent {
        #[cfg(target_os = "linux")]
        return Parent(rustix::process::getppid().map(|pid| pid.as_raw_pid().unsigned_abs()));
        #[cfg(not(target_os = "linux"))]
        return Parent(None);
    }
}

/// Replaces xtask with `rentcar-host serve` and `args` (the repository's
/// `runtime.toml` unless `args` name a `--config`). Returns only if that
/// fails. Outside Unix, runs the host as a child and waits for it.
pub fn exec(root: &Path, args: &[String], parent: &Parent) -> anyhow::Result<()> {
    let mut host = Command::new(root.join("target/release/rentcar-host"));
    host.arg("serve");
    if !args.iter().any(|arg| arg == "--config" || arg.starts_with("--config=")) {
        host.arg("--config").arg(root.join("runtime.toml"));
    }
    host.args(args);
    replace_with(host, parent)
}

#[cfg(unix)]
fn replace_with(mut host: Command, parent: &Parent) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;

    #[cfg(target_os = "linux")]
    {
        use anyhow::Context as _;
        use rustix::process::{Signal, getppid, set_parent_process_death_signal};

        // Kept across `exec` (the host is not set-user-ID).
        set_parent_process_death_signal(Some(Signal::TERM)).context("failed to set the parent-death signal")?;
        let now = getppid().map(|pid| pid.as_raw_pid().unsigned_abs());
        if now != parent.0 {
            anyhow::bail!("the process that started xtask has exited; not starting the host");
        }
    }
    let err = host.exec();
    Err(anyhow::Error::new(err).context(format!("failed to run {host:?}")))
}

#[cfg(not(unix))]
fn replace_with(mut host: Command, _parent: &Parent) -> anyhow::Result<()> {
    crate::run(&mut host)
}
