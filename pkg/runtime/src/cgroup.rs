//! Pod cgroups with the cgroupfs driver, through `cgroups-rs`. Works on cgroup v1 (including the
//! hybrid layout with a unified mount at /sys/fs/cgroup/unified) and on a pure v2 host.
//!
//! Paths are "cgroupfs style": `/kubepods/besteffort/pod<uid>`, relative to each hierarchy's
//! root. systemd slices are refused because berth reports the cgroupfs driver to kubelet.

use std::path::{Path, PathBuf};

use cgroups_rs::{hierarchies, Cgroup, MaxValue, Resources};
use nix::sys::statfs::FsType;

use crate::{Error, Result};

/// Where pods go when the request names no cgroup parent.
pub const DEFAULT_PARENT: &str = "/berth";

/// Where systemd puts the v2 hierarchy on a v1 "hybrid" host.
const HYBRID_UNIFIED_ROOT: &str = "/sys/fs/cgroup/unified";
const CGROUP2_SUPER_MAGIC: FsType = FsType(0x6367_7270);

/// The cgroup driver berth implements, as reported in the CRI RuntimeConfig.
pub fn cgroup_driver() -> &'static str {
    "cgroupfs"
}

/// Pod-level limits, in the units of the CRI `LinuxContainerResources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodResources {
    /// cgroup v1 `cpu.shares` (2..=262144); converted to `cpu.weight` on v2.
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per period; -1 for unlimited.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// Bytes.
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

impl PodResources {
    fn is_empty(&self) -> bool {
        *self == PodResources::default()
    }
}

fn bad_component(c: &str) -> bool {
    c.is_empty() || c == "." || c == ".." || c.len() > 255 || c.chars().any(|ch| ch.is_control())
}

/// Normalizes and checks a cgroup parent: `""` means [`DEFAULT_PARENT`]; the result is absolute,
/// with no empty, `.` or `..` component and no control characters, so it cannot escape the
/// cgroup mounts.
pub fn validate_cgroup_parent(parent: &str) -> Result<String> {
    if parent.is_empty() {
        return Ok(DEFAULT_PARENT.to_owned());
    }
    let rel = parent.strip_prefix('/').unwrap_or(parent);
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    if rel.is_empty() {
        return Err(Error::invalid(
            "cgroup_parent",
            "must not be the root cgroup",
        ));
    }
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.iter().any(|c| bad_component(c)) {
        return Err(Error::invalid(
            "cgroup_parent",
            format!("{parent:?} has an empty, \".\" or \"..\" component or a control character"),
        ));
    }
    if parts.iter().any(|c| c.ends_with(".slice")) {
        return Err(Error::invalid(
            "cgroup_parent",
            format!("{parent:?} is a systemd slice; berth only supports the cgroupfs driver"),
        ));
    }
    Ok(format!("/{rel}"))
}

/// `parent/name`, both validated. `name` is a single path component (`pod<uid>` or a sandbox id).
pub fn pod_cgroup_path(parent: &str, name: &str) -> Result<String> {
    let parent = validate_cgroup_parent(parent)?;
    if bad_component(name) || name.contains('/') {
        return Err(Error::invalid(
            "pod cgroup name",
            format!("{name:?} is not a single path component"),
        ));
    }
    Ok(format!("{parent}/{name}"))
}

fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn load(path: &str) -> Cgroup {
    Cgroup::load(hierarchies::auto(), relative(path))
}

/// The v2 directory of `path` on a hybrid host, if this host is one.
fn hybrid_unified_dir(path: &str) -> Option<PathBuf> {
    if hierarchies::is_cgroup2_unified_mode() {
        return None;
    }
    let is_cgroup2 = nix::sys::statfs::statfs(HYBRID_UNIFIED_ROOT)
        .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    is_cgroup2.then(|| Path::new(HYBRID_UNIFIED_ROOT).join(relative(path)))
}

