//! Pod namespaces without a pause process: new namespaces are created on a short-lived thread and
//! kept alive by bind-mounting `/proc/thread-self/ns/<kind>` onto a file under the pod's pin
//! directory (CRI-O's `pinns`). The pinned paths are what runc later gets as namespace `path`s.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::FsType;
use serde::{Deserialize, Serialize};

use crate::mount::{LinuxMounter, Mounter};
use crate::{Error, Result};

/// statfs(2) magic of nsfs, the filesystem behind /proc/<pid>/ns/* and their bind mounts.
const NSFS_MAGIC: FsType = FsType(0x6e73_6673);

/// Linux's HOST_NAME_MAX.
const HOST_NAME_MAX: usize = 64;

/// The namespace kinds berth pins per pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsKind {
    Net,
    Ipc,
    Uts,
    /// Only ever pinned from a live holder process (see `pin_existing`): a new PID namespace
    /// needs a PID 1, so [`pin_namespaces`] refuses it.
    Pid,
}

impl NsKind {
    /// The name used in /proc/<pid>/ns/ and as the pin file name.
    pub fn name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::Pid => "pid",
        }
    }

    pub fn clone_flag(self) -> CloneFlags {
        match self {
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
            NsKind::Pid => CloneFlags::CLONE_NEWPID,
        }
    }

    pub const ALL: [NsKind; 4] = [NsKind::Net, NsKind::Ipc, NsKind::Uts, NsKind::Pid];
}

/// Paths of a pod's pinned namespaces; persisted with the pod record so a restarted berthd can
/// hand them to runc and unpin them later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl PinnedNamespaces {
    pub fn get(&self, kind: NsKind) -> Option<&Path> {
        match kind {
            NsKind::Net => self.net.as_deref(),
            NsKind::Ipc => self.ipc.as_deref(),
            NsKind::Uts => self.uts.as_deref(),
            NsKind::Pid => None,
        }
    }

    fn set(&mut self, kind: NsKind, path: PathBuf) {
        match kind {
            NsKind::Net => self.net = Some(path),
            NsKind::Ipc => self.ipc = Some(path),
            NsKind::Uts => self.uts = Some(path),
            NsKind::Pid => {}
        }
    }
}

/// A namespaced sysctl resolved to its /proc/sys file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sysctl {
    pub(crate) path: PathBuf,
    pub(crate) value: String,
    pub(crate) kind: NsKind,
}

/// Validates a sysctl and finds the namespace it belongs to. Only namespaced sysctls are
/// accepted (the same list runc enforces): anything else would change the host.
pub(crate) fn parse_sysctl(key: &str, value: &str) -> Result<Sysctl> {
    let field = || format!("sysctls[{key:?}]");
    if key.is_empty() || key.contains('\0') || key.contains('\n') {
        return Err(Error::invalid(
            field(),
            "key is empty or contains a control character",
        ));
    }
    if value.contains('\0') || value.contains('\n') {
        return Err(Error::invalid(field(), "value contains a newline or NUL"));
    }
    // Kubernetes accepts both `net.ipv4.ip_forward` and `net/ipv4/ip_forward`; in the dotted
    // form a `/` stands for a literal dot (`net.ipv4.conf.eth0/100.forwarding`).
    let dotted = match (key.find('.'), key.find('/')) {
        (Some(d), Some(s)) => d < s,
        (Some(_), None) => true,
        _ => false,
    };
    let normalized: String = if dotted {
        key.chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect()
    } else {
        key.to_owned()
    };
    let parts: Vec<&str> = normalized.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(Error::invalid(
            field(),
            "key has an empty, \".\" or \"..\" component",
        ));
    }
    let kind = match parts.as_slice() {
        ["net", ..] => NsKind::Net,
        ["kernel", "sem"] | ["fs", "mqueue", ..] => NsKind::Ipc,
        ["kernel", k] if k.starts_with("shm") || k.starts_with("msg") => NsKind::Ipc,
        ["kernel", "domainname"] | ["kernel", "hostname"] => NsKind::Uts,
        _ => return Err(Error::invalid(field(), "not a namespaced sysctl")),
    };
    Ok(Sysctl {
        path: Path::new("/proc/sys").join(normalized),
        value: value.to_owned(),
        kind,
    })
}

pub(crate) fn validate_hostname(hostname: &str) -> Result<()> {
    if hostname.is_empty() || hostname.len() > HOST_NAME_MAX {
        return Err(Error::invalid(
            "hostname",
            format!("must be 1 to {HOST_NAME_MAX} bytes"),
        ));
    }
    if hostname
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(Error::invalid(
            "hostname",
            "contains whitespace or a control character",
        ));
    }
    Ok(())
}

