//! Paths resolved inside a root directory (an image snapshot, a container rootfs) as if it were
//! `/`: `..` and absolute symlinks cannot climb out of it and /proc magic links are refused
//! (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`). Anything berth reads from or creates in
//! a rootfs goes through here, never through a joined path string.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::{Error, Result};

/// Opens a directory to serve as the root of later in-root lookups.
pub fn open_root(dir: &Path) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dir, e))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` (absolute or relative, either way taken from `root`) inside `root`.
pub fn open_in_root(root: RawFd, path: &[u8], flags: OFlag) -> std::result::Result<OwnedFd, Errno> {
    let path = path.strip_prefix(b"/").unwrap_or(path);
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match nix::fcntl::openat2(root, path, how) {
            // SAFETY: openat2 just returned this descriptor and nothing else owns it.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            // RESOLVE_IN_ROOT answers EAGAIN when a concurrent rename could have made `..`
            // resolution unsafe; retrying is the documented response.
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads the regular file `path` inside `root`, at most `max` bytes. `Ok(None)` when it does not
/// exist; a file larger than `max` or not a regular file is an error naming it. Symlinks are
/// followed, but only within the root (images do ship `/etc/passwd` as a symlink).
pub fn read_in_root(root: &Path, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
    let dir = open_root(root)?;
    let display = || root.join(path.trim_start_matches('/'));
    // O_NONBLOCK: a FIFO planted at the path must not hang the open; it is refused below.
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let fd = match open_in_root(dir.as_raw_fd(), path.as_bytes(), flags) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(Error::io("open", display(), e)),
    };
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| Error::io("stat", display(), e))?;
    if !meta.is_file() {
        return Err(Error::invalid(path.to_string(), "is not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::invalid(
            path.to_string(),
            format!("is {} bytes, more than the {max} berth reads", meta.len()),
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("read", display(), e))?;
    if data.len() as u64 > max {
        return Err(Error::invalid(
            path.to_string(),
            format!("grew past the {max} bytes berth reads"),
        ));
    }
    Ok(Some(data))
}

/// What [`mkdir_all_in_root`] and [`create_file_in_root`] found or made at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// It existed already.
    Existed,
    /// It was created now.
    Created,
}

/// Creates directory `path` and its missing parents inside `root` (mode `mode`, owned by
/// whoever berth runs as), resolving every existing component inside the root. Returns an
/// `O_PATH` descriptor of the directory, usable as `/proc/self/fd/N` for a mount target that
/// cannot be swapped for a symlink afterwards.
pub fn mkdir_all_in_root(root: &Path, path: &str, mode: u32) -> Result<(OwnedFd, Made)> {
    let root_fd = open_root(root)?;
    let display = || root.join(path.trim_start_matches('/'));
    let mut names: Vec<&[u8]> = Vec::new();
    for comp in Path::new(path).components() {
        use std::path::Component;
        match comp {
            Component::Normal(n) => names.push(n.as_bytes()),
            Component::ParentDir => {
                return Err(Error::invalid(path.to_string(), "must not contain \"..\""))
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut cur = open_in_root(root_fd.as_raw_fd(), b".", dir_flags)
        .map_err(|e| Error::io("open", root, e))?;
    let mut made = Made::Existed;
    for i in 0..names.len() {
        // Every prefix is resolved from the real root, so a symlink anywhere on the way (an
        // image's `/var/run -> /run`) means what it means inside the container.
        let prefix = names[..=i].join(&b'/');
        cur = match open_in_root(root_fd.as_raw_fd(), &prefix, dir_flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(
                    Some(cur.as_raw_fd()),
                    names[i],
                    Mode::from_bits_truncate(mode),
                ) {
                    Ok(()) => made = Made::Created,
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(Error::io("mkdir", display(), e)),
                }
                open_in_root(root_fd.as_raw_fd(), &prefix, dir_flags)
                    .map_err(|e| Error::io("open", display(), e))?
            }
            Err(e) => return Err(Error::io("open", display(), e)),
        };
    }
    Ok((cur, made))
}

/// Creates an empty regular file at `path` inside `root` if nothing is there (parents as in
/// [`mkdir_all_in_root`]), for bind-mounting a file onto. Returns an `O_PATH` descriptor of it.
pub fn create_file_in_root(root: &Path, path: &str, mode: u32) -> Result<(OwnedFd, Made)> {
    let p = Path::new(path);
    let (parent, name) = match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => return Err(Error::invalid(path.to_string(), "is not a file path")),
    };
    let (dir, _) = mkdir_all_in_root(root, &parent.to_string_lossy(), 0o755)?;
    let display = || root.join(path.trim_start_matches('/'));
    // An O_PATH descriptor serves as the dirfd of openat, also with O_CREAT.
    match nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name.as_bytes(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(mode),
    ) {
        Ok(fd) => {
            // SAFETY: openat just returned this descriptor and nothing else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            let fd = open_in_root(
                dir.as_raw_fd(),
                name.as_bytes(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW,
            )
            .map_err(|e| Error::io("open", display(), e))?;
            Ok((fd, Made::Created))
        }
        Err(Errno::EEXIST) => {
            let (root_fd, rel) = (open_root(root)?, path.as_bytes());
            let fd = open_in_root(root_fd.as_raw_fd(), rel, OFlag::O_PATH)
                .map_err(|e| Error::io("open", display(), e))?;
            Ok((fd, Made::Existed))
        }
        Err(e) => Err(Error::io("create", display(), e)),
    }
}