fn cg_err(op: &'static str, path: &str, e: impl std::fmt::Display) -> Error {
    Error::Cgroup {
        op,
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// runc's conversion from v1 shares [2, 262144] to v2 weight [1, 10000].
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Creates the pod cgroup `parent/name` in every hierarchy and applies `resources`. Returns its
/// path (e.g. `/kubepods/besteffort/pod<uid>`). Creating an existing cgroup is fine (a retried
/// RunPodSandbox); on failure a cgroup created here is removed again.
pub fn create_pod_cgroup(
    parent: &str,
    name: &str,
    resources: Option<&PodResources>,
) -> Result<String> {
    let path = pod_cgroup_path(parent, name)?;
    let v2 = hierarchies::is_cgroup2_unified_mode();
    let cg = Cgroup::new(hierarchies::auto(), relative(&path))
        .map_err(|e| cg_err("create", &path, e))?;
    // cgroups-rs only logs a failed mkdir on v1, so check that every hierarchy has it.
    let missing: Vec<_> = cg
        .subsystems()
        .iter()
        .map(|s| s.to_controller().path().to_owned())
        .filter(|p| !p.is_dir())
        .collect();
    if !missing.is_empty() {
        let _ = cg.delete();
        return Err(cg_err("create", &path, format!("missing {missing:?}")));
    }
    if let Some(dir) = hybrid_unified_dir(&path) {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    }
    if let Some(r) = resources.filter(|r| !r.is_empty()) {
        let mut res = Resources::default();
        res.cpu.shares = r
            .cpu_shares
            .map(|s| if v2 { shares_to_weight(s) } else { s });
        res.cpu.quota = r.cpu_quota;
        res.cpu.period = r.cpu_period;
        res.memory.memory_hard_limit = r.memory_limit;
        res.pid.maximum_number_of_processes = r.pids_limit.map(MaxValue::Value);
        if let Err(e) = cg.apply(&res) {
            let _ = remove_pod_cgroup(&path);
            return Err(cg_err("apply resources to", &path, e));
        }
    }
    Ok(path)
}

/// The leaf of a pod cgroup for the pod's own processes (its PID-namespace holder) on a pure
/// cgroup v2 host: there a cgroup may hold processes or children with controllers, not both,
/// and the pod's containers are its children. v1 has no such rule: the pod cgroup itself.
pub const INFRA_LEAF: &str = "berth-infra";

/// Where a pod's own processes go (see [`INFRA_LEAF`]); on v2 the leaf is created here.
pub fn infra_cgroup(pod_path: &str) -> Result<String> {
    let path = validate_cgroup_parent(pod_path)?;
    if !hierarchies::is_cgroup2_unified_mode() {
        return Ok(path);
    }
    let leaf = format!("{path}/{INFRA_LEAF}");
    let dir = Path::new("/sys/fs/cgroup").join(relative(&leaf));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    Ok(leaf)
}

/// The v2 infra leaf of `path`, if this host is pure v2 and the leaf exists.
fn existing_infra_leaf(path: &str) -> Option<PathBuf> {
    hierarchies::is_cgroup2_unified_mode()
        .then(|| {
            Path::new("/sys/fs/cgroup")
                .join(relative(path))
                .join(INFRA_LEAF)
        })
        .filter(|d| d.is_dir())
}

/// Removes a pod cgroup from every hierarchy. Idempotent. Refuses (FailedPrecondition) while
/// processes remain: killing them is the caller's decision, not a side effect of cleanup.
pub fn remove_pod_cgroup(path: &str) -> Result<()> {
    let path = validate_cgroup_parent(path)?;
    let cg = load(&path);
    let unified = hybrid_unified_dir(&path).filter(|d| d.is_dir());
    let mut count = cg.procs().len();
    if let Some(dir) = &unified {
        count += read_procs(&dir.join("cgroup.procs"))?;
    }
    let infra = existing_infra_leaf(&path);
    if let Some(dir) = &infra {
        count += read_procs(&dir.join("cgroup.procs"))?;
    }
    if count > 0 {
        return Err(Error::CgroupBusy { path, count });
    }
    if let Some(dir) = infra {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &dir, e)),
        }
    }
    if cg.exists() {
        cg.delete().map_err(|e| cg_err("remove", &path, e))?;
    }
    if let Some(dir) = unified {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &dir, e)),
        }
    }
    Ok(())
}

fn read_procs(file: &Path) -> Result<usize> {
    match std::fs::read_to_string(file) {
        Ok(s) => Ok(s.lines().filter(|l| !l.trim().is_empty()).count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io("read", file, e)),
    }
}

/// The `cgroup.procs` files a process must be written to to join `path` in every hierarchy
/// (one per v1 controller, plus the unified one on a hybrid host).
pub fn cgroup_procs_files(path: &str) -> Result<Vec<PathBuf>> {
    let path = validate_cgroup_parent(path)?;
    let cg = load(&path);
    let mut files: Vec<PathBuf> = cg
        .subsystems()
        .iter()
        .map(|s| s.to_controller().path().join("cgroup.procs"))
        .collect();
    files.extend(hybrid_unified_dir(&path).map(|d| d.join("cgroup.procs")));
    files.sort();
    files.dedup();
    Ok(files)
}

/// The processes in the cgroup (all hierarchies), and in its v2 infra leaf.
pub fn cgroup_procs(path: &str) -> Result<Vec<u64>> {
    let path = validate_cgroup_parent(path)?;
    let mut pids: Vec<u64> = load(&path).procs().into_iter().map(|p| p.pid).collect();
    if existing_infra_leaf(&path).is_some() {
        let leaf = format!("{path}/{INFRA_LEAF}");
        pids.extend(load(&leaf).procs().into_iter().map(|p| p.pid));
    }
    Ok(pids)
}

