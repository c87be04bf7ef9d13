//! Unpacks one layer tar into an empty snapshot directory, converting whiteouts to the form
//! overlayfs reads (like containerd's `archive.Apply` with overlay conversion).
//!
//! Confinement is the point of this module. Every member name is normalised before use and no
//! path from the tar is ever joined to `dest` as a string:
//! - an absolute name (`/etc/x`) is taken relative to the root, as containerd and GNU tar do;
//! - `.` and empty components are dropped and `..` is resolved lexically; a name that climbs
//!   above the root (`../x`, `a/../../x`) is refused with InvalidArgument and the whole layer
//!   fails, because no image builder produces one and accepting a clamped variant would hide an
//!   attack;
//! - the parent directory of each entry is opened with openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS) from a descriptor of `dest`, so symlinks created by earlier entries
//!   (`evil -> /`, `d -> ..`) are resolved as if `dest` were `/` and can never lead outside it;
//! - the final component is created relative to that parent descriptor with O_EXCL/O_NOFOLLOW
//!   semantics (openat, mkdirat, symlinkat, mknodat, linkat without AT_SYMLINK_FOLLOW), after
//!   removing whatever was there, so an existing symlink is replaced, never written through;
//! - hardlink targets are normalised and resolved the same way, and linkat does not follow a
//!   symlink target, so a hardlink can only ever share an inode that is inside `dest`;
//! - symlink targets are stored verbatim: they are data, only ever resolved by a later mount
//!   namespace rooted in the container.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, SyncSender};

use berth_core::{Digest, Sha256Writer};
use berth_sys::root::open_in_root;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::compression::Compression;
use crate::error::ImageError;

/// Buffer for copying file contents out of the tar stream.
const COPY_BUFFER: usize = 1024 * 1024;
/// Uncompressed bytes per message from the decoder thread, and messages buffered between the two
/// threads (so at most ~5 MiB in flight per layer).
const CHUNK_SIZE: usize = 1024 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;
/// Bytes the tar parser may read between two entries: headers, PAX records, GNU long names and
/// padding. Go's archive/tar (so containerd) caps each such record at 1 MiB.
const MAX_HEADER_BYTES: u64 = 2 * 1024 * 1024;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const XATTR_PAX_PREFIX: &[u8] = b"SCHILY.xattr.";
/// overlayfs interprets these; a layer must not smuggle in redirects or metacopy markers that
/// the kernel would act on. Opaque directories are expressed with `.wh..wh..opq` instead.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// What [`apply_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLayer {
    /// sha256 of the uncompressed tar stream: the layer's diff ID in the image config.
    pub diff_id: Digest,
    /// Bytes of regular-file content written.
    pub size: u64,
    /// Tar entries applied (whiteouts included, pax/longname headers not).
    pub entries: u64,
}

/// Applies one layer onto `dest`, which should be an empty snapshot directory, and reads
/// `compressed` to its end so a hash the caller keeps over the compressed bytes is complete.
///
/// Decompression and hashing run on a second thread, overlapped with the file writes on this
/// one; for a gzip layer that is most of the CPU time. Blocking: call it from a blocking thread.
pub fn apply_layer<R: Read + Send>(
    compressed: R,
    compression: Compression,
    dest: &Path,
) -> Result<AppliedLayer, ImageError> {
    let root = open_dir(dest)?;
    let (tx, rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("layer-decode".into())
            .spawn_scoped(scope, move || decode_stream(compressed, compression, tx))
            .map_err(|e| ImageError::io("spawn decoder thread for", dest, e))?;
        // If anything below fails, `stream` is dropped when this closure returns, which makes
        // the decoder's next send fail so the thread exits and the scope can join it.
        let header_budget = Rc::new(Cell::new(None));
        let mut stream = ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            diff_id: None,
            header_budget: header_budget.clone(),
        };
        let mut applier = Applier::new(root);
        {
            let mut archive = tar::Archive::new(&mut stream);
            let mut entries = archive
                .entries()
                .map_err(|source| ImageError::LayerStream { source })?;
            loop {
                // The tar crate buffers PAX and GNU long-name records in memory while it looks
                // for the next entry; bound what it may read there so a layer cannot make us
                // allocate gigabytes of "header".
                header_budget.set(Some(MAX_HEADER_BYTES));
                let Some(entry) = entries.next() else { break };
                header_budget.set(None);
                let mut entry = entry.map_err(|source| ImageError::LayerStream { source })?;
                applier.apply_entry(&mut entry)?;
                // Consume data we did not use (a whiteout or skipped entry with a body) here,
                // outside the header budget and without buffering it.
                io::copy(&mut entry, &mut io::sink())
                    .map_err(|source| ImageError::LayerStream { source })?;
            }
            header_budget.set(None);
        }
        applier.finish()?;
        // The tar end marker is followed by padding (and a compressed stream by its trailer):
        // the diff ID covers every uncompressed byte, and the caller's digest every compressed
        // one.
        io::copy(&mut stream, &mut io::sink())
            .map_err(|source| ImageError::LayerStream { source })?;
        let diff_id = stream
            .diff_id
            .take()
            .ok_or_else(|| ImageError::LayerStream {
                source: io::Error::other("layer decoder stopped without a digest"),
            })?;
        Ok(AppliedLayer {
            diff_id,
            size: applier.size,
            entries: applier.entries,
        })
    })
}

/// What the decoder thread sends: uncompressed data, then either the diff ID or the error.
enum Chunk {
    Data(Vec<u8>),
    Done(Digest),
    Failed(io::Error),
}

/// Decompresses and hashes `compressed` into chunks until its end, or until the receiver is gone.
fn decode_stream<R: Read>(compressed: R, compression: Compression, tx: SyncSender<Chunk>) {
    let mut decoder = match compression.decoder(compressed) {
        Ok(decoder) => decoder,
        Err(e) => {
            let _ = tx.send(Chunk::Failed(e));
            return;
        }
    };
    let mut hasher = Sha256Writer::new();
    loop {
        let mut buf = vec![0u8; CHUNK_SIZE];
        let mut filled = 0;
        // Decoders return short reads; fill the chunk so the channel carries few, large messages.
        while filled < buf.len() {
            match decoder.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Chunk::Failed(e));
                    return;
                }
            }
        }
        if filled == 0 {
            let _ = tx.send(Chunk::Done(hasher.finish()));
            return;
        }
        buf.truncate(filled);
        hasher.update(&buf);
        if tx.send(Chunk::Data(buf)).is_err() {
            // The apply failed and hung up; nobody needs the rest.
            return;
        }
    }
}

