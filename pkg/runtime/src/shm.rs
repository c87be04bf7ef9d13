//! The `/dev/shm` a pod's containers share: one tmpfs per pod (an IPC namespace of its own),
//! bind-mounted into each container, sized like Docker's and containerd's default (64 MiB).

use std::path::Path;

use nix::mount::MsFlags;

use crate::{Error, Result};

/// Default size of a pod's `/dev/shm`.
pub const DEFAULT_SHM_BYTES: u64 = 64 << 20;

/// Mounts a fresh tmpfs at `dir` (created if missing). Idempotent for a retry: an existing
/// mount there is left as it is.
pub fn mount_pod_shm(dir: &Path, size: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    if berth_sys::mount::is_mount_point(dir)? {
        return Ok(());
    }
    let data = format!("mode=1777,size={size}");
    nix::mount::mount(
        Some("shm"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| Error::io("mount tmpfs on", dir, e))
}

/// Unmounts the pod's `/dev/shm` and removes the directory. Idempotent.
pub fn unmount_pod_shm(dir: &Path) -> Result<()> {
    crate::rootfs::unmount_all(dir)?;
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", dir, e)),
    }
}
