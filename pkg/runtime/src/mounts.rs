//! Bind-mount checks and fix-ups that runc cannot do for berth: whether the host side of a
//! propagating mount can propagate at all (containerd's `ensureShared` /
//! `ensureSharedOrSlave`), and recursive read-only mounts.
//!
//! Why recursive read-only is done here and not by runc: runc 1.1 has no `rro` option (it came
//! with runc 1.2), and its `ro` covers only the top mount of an `rbind`. After `runc create` the container's mount namespace is complete and its process
//! has not started, so berth enters that namespace on a dedicated thread (after
//! `unshare(CLONE_FS)`, which a thread of a multithreaded process needs before it may change its
//! mount namespace) and applies `mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)` to each such
//! mount. Nothing is mounted in berthd's own namespace, and the thread exits afterwards.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;

use crate::spec::Propagation;
use crate::{Error, Result};

/// One line of /proc/self/mountinfo, the parts berth reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
}

impl MountEntry {
    fn shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }

    fn slave(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("master:"))
    }
}

/// Parses a mountinfo text (`proc(5)`), skipping malformed lines.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (head, _) = line.split_once(" - ")?;
            let mut fields = head.split(' ');
            let mount_point = fields.nth(4)?;
            // Field 6 holds the per-mount options; the optional fields follow it.
            let optional = fields.skip(1).map(str::to_string).collect();
            Some(MountEntry {
                mount_point: berth_sys::mount::unescape_mountinfo(mount_point),
                optional,
            })
        })
        .collect()
}

/// The mount that holds `path` (already resolved): the one with the longest mount point that is
/// `path` or one of its parents; of mounts stacked on one point, the top (last listed) one.
pub fn mount_of<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .fold(None, |best: Option<&MountEntry>, e| match best {
            Some(b) if b.mount_point.as_os_str().len() > e.mount_point.as_os_str().len() => Some(b),
            _ => Some(e),
        })
}

/// Refuses a propagating bind mount whose host side cannot propagate: host-to-container needs
/// a shared or slave mount (mounts made on the host reach the container through the peer group
/// or the master), bidirectional a shared one (mounts made inside reach the host through it).
/// `source` must already be resolved; `field` is the CRI field named in the error.
pub fn check_propagation(
    entries: &[MountEntry],
    source: &Path,
    propagation: Propagation,
    field: &str,
) -> Result<()> {
    let ok = |e: &MountEntry| match propagation {
        Propagation::Private => true,
        Propagation::HostToContainer => e.shared() || e.slave(),
        Propagation::Bidirectional => e.shared(),
    };
    if propagation == Propagation::Private {
        return Ok(());
    }
    let Some(entry) = mount_of(entries, source) else {
        return Err(Error::Precondition {
            field: field.to_string(),
            reason: format!("no mount holds {}", source.display()),
        });
    };
    if ok(entry) {
        return Ok(());
    }
    let (mode, needs) = match propagation {
        Propagation::Bidirectional => ("bidirectional", "a shared mount"),
        _ => ("host-to-container", "a shared or slave mount"),
    };
    Err(Error::Precondition {
        field: field.to_string(),
        reason: format!(
            "{mode} propagation needs {needs} on the host, but {} is on {}, which is neither \
             (make it shared with `mount --make-rshared {}`)",
            source.display(),
            entry.mount_point.display(),
            entry.mount_point.display()
        ),
    })
}

