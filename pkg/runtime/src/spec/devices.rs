//! Reading device nodes on the node for [`DeviceSpec::nodes`](super::DeviceSpec) and
//! [`NodeFacts::host_devices`](super::NodeFacts): the one part of spec building that needs the
//! filesystem, kept out of the pure [`build_spec`](super::build_spec). Mirrors containerd's
//! `getDevices` / `DeviceFromPath` (`pkg/oci/utils_unix.go`).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{DeviceKind, DeviceNode};
use crate::{Error, Result};

/// Directories under /dev that hold no device nodes a container should get: mounts of their
/// own inside the container (pts, shm, mqueue), /dev/fd, and LXC/LXD/udev state.
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The device nodes of a CRI `Device`: `host_path` (symlinks resolved) is a device node, or a
/// directory whose nodes are taken recursively, each at `container_path/<name>`. An empty
/// `container_path` keeps the host paths.
pub fn device_nodes(host_path: &Path, container_path: &str) -> Result<Vec<DeviceNode>> {
    let resolved = fs::canonicalize(host_path).map_err(|e| Error::io("resolve", host_path, e))?;
    let meta = fs::metadata(&resolved).map_err(|e| Error::io("stat", &resolved, e))?;
    if !meta.is_dir() {
        let path = if container_path.is_empty() {
            resolved.to_string_lossy().into_owned()
        } else {
            container_path.to_string()
        };
        return match node(&resolved, path)? {
            Some(n) => Ok(vec![n]),
            None => Err(Error::invalid(
                "devices.host_path",
                format!("{} is not a device node", host_path.display()),
            )),
        };
    }
    let mut out = Vec::new();
    walk(&resolved, container_path, &mut out)?;
    Ok(out)
}

/// Every device node under the host's /dev, for a privileged container (containerd's
/// `HostDevices`).
pub fn host_devices() -> Result<Vec<DeviceNode>> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), "", &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, container_dir: &str, out: &mut Vec<DeviceNode>) -> Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(|e| Error::io("read dir", dir, e))?
        .collect::<io::Result<_>>()
        .map_err(|e| Error::io("read dir", dir, e))?;
    // Go's os.ReadDir is sorted by name; the spec's device order follows it.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let sub = |container_dir: &str| -> String {
            if container_dir.is_empty() {
                path.to_string_lossy().into_owned()
            } else {
                format!("{}/{}", container_dir.trim_end_matches('/'), name)
            }
        };
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", &path, e)),
        };
        if file_type.is_dir() {
            if SKIPPED_DIRS.contains(&name.as_ref()) {
                continue;
            }
            let child = if container_dir.is_empty() {
                String::new()
            } else {
                sub(container_dir)
            };
            walk(&path, &child, out)?;
            continue;
        }
        // The container's console is its own tty, not the node's.
        if name == "console" {
            continue;
        }
        match node(&path, sub(container_dir)) {
            Ok(Some(n)) if n.kind != DeviceKind::Fifo => out.push(n),
            Ok(_) => {}
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The device node at `path` (not following a symlink), or `None` if it is none.
fn node(path: &Path, container_path: String) -> Result<Option<DeviceNode>> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        DeviceKind::Char
    } else if ft.is_block_device() {
        DeviceKind::Block
    } else if ft.is_fifo() {
        DeviceKind::Fifo
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    Ok(Some(DeviceNode {
        path: container_path,
        kind,
        major: nix::sys::stat::major(rdev) as i64,
        minor: nix::sys::stat::minor(rdev) as i64,
        file_mode: meta.mode() & !libc::S_IFMT,
        uid: meta.uid(),
        gid: meta.gid(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_null_is_char_1_3() {
        let nodes = device_nodes(Path::new("/dev/null"), "/dev/xnull").unwrap();
        assert_eq!(
            nodes,
            vec![DeviceNode {
                path: "/dev/xnull".into(),
                kind: DeviceKind::Char,
                major: 1,
                minor: 3,
                file_mode: 0o666,
                uid: 0,
                gid: 0,
            }]
        );
    }

    #[test]
    fn a_regular_file_is_not_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"x").unwrap();
        let err = device_nodes(&f, "/dev/f").unwrap_err();
        assert!(err.to_string().contains("is not a device node"), "{err}");
    }

    #[test]
    fn a_directory_maps_its_nodes_below_the_container_path() {
        let nodes = device_nodes(Path::new("/dev"), "/hostdev").unwrap();
        let null = nodes.iter().find(|n| n.major == 1 && n.minor == 3).unwrap();
        assert_eq!(null.path, "/hostdev/null");
        assert!(nodes.iter().all(|n| !n.path.starts_with("/hostdev/pts/")));
        assert!(nodes.iter().all(|n| n.path != "/hostdev/console"));
    }

    #[test]
    fn host_devices_keep_host_paths() {
        let nodes = host_devices().unwrap();
        assert!(nodes.iter().any(|n| n.path == "/dev/null"));
    }
}
