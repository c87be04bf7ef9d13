//! berth-shim: the small helper process berth runs next to containers.
//!
//! * `pause`: the holder process of a pod that shares its PID namespace (berth needs no pause
//!   image). It sleeps until told to stop and reaps orphans, as PID 1 of a namespace must.
//! * `run <shim.json>`: the monitor of one container. It is the container's parent, owns its
//!   stdio, writes the CRI log, records the exit and outlives berthd (see `run.rs`).
//! * `exec <pid file> <runtime> <args…>`: waits for a detached `runc exec`'s process on
//!   berthd's behalf (see `exec.rs`).
//!
//! Synchronous and single-threaded on purpose: one shim per container, so every kilobyte of
//! RSS counts (no async runtime, no argument parser, no tracing).

/// One line on the shim's stderr, which berthd points at the container's shim log file. A
/// write error is ignored (`eprintln!` would panic, and the shim must outlive its log).
macro_rules! diag {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "{} berth-shim[{}]: {}",
            humantime::format_rfc3339_micros(std::time::SystemTime::now()),
            std::process::id(),
            format_args!($($arg)*)
        );
    }};
}

mod console;
mod exec;
mod log;
mod pause;
mod run;
mod runc;
mod server;
mod sys;

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mode = args.next().unwrap_or_default();
    match mode.to_str().unwrap_or_default() {
        "pause" => pause::pause(),
        "run" => match (args.next(), args.next()) {
            (Some(config), None) => std::process::exit(run::run(config.as_ref())),
            _ => bail!("usage: berth-shim run <shim.json>"),
        },
        "exec" => match (args.next(), args.next()) {
            (Some(pid_file), Some(runtime)) => {
                std::process::exit(exec::exec(pid_file.as_ref(), runtime, args.collect()))
            }
            _ => bail!("usage: berth-shim exec <pid file> <runtime> <args...>"),
        },
        "--version" | "version" => {
            println!("berth-shim {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => {
            bail!("unknown mode {other:?}; usage: berth-shim pause | berth-shim run <shim.json>")
        }
    }
}