/// Creates new namespaces of the given kinds and pins each at `dir/<kind>`.
///
/// Everything happens on one dedicated thread that exits afterwards: unshare(2) of net, ipc and
/// uts namespaces is per thread (they live in the thread's nsproxy), so no process is spawned and
/// no pooled thread is ever left in a pod's namespace. `hostname` is set inside the new UTS
/// namespace and `sysctls` are written inside the new namespaces (a write to /proc/sys/net is
/// resolved against the writing thread's network namespace) before pinning.
///
/// On failure everything created so far is undone. Blocks for about a millisecond (network
/// namespace creation dominates); async callers should use `spawn_blocking`.
pub fn pin_namespaces(
    dir: &Path,
    kinds: &[NsKind],
    hostname: Option<&str>,
    sysctls: &[(String, String)],
) -> Result<PinnedNamespaces> {
    let mut kinds = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    if kinds.contains(&NsKind::Pid) {
        return Err(Error::invalid(
            "namespaces",
            "a pid namespace cannot be pinned without a holder process",
        ));
    }
    if let Some(h) = hostname {
        validate_hostname(h)?;
        if !kinds.contains(&NsKind::Uts) {
            return Err(Error::invalid(
                "hostname",
                "set without a new uts namespace",
            ));
        }
    }
    let sysctls = sysctls
        .iter()
        .map(|(k, v)| {
            let s = parse_sysctl(k, v)?;
            if !kinds.contains(&s.kind) {
                return Err(Error::invalid(
                    format!("sysctls[{k:?}]"),
                    format!("needs a new {} namespace", s.kind.name()),
                ));
            }
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;

    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let mut targets = Vec::with_capacity(kinds.len());
    for kind in &kinds {
        let path = dir.join(kind.name());
        if let Err(e) = create_pin_file(&path) {
            let _ = cleanup(&LinuxMounter, dir, &targets);
            return Err(e);
        }
        targets.push((*kind, path));
    }

    let thread_targets = targets.clone();
    let hostname = hostname.map(str::to_owned);
    let flags = kinds
        .iter()
        .fold(CloneFlags::empty(), |f, k| f | k.clone_flag());
    let res = on_fresh_thread("berth-pinns", move || -> Result<()> {
        unshare(flags).map_err(|e| Error::sys("unshare", e))?;
        if let Some(h) = hostname {
            nix::unistd::sethostname(&h).map_err(|e| Error::sys("sethostname", e))?;
        }
        for s in &sysctls {
            std::fs::write(&s.path, s.value.as_bytes())
                .map_err(|e| Error::io("write sysctl", &s.path, e))?;
        }
        for (kind, path) in &thread_targets {
            let src = Path::new("/proc/thread-self/ns").join(kind.name());
            LinuxMounter.bind(&src, path)?;
        }
        Ok(())
    })
    .and_then(|r| r);
    if let Err(e) = res {
        let _ = cleanup(&LinuxMounter, dir, &targets);
        return Err(e);
    }

    let mut pinned = PinnedNamespaces::default();
    for (kind, path) in targets {
        pinned.set(kind, path);
    }
    Ok(pinned)
}

/// Pins an existing namespace file (e.g. `/proc/<holder>/ns/pid`) at `dst`, so it outlives both
/// the process and berthd restarts.
pub fn pin_existing<M: Mounter + ?Sized>(m: &M, src: &Path, dst: &Path) -> Result<()> {
    create_pin_file(dst)?;
    m.bind(src, dst).inspect_err(|_| {
        let _ = std::fs::remove_file(dst);
    })
}

/// Creates the empty file a namespace is bind-mounted onto. A leftover empty file (a crash
/// between create and mount) is reused; a live pin is refused so two pods never share one.
fn create_pin_file(path: &Path) -> Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if is_pinned(path) {
                Err(Error::AlreadyPinned {
                    path: path.to_owned(),
                })
            } else {
                Ok(())
            }
        }
        Err(e) => Err(Error::io("create", path, e)),
    }
}

fn cleanup<M: Mounter + ?Sized>(m: &M, dir: &Path, targets: &[(NsKind, PathBuf)]) -> Result<()> {
    for (_, path) in targets {
        unmount_all(m, path)?;
        remove_if_exists(path)?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Something else lives in the directory; it is not ours to delete.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) => Err(Error::io("remove", dir, e)),
    }
}

