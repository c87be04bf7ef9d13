//! Bind mounts behind a small trait, so code that pins or unpins namespaces can be tested
//! without root by asserting the exact calls on [`RecordingMounter`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{Error, Result};

/// The few mount operations berth needs.
pub trait Mounter: Send + Sync {
    /// Bind-mounts `src` onto the existing file or directory `dst`.
    fn bind(&self, src: &Path, dst: &Path) -> Result<()>;
    /// Lazily detaches the topmost mount at `path`. Returns `Ok(false)` when nothing is mounted
    /// there or the path does not exist, so callers can loop until a path is clean and treat a
    /// repeated cleanup as a no-op.
    fn unmount(&self, path: &Path) -> Result<bool>;
}

/// The real thing: mount(2) and umount2(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

impl Mounter for LinuxMounter {
    fn bind(&self, src: &Path, dst: &Path) -> Result<()> {
        mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| Error::io("bind mount onto", dst, e))
    }

    fn unmount(&self, path: &Path) -> Result<bool> {
        // MNT_DETACH: a process that still has the file open (e.g. a runc in flight) must not
        // make the pod's teardown fail; the namespace is freed once the last user goes away.
        // UMOUNT_NOFOLLOW: never follow a symlink someone placed in the pin dir.
        match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => Ok(true),
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(Error::io("unmount", path, e)),
        }
    }
}

/// One call seen by [`RecordingMounter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    Bind { src: PathBuf, dst: PathBuf },
    Unmount { path: PathBuf },
}

/// A fake that records every call, keeps track of what is "mounted" and fails on demand.
#[derive(Debug, Default)]
pub struct RecordingMounter {
    calls: Mutex<Vec<MountCall>>,
    mounted: Mutex<BTreeSet<PathBuf>>,
    fail: Mutex<BTreeSet<PathBuf>>,
}

impl RecordingMounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every later call whose target is `path` fails with EPERM.
    pub fn fail_on(&self, path: impl Into<PathBuf>) {
        lock(&self.fail).insert(path.into());
    }

    /// The calls seen so far, in order.
    pub fn calls(&self) -> Vec<MountCall> {
        lock(&self.calls).clone()
    }

    /// Targets currently "mounted".
    pub fn mounted(&self) -> Vec<PathBuf> {
        lock(&self.mounted).iter().cloned().collect()
    }

    fn check(&self, op: &'static str, path: &Path) -> Result<()> {
        if lock(&self.fail).contains(path) {
            return Err(Error::io(op, path, Errno::EPERM));
        }
        Ok(())
    }
}

// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mounter for RecordingMounter {
    fn bind(&self, src: &Path, dst: &Path) -> Result<()> {
        lock(&self.calls).push(MountCall::Bind {
            src: src.to_owned(),
            dst: dst.to_owned(),
        });
        self.check("bind mount onto", dst)?;
        lock(&self.mounted).insert(dst.to_owned());
        Ok(())
    }

    fn unmount(&self, path: &Path) -> Result<bool> {
        lock(&self.calls).push(MountCall::Unmount {
            path: path.to_owned(),
        });
        self.check("unmount", path)?;
        Ok(lock(&self.mounted).remove(path))
    }
}

/// Whether `path` is a mount point according to /proc/self/mountinfo (bind mounts of the same
/// filesystem share st_dev, so stat cannot tell).
pub fn is_mount_point(path: &Path) -> Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let found = mount_points(&info).any(|p| p == path);
    Ok(found)
}

/// Mount points listed in a mountinfo text, with the kernel's octal escapes (`\040` for a
/// space) decoded.
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
}

/// A mountinfo path field with the kernel's octal escapes (`\040` for a space) decoded.
pub fn unescape_mountinfo(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Makes `root` a mount point of its own with shared propagation, like CRI-O does for its pin
/// directories. Why shared: a mount namespace created later (a container, a systemd unit with
/// PrivateTmp) receives a copy of every pinned namespace under `root`; with shared propagation
/// our later unmount propagates into those copies too, so an unpinned network namespace is really
/// freed instead of being kept alive by a stray copy. Idempotent.
pub fn make_shared_root(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root).map_err(|e| Error::io("create", root, e))?;
    // mountinfo lists resolved paths (/run, not /var/run).
    let root = &root
        .canonicalize()
        .map_err(|e| Error::io("resolve", root, e))?;
    if !is_mount_point(root)? {
        mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::io("bind mount onto itself", root, e))?;
    }
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::io("make shared", root, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_mounter_tracks_mounts_and_fails_on_demand() {
        let m = RecordingMounter::new();
        m.bind(Path::new("/proc/1/ns/net"), Path::new("/pin/net"))
            .unwrap();
        assert_eq!(m.mounted(), vec![PathBuf::from("/pin/net")]);
        assert!(m.unmount(Path::new("/pin/net")).unwrap());
        assert!(!m.unmount(Path::new("/pin/net")).unwrap());
        m.fail_on("/pin/ipc");
        assert!(m.bind(Path::new("/x"), Path::new("/pin/ipc")).is_err());
        assert_eq!(m.calls().len(), 4);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        let info = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw\n";
        assert_eq!(
            mount_points(info).collect::<Vec<_>>(),
            vec![PathBuf::from("/mnt two")]
        );
    }
}
