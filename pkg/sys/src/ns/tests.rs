use super::*;
use crate::mount::{MountCall, RecordingMounter};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: needs root (CAP_SYS_ADMIN for unshare and mount)");
    false
}

/// Unpins on drop so a failing assertion never leaves a mount behind.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = unpin(&self.0);
    }
}

fn mounts_under(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    crate::mount::mount_points(&info)
        .filter(|p| p.starts_with(dir))
        .count()
}

fn ns_set() -> Vec<NsKind> {
    vec![NsKind::Net, NsKind::Ipc, NsKind::Uts]
}

#[test]
fn sysctls_map_to_their_namespace() {
    let s = parse_sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(s.kind, NsKind::Net);
    assert_eq!(s.path, PathBuf::from("/proc/sys/net/ipv4/ip_forward"));
    let s = parse_sysctl("net.ipv4.conf.eth0/100.forwarding", "1").unwrap();
    assert_eq!(
        s.path,
        PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
    );
    let s = parse_sysctl("net/ipv4/conf/eth0.100/forwarding", "1").unwrap();
    assert_eq!(
        s.path,
        PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
    );
    assert_eq!(
        parse_sysctl("kernel.shmmax", "1").unwrap().kind,
        NsKind::Ipc
    );
    assert_eq!(
        parse_sysctl("kernel.sem", "1 2 3 4").unwrap().kind,
        NsKind::Ipc
    );
    assert_eq!(
        parse_sysctl("fs.mqueue.msg_max", "10").unwrap().kind,
        NsKind::Ipc
    );
    assert_eq!(
        parse_sysctl("kernel.domainname", "x").unwrap().kind,
        NsKind::Uts
    );
}

#[test]
fn host_wide_and_malformed_sysctls_are_refused() {
    for (k, v) in [
        ("kernel.panic", "1"),
        ("vm.swappiness", "1"),
        ("net..ipv4", "1"),
        ("net/../../etc", "1"),
        ("", "1"),
        ("net.ipv4.ip_forward", "1\nkernel.panic=1"),
        ("net.ipv4.ip_forward\0", "1"),
    ] {
        let err = parse_sysctl(k, v).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{k:?}: {err}");
        assert!(err.to_string().contains("sysctls["), "{err}");
    }
}

#[test]
fn pid_namespace_and_orphan_hostname_are_refused_before_any_syscall() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    let err = pin_namespaces(&pod, &[NsKind::Pid], None, &[]).unwrap_err();
    assert_eq!(
        berth_core::HasKind::kind(&err),
        berth_core::ErrorKind::InvalidArgument
    );
    let err = pin_namespaces(&pod, &[NsKind::Net], Some("web"), &[]).unwrap_err();
    assert!(err.to_string().contains("hostname"), "{err}");
    let err = pin_namespaces(&pod, &ns_set(), Some("bad\nname"), &[]).unwrap_err();
    assert!(err.to_string().contains("hostname"), "{err}");
    let sysctls = [("kernel.shmmax".to_owned(), "1".to_owned())];
    let err = pin_namespaces(&pod, &[NsKind::Net], None, &sysctls).unwrap_err();
    assert!(err.to_string().contains("ipc namespace"), "{err}");
    assert!(!pod.exists(), "validation failures must not touch the disk");
}

#[test]
fn unpin_unmounts_every_pin_and_removes_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    std::fs::create_dir(&pod).unwrap();
    let m = RecordingMounter::new();
    for k in ["net", "uts", "pid"] {
        std::fs::write(pod.join(k), b"").unwrap();
        m.bind(Path::new("/proc/self/ns").join(k).as_path(), &pod.join(k))
            .unwrap();
    }
    unpin_with(&m, &pod).unwrap();
    assert!(!pod.exists());
    assert!(m.mounted().is_empty());
    let unmounts: Vec<_> = m
        .calls()
        .into_iter()
        .filter(|c| matches!(c, MountCall::Unmount { .. }))
        .collect();
    // One successful unmount per mounted pin plus the probe that finds each path clean.
    assert_eq!(unmounts.len(), 3 * 2 + 1);
    // Idempotent: a second unpin of a missing directory is fine.
    unpin_with(&m, &pod).unwrap();
}

#[test]
fn unpin_reports_a_failing_unmount_and_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    std::fs::create_dir(&pod).unwrap();
    std::fs::write(pod.join("net"), b"").unwrap();
    let m = RecordingMounter::new();
    m.fail_on(pod.join("net"));
    let err = unpin_with(&m, &pod).unwrap_err();
    assert!(err.to_string().contains("net"), "{err}");
    assert!(
        pod.join("net").exists(),
        "a file still mounted must not be unlinked"
    );
}

#[test]
fn pinned_namespaces_round_trip_through_json() {
    let p = PinnedNamespaces {
        net: Some("/run/berth/ns/a/net".into()),
        ipc: None,
        uts: Some("/x/uts".into()),
    };
    let s = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<PinnedNamespaces>(&s).unwrap(), p);
}

