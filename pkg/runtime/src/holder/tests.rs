use super::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: needs root (namespaces, mounts, cgroups)");
    false
}

/// The berth-shim binary from this workspace's target dir, or BERTH_SHIM.
fn shim() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BERTH_SHIM") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let found = ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("berth-shim"))
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!("skipping: berth-shim not built (cargo build -p berth-shim, or set BERTH_SHIM)");
    }
    found
}

/// Tears down in reverse order of setup even when an assertion fails: holder, pins, cgroup.
struct Pod {
    dir: tempfile::TempDir,
    cgroup: Option<String>,
    holder: Option<Holder>,
}

impl Pod {
    fn ns_dir(&self) -> PathBuf {
        self.dir.path().join("ns")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(h) = &self.holder {
            let _ = stop_holder(h, Duration::from_millis(100));
        }
        let _ = berth_sys::ns::unpin(&self.ns_dir());
        if let Some(cg) = &self.cgroup {
            let _ = cgroup::remove_pod_cgroup(cg);
            if let Some((parent, _)) = cg.rsplit_once('/') {
                let _ = cgroup::remove_pod_cgroup(parent);
            }
        }
    }
}

fn pod(with_cgroup: bool) -> (Pod, PinnedNamespaces) {
    let mut p = Pod {
        dir: tempfile::tempdir().unwrap(),
        cgroup: None,
        holder: None,
    };
    let pinned = ns::pin_namespaces(
        &p.ns_dir(),
        &[NsKind::Net, NsKind::Ipc, NsKind::Uts],
        Some("holder-test"),
        &[],
    )
    .unwrap();
    if with_cgroup {
        let parent = format!(
            "/berth-holder-test-{}-{}",
            std::process::id(),
            p.dir.path().display().to_string().len()
        );
        p.cgroup = Some(cgroup::create_pod_cgroup(&parent, "pod1", None).unwrap());
    }
    (p, pinned)
}

fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn holder_is_pid1_in_the_pod_namespaces_and_exits_on_sigterm() {
    if !is_root() {
        return;
    }
    let Some(shim) = shim() else { return };
    let (mut p, pinned) = pod(true);
    let t = Instant::now();
    let h = spawn_holder(&shim, &p.ns_dir(), &pinned, p.cgroup.as_deref()).unwrap();
    println!("spawn_holder: {:?}", t.elapsed());
    p.holder = Some(h.clone());

    assert_eq!(
        status_field(h.pid, "NSpid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec![h.pid.to_string(), "1".into()]
    );
    assert_ne!(
        status_field(h.pid, "PPid:"),
        std::process::id().to_string(),
        "holder must not be our child"
    );
    for kind in [NsKind::Net, NsKind::Ipc, NsKind::Uts] {
        let theirs = ns::ns_id(Path::new(&format!("/proc/{}/ns/{}", h.pid, kind.name()))).unwrap();
        assert_eq!(
            theirs,
            ns::ns_id(pinned.get(kind).unwrap()).unwrap(),
            "{kind:?}"
        );
    }
    assert_eq!(h.pidns, p.ns_dir().join("pid"));
    assert!(ns::is_pinned(&h.pidns));
    assert_eq!(
        ns::ns_id(&h.pidns).unwrap(),
        ns::ns_id(Path::new(&format!("/proc/{}/ns/pid", h.pid))).unwrap()
    );
    let cg = p.cgroup.clone().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", h.pid)).unwrap();
    assert!(
        cgroups.lines().any(|l| l.ends_with(&format!(":{cg}"))),
        "{cgroups}"
    );
    assert_eq!(cgroup::cgroup_procs(&cg).unwrap(), vec![h.pid as u64]);
    assert!(is_holder_alive(&h));

    let t = Instant::now();
    stop_holder(&h, Duration::from_secs(5)).unwrap();
    let took = t.elapsed();
    println!("stop_holder (SIGTERM): {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM should have been enough, took {took:?}"
    );
    assert!(!is_holder_alive(&h));
    // Stopping again is a no-op; the cgroup is empty once the holder is reaped by init.
    stop_holder(&h, Duration::from_secs(1)).unwrap();
}

#[test]
fn holder_ignoring_sigterm_is_killed() {
    if !is_root() {
        return;
    }
    let (mut p, pinned) = pod(false);
    // As PID 1 of its namespace, `sleep` has no SIGTERM handler, so the kernel drops SIGTERM:
    // only the SIGKILL escalation can stop it.
    let script = p.dir.path().join("stubborn-shim");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = spawn_holder(&script, &p.ns_dir(), &pinned, None).unwrap();
    p.holder = Some(h.clone());
    // Give sh time to exec sleep so the test exercises a process without handlers.
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    stop_holder(&h, Duration::from_millis(200)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(!is_holder_alive(&h));
}

#[test]
fn missing_shim_fails_cleanly() {
    if !is_root() {
        return;
    }
    let (p, pinned) = pod(false);
    let err = spawn_holder(
        Path::new("/nonexistent/berth-shim"),
        &p.ns_dir(),
        &pinned,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/berth-shim"), "{err}");
    assert!(!p.ns_dir().join("pid").exists());
}

#[test]
fn recycled_pid_is_not_signalled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pid"), b"").unwrap();
    // Our own PID, but the "pinned" pid namespace is a plain file: not the holder.
    let h = Holder {
        pid: std::process::id() as i32,
        pidns: dir.path().join("pid"),
    };
    assert!(!is_holder_alive(&h));
    stop_holder(&h, Duration::from_millis(10)).unwrap();
}

#[test]
fn stop_right_after_spawn_does_not_wait_for_the_timeout() {
    if !is_root() {
        return;
    }
    let Some(shim) = shim() else { return };
    let (mut p, pinned) = pod(false);
    let t = Instant::now();
    let h = spawn_holder(&shim, &p.ns_dir(), &pinned, None).unwrap();
    println!("spawn_holder without cgroup: {:?}", t.elapsed());
    p.holder = Some(h.clone());
    // The shim may not have blocked SIGTERM yet; a dropped first SIGTERM must not cost the
    // whole timeout.
    let t = Instant::now();
    stop_holder(&h, Duration::from_secs(10)).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}
