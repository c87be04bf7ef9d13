//! A container's root filesystem: an overlay of the image's snapshots (read-only lower dirs,
//! shared by every container of the image) with the container's own upper and work dirs.
//!
//! Why the new mount API: `mount(2)` takes all options in one page, and with 64-hex snapshot
//! paths an image of ~50 layers already overflows it. `fsopen("overlay")` +
//! `fsconfig("lowerdir+", path)` (Linux ≥ 6.8) adds one lower dir per call, so depth is bounded
//! by overlayfs (500 layers), not by a string. Older kernels get `mount(2)` with the full paths
//! when they fit, else with `/proc/self/fd/N` handles of O_PATH descriptors (17 bytes a layer).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

use crate::{Error, Result};

/// The legacy `mount(2)` data limit: one page, including the terminating NUL.
const MOUNT_DATA_MAX: usize = 4095;

/// Mounts an overlay at `target`: `lowers` top-most first (overlayfs order), `upper` and `work`
/// on the same filesystem. At least one lower dir is needed (an empty one for a layerless image).
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    if lowers.is_empty() {
        return Err(Error::invalid("image", "has no layers to mount"));
    }
    match mount_with_fsconfig(lowers, upper, work, target) {
        Ok(()) => Ok(()),
        // ENOSYS: no new mount API; EINVAL from fsconfig: no `lowerdir+` (kernel < 6.8).
        Err(FsconfigError::Unsupported) => mount_legacy(lowers, upper, work, target),
        Err(FsconfigError::Failed(e)) => Err(e),
    }
}

enum FsconfigError {
    Unsupported,
    Failed(Error),
}

fn mount_with_fsconfig(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::result::Result<(), FsconfigError> {
    let fail = |op: &'static str, path: &Path, e: rustix::io::Errno| {
        FsconfigError::Failed(Error::io(op, path, std::io::Error::from(e)))
    };
    let fs = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS) => return Err(FsconfigError::Unsupported),
        Err(e) => return Err(fail("fsopen overlay for", target, e)),
    };
    for (i, lower) in lowers.iter().enumerate() {
        match rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower.as_path()) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) if i == 0 => return Err(FsconfigError::Unsupported),
            Err(e) => return Err(fail("overlay lowerdir", lower, e)),
        }
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper)
        .map_err(|e| fail("overlay upperdir", upper, e))?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work)
        .map_err(|e| fail("overlay workdir", work, e))?;
    // Inodes index off, as containerd sets it: the same lower dirs serve many overlays at once,
    // which the index would refuse or mis-handle.
    let _ = rustix::mount::fsconfig_set_string(&fs, "index", "off");
    rustix::mount::fsconfig_create(&fs).map_err(|e| fail("create overlay for", target, e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| fail("fsmount overlay for", target, e))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| fail("move overlay mount to", target, e))
}

fn mount_legacy(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let tail = format!(
        ",upperdir={},workdir={},index=off",
        upper.display(),
        work.display()
    );
    let joined: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let mut data = format!("lowerdir={}{tail}", joined.join(":"));
    // Held until the mount call returns: the kernel resolves /proc/self/fd/N at mount time.
    let mut handles: Vec<OwnedFd> = Vec::new();
    if data.len() > MOUNT_DATA_MAX {
        for lower in lowers {
            let fd = nix::fcntl::open(
                lower.as_path(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io("open", lower, e))?;
            // SAFETY: `open` just returned this descriptor and nothing else owns it.
            handles.push(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
        }
        let short: Vec<String> = handles
            .iter()
            .map(|h| format!("/proc/self/fd/{}", h.as_raw_fd()))
            .collect();
        data = format!("lowerdir={}{tail}", short.join(":"));
        if data.len() > MOUNT_DATA_MAX {
            return Err(Error::invalid(
                "image",
                format!(
                    "{} layers do not fit one overlay mount on this kernel",
                    lowers.len()
                ),
            ));
        }
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| Error::io("mount overlay on", target, e))
}

/// Unmounts whatever is mounted at `target` (repeatedly, for stacked mounts). Idempotent: a
/// path with nothing mounted, or no path at all, is fine. A busy mount is detached lazily so
/// that a stuck process cannot keep a container from being removed.
pub fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..16 {
        match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                    .map_err(|e| Error::io("detach", target, e))?;
            }
            Err(e) => return Err(Error::io("unmount", target, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        eprintln!("skipping: needs root to mount overlays");
        false
    }

    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = unmount_all(&self.0);
        }
    }

    fn layers(dir: &Path, n: usize) -> Vec<PathBuf> {
        // Long names like real snapshot paths, so the legacy option string would overflow.
        (0..n)
            .map(|i| {
                let p = dir.join(format!("{i:064x}")).join("fs");
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join(format!("layer-{i}")), format!("{i}")).unwrap();
                std::fs::write(p.join("top"), format!("{i}")).unwrap();
                p
            })
            .rev()
            .collect()
    }

    #[test]
    fn deep_overlay_mounts_with_every_layer_and_unmounts() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let lowers = layers(&dir.path().join("snap"), 130);
        let (upper, work, target) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("rootfs"),
        );
        for d in [&upper, &work, &target] {
            std::fs::create_dir_all(d).unwrap();
        }
        let started = std::time::Instant::now();
        mount_overlay(&lowers, &upper, &work, &target).unwrap();
        let _guard = Unmount(target.clone());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(
            std::fs::read_to_string(target.join("layer-0")).unwrap(),
            "0"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("layer-129")).unwrap(),
            "129"
        );
        // The top-most layer wins.
        assert_eq!(std::fs::read_to_string(target.join("top")).unwrap(), "129");
        std::fs::write(target.join("new"), "x").unwrap();
        assert!(upper.join("new").exists());
        unmount_all(&target).unwrap();
        unmount_all(&target).unwrap();
        assert!(!target.join("layer-0").exists());
    }

    #[test]
    fn legacy_mount_uses_fd_handles_for_deep_images() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let lowers = layers(&dir.path().join("snap"), 80);
        let (upper, work, target) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("rootfs"),
        );
        for d in [&upper, &work, &target] {
            std::fs::create_dir_all(d).unwrap();
        }
        mount_legacy(&lowers, &upper, &work, &target).unwrap();
        let _guard = Unmount(target.clone());
        assert_eq!(
            std::fs::read_to_string(target.join("layer-0")).unwrap(),
            "0"
        );
        assert_eq!(std::fs::read_to_string(target.join("top")).unwrap(), "79");
    }
}