/// The file of cgroup `path` whose `oom_kill <n>` line counts OOM kills in it: `memory.events`
/// on a cgroup v2 host, the v1 memory controller's `memory.oom_control` otherwise (a hybrid host
/// runs the memory controller on v1).
pub fn oom_events_file(path: &str) -> Option<PathBuf> {
    let rel = relative(path);
    if hierarchies::is_cgroup2_unified_mode() {
        return Some(Path::new("/sys/fs/cgroup").join(rel).join("memory.events"));
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    v1.is_dir().then(|| v1.join(rel).join("memory.oom_control"))
}

/// Pod cgroups as a trait, so the CRI layer can hold an `Arc<dyn CgroupManager>` and test its
/// rollback paths with [`RecordingCgroups`].
pub trait CgroupManager: Send + Sync {
    fn driver(&self) -> &'static str;
    fn create(&self, parent: &str, name: &str, resources: Option<&PodResources>) -> Result<String>;
    fn remove(&self, path: &str) -> Result<()>;
}

/// The real cgroupfs manager (the free functions of this module).
#[derive(Debug, Default, Clone, Copy)]
pub struct Cgroupfs;

impl CgroupManager for Cgroupfs {
    fn driver(&self) -> &'static str {
        cgroup_driver()
    }

    fn create(&self, parent: &str, name: &str, resources: Option<&PodResources>) -> Result<String> {
        create_pod_cgroup(parent, name, resources)
    }

    fn remove(&self, path: &str) -> Result<()> {
        remove_pod_cgroup(path)
    }
}

/// A fake that validates like the real manager, keeps the set of "existing" cgroups and can be
/// told to fail creation or to report a cgroup as busy.
#[derive(Debug, Default)]
pub struct RecordingCgroups {
    pub existing: std::sync::Mutex<std::collections::BTreeMap<String, Option<PodResources>>>,
    pub busy: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pub fail_create: std::sync::atomic::AtomicBool,
}

