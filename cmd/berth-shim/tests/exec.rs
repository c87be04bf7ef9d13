//! `berth-shim exec` as berthd runs it, with `sh` standing in for the runtime: it starts the
//! process in the background and writes its pid, as `runc exec --detach --pid-file` does.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn shim_exec(script: &str, pid_file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth-shim"))
        .arg("exec")
        .arg(pid_file)
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth-shim")
        .wait_with_output()
        .expect("berth-shim output")
}

#[test]
fn returns_when_the_process_ends_not_when_its_pipes_close() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The process leaves a child holding stdout for 30 s and exits 7.
    let script = format!(
        "sh -c 'echo out; sleep 30 & exit 7' & echo $! > {}",
        pid_file.display()
    );
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-shim"))
        .arg("exec")
        .arg(&pid_file)
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_signal_is_128_plus_its_number_and_no_process_is_255() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!("sh -c 'kill -TERM $$' & echo $! > {}", pid_file.display());
    assert_eq!(shim_exec(&script, &pid_file).status.code(), Some(128 + 15));
    // The runtime fails: nothing was started.
    let missing = dir.path().join("none");
    assert_eq!(shim_exec("exit 1", &missing).status.code(), Some(255));
    // The output is the process's own.
    let script = format!("sh -c 'echo hello' & echo $! > {}", pid_file.display());
    let out = shim_exec(&script, &pid_file);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(out.status.code(), Some(0));
}
