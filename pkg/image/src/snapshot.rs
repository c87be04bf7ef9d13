//! Overlay snapshots keyed by chain ID: `<root>/snapshots/<chain-hex>/fs` holds the unpacked
//! layer, usable as one `lowerdir` of an overlay mount. A layer is unpacked into
//! `snapshots/staging-<random>/fs` and renamed into place only when complete, so a directory named
//! by a chain ID is always a finished snapshot; anything `staging-*` is debris from a crash.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_core::{fsync_dir, Digest};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::ImageError;

const STAGING_PREFIX: &str = "staging-";
const USAGE_FILE: &str = "usage.json";

#[derive(Clone, Debug)]
pub struct Snapshotter {
    dir: PathBuf,
}

/// Disk usage of one snapshot, recorded at commit so ImageFsInfo does not walk every layer.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Usage {
    bytes: u64,
    inodes: u64,
}

/// A snapshot being unpacked. Removed on drop unless committed.
#[derive(Debug)]
pub struct StagingDir {
    dir: PathBuf,
    fs: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// The directory to unpack the layer into.
    pub fn fs_path(&self) -> &Path {
        &self.fs
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove staging snapshot");
                }
            }
        }
    }
}

impl Snapshotter {
    /// Opens (creating if needed) `<root>/snapshots`; `root` is berth's state directory.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
        // Layers contain setuid binaries; unprivileged users must not be able to reach them
        // (containerd keeps its snapshot root 0700 for the same reason).
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| ImageError::io("chmod", &dir, e))?;
        Ok(Self { dir })
    }

    /// The unpacked filesystem of a snapshot: `snapshots/<hex>/fs`.
    pub fn path(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(chain_id.hex()).join("fs")
    }

    /// Whether a committed snapshot exists for `chain_id`.
    pub fn exists(&self, chain_id: &Digest) -> bool {
        fs::symlink_metadata(self.path(chain_id)).is_ok_and(|m| m.is_dir())
    }

    /// Creates an empty `snapshots/staging-<random>/fs` to unpack a layer into.
    pub fn staging(&self) -> Result<StagingDir, ImageError> {
        let dir = self.dir.join(format!(
            "{STAGING_PREFIX}{:016x}",
            rand::thread_rng().gen::<u64>()
        ));
        fs::create_dir(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
        let staging = StagingDir {
            fs: dir.join("fs"),
            dir,
            committed: false,
        };
        // The overlay root's mode shows as the container's `/`.
        fs::create_dir(&staging.fs).map_err(|e| ImageError::io("create", &staging.fs, e))?;
        fs::set_permissions(&staging.fs, fs::Permissions::from_mode(0o755))
            .map_err(|e| ImageError::io("chmod", &staging.fs, e))?;
        Ok(staging)
    }

    /// Makes a staged snapshot the snapshot of `chain_id`. Layer files are written without a
    /// per-file fsync, so the filesystem is synced once here: after a crash, a snapshot that
    /// exists is complete. If another pull committed the same chain ID first, this one is
    /// discarded and the call succeeds.
    pub fn commit(&self, mut staging: StagingDir, chain_id: &Digest) -> Result<(), ImageError> {
        let usage = walk_usage(&staging.fs);
        let usage_path = staging.dir.join(USAGE_FILE);
        let json = serde_json::to_vec(&usage).unwrap_or_default();
        fs::write(&usage_path, json).map_err(|e| ImageError::io("write", &usage_path, e))?;

        // No syncfs here: it would flush every dirty page of the filesystem (other pulls, other
        // tenants) and cost more than the unpack. A snapshot is re-creatable from its fsynced
        // blob, and process crashes (kill -9) cannot lose page-cache data; this is the same
        // trade containerd's overlay snapshotter makes.
        let target = self.dir.join(chain_id.hex());
        match fs::rename(&staging.dir, &target) {
            Ok(()) => {
                staging.committed = true;
                fsync_dir(&self.dir).map_err(|e| ImageError::io("fsync", &self.dir, e))
            }
            // rename(2) refuses to replace a non-empty directory: a concurrent pull won.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                tracing::debug!(%chain_id, "snapshot already committed, dropping duplicate");
                Ok(())
            }
            Err(e) => Err(ImageError::io("rename", &target, e)),
        }
    }

    /// Removes a snapshot; a missing one is not an error. The directory is first renamed to a
    /// `staging-` name so that a crash half-way through never leaves a partial snapshot under a
    /// chain ID (`cleanup_staging` finishes the job).
    pub fn remove(&self, chain_id: &Digest) -> Result<(), ImageError> {
        let target = self.dir.join(chain_id.hex());
        let doomed = self.dir.join(format!(
            "{STAGING_PREFIX}rm-{:016x}",
            rand::thread_rng().gen::<u64>()
        ));
        match fs::rename(&target, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ImageError::io("rename", &target, e)),
        }
        // Once renamed the snapshot is gone for every reader; deleting thousands of files can
        // take seconds, so it happens off the caller's path. A crash midway leaves a
        // `staging-rm-*` dir that `cleanup_staging` removes at the next start.
        std::thread::spawn(move || {
            if let Err(e) = fs::remove_dir_all(&doomed) {
                tracing::warn!(path = %doomed.display(), error = %e, "removing snapshot");
            }
        });
        Ok(())
    }

    /// Chain IDs of all committed snapshots.
    pub fn list(&self) -> Vec<Digest> {
        crate::content::digests_in(&self.dir)
    }

    /// Removes every `staging-*` directory; call at daemon start, before any pull runs. Returns
    /// how many were removed.
    pub fn cleanup_staging(&self) -> Result<usize, ImageError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| ImageError::io("read", &self.dir, e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("read", &self.dir, e))?;
            if !entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                continue;
            }
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(|e| ImageError::io("remove", &path, e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Allocated bytes and inodes of all committed snapshots.
    pub fn usage(&self) -> (u64, u64) {
        let mut total = Usage::default();
        for chain_id in self.list() {
            let dir = self.dir.join(chain_id.hex());
            let usage = fs::read(dir.join(USAGE_FILE))
                .ok()
                .and_then(|data| serde_json::from_slice::<Usage>(&data).ok())
                .unwrap_or_else(|| walk_usage(&dir.join("fs")));
            total.bytes += usage.bytes;
            total.inodes += usage.inodes;
        }
        (total.bytes, total.inodes)
    }

    /// The `lowerdir=` value for an overlay mount of an image whose layers' chain IDs are
    /// `chain_ids`, given bottom-most (base layer) first, as an image config lists its diff IDs.
    /// overlayfs wants the top-most layer first.
    pub fn lower_dirs(&self, chain_ids: &[Digest]) -> String {
        chain_ids
            .iter()
            .rev()
            .map(|id| self.path(id).to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Allocated bytes and inodes under `root`, not following symlinks and counting a hardlinked
/// inode once. Unreadable entries are skipped: this feeds statistics, not decisions.
fn walk_usage(root: &Path) -> Usage {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.bytes += meta.blocks() * 512;
            usage.inodes += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    #[test]
    fn staging_commit_and_remove() {
        let root = tempfile::tempdir().unwrap();
        let snaps = Snapshotter::open(root.path()).unwrap();
        let id = digest(1);
        assert!(!snaps.exists(&id));
        let staging = snaps.staging().unwrap();
        fs::write(staging.fs_path().join("hello"), b"world").unwrap();
        snaps.commit(staging, &id).unwrap();
        assert!(snaps.exists(&id));
        assert_eq!(fs::read(snaps.path(&id).join("hello")).unwrap(), b"world");
        assert_eq!(snaps.list(), vec![id.clone()]);
        let (bytes, inodes) = snaps.usage();
        assert_eq!(inodes, 1);
        assert!(bytes > 0);

        snaps.remove(&id).unwrap();
        snaps.remove(&id).unwrap();
        assert!(!snaps.exists(&id));
        assert!(snaps.list().is_empty());
        // The renamed-away tree is deleted in the background.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while fs::read_dir(root.path().join("snapshots")).unwrap().count() > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            fs::read_dir(root.path().join("snapshots")).unwrap().count(),
            0
        );
    }

    #[test]
    fn dropped_staging_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let snaps = Snapshotter::open(root.path()).unwrap();
        let staging = snaps.staging().unwrap();
        let dir = staging.fs_path().parent().unwrap().to_path_buf();
        fs::create_dir_all(staging.fs_path().join("a/b")).unwrap();
        assert!(dir.exists());
        drop(staging);
        assert!(!dir.exists());
    }

    #[test]
    fn losing_a_commit_race_is_ok() {
        let root = tempfile::tempdir().unwrap();
        let snaps = Snapshotter::open(root.path()).unwrap();
        let id = digest(2);
        let first = snaps.staging().unwrap();
        let second = snaps.staging().unwrap();
        fs::write(first.fs_path().join("winner"), b"").unwrap();
        snaps.commit(first, &id).unwrap();
        snaps.commit(second, &id).unwrap();
        assert!(snaps.path(&id).join("winner").exists());
        // Only the committed snapshot is left.
        assert_eq!(
            fs::read_dir(root.path().join("snapshots")).unwrap().count(),
            1
        );
    }

    #[test]
    fn cleanup_staging_removes_crash_debris() {
        let root = tempfile::tempdir().unwrap();
        let snaps = Snapshotter::open(root.path()).unwrap();
        let id = digest(3);
        snaps.commit(snaps.staging().unwrap(), &id).unwrap();
        let leftover = snaps.staging().unwrap();
        std::mem::forget(leftover);
        fs::create_dir_all(root.path().join("snapshots/staging-rm-1/fs/x")).unwrap();
        assert_eq!(snaps.cleanup_staging().unwrap(), 2);
        assert_eq!(snaps.list(), vec![id]);
    }

    #[test]
    fn lower_dirs_are_top_most_first() {
        let snaps = Snapshotter {
            dir: PathBuf::from("/var/lib/berth/snapshots"),
        };
        let (a, b) = (digest(1), digest(2));
        assert_eq!(
            snaps.lower_dirs(&[a.clone(), b.clone()]),
            format!(
                "/var/lib/berth/snapshots/{}/fs:/var/lib/berth/snapshots/{}/fs",
                b.hex(),
                a.hex()
            )
        );
    }
}
