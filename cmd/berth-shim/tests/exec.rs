//! `berth-shim exec` as berthd runs it, with `sh` standing in for the runtime: it starts the
//! process in the background, writes its pid and exits, as `runc exec --detach --pid-file`
//! does.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The stand-in runtime's script. The process first waits until the runtime (`$1`) is no
/// longer its parent: a shell reaps a child that ends before it does, which runc never does.
fn runtime(process: &str, pid_file: &Path) -> String {
    format!(
        "sh -c 'while [ \"$(cut -d\" \" -f4 /proc/$$/stat)\" = \"$1\" ]; do sleep 0.01; done; {process}' process $$ & echo $! > {}",
        pid_file.display()
    )
}

fn shim_exec(script: &str, pid_file: &Path, stdout: Stdio) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_berth-shim"))
        .arg("exec")
        .arg(pid_file)
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("berth-shim")
        .wait_with_output()
        .expect("berth-shim output");
    (out, start.elapsed())
}

#[test]
fn returns_when_the_process_ends_not_when_its_pipes_close() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The process leaves a child holding stdout for 30 s and exits 7.
    let script = runtime("echo out; sleep 30 & exit 7", &pid_file);
    let (out, took) = shim_exec(&script, &pid_file, Stdio::null());
    assert_eq!(out.status.code(), Some(7));
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_signal_is_128_plus_its_number_and_no_process_is_255() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = runtime("kill -TERM $$", &pid_file);
    let (out, _) = shim_exec(&script, &pid_file, Stdio::null());
    assert_eq!(out.status.code(), Some(128 + 15));
    // The runtime fails: nothing was started.
    let missing = dir.path().join("none");
    let (out, _) = shim_exec("exit 1", &missing, Stdio::null());
    assert_eq!(out.status.code(), Some(255));
    // The output is the process's own.
    let script = runtime("echo hello", &pid_file);
    let (out, _) = shim_exec(&script, &pid_file, Stdio::piped());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(out.status.code(), Some(0));
}