/// The reading end of the decoder thread: a buffered `Read` over the uncompressed stream.
struct ChunkReader {
    rx: Receiver<Chunk>,
    chunk: Vec<u8>,
    pos: usize,
    diff_id: Option<Digest>,
    /// When set, how many more bytes may be read before the stream fails (see apply_layer).
    header_budget: Rc<Cell<Option<u64>>>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let buf = match self.header_budget.get() {
            None => buf,
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tar extension headers of one entry exceed {MAX_HEADER_BYTES} bytes"),
                ))
            }
            Some(left) => {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.header_budget.set(Some(left - n as u64));
                &mut buf[..n]
            }
        };
        while self.pos == self.chunk.len() {
            if self.diff_id.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(data)) => {
                    self.chunk = data;
                    self.pos = 0;
                }
                Ok(Chunk::Done(digest)) => self.diff_id = Some(digest),
                Ok(Chunk::Failed(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("layer decoder thread exited")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn open_dir(dest: &Path) -> Result<OwnedFd, ImageError> {
    let fd = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io("open", dest, e.into()))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat_owned(dir: RawFd, name: &[u8], flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::openat(Some(dir), name, flags | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A member name after normalisation: components joined by `/`, no `.`/`..`/empty parts.
/// Empty means the root itself.
fn normalize(raw: &[u8], ename: &str) -> Result<Vec<u8>, ImageError> {
    if raw.contains(&0) {
        return Err(ImageError::invalid_entry(ename, "name contains a NUL byte"));
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(ImageError::EntryEscapes {
                        entry: ename.to_string(),
                    });
                }
            }
            _ => parts.push(part),
        }
    }
    Ok(parts.join(&b'/'))
}

/// Splits a normalised path into (parent, base).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Ownership, permissions and times from the tar header and its PAX records.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Meta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>, ename: &str) -> Result<Meta, ImageError> {
        let header = entry.header();
        let bad =
            |what: &str, e: io::Error| ImageError::invalid_entry(ename, format!("{what}: {e}"));
        let uid = header.uid().map_err(|e| bad("uid", e))?;
        let gid = header.gid().map_err(|e| bad("gid", e))?;
        let mode = header.mode().map_err(|e| bad("mode", e))?;
        let mtime = header.mtime().map_err(|e| bad("mtime", e))?;
        let uid =
            u32::try_from(uid).map_err(|_| ImageError::invalid_entry(ename, "uid out of range"))?;
        let gid =
            u32::try_from(gid).map_err(|_| ImageError::invalid_entry(ename, "gid out of range"))?;
        let mut mtime = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("pax header", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("pax header", e))?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX) {
                    if name.starts_with(OVERLAY_XATTR_PREFIX) {
                        tracing::debug!(entry = ename, "dropping overlay xattr from layer");
                        continue;
                    }
                    match CString::new(name) {
                        Ok(name) => xattrs.push((name, ext.value_bytes().to_vec())),
                        Err(_) => tracing::debug!(entry = ename, "skipping xattr with NUL in name"),
                    }
                } else if key == b"mtime" {
                    // PAX times carry sub-second precision the ustar field lacks.
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        mtime = t;
                    }
                } else if key == b"atime" {
                    atime = parse_pax_time(ext.value_bytes());
                }
            }
        }
        Ok(Meta {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mode: Mode::from_bits_truncate(mode & 0o7777),
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }
}

/// Parses a PAX time such as `1700000000.123456789`; negative or malformed values are ignored.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(value).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if secs < 0 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = &frac[..frac.len().min(9)];
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let nanos = nanos * 10i64.pow(9 - digits.len() as u32);
    Some(TimeSpec::new(secs, nanos))
}

