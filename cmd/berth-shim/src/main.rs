//! berth-shim: the small per-pod / per-container helper process.
//!
//! Today it has one mode, `pause`: the holder process of a pod that shares its PID namespace
//! (berth needs no pause image). It sleeps until told to stop and reaps orphans, as PID 1 of a
//! namespace must.

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "pause" => pause(),
        "--version" | "version" => {
            println!("berth-shim {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => bail!("unknown mode {other:?}; usage: berth-shim pause"),
    }
}

fn pause() -> anyhow::Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(s);
    }
    // Blocked so they queue for sigwait instead of running default actions (PID 1 ignores
    // default-action signals anyway, which would make it unkillable).
    signals.thread_block().context("blocking signals")?;
    loop {
        match signals.wait().context("waiting for signals")? {
            Signal::SIGCHLD => reap(),
            _ => return Ok(()),
        }
    }
}

fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
