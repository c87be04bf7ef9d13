//! `berth-shim pause`: the PID-namespace holder of a pod that shares its PID namespace.

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub(crate) fn pause() -> anyhow::Result<()> {
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