/// Errors that mean "this filesystem or namespace does not take this xattr", which we tolerate:
/// an image built elsewhere may carry attributes this host cannot store.
fn xattr_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOTSUP | libc::EPERM | libc::EACCES | libc::EINVAL | libc::E2BIG | libc::ERANGE
        )
    )
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fsetxattr(fd: RawFd, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: name is NUL-terminated, value points to value.len() readable bytes, and fd is a
    // descriptor the caller owns for the duration of the call.
    check(unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

fn lsetxattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: path and name are NUL-terminated and value points to value.len() readable bytes.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// What currently sits where an entry is about to be created.
enum Existing {
    Dir,
    Other,
}

struct Applier {
    root: OwnedFd,
    /// The parent directory of the previous entry; tars list a directory's children together, so
    /// this saves most openat2 calls. `parent_valid` is cleared whenever anything is removed,
    /// because a removal may change what a cached path resolves to.
    parent: Option<(Vec<u8>, OwnedFd)>,
    parent_valid: bool,
    /// Directory mtimes, applied once all entries are in (creating children changes them).
    dir_times: Vec<(Vec<u8>, TimeSpec, TimeSpec)>,
    buf: Vec<u8>,
    size: u64,
    entries: u64,
}

impl Applier {
    fn new(root: OwnedFd) -> Self {
        Self {
            root,
            parent: None,
            parent_valid: false,
            dir_times: Vec::new(),
            buf: vec![0; COPY_BUFFER],
            size: 0,
            entries: 0,
        }
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let kind = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        let ename = String::from_utf8_lossy(&raw).into_owned();
        let ename = ename.as_str();
        use tar::EntryType as T;
        match kind {
            T::Regular
            | T::Continuous
            | T::Directory
            | T::Symlink
            | T::Link
            | T::Char
            | T::Block
            | T::Fifo => {}
            // The tar crate folds long names and per-entry PAX records into the entry they
            // describe; a global PAX header carries nothing we use.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => {
                tracing::warn!(entry = ename, kind = ?other, "skipping unsupported tar entry type");
                return Ok(());
            }
        }
        let path = normalize(&raw, ename)?;
        if path.is_empty() {
            // The root's own metadata belongs to the snapshot, as in containerd.
            tracing::debug!(entry = ename, "ignoring entry for the layer root");
            return Ok(());
        }
        let (parent, base) = split(&path);
        self.entries += 1;

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent, base, entry, ename);
        }
        let meta = Meta::read(entry, ename)?;
        let pfd = self.parent_fd(parent, ename)?;
        match kind {
            T::Directory => self.create_dir(pfd, &path, base, &meta, ename),
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::invalid_entry(ename, "symlink without a target"))?
                    .into_owned();
                self.create_symlink(pfd, base, &target, &meta, ename)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::invalid_entry(ename, "hardlink without a target"))?
                    .into_owned();
                self.create_hardlink(pfd, base, &target, ename)
            }
            T::Char | T::Block | T::Fifo => {
                let (sflag, dev) = match kind {
                    T::Char => (SFlag::S_IFCHR, device_number(entry.header(), ename)?),
                    T::Block => (SFlag::S_IFBLK, device_number(entry.header(), ename)?),
                    // A fifo has no device number; writers often leave the fields blank.
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.create_node(pfd, base, sflag, dev, ename)?;
                self.node_metadata(pfd, base, &meta, true, ename)
            }
            _ => self.create_file(pfd, base, entry, &meta, ename),
        }
    }

    /// Descriptor of the directory `parent` (normalised, relative to the root), created with
    /// 0755 if missing. Valid until the next call.
    fn parent_fd(&mut self, parent: &[u8], ename: &str) -> Result<RawFd, ImageError> {
        if parent.is_empty() {
            return Ok(self.root.as_raw_fd());
        }
        if self.parent_valid {
            if let Some((cached, fd)) = &self.parent {
                if cached == parent {
                    return Ok(fd.as_raw_fd());
                }
            }
        }
        let fd = match open_in_root(
            self.root.as_raw_fd(),
            parent,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.mkdir_all(parent, ename)?,
            Err(e) => return Err(ImageError::entry_io(ename, "open parent directory", e)),
        };
        let raw = fd.as_raw_fd();
        self.parent = Some((parent.to_vec(), fd));
        self.parent_valid = true;
        Ok(raw)
    }

    /// Creates the missing directories of `path` one component at a time, each relative to the
    /// descriptor of the previous one (resolved in the root), like containerd's mkparent.
    fn mkdir_all(&mut self, path: &[u8], ename: &str) -> Result<OwnedFd, ImageError> {
        let root = self.root.as_raw_fd();
        let mut current: Option<OwnedFd> = None;
        let mut end = 0;
        for component in path.split(|&b| b == b'/') {
            end += component.len();
            let prefix = &path[..end];
            end += 1;
            let fd = match open_in_root(root, prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let dir = current.as_ref().map_or(root, |fd| fd.as_raw_fd());
                    match nix::sys::stat::mkdirat(
                        Some(dir),
                        component,
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(ImageError::entry_io(ename, "create parent directory", e))
                        }
                    }
                    open_in_root(root, prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)
                        .map_err(|e| ImageError::entry_io(ename, "open parent directory", e))?
                }
                Err(e) => return Err(ImageError::entry_io(ename, "open parent directory", e)),
            };
            current = Some(fd);
        }
        current.ok_or_else(|| ImageError::invalid_entry(ename, "empty parent path"))
    }

    /// Looks at what is at `dir/name` without following a symlink.
    fn existing(dir: RawFd, name: &[u8], ename: &str) -> Result<Option<Existing>, ImageError> {
        match nix::sys::stat::fstatat(Some(dir), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(Some(Existing::Dir)),
            Ok(_) => Ok(Some(Existing::Other)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(ImageError::entry_io(ename, "stat", e)),
        }
    }

    /// Removes whatever is at `dir/name` so a later entry can replace it.
    fn remove(&mut self, dir: RawFd, name: &[u8], ename: &str) -> Result<(), ImageError> {
        self.parent_valid = false;
        match Self::existing(dir, name, ename)? {
            None => Ok(()),
            Some(Existing::Dir) => remove_all_at(dir, name)
                .map_err(|e| ImageError::entry_io(ename, "remove existing", e)),
            Some(Existing::Other) => {
                nix::unistd::unlinkat(Some(dir), name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| ImageError::entry_io(ename, "remove existing", e))
            }
        }
    }

    /// Runs `create` once, and once more after clearing the name if it was taken.
    fn create_replacing(
        &mut self,
        dir: RawFd,
        name: &[u8],
        ename: &str,
        op: &'static str,
        mut create: impl FnMut() -> Result<(), Errno>,
    ) -> Result<(), ImageError> {
        match create() {
            Err(Errno::EEXIST) => {
                self.remove(dir, name, ename)?;
                create().map_err(|e| ImageError::entry_io(ename, op, e))
            }
            other => other.map_err(|e| ImageError::entry_io(ename, op, e)),
        }
    }

    fn create_file<R: Read>(
        &mut self,
        dir: RawFd,
        name: &[u8],
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
        ename: &str,
    ) -> Result<(), ImageError> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let mode = Mode::from_bits_truncate(0o600);
        let mut fd = None;
        self.create_replacing(dir, name, ename, "create file", || {
            fd = Some(openat_owned(dir, name, flags, mode)?);
            Ok(())
        })?;
        let fd = fd.ok_or_else(|| ImageError::invalid_entry(ename, "file was not created"))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ImageError::LayerStream { source }),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| ImageError::entry_io(ename, "write", e))?;
            self.size += n as u64;
        }
        let fd = file.as_raw_fd();
        self.fd_metadata(fd, meta, ename)?;
        nix::sys::stat::futimens(fd, &meta.atime, &meta.mtime)
            .map_err(|e| ImageError::entry_io(ename, "set times", e))
    }

    /// Owner, xattrs, then mode: chown clears setuid/setgid, so the mode goes last.
    fn fd_metadata(&self, fd: RawFd, meta: &Meta, ename: &str) -> Result<(), ImageError> {
        nix::unistd::fchown(fd, Some(meta.uid), Some(meta.gid))
            .map_err(|e| ImageError::entry_io(ename, "chown", e))?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = fsetxattr(fd, name, value) {
                if !xattr_unsupported(&e) {
                    return Err(ImageError::entry_io(ename, "set xattr", e));
                }
                tracing::debug!(entry = ename, xattr = ?name, error = %e, "skipping xattr");
            }
        }
        nix::sys::stat::fchmod(fd, meta.mode).map_err(|e| ImageError::entry_io(ename, "chmod", e))
    }

    fn create_dir(
        &mut self,
        dir: RawFd,
        path: &[u8],
        name: &[u8],
        meta: &Meta,
        ename: &str,
    ) -> Result<(), ImageError> {
        let mode = Mode::from_bits_truncate(0o700);
        match nix::sys::stat::mkdirat(Some(dir), name, mode) {
            Ok(()) => {}
            // A directory over a directory merges; anything else is replaced.
            Err(Errno::EEXIST) => {
                if !matches!(Self::existing(dir, name, ename)?, Some(Existing::Dir)) {
                    self.remove(dir, name, ename)?;
                    nix::sys::stat::mkdirat(Some(dir), name, mode)
                        .map_err(|e| ImageError::entry_io(ename, "create directory", e))?;
                }
            }
            Err(e) => return Err(ImageError::entry_io(ename, "create directory", e)),
        }
        let fd = openat_owned(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| ImageError::entry_io(ename, "open directory", e))?;
        self.fd_metadata(fd.as_raw_fd(), meta, ename)?;
        self.dir_times.push((path.to_vec(), meta.atime, meta.mtime));
        // Its children most likely come next.
        self.parent = Some((path.to_vec(), fd));
        self.parent_valid = true;
        Ok(())
    }

    fn create_symlink(
        &mut self,
        dir: RawFd,
        name: &[u8],
        target: &[u8],
        meta: &Meta,
        ename: &str,
    ) -> Result<(), ImageError> {
        if target.contains(&0) {
            return Err(ImageError::invalid_entry(
                ename,
                "symlink target contains a NUL byte",
            ));
        }
        self.create_replacing(dir, name, ename, "create symlink", || {
            nix::unistd::symlinkat(target, Some(dir), name)
        })?;
        self.node_metadata(dir, name, meta, false, ename)
    }

    fn create_hardlink(
        &mut self,
        dir: RawFd,
        name: &[u8],
        target: &[u8],
        ename: &str,
    ) -> Result<(), ImageError> {
        let target = normalize(target, ename)?;
        if target.is_empty() {
            return Err(ImageError::invalid_entry(
                ename,
                "hardlink to the layer root",
            ));
        }
        let (target_parent, target_base) = split(&target);
        let target_dir = if target_parent.is_empty() {
            None
        } else {
            Some(
                open_in_root(
                    self.root.as_raw_fd(),
                    target_parent,
                    OFlag::O_PATH | OFlag::O_DIRECTORY,
                )
                .map_err(|e| hardlink_error(ename, &target, e))?,
            )
        };
        let target_dir_fd = target_dir
            .as_ref()
            .map_or(self.root.as_raw_fd(), |fd| fd.as_raw_fd());
        // No AT_SYMLINK_FOLLOW: if the target is a symlink the link is to the symlink itself, so
        // it cannot reach an inode outside the root.
        let link = || {
            nix::unistd::linkat(
                Some(target_dir_fd),
                target_base,
                Some(dir),
                name,
                nix::fcntl::AtFlags::empty(),
            )
        };
        match link() {
            Err(Errno::EEXIST) => {
                self.remove(dir, name, ename)?;
                link().map_err(|e| hardlink_error(ename, &target, e))
            }
            other => other.map_err(|e| hardlink_error(ename, &target, e)),
        }
    }

    fn create_node(
        &mut self,
        dir: RawFd,
        name: &[u8],
        kind: SFlag,
        dev: libc::dev_t,
        ename: &str,
    ) -> Result<(), ImageError> {
        self.create_replacing(dir, name, ename, "mknod", || {
            nix::sys::stat::mknodat(Some(dir), name, kind, Mode::from_bits_truncate(0o600), dev)
        })
    }

    /// Metadata for entries we hold no descriptor of (symlinks, devices, fifos); every call
    /// works on `dir/name` itself and never follows it.
    fn node_metadata(
        &self,
        dir: RawFd,
        name: &[u8],
        meta: &Meta,
        chmod: bool,
        ename: &str,
    ) -> Result<(), ImageError> {
        use nix::fcntl::AtFlags;
        nix::unistd::fchownat(
            Some(dir),
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ImageError::entry_io(ename, "chown", e))?;
        if !meta.xattrs.is_empty() {
            // There is no lsetxattrat before Linux 6.13; going through the directory descriptor's
            // /proc entry keeps the parent pinned, and lsetxattr does not follow the final name.
            let mut path = format!("/proc/self/fd/{dir}/").into_bytes();
            path.extend_from_slice(name);
            let path = CString::new(path)
                .map_err(|_| ImageError::invalid_entry(ename, "name contains a NUL byte"))?;
            for (xname, value) in &meta.xattrs {
                if let Err(e) = lsetxattr(&path, xname, value) {
                    if !xattr_unsupported(&e) {
                        return Err(ImageError::entry_io(ename, "set xattr", e));
                    }
                    tracing::debug!(entry = ename, xattr = ?xname, error = %e, "skipping xattr");
                }
            }
        }
        if chmod {
            nix::sys::stat::fchmodat(
                Some(dir),
                name,
                meta.mode,
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|e| ImageError::entry_io(ename, "chmod", e))?;
        }
        nix::sys::stat::utimensat(
            Some(dir),
            name,
            &meta.atime,
            &meta.mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| ImageError::entry_io(ename, "set times", e))
    }

    /// `dir/.wh.name` hides `name` of lower layers: overlayfs expects a 0:0 character device in
    /// its place. `dir/.wh..wh..opq` hides all of `dir`'s lower contents: overlayfs expects the
    /// `trusted.overlay.opaque=y` xattr on `dir`.
    fn whiteout<R: Read>(
        &mut self,
        parent: &[u8],
        base: &[u8],
        entry: &mut tar::Entry<'_, R>,
        ename: &str,
    ) -> Result<(), ImageError> {
        if base == WHITEOUT_OPAQUE {
            // Make sure the directory exists (the tar may list the marker first), then open it
            // for real: fsetxattr does not work on an O_PATH descriptor.
            self.parent_fd(parent, ename)?;
            let fd;
            let dir_fd = if parent.is_empty() {
                self.root.as_raw_fd()
            } else {
                fd = open_in_root(
                    self.root.as_raw_fd(),
                    parent,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                )
                .map_err(|e| ImageError::entry_io(ename, "open opaque directory", e))?;
                fd.as_raw_fd()
            };
            return fsetxattr(dir_fd, c"trusted.overlay.opaque", b"y")
                .map_err(|e| ImageError::entry_io(ename, "set opaque xattr", e));
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs); meaningless for overlayfs.
            tracing::debug!(entry = ename, "skipping aufs metadata entry");
            return Ok(());
        }
        let hidden = &base[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ImageError::invalid_entry(ename, "whiteout without a name"));
        }
        let header = entry.header();
        let bad =
            |what: &str, e: io::Error| ImageError::invalid_entry(ename, format!("{what}: {e}"));
        let uid = header.uid().map_err(|e| bad("uid", e))?;
        let gid = header.gid().map_err(|e| bad("gid", e))?;
        let dir = self.parent_fd(parent, ename)?;
        self.create_node(dir, hidden, SFlag::S_IFCHR, 0, ename)?;
        // Ownership as moby's overlay whiteout converter sets it.
        let uid =
            u32::try_from(uid).map_err(|_| ImageError::invalid_entry(ename, "uid out of range"))?;
        let gid =
            u32::try_from(gid).map_err(|_| ImageError::invalid_entry(ename, "gid out of range"))?;
        nix::unistd::fchownat(
            Some(dir),
            hidden,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ImageError::entry_io(ename, "chown whiteout", e))
    }

    /// Sets directory times last, since creating their children changed them. A directory
    /// replaced or removed by a later entry is skipped.
    fn finish(&mut self) -> Result<(), ImageError> {
        let root = self.root.as_raw_fd();
        for (path, atime, mtime) in std::mem::take(&mut self.dir_times) {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            match open_in_root(root, &path, flags) {
                Ok(fd) => {
                    nix::sys::stat::futimens(fd.as_raw_fd(), &atime, &mtime).map_err(|e| {
                        ImageError::entry_io(&String::from_utf8_lossy(&path), "set times", e)
                    })?
                }
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
                Err(e) => {
                    return Err(ImageError::entry_io(
                        &String::from_utf8_lossy(&path),
                        "open directory",
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}

fn device_number(header: &tar::Header, ename: &str) -> Result<libc::dev_t, ImageError> {
    let bad = |e: io::Error| ImageError::invalid_entry(ename, format!("device number: {e}"));
    let major = header.device_major().map_err(bad)?.unwrap_or(0);
    let minor = header.device_minor().map_err(bad)?.unwrap_or(0);
    Ok(nix::sys::stat::makedev(major.into(), minor.into()))
}

fn hardlink_error(ename: &str, target: &[u8], e: Errno) -> ImageError {
    match e {
        Errno::ENOENT | Errno::ENOTDIR => ImageError::invalid_entry(
            ename,
            format!(
                "hardlink target {} not found in the layer",
                String::from_utf8_lossy(target)
            ),
        ),
        e => ImageError::entry_io(ename, "hardlink", e),
    }
}

/// `rm -rf dir/name` without following symlinks: every directory is opened O_NOFOLLOW relative
/// to its parent's descriptor.
fn remove_all_at(dir: RawFd, name: &[u8]) -> Result<(), Errno> {
    let mut handle = nix::dir::Dir::openat(
        Some(dir),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let fd = handle.as_raw_fd();
    let mut children = Vec::new();
    for child in handle.iter() {
        let child = child?;
        let child_name = child.file_name().to_bytes();
        if child_name == b"." || child_name == b".." {
            continue;
        }
        children.push((child_name.to_vec(), child.file_type()));
    }
    for (child, file_type) in children {
        let is_dir = match file_type {
            Some(t) => t == nix::dir::Type::Directory,
            None => {
                let st = nix::sys::stat::fstatat(
                    Some(fd),
                    child.as_slice(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                st.st_mode & libc::S_IFMT == libc::S_IFDIR
            }
        };
        if is_dir {
            remove_all_at(fd, &child)?;
        } else {
            nix::unistd::unlinkat(
                Some(fd),
                child.as_slice(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )?;
        }
    }
    drop(handle);
    nix::unistd::unlinkat(Some(dir), name, nix::unistd::UnlinkatFlags::RemoveDir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{ErrorKind, HasKind};
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;
    use tar::{EntryType, Header};

    macro_rules! require_root {
        () => {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipping: needs root (chown, mknod, trusted.* xattrs)");
                return;
            }
        };
    }

    /// Builds a tar in memory. Names go into the header bytes verbatim, so tests can write
    /// names `tar::Header::set_path` would refuse (`..`, absolute paths).
    #[derive(Default)]
    struct TarBuilder {
        out: Vec<u8>,
    }

    struct E<'a> {
        name: &'a str,
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        link: &'a str,
        data: &'a [u8],
        dev: (u32, u32),
    }

    fn e(name: &str, kind: EntryType) -> E<'_> {
        E {
            name,
            kind,
            mode: if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            link: "",
            data: b"",
            dev: (0, 0),
        }
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
        E {
            data,
            ..e(name, EntryType::Regular)
        }
    }
    fn dir(name: &str) -> E<'_> {
        e(name, EntryType::Directory)
    }
    fn symlink<'a>(name: &'a str, target: &'a str) -> E<'a> {
        E {
            link: target,
            ..e(name, EntryType::Symlink)
        }
    }
    fn hardlink<'a>(name: &'a str, target: &'a str) -> E<'a> {
        E {
            link: target,
            ..e(name, EntryType::Link)
        }
    }

    impl TarBuilder {
        fn add(&mut self, entry: E<'_>) -> &mut Self {
            let mut h = Header::new_ustar();
            let name = entry.name.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            let link = entry.link.as_bytes();
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            h.set_entry_type(entry.kind);
            h.set_mode(entry.mode);
            h.set_uid(entry.uid);
            h.set_gid(entry.gid);
            h.set_mtime(entry.mtime);
            h.set_size(entry.data.len() as u64);
            if matches!(entry.kind, EntryType::Char | EntryType::Block) {
                h.set_device_major(entry.dev.0).unwrap();
                h.set_device_minor(entry.dev.1).unwrap();
            }
            h.set_cksum();
            self.raw(&h, entry.data)
        }

        /// A PAX extended header applying to the next entry.
        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            let mut data = Vec::new();
            for (key, value) in records {
                let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                data.extend(format!("{len} {key}=").into_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            let mut h = Header::new_ustar();
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_entry_type(EntryType::XHeader);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            self.raw(&h, &data)
        }

        fn raw(&mut self, h: &Header, data: &[u8]) -> &mut Self {
            self.out.extend_from_slice(h.as_bytes());
            self.out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.out.extend(std::iter::repeat_n(0, pad));
            self
        }

        fn finish(&self) -> Vec<u8> {
            let mut out = self.out.clone();
            out.extend(std::iter::repeat_n(0, 1024));
            out
        }
    }

    /// `outer/` holds `dest/` and a `canary` file that no layer may touch.
    struct Sandbox {
        outer: tempfile::TempDir,
    }

    impl Sandbox {
        fn new() -> Self {
            let outer = tempfile::tempdir().unwrap();
            fs::create_dir(outer.path().join("dest")).unwrap();
            fs::write(outer.path().join("canary"), b"original").unwrap();
            Self { outer }
        }
        fn dest(&self) -> PathBuf {
            self.outer.path().join("dest")
        }
        fn apply(&self, tar: &TarBuilder) -> Result<AppliedLayer, ImageError> {
            apply_layer(&tar.finish()[..], Compression::None, &self.dest())
        }
        /// The canary is unchanged, not hardlinked, and nothing else appeared next to `dest`.
        fn assert_untouched(&self) {
            let canary = self.outer.path().join("canary");
            assert_eq!(fs::read(&canary).unwrap(), b"original");
            assert_eq!(fs::symlink_metadata(&canary).unwrap().nlink(), 1);
            let mut names: Vec<_> = fs::read_dir(self.outer.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["canary", "dest"]);
        }
    }

    fn unique(prefix: &str) -> String {
        format!(
            "{prefix}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        )
    }

    #[test]
    fn normalize_policy() {
        let ok = |s: &str| String::from_utf8(normalize(s.as_bytes(), s).unwrap()).unwrap();
        assert_eq!(ok("./etc//passwd"), "etc/passwd");
        assert_eq!(ok("/etc/passwd"), "etc/passwd");
        assert_eq!(ok("a/b/../c"), "a/c");
        assert_eq!(ok("./"), "");
        assert_eq!(ok("/"), "");
        for bad in ["..", "../x", "a/../../x", "/../x", "./../x"] {
            let err = normalize(bad.as_bytes(), bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert_eq!(
                err.to_string(),
                format!("layer entry {bad} escapes the root")
            );
        }
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(parse_pax_time(b"1.0000000019"), Some(TimeSpec::new(1, 1)));
        assert_eq!(parse_pax_time(b"-1.5"), None);
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn normal_entries_are_applied() {
        require_root!();
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(E {
            mode: 0o750,
            uid: 1000,
            gid: 1001,
            mtime: 1_500_000_000,
            ..dir("etc/")
        })
        .add(E {
            mode: 0o640,
            uid: 5,
            gid: 6,
            mtime: 1_400_000_000,
            ..file("etc/hosts", b"127.0.0.1 localhost\n")
        })
        .add(E {
            mode: 0o4755,
            uid: 0,
            gid: 0,
            ..file("bin/su", b"#!")
        })
        .add(E {
            mode: 0o2755,
            uid: 3,
            gid: 4,
            ..file("bin/sg", b"")
        })
        .add(E {
            mode: 0o1777,
            ..dir("tmp")
        })
        .pax(&[("SCHILY.xattr.trusted.link", b"l")])
        .add(E {
            uid: 7,
            gid: 8,
            mtime: 1_300_000_000,
            ..symlink("hosts", "etc/hosts")
        })
        .add(hardlink("etc/hosts.bak", "etc/hosts"))
        .add(E {
            dev: (1, 3),
            mode: 0o666,
            ..e("dev/null", EntryType::Char)
        })
        .add(E {
            dev: (8, 1),
            mode: 0o660,
            gid: 6,
            ..e("dev/sda1", EntryType::Block)
        })
        .add(E {
            mode: 0o600,
            ..e("run/fifo", EntryType::Fifo)
        })
        .pax(&[
            ("SCHILY.xattr.user.note", b"hello"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
            ("mtime", b"1234567890.25"),
        ])
        .add(E {
            mode: 0o755,
            ..file("bin/ping", b"ELF")
        })
        .pax(&[("SCHILY.xattr.trusted.note", b"dir")])
        .add(dir("var/"));
        let applied = sb.apply(&t).unwrap();
        let d = sb.dest();
        assert_eq!(applied.entries, 12);
        assert_eq!(applied.size, 20 + 2 + 3);

        let m = fs::metadata(d.join("etc")).unwrap();
        assert!(m.is_dir());
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
            (0o750, 1000, 1001, 1_500_000_000)
        );
        let m = fs::symlink_metadata(d.join("etc/hosts")).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
            (0o640, 5, 6, 1_400_000_000)
        );
        assert_eq!(m.nlink(), 2);
        assert_eq!(
            fs::read(d.join("etc/hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        assert_eq!(
            fs::symlink_metadata(d.join("etc/hosts.bak")).unwrap().ino(),
            m.ino()
        );
        assert_eq!(
            fs::metadata(d.join("bin/su")).unwrap().mode() & 0o7777,
            0o4755
        );
        let m = fs::metadata(d.join("bin/sg")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2755, 3, 4));
        assert_eq!(fs::metadata(d.join("tmp")).unwrap().mode() & 0o7777, 0o1777);

        let m = fs::symlink_metadata(d.join("hosts")).unwrap();
        assert!(m.file_type().is_symlink());
        assert_eq!((m.uid(), m.gid(), m.mtime()), (7, 8, 1_300_000_000));
        assert_eq!(
            fs::read_link(d.join("hosts")).unwrap(),
            Path::new("etc/hosts")
        );
        // Set on the symlink itself, not on etc/hosts.
        assert_eq!(
            xattr::get(d.join("hosts"), "trusted.link")
                .unwrap()
                .as_deref(),
            Some(&b"l"[..])
        );
        assert_eq!(
            xattr::get(d.join("etc/hosts"), "trusted.link").unwrap(),
            None
        );

        let m = fs::symlink_metadata(d.join("dev/null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(m.mode() & 0o7777, 0o666);
        let m = fs::symlink_metadata(d.join("dev/sda1")).unwrap();
        assert!(m.file_type().is_block_device());
        assert_eq!(
            (m.rdev(), m.gid(), m.mode() & 0o7777),
            (nix::sys::stat::makedev(8, 1), 6, 0o660)
        );
        assert!(fs::symlink_metadata(d.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        // Parents missing from the tar are created 0755.
        assert_eq!(
            fs::metadata(d.join("run")).unwrap().permissions().mode() & 0o7777,
            0o755
        );

        let ping = d.join("bin/ping");
        assert_eq!(
            xattr::get(&ping, "user.note").unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert!(xattr::get(&ping, "security.capability").unwrap().is_some());
        assert_eq!(xattr::get(&ping, "trusted.overlay.redirect").unwrap(), None);
        let m = fs::metadata(&ping).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 250_000_000));
        assert_eq!(
            xattr::get(d.join("var"), "trusted.note")
                .unwrap()
                .as_deref(),
            Some(&b"dir"[..])
        );
    }

    #[test]
    fn whiteouts_become_overlay_form() {
        require_root!();
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(dir("a/"))
            .add(file("a/keep", b"k"))
            .add(file("a/gone", b"x"))
            .add(E {
                uid: 1,
                gid: 2,
                ..file("a/.wh.gone", b"")
            })
            .add(file("a/.wh.lower", b""))
            .add(file("opq/.wh..wh..opq", b""))
            .add(file("opq/new", b"n"))
            .add(file(".wh..wh.plnk", b""));
        let applied = sb.apply(&t).unwrap();
        let d = sb.dest();
        for name in ["a/gone", "a/lower"] {
            let m = fs::symlink_metadata(d.join(name)).unwrap();
            assert!(m.file_type().is_char_device(), "{name}");
            assert_eq!(m.rdev(), 0);
        }
        assert_eq!(fs::symlink_metadata(d.join("a/gone")).unwrap().uid(), 1);
        assert!(d.join("a/keep").exists());
        assert!(!d.join("a/.wh.gone").exists());
        assert_eq!(
            xattr::get(d.join("opq"), "trusted.overlay.opaque")
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert!(d.join("opq/new").exists());
        assert!(!d.join(".wh..wh.plnk").exists());
        assert_eq!(
            xattr::get(d.join("a"), "trusted.overlay.opaque").unwrap(),
            None
        );
        assert_eq!(applied.entries, 8);
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        require_root!();
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(file("f2d", b"file"))
            .add(dir("f2d/"))
            .add(file("f2d/inner", b"i"))
            .add(dir("d2f/"))
            .add(file("d2f/x", b"x"))
            .add(file("d2f", b"now a file"))
            .add(symlink("s", "../canary"))
            .add(file("s", b"replaced"))
            .add(dir("merge/"))
            .add(file("merge/one", b"1"))
            .add(E {
                mode: 0o700,
                ..dir("merge/")
            })
            .add(file("merge/two", b"2"))
            .add(file("dup", b"first"))
            .add(file("dup", b"second"))
            // Replacing a directory that was the cached parent: `a/y` must follow the new symlink.
            .add(dir("a/"))
            .add(file("a/x", b"x"))
            .add(dir("b/"))
            .add(symlink("a", "b"))
            .add(file("a/y", b"y"));
        sb.apply(&t).unwrap();
        let d = sb.dest();
        assert_eq!(fs::read(d.join("f2d/inner")).unwrap(), b"i");
        assert_eq!(fs::read(d.join("d2f")).unwrap(), b"now a file");
        let m = fs::symlink_metadata(d.join("s")).unwrap();
        assert!(m.is_file());
        assert_eq!(fs::read(d.join("s")).unwrap(), b"replaced");
        assert!(d.join("merge/one").exists() && d.join("merge/two").exists());
        assert_eq!(fs::metadata(d.join("merge")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::read(d.join("dup")).unwrap(), b"second");
        assert!(fs::symlink_metadata(d.join("a"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(d.join("b/y")).unwrap(), b"y");
        sb.assert_untouched();
    }

    #[test]
    fn directory_mtimes_survive_their_children() {
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(E {
            mtime: 1_000_000_000,
            ..dir("d/")
        })
        .add(file("d/a", b"a"))
        .add(E {
            mtime: 1_100_000_000,
            ..dir("d/sub/")
        })
        .add(file("d/sub/b", b"b"));
        sb.apply(&t).unwrap();
        assert_eq!(
            fs::metadata(sb.dest().join("d")).unwrap().mtime(),
            1_000_000_000
        );
        assert_eq!(
            fs::metadata(sb.dest().join("d/sub")).unwrap().mtime(),
            1_100_000_000
        );
    }

    #[test]
    fn compressions_and_diff_id() {
        let mut t = TarBuilder::default();
        t.add(dir("usr/"))
            .add(file("usr/data", &[7u8; 100_000]))
            .add(symlink("lib", "usr/lib"));
        let raw = t.finish();
        let gz = {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&raw).unwrap();
            enc.finish().unwrap()
        };
        let zst = zstd::encode_all(&raw[..], 3).unwrap();
        for (blob, compression) in [
            (raw.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
        ] {
            let sb = Sandbox::new();
            let mut counter = CountingReader {
                inner: &blob[..],
                count: 0,
            };
            let applied = apply_layer(&mut counter, compression, &sb.dest()).unwrap();
            assert_eq!(applied.diff_id, Digest::of_bytes(&raw), "{compression:?}");
            assert_eq!(applied.size, 100_000);
            assert_eq!(applied.entries, 3);
            // The whole compressed blob was consumed, so the caller's digest is complete.
            assert_eq!(counter.count, blob.len(), "{compression:?}");
            assert_eq!(
                fs::read(sb.dest().join("usr/data")).unwrap(),
                vec![7u8; 100_000]
            );
        }
    }

    #[test]
    fn diff_id_covers_trailing_padding() {
        let mut t = TarBuilder::default();
        t.add(file("a", b"a"));
        let mut raw = t.finish();
        raw.extend(std::iter::repeat_n(0, 10 * 512)); // tar(1) pads to a 10 KiB record
        let sb = Sandbox::new();
        let applied = apply_layer(&raw[..], Compression::None, &sb.dest()).unwrap();
        assert_eq!(applied.diff_id, Digest::of_bytes(&raw));
    }

    #[test]
    fn corrupt_stream_is_data_loss() {
        let sb = Sandbox::new();
        let err = apply_layer(
            &b"\x1f\x8bnot really gzip"[..],
            Compression::Gzip,
            &sb.dest(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DataLoss, "{err}");
    }

    struct CountingReader<R> {
        inner: R,
        count: usize,
    }
    impl<R: Read> Read for CountingReader<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.count += n;
            Ok(n)
        }
    }

    #[test]
    fn tar_dotdot_entry_is_refused() {
        for name in [
            "../canary",
            "a/../../canary",
            "./../canary",
            "../dest/../canary",
        ] {
            let sb = Sandbox::new();
            let mut t = TarBuilder::default();
            t.add(file(name, b"pwned"));
            let err = sb.apply(&t).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}");
            assert_eq!(
                err.to_string(),
                format!("layer entry {name} escapes the root")
            );
            sb.assert_untouched();
        }
        // A symlink or hardlink named with `..` is refused the same way.
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(symlink("../evil", "/"));
        assert_eq!(sb.apply(&t).unwrap_err().kind(), ErrorKind::InvalidArgument);
        sb.assert_untouched();
    }

    #[test]
    fn tar_absolute_path_is_confined() {
        let sb = Sandbox::new();
        let host_name = unique("berth-abs-test");
        let abs = format!("/tmp/{host_name}");
        let mut t = TarBuilder::default();
        t.add(file(&abs, b"inside"))
            .add(file("/canary", b"inside too"));
        sb.apply(&t).unwrap();
        assert!(!Path::new(&abs).exists());
        assert_eq!(
            fs::read(sb.dest().join("tmp").join(&host_name)).unwrap(),
            b"inside"
        );
        assert_eq!(fs::read(sb.dest().join("canary")).unwrap(), b"inside too");
        sb.assert_untouched();
    }

    #[test]
    fn tar_symlink_then_write_through_is_confined() {
        // `evil -> ../..` would reach outer/ from dest/; `abs -> /` would reach the host root.
        let host_name = unique("berth-canary");
        for (link, target) in [
            ("evil", "../.."),
            ("evil", ".."),
            ("abs", "/"),
            ("deep", "../../../../../.."),
        ] {
            let sb = Sandbox::new();
            let mut t = TarBuilder::default();
            t.add(symlink(link, target))
                .add(file(&format!("{link}/canary"), b"pwned"))
                .add(file(&format!("{link}/{host_name}"), b"pwned"))
                .add(file(&format!("{link}/dest/canary"), b"pwned"));
            sb.apply(&t).unwrap();
            sb.assert_untouched();
            assert!(!Path::new("/").join(&host_name).exists());
            // The writes landed inside the root, where the symlink resolves when `dest` is `/`.
            assert_eq!(fs::read(sb.dest().join("canary")).unwrap(), b"pwned");
            assert_eq!(fs::read(sb.dest().join(&host_name)).unwrap(), b"pwned");
            // The symlink itself is stored verbatim.
            assert_eq!(
                fs::read_link(sb.dest().join(link)).unwrap(),
                Path::new(target)
            );
        }
    }

    #[test]
    fn tar_symlink_to_file_is_replaced_not_followed() {
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(symlink("f", "../canary")).add(file("f", b"pwned"));
        sb.apply(&t).unwrap();
        sb.assert_untouched();
        assert!(fs::symlink_metadata(sb.dest().join("f")).unwrap().is_file());
    }

    #[test]
    fn tar_hardlink_escape_is_refused() {
        // Straight `..` in the link target.
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(hardlink("h", "../canary"));
        let err = sb.apply(&t).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("escapes the root"), "{err}");
        sb.assert_untouched();

        // Through a symlinked parent: `d -> ..` resolves to the root itself, where there is no
        // canary to link.
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(symlink("d", "..")).add(hardlink("h", "d/canary"));
        let err = sb.apply(&t).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        sb.assert_untouched();

        // Absolute symlinked parent pointing at the real outer directory.
        let sb = Sandbox::new();
        let outer = sb.outer.path().to_str().unwrap().to_string();
        let mut t = TarBuilder::default();
        t.add(symlink("o", &outer)).add(hardlink("h", "o/canary"));
        assert!(sb.apply(&t).is_err());
        sb.assert_untouched();

        // Hardlink to a symlink that points outside: links the symlink, not its target.
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(symlink("s", "../canary")).add(hardlink("h", "s"));
        sb.apply(&t).unwrap();
        assert!(fs::symlink_metadata(sb.dest().join("h"))
            .unwrap()
            .file_type()
            .is_symlink());
        sb.assert_untouched();
    }

    #[test]
    fn tar_symlink_parent_dir_escape() {
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(symlink("d", ".."))
            .add(file("d/d/x", b"x"))
            .add(dir("d/d/newdir/"))
            .add(file("d/d/newdir/y", b"y"))
            .add(symlink("d/d/link", "/"))
            .add(file("d/link/z", b"z"));
        sb.apply(&t).unwrap();
        sb.assert_untouched();
        let d = sb.dest();
        assert_eq!(fs::read(d.join("x")).unwrap(), b"x");
        assert_eq!(fs::read(d.join("newdir/y")).unwrap(), b"y");
        assert_eq!(fs::read(d.join("z")).unwrap(), b"z");
    }

    #[test]
    fn whiteout_through_symlink_is_confined() {
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(symlink("up", ".."))
            .add(file("up/.wh.canary", b""))
            .add(file("up/.wh..wh..opq", b""));
        let result = sb.apply(&t);
        sb.assert_untouched();
        if nix::unistd::geteuid().is_root() {
            result.unwrap();
            assert!(fs::symlink_metadata(sb.dest().join("canary"))
                .unwrap()
                .file_type()
                .is_char_device());
        }
    }

    #[test]
    fn tar_magic_link_is_refused() {
        // /proc/self/root would be an escape hatch if magic links were followed.
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.add(symlink("p", "/proc/self/root"))
            .add(file("p/x", b"x"));
        // Resolved in the root, `/proc` does not exist there: the parent is created or refused,
        // never the host's /proc.
        let _ = sb.apply(&t);
        sb.assert_untouched();
        assert!(!Path::new("/x").exists());
    }

    #[test]
    fn oversized_pax_header_is_refused() {
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        let huge = vec![b'a'; 3 * 1024 * 1024];
        t.pax(&[("comment", &huge[..])]).add(file("a", b"a"));
        let err = sb.apply(&t).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DataLoss, "{err}");
        assert!(err.to_string().contains("exceed"), "{err}");

        // Big file bodies are not headers.
        let sb = Sandbox::new();
        let mut t = TarBuilder::default();
        t.pax(&[("comment", &b"small"[..])])
            .add(file("big", &huge))
            .add(E {
                data: &huge,
                ..symlink("s", "big")
            });
        sb.apply(&t).unwrap();
    }

    /// Timing on a real layer: `BERTH_BENCH_LAYER=/path/layer.tar.gz cargo test --release -p
    /// berth-image -- --ignored apply_bench --nocapture`.
    #[test]
    #[ignore]
    fn apply_bench() {
        let Ok(path) = std::env::var("BERTH_BENCH_LAYER") else {
            eprintln!("skipping: BERTH_BENCH_LAYER is not set");
            return;
        };
        let mut head = [0u8; 4];
        File::open(&path).unwrap().read_exact(&mut head).unwrap();
        let compression = Compression::detect(&head);
        // BERTH_BENCH_DIR picks the filesystem (e.g. /dev/shm to leave the disk out).
        let base = std::env::var("BERTH_BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
        let dest = tempfile::tempdir_in(base).unwrap();
        let start = std::time::Instant::now();
        let applied = apply_layer(File::open(&path).unwrap(), compression, dest.path()).unwrap();
        eprintln!("{compression:?}: {applied:?} in {:?}", start.elapsed());
        let start = std::time::Instant::now();
        let mut decoder = compression.decoder(File::open(&path).unwrap()).unwrap();
        let n = io::copy(&mut decoder, &mut io::sink()).unwrap();
        eprintln!("decompressing {n} bytes alone: {:?}", start.elapsed());
    }
}