/// Reads berthd's own /proc/self/mountinfo.
pub fn host_mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `mount_setattr(2)` setting (`read_only`) or clearing MOUNT_ATTR_RDONLY.
fn mount_setattr(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
    read_only: bool,
) -> Result<(), Errno> {
    let (attr_set, attr_clr) = if read_only {
        (MOUNT_ATTR_RDONLY, 0)
    } else {
        (0, MOUNT_ATTR_RDONLY)
    };
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is NUL-terminated and `attr` is a live, correctly sized mount_attr for
    // the duration of the call; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// Whether this kernel has `mount_setattr(2)` (Linux ≥ 5.12): a call with a bad descriptor
/// answers EBADF where it exists and ENOSYS where it does not.
pub fn recursive_read_only_supported() -> bool {
    mount_setattr(-1, c"", libc::AT_EMPTY_PATH as libc::c_uint, true) != Err(Errno::ENOSYS)
}

/// Makes each of `destinations` (container paths of bind mounts) read-only with every mount
/// below it, inside the mount namespace of process `pid` (a created, not yet started
/// container). Paths resolve inside the container's root (`/proc/<pid>/root`, with
/// `RESOLVE_IN_ROOT`), as runc resolved them when it mounted there.
///
/// `writable` lists the container's other read-write mounts. runc would have made a
/// recursive read-only mount before mounting the deeper ones, so one of those below a
/// destination gets its own read-write flag back (only if it had it: a host mount that is
/// read-only stays so); its submounts stay read-only, the stricter side.
pub fn make_recursive_read_only(
    pid: i32,
    destinations: &[String],
    writable: &[String],
) -> Result<()> {
    if destinations.is_empty() {
        return Ok(());
    }
    let ns_path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
    let ns = File::open(&ns_path).map_err(|e| Error::io("open", &ns_path, e))?;
    // The container's root as its process sees it (pivot_root or chroot alike), opened while
    // /proc still shows berthd's PID numbers.
    let root = berth_sys::root::open_root(Path::new(&format!("/proc/{pid}/root")))?;
    let open = |dst: &str| -> Result<OwnedFd> {
        // Symlinks followed (inside the root), as runc resolved the destination when it
        // mounted there.
        berth_sys::root::open_in_root(root.as_raw_fd(), dst.as_bytes(), OFlag::O_PATH)
            .map_err(|e| Error::io("open in the container", dst, e))
    };
    let setattr = |fd: &OwnedFd, dst: &str, flags: libc::c_uint, read_only: bool| {
        mount_setattr(
            fd.as_raw_fd(),
            c"",
            libc::AT_EMPTY_PATH as libc::c_uint | flags,
            read_only,
        )
        .map_err(|e| match e {
            Errno::ENOSYS => Error::invalid(
                "mounts.recursive_read_only",
                "needs mount_setattr(2), Linux 5.12 or later",
            ),
            e => Error::io("change the read-only flag of", dst, e),
        })
    };
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("berth-rro".into())
            .spawn_scoped(s, || -> Result<()> {
                // This thread's root, cwd and mount namespace are its own from here on and die
                // with it; no other thread of berthd is affected.
                nix::sched::unshare(CloneFlags::CLONE_FS)
                    .map_err(|e| Error::io("unshare CLONE_FS for", &ns_path, e))?;
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNS)
                    .map_err(|e| Error::io("setns", &ns_path, e))?;
                for dst in destinations {
                    let mut restore = Vec::new();
                    for inner in writable.iter().filter(|w| is_below(w, dst)) {
                        let fd = open(inner)?;
                        let flags = rustix::fs::fstatvfs(&fd)
                            .map_err(|e| Error::io("statvfs", inner, std::io::Error::from(e)))?
                            .f_flag;
                        if !flags.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
                            restore.push((inner, fd));
                        }
                    }
                    setattr(&open(dst)?, dst, AT_RECURSIVE, true)?;
                    for (inner, fd) in restore {
                        setattr(&fd, inner, 0, false)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| Error::io("spawn thread for", &ns_path, e))?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// `path` is strictly below `dir` (both cleaned absolute container paths).
fn is_below(path: &str, dir: &str) -> bool {
    path.len() > dir.len()
        && path.starts_with(dir)
        && (dir == "/" || path.as_bytes()[dir.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
42 27 254:0 /run/x/ns /run/x/ns rw,relatime shared:1 - ext4 /dev/vda rw
50 27 0:40 / /var/tmp/h2c rw,relatime shared:7 - tmpfs tmpfs rw
51 27 0:41 / /var/tmp/slave rw,relatime master:7 - tmpfs tmpfs rw
52 27 0:42 / /var/tmp/with\\040space rw,relatime shared:9 master:3 - tmpfs tmpfs rw
53 50 0:43 / /var/tmp/h2c/private rw,relatime - tmpfs tmpfs rw
";

    fn entries() -> Vec<MountEntry> {
        parse_mountinfo(INFO)
    }

    #[test]
    fn optional_fields_and_escaped_mount_points_are_parsed() {
        let e = entries();
        assert_eq!(e.len(), 6);
        assert!(e[0].optional.is_empty());
        assert_eq!(e[1].optional, vec!["shared:1"]);
        assert_eq!(e[4].mount_point, PathBuf::from("/var/tmp/with space"));
        assert_eq!(e[4].optional, vec!["shared:9", "master:3"]);
    }

    #[test]
    fn the_longest_mount_point_holding_a_path_wins() {
        let e = entries();
        let m = |p: &str| mount_of(&e, Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(m("/var/tmp/h2c/a/b"), PathBuf::from("/var/tmp/h2c"));
        assert_eq!(
            m("/var/tmp/h2c/private/x"),
            PathBuf::from("/var/tmp/h2c/private")
        );
        assert_eq!(m("/var/tmp/h2cx"), PathBuf::from("/"));
        assert_eq!(m("/etc"), PathBuf::from("/"));
    }

    #[test]
    fn stacked_mounts_take_the_top_one() {
        let e = parse_mountinfo(
            "1 0 0:1 / /a rw shared:1 - tmpfs t rw\n2 1 0:2 / /a rw - tmpfs t rw\n",
        );
        assert!(mount_of(&e, Path::new("/a/x")).unwrap().optional.is_empty());
    }

    fn check(path: &str, p: Propagation) -> Result<()> {
        check_propagation(
            &entries(),
            Path::new(path),
            p,
            "config.mounts[0].propagation",
        )
    }

    #[test]
    fn host_to_container_needs_shared_or_slave() {
        assert!(check("/var/tmp/h2c/dir", Propagation::HostToContainer).is_ok());
        assert!(check("/var/tmp/slave", Propagation::HostToContainer).is_ok());
        let err = check("/var/tmp/other", Propagation::HostToContainer).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("config.mounts[0].propagation"), "{msg}");
        assert!(msg.contains("shared or slave"), "{msg}");
        assert_eq!(
            berth_core::HasKind::kind(&err),
            berth_core::ErrorKind::FailedPrecondition
        );
        // A private submount of a shared mount does not propagate.
        assert!(check("/var/tmp/h2c/private", Propagation::HostToContainer).is_err());
    }

    #[test]
    fn bidirectional_needs_shared() {
        assert!(check("/var/tmp/h2c", Propagation::Bidirectional).is_ok());
        assert!(check("/var/tmp/with space/x", Propagation::Bidirectional).is_ok());
        let msg = check("/var/tmp/slave/x", Propagation::Bidirectional)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("needs a shared mount"), "{msg}");
        assert!(check("/anything", Propagation::Private).is_ok());
    }

    #[test]
    fn below_means_a_strict_path_descendant() {
        assert!(is_below("/data/x", "/data"));
        assert!(is_below("/data/x/y", "/data"));
        assert!(!is_below("/data", "/data"));
        assert!(!is_below("/database", "/data"));
        assert!(is_below("/x", "/"));
    }

    #[test]
    fn mount_setattr_support_follows_the_kernel_version() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        assert_eq!(recursive_read_only_supported(), (major, minor) >= (5, 12));
    }
}