impl CgroupManager for RecordingCgroups {
    fn driver(&self) -> &'static str {
        cgroup_driver()
    }

    fn create(&self, parent: &str, name: &str, resources: Option<&PodResources>) -> Result<String> {
        let path = pod_cgroup_path(parent, name)?;
        if self.fail_create.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(cg_err("create", &path, "injected failure"));
        }
        self.existing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone(), resources.cloned());
        Ok(path)
    }

    fn remove(&self, path: &str) -> Result<()> {
        let path = validate_cgroup_parent(path)?;
        if self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&path)
        {
            return Err(Error::CgroupBusy { path, count: 1 });
        }
        self.existing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{ErrorKind, HasKind};

    #[test]
    fn parents_are_normalized() {
        assert_eq!(validate_cgroup_parent("").unwrap(), "/berth");
        assert_eq!(
            validate_cgroup_parent("/kubepods/besteffort").unwrap(),
            "/kubepods/besteffort"
        );
        assert_eq!(
            validate_cgroup_parent("kubepods/burstable/").unwrap(),
            "/kubepods/burstable"
        );
        assert_eq!(
            pod_cgroup_path("/kubepods", "pod123").unwrap(),
            "/kubepods/pod123"
        );
    }

    #[test]
    fn escaping_or_systemd_parents_are_invalid() {
        for p in [
            "/",
            "/kubepods/../..",
            "/a//b",
            "/a/./b",
            "/a\0b",
            "/a\nb",
            "kubepods-besteffort.slice",
            "/kubepods.slice/x",
        ] {
            let err = validate_cgroup_parent(p).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{p:?}");
            assert!(err.to_string().contains("cgroup_parent"), "{err}");
        }
        assert!(validate_cgroup_parent("kubepods.slice")
            .unwrap_err()
            .to_string()
            .contains("cgroupfs"));
        for n in ["", "..", "a/b", "a\nb"] {
            assert!(pod_cgroup_path("/kubepods", n).is_err(), "{n:?}");
        }
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn fake_manager_validates_and_reports_busy() {
        let m = RecordingCgroups::default();
        assert!(m.create("/a/../b", "p", None).is_err());
        let path = m.create("", "pod1", None).unwrap();
        assert_eq!(path, "/berth/pod1");
        m.busy.lock().unwrap().insert(path.clone());
        assert_eq!(
            m.remove(&path).unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );
        m.busy.lock().unwrap().clear();
        m.remove(&path).unwrap();
        assert!(m.existing.lock().unwrap().is_empty());
    }

    fn is_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        eprintln!("skipping: needs root to create cgroups");
        false
    }

    /// Removes the test cgroups even when an assertion fails.
    struct CgGuard(Vec<String>);

    impl Drop for CgGuard {
        fn drop(&mut self) {
            for p in self.0.iter().rev() {
                let _ = remove_pod_cgroup(p);
            }
        }
    }

    #[test]
    fn pod_cgroup_is_created_limited_and_removed() {
        if !is_root() {
            return;
        }
        let parent = format!("/berth-test-{}", std::process::id());
        let _g = CgGuard(vec![parent.clone(), format!("{parent}/podabc")]);
        let res = PodResources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
        };
        let t = std::time::Instant::now();
        let path = create_pod_cgroup(&parent, "podabc", Some(&res)).unwrap();
        println!("create_pod_cgroup with limits: {:?}", t.elapsed());
        assert_eq!(path, format!("{parent}/podabc"));
        // Idempotent for a retried request.
        create_pod_cgroup(&parent, "podabc", None).unwrap();
        let files = cgroup_procs_files(&path).unwrap();
        assert!(!files.is_empty());
        for f in &files {
            assert!(f.exists(), "{}", f.display());
        }
        if hierarchies::is_cgroup2_unified_mode() {
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).unwrap();
            assert_eq!(max.trim(), (64u64 << 20).to_string());
        } else {
            let lim = std::fs::read_to_string(format!(
                "/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
            ))
            .unwrap();
            assert_eq!(lim.trim(), (64u64 << 20).to_string());
            let shares =
                std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{path}/cpu.shares")).unwrap();
            assert_eq!(shares.trim(), "512");
        }
        let t = std::time::Instant::now();
        remove_pod_cgroup(&path).unwrap();
        println!("remove_pod_cgroup: {:?}", t.elapsed());
        remove_pod_cgroup(&path).unwrap();
        for f in &files {
            assert!(!f.exists(), "{} left behind", f.display());
        }
        remove_pod_cgroup(&parent).unwrap();
    }

    /// Runs `f` on a thread whose private mount namespace has the hybrid host's v2 hierarchy
    /// mounted at /sys/fs/cgroup, so the pure-v2 code paths run on this v1 machine. The mount
    /// namespace dies with the thread; `/` is made a slave first so nothing propagates back.
    fn with_unified_at_sys_fs_cgroup<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
        use nix::mount::{mount, MsFlags};
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).ok()?;
                let none = None::<&str>;
                mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none).ok()?;
                mount(
                    Some(HYBRID_UNIFIED_ROOT),
                    "/sys/fs/cgroup",
                    none,
                    MsFlags::MS_BIND,
                    none,
                )
                .ok()?;
                Some(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    #[test]
    fn pure_v2_create_and_remove() {
        if !is_root() {
            return;
        }
        if hierarchies::is_cgroup2_unified_mode() || !Path::new(HYBRID_UNIFIED_ROOT).is_dir() {
            eprintln!("skipping: only meaningful on a v1/hybrid host (pure v2 is covered above)");
            return;
        }
        let parent = format!("/berth-test-v2-{}", std::process::id());
        let ran = with_unified_at_sys_fs_cgroup(|| {
            assert!(hierarchies::is_cgroup2_unified_mode());
            let _g = CgGuard(vec![parent.clone(), format!("{parent}/pod1")]);
            let path = create_pod_cgroup(&parent, "pod1", None).unwrap();
            let dir = format!("/sys/fs/cgroup{path}");
            assert!(Path::new(&dir).is_dir());
            assert_eq!(
                cgroup_procs_files(&path).unwrap(),
                vec![PathBuf::from(format!("{dir}/cgroup.procs"))]
            );
            remove_pod_cgroup(&path).unwrap();
            remove_pod_cgroup(&path).unwrap();
            assert!(!Path::new(&dir).exists());
        });
        assert!(ran.is_some(), "could not set up a private mount namespace");
        assert!(!Path::new(HYBRID_UNIFIED_ROOT)
            .join(parent.trim_start_matches('/'))
            .join("pod1")
            .exists());
    }

    #[test]
    fn busy_cgroup_is_not_removed() {
        if !is_root() {
            return;
        }
        let parent = format!("/berth-test-busy-{}", std::process::id());
        let path = format!("{parent}/pod1");
        let _g = CgGuard(vec![parent.clone(), path.clone()]);
        create_pod_cgroup(&parent, "pod1", None).unwrap();
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let sleeper = Kill(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap(),
        );
        let pid = sleeper.0.id();
        for f in cgroup_procs_files(&path).unwrap() {
            std::fs::write(&f, pid.to_string()).unwrap();
        }
        let err = remove_pod_cgroup(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
        assert!(err.to_string().contains(&path));
        drop(sleeper);
        // Once the process is gone the cgroup can go.
        remove_pod_cgroup(&path).unwrap();
    }
}