#[test]
fn pinned_namespaces_are_new_and_carry_hostname_and_sysctls() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    let _guard = PinGuard(pod.clone());
    let sysctls = [(
        "net.ipv4.ip_unprivileged_port_start".to_owned(),
        "81".to_owned(),
    )];
    let pinned = pin_namespaces(&pod, &ns_set(), Some("berth-test-pod"), &sysctls).unwrap();
    for kind in [NsKind::Net, NsKind::Ipc, NsKind::Uts] {
        let p = pinned.get(kind).unwrap();
        assert_eq!(p, pod.join(kind.name()));
        assert!(is_pinned(p), "{} not pinned", p.display());
        let host = Path::new("/proc/self/ns").join(kind.name());
        assert_ne!(
            ns_id(p).unwrap(),
            ns_id(&host).unwrap(),
            "{kind:?} is the host's"
        );
    }
    let name = in_namespace(pinned.uts.as_deref().unwrap(), NsKind::Uts, || {
        nix::unistd::gethostname().unwrap()
    })
    .unwrap();
    assert_eq!(name.to_str(), Some("berth-test-pod"));
    assert_ne!(
        nix::unistd::gethostname().unwrap().to_str(),
        Some("berth-test-pod")
    );
    let port = in_namespace(pinned.net.as_deref().unwrap(), NsKind::Net, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap()
    })
    .unwrap();
    assert_eq!(port.trim(), "81");
    // The net namespace really is a fresh one: only a loopback device.
    let links = in_namespace(pinned.net.as_deref().unwrap(), NsKind::Net, || {
        std::fs::read_dir("/sys/class/net")
            .map(|d| d.count())
            .unwrap_or(0)
    });
    assert!(links.is_ok());
    // Pinning the same pod twice is refused instead of silently stacking.
    let err = pin_namespaces(&pod, &ns_set(), None, &[]).unwrap_err();
    assert!(matches!(err, Error::AlreadyPinned { .. }), "{err}");

    unpin(&pod).unwrap();
    assert!(!pod.exists());
    assert_eq!(mounts_under(dir.path()), 0);
    unpin(&pod).unwrap();
}

#[test]
fn failed_pin_leaves_nothing_behind() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    let _guard = PinGuard(pod.clone());
    // Valid as a name, but no such sysctl exists: the write inside the new namespace fails
    // after the namespaces were created.
    let sysctls = [("net.ipv4.berth_no_such_knob".to_owned(), "1".to_owned())];
    let err = pin_namespaces(&pod, &ns_set(), None, &sysctls).unwrap_err();
    assert!(err.to_string().contains("berth_no_such_knob"), "{err}");
    assert!(!pod.exists());
    assert_eq!(mounts_under(dir.path()), 0);
}

#[test]
fn in_namespace_leaves_the_calling_thread_alone() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    let _guard = PinGuard(pod.clone());
    let pinned = pin_namespaces(&pod, &[NsKind::Net], None, &[]).unwrap();
    let before = ns_id(Path::new("/proc/thread-self/ns/net")).unwrap();
    let inside = in_namespace(pinned.net.as_deref().unwrap(), NsKind::Net, || {
        ns_id(Path::new("/proc/thread-self/ns/net")).unwrap()
    })
    .unwrap();
    assert_eq!(inside, ns_id(pinned.net.as_deref().unwrap()).unwrap());
    assert_eq!(
        ns_id(Path::new("/proc/thread-self/ns/net")).unwrap(),
        before
    );
}

#[test]
fn pin_unpin_cycles_leak_no_mounts_and_are_fast() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pin_t = Vec::new();
    let mut unpin_t = Vec::new();
    for i in 0..50 {
        let pod = dir.path().join(format!("pod{i}"));
        let _guard = PinGuard(pod.clone());
        let t = Instant::now();
        pin_namespaces(&pod, &ns_set(), Some("leak-check"), &[]).unwrap();
        pin_t.push(t.elapsed());
        let t = Instant::now();
        unpin(&pod).unwrap();
        unpin_t.push(t.elapsed());
    }
    assert_eq!(mounts_under(dir.path()), 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 9 / 10], v[v.len() - 1])
    };
    let (p50, p90, pmax) = stats(&mut pin_t);
    let (u50, u90, umax) = stats(&mut unpin_t);
    println!("pin net+ipc+uts (+hostname): p50 {p50:?} p90 {p90:?} max {pmax:?}");
    println!("unpin:                       p50 {u50:?} p90 {u90:?} max {umax:?}");
}

#[test]
fn shared_root_is_idempotent() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ns");
    struct RootGuard(PathBuf);
    impl Drop for RootGuard {
        fn drop(&mut self) {
            while crate::mount::LinuxMounter.unmount(&self.0).unwrap_or(false) {}
        }
    }
    let _g = RootGuard(root.clone());
    crate::mount::make_shared_root(&root).unwrap();
    crate::mount::make_shared_root(&root).unwrap();
    assert_eq!(mounts_under(&root), 1);
    let pod = root.join("p");
    let _pg = PinGuard(pod.clone());
    pin_namespaces(&pod, &[NsKind::Net], None, &[]).unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&format!("{} ", pod.join("net").display())))
        .unwrap();
    assert!(
        line.contains("shared:"),
        "pin should inherit shared propagation: {line}"
    );
    unpin(&pod).unwrap();
}

#[test]
fn pin_existing_binds_the_source_onto_a_fresh_file() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("pid");
    let m = RecordingMounter::new();
    pin_existing(&m, Path::new("/proc/42/ns/pid"), &dst).unwrap();
    assert_eq!(
        m.calls(),
        vec![MountCall::Bind {
            src: "/proc/42/ns/pid".into(),
            dst: dst.clone()
        }]
    );
    assert!(dst.is_file());
    // A failed bind leaves no empty pin file behind.
    let dst2 = dir.path().join("pid2");
    m.fail_on(&dst2);
    assert!(pin_existing(&m, Path::new("/proc/42/ns/pid"), &dst2).is_err());
    assert!(!dst2.exists());
}