fn unmount_all<M: Mounter + ?Sized>(m: &M, path: &Path) -> Result<()> {
    // A path can carry stacked mounts if a pin was ever repeated; peel them all, bounded so a
    // misbehaving fake or kernel cannot spin us forever.
    for _ in 0..16 {
        if !m.unmount(path)? {
            return Ok(());
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Unpins every namespace under `dir` (net, ipc, uts and a holder's pid), removes the files and
/// the directory. Idempotent: missing files or a missing directory are fine. Once the last
/// reference is gone the kernel frees the namespace (and the veths inside it).
pub fn unpin(dir: &Path) -> Result<()> {
    unpin_with(&LinuxMounter, dir)
}

/// [`unpin`] with an explicit [`Mounter`].
pub fn unpin_with<M: Mounter + ?Sized>(m: &M, dir: &Path) -> Result<()> {
    let targets: Vec<_> = NsKind::ALL
        .iter()
        .map(|k| (*k, dir.join(k.name())))
        .collect();
    cleanup(m, dir, &targets)
}

/// Whether `path` is a namespace file (a pin or /proc/<pid>/ns/*). Cheap: one statfs.
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == NSFS_MAGIC)
        .unwrap_or(false)
}

/// The (device, inode) identity of a namespace file; two paths refer to the same namespace iff
/// these are equal.
pub fn ns_id(path: &Path) -> Result<(u64, u64)> {
    let md = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok((md.dev(), md.ino()))
}

/// Runs `f` inside the namespace at `path` on a dedicated thread that exits afterwards, so no
/// other thread (a tokio worker in particular) is ever left in a pod's namespace. Panics in `f`
/// propagate to the caller.
pub fn in_namespace<T: Send>(path: &Path, kind: NsKind, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let owned = path.to_owned();
    on_fresh_thread("berth-setns", move || -> Result<T> {
        setns(&file, kind.clone_flag()).map_err(|e| Error::io("setns", owned, e))?;
        Ok(f())
    })?
}

/// Runs `f` on a new named thread and waits for it. Scoped so `f` may borrow.
fn on_fresh_thread<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(s, f)
            .map_err(|e| Error::sys("spawn thread", e))?;
        match handle.join() {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Namespace pinning as a trait, so the CRI layer can hold an `Arc<dyn NamespacePinner>` and
/// tests can use [`FakePinner`].
pub trait NamespacePinner: Send + Sync {
    fn pin(
        &self,
        dir: &Path,
        kinds: &[NsKind],
        hostname: Option<&str>,
        sysctls: &[(String, String)],
    ) -> Result<PinnedNamespaces>;
    fn unpin(&self, dir: &Path) -> Result<()>;
}

/// The real pinner.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxPinner;

impl NamespacePinner for LinuxPinner {
    fn pin(
        &self,
        dir: &Path,
        kinds: &[NsKind],
        hostname: Option<&str>,
        sysctls: &[(String, String)],
    ) -> Result<PinnedNamespaces> {
        pin_namespaces(dir, kinds, hostname, sysctls)
    }

    fn unpin(&self, dir: &Path) -> Result<()> {
        unpin(dir)
    }
}

/// A fake pinner: validates like the real one, creates plain files instead of namespaces and
/// records the pod directories it was asked about. `fail_pin` makes the next pins fail.
#[derive(Debug, Default)]
pub struct FakePinner {
    pub pinned: std::sync::Mutex<Vec<PathBuf>>,
    pub unpinned: std::sync::Mutex<Vec<PathBuf>>,
    pub fail_pin: std::sync::atomic::AtomicBool,
}

impl NamespacePinner for FakePinner {
    fn pin(
        &self,
        dir: &Path,
        kinds: &[NsKind],
        hostname: Option<&str>,
        sysctls: &[(String, String)],
    ) -> Result<PinnedNamespaces> {
        if let Some(h) = hostname {
            validate_hostname(h)?;
        }
        for (k, v) in sysctls {
            parse_sysctl(k, v)?;
        }
        if self.fail_pin.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::sys(
                "unshare",
                io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let mut out = PinnedNamespaces::default();
        for k in kinds.iter().filter(|k| **k != NsKind::Pid) {
            let p = dir.join(k.name());
            std::fs::write(&p, b"").map_err(|e| Error::io("create", &p, e))?;
            out.set(*k, p);
        }
        self.pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir.to_owned());
        Ok(out)
    }

    fn unpin(&self, dir: &Path) -> Result<()> {
        self.unpinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir.to_owned());
        unpin_with(&crate::mount::RecordingMounter::new(), dir)
    }
}

#[cfg(test)]
mod tests;
