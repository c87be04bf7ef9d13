//! Content-addressed blob store: `<root>/content/blobs/sha256/<hex>`, with partial downloads kept
//! in `<root>/content/ingest/<hex>` so an interrupted pull can resume.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use berth_core::{fsync_dir, Digest, Sha256Writer};
use rand::Rng;

use crate::error::ImageError;

/// Receives replayed bytes of a partial ingest.
pub type ReplaySink<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(), ImageError>;

/// Chunk size used when re-reading an existing partial ingest.
const REPLAY_CHUNK: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    /// Digests with a live [`Ingest`] in this process. Two writers appending to the same ingest
    /// file would interleave bytes, so the second one is refused; the pull layer dedupes anyway.
    active: Arc<Mutex<HashSet<Digest>>>,
}

impl ContentStore {
    /// Opens (creating if needed) the store under `<root>/content/`; `root` is berth's state
    /// directory, e.g. `/var/lib/berth`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let content = root.join("content");
        let blobs = content.join("blobs").join("sha256");
        let ingest = content.join("ingest");
        for dir in [&blobs, &ingest] {
            fs::create_dir_all(dir).map_err(|e| ImageError::io("create", dir, e))?;
        }
        Ok(Self {
            blobs,
            ingest,
            active: Arc::default(),
        })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.ingest.join(digest.hex())
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.size(digest).is_some()
    }

    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::symlink_metadata(self.blob_path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Reads a whole blob of at most `max` bytes and checks it still hashes to its name, so a
    /// blob corrupted on disk is never parsed as a manifest or config. A corrupt blob is deleted
    /// (a re-pull fetches it again) and reported as DataLoss.
    pub fn read(&self, digest: &Digest, max: usize) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::BlobNotFound {
                    digest: digest.clone(),
                })
            }
            Err(e) => return Err(ImageError::io("open", &path, e)),
        };
        let size = file
            .metadata()
            .map_err(|e| ImageError::io("stat", &path, e))?
            .len();
        if size > max as u64 {
            return Err(ImageError::BlobTooLarge {
                digest: digest.clone(),
                size,
                max: max as u64,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        // The `take` guards against the file growing between stat and read.
        file.take((max as u64).saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io("read", &path, e))?;
        let actual = Digest::of_bytes(&data);
        if &actual != digest {
            tracing::warn!(%digest, %actual, "blob on disk is corrupt, deleting it");
            let _ = fs::remove_file(&path);
            return Err(ImageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Stores a small blob (manifest, config) held in memory after checking its digest.
    pub fn write_verified(&self, digest: &Digest, data: &[u8]) -> Result<(), ImageError> {
        let actual = Digest::of_bytes(data);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        // The temp file lives in ingest/ (same filesystem) under a random name, so concurrent
        // writers of the same blob never share a temp file and `list` never sees it.
        let tmp = self.ingest.join(format!(
            "{}.{:016x}.tmp",
            digest.hex(),
            rand::thread_rng().gen::<u64>()
        ));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
            f.write_all(data)
                .and_then(|()| f.sync_all())
                .map_err(|e| ImageError::io("write", &tmp, e))?;
            let dest = self.blob_path(digest);
            fs::rename(&tmp, &dest).map_err(|e| ImageError::io("rename", &dest, e))?;
            fsync_dir(&self.blobs).map_err(|e| ImageError::io("fsync", &self.blobs, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Deletes a blob; deleting a missing blob is not an error.
    pub fn delete(&self, digest: &Digest) -> Result<(), ImageError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::io("remove", path, e)),
            _ => Ok(()),
        }
    }

    /// All committed blobs.
    pub fn list(&self) -> Vec<Digest> {
        digests_in(&self.blobs)
    }

    /// Disk space (allocated bytes) and inodes used by blobs and partial ingests.
    pub fn usage(&self) -> (u64, u64) {
        let mut bytes = 0;
        let mut inodes = 0;
        for dir in [&self.blobs, &self.ingest] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.filter_map(|e| e.ok()) {
                if let Ok(meta) = entry.metadata() {
                    bytes += meta.blocks() * 512;
                    inodes += 1;
                }
            }
        }
        (bytes, inodes)
    }

    /// Starts (or resumes) writing the blob `expected`. Bytes already in `ingest/<hex>` from an
    /// interrupted pull are kept; see [`Ingest::existing_len`].
    pub fn ingest(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<Ingest, ImageError> {
        let guard = IngestGuard::acquire(&self.active, expected)?;
        let path = self.ingest_path(expected);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| ImageError::io("open", &path, e))?;
        let mut existing = file
            .metadata()
            .map_err(|e| ImageError::io("stat", &path, e))?
            .len();
        // A partial file longer than the blob can only be garbage; start over.
        if expected_size.is_some_and(|size| existing > size) {
            file.set_len(0)
                .map_err(|e| ImageError::io("truncate", &path, e))?;
            existing = 0;
        }
        Ok(Ingest {
            store: self.clone(),
            expected: expected.clone(),
            expected_size,
            path,
            file,
            existing,
            hasher: Sha256Writer::new(),
            _guard: guard,
        })
    }

    /// Removes a partial download, e.g. after the registry said the blob changed.
    pub fn remove_ingest(&self, digest: &Digest) -> Result<(), ImageError> {
        let path = self.ingest_path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::io("remove", path, e)),
            _ => Ok(()),
        }
    }
}

/// Marks a digest as being ingested for as long as it lives.
#[derive(Debug)]
struct IngestGuard {
    active: Arc<Mutex<HashSet<Digest>>>,
    digest: Digest,
}

impl IngestGuard {
    fn acquire(active: &Arc<Mutex<HashSet<Digest>>>, digest: &Digest) -> Result<Self, ImageError> {
        // The set is only inserted into and removed from; a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        let mut set = active.lock().unwrap_or_else(PoisonError::into_inner);
        if !set.insert(digest.clone()) {
            return Err(ImageError::IngestInProgress {
                digest: digest.clone(),
            });
        }
        Ok(Self {
            active: active.clone(),
            digest: digest.clone(),
        })
    }
}

impl Drop for IngestGuard {
    fn drop(&mut self) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.digest);
    }
}

/// A blob being written. The hash covers the file from byte 0: bytes that were already on disk
/// are hashed by [`Ingest::replay_existing`], or automatically before the first write or commit.
pub struct Ingest {
    store: ContentStore,
    expected: Digest,
    expected_size: Option<u64>,
    path: PathBuf,
    file: File,
    /// Bytes on disk not yet fed to `hasher` (the partial file from an earlier attempt).
    existing: u64,
    hasher: Sha256Writer,
    _guard: IngestGuard,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("expected", &self.expected)
            .field("expected_size", &self.expected_size)
            .field("path", &self.path)
            .field("written", &self.written())
            .finish()
    }
}

impl Ingest {
    /// Bytes already present from an interrupted download: resume the request at this offset
    /// (HTTP `Range: bytes=<n>-`).
    pub fn existing_len(&self) -> u64 {
        self.existing
    }

    /// Feeds the bytes already on disk to the hasher and to `sink`, once, so a resumed download
    /// can prime its decompressor with the part it did not fetch again.
    pub fn replay_existing(
        &mut self,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        self.hash_existing(Some(sink))
    }

    fn hash_existing(&mut self, mut sink: Option<ReplaySink<'_>>) -> Result<(), ImageError> {
        let mut buf = vec![0u8; REPLAY_CHUNK.min(self.existing as usize)];
        let mut offset = self.hasher.written();
        while offset < self.existing {
            let want = buf.len().min((self.existing - offset) as usize);
            let n = self
                .file
                .read_at(&mut buf[..want], offset)
                .map_err(|e| ImageError::io("read", &self.path, e))?;
            if n == 0 {
                return Err(ImageError::io(
                    "read",
                    &self.path,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "partial ingest file shrank"),
                ));
            }
            self.hasher.update(&buf[..n]);
            if let Some(sink) = sink.as_mut() {
                sink(&buf[..n])?;
            }
            offset += n as u64;
        }
        self.existing = 0;
        Ok(())
    }

    /// Drops the bytes written so far; used when the server answered a Range request with the
    /// whole blob.
    pub fn restart(&mut self) -> Result<(), ImageError> {
        self.file
            .set_len(0)
            .map_err(|e| ImageError::io("truncate", &self.path, e))?;
        self.existing = 0;
        self.hasher = Sha256Writer::new();
        Ok(())
    }

    /// Appends `data` and hashes it.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        if self.existing > 0 {
            self.hash_existing(None)?;
        }
        if let Some(size) = self.expected_size {
            let total = self.hasher.written() + data.len() as u64;
            if total > size {
                return Err(self.fail_mismatch_size(total));
            }
        }
        // The file is opened O_APPEND, so writes always land at the end.
        self.file
            .write_all(data)
            .map_err(|e| ImageError::io("write", &self.path, e))?;
        self.hasher.update(data);
        Ok(())
    }

    /// Bytes of the blob on disk so far, including a resumed prefix.
    pub fn written(&self) -> u64 {
        self.hasher.written() + self.existing
    }

    /// Oversized data cannot become the right blob; throw the partial file away so the next
    /// attempt starts clean.
    fn fail_mismatch_size(&self, actual: u64) -> ImageError {
        let _ = fs::remove_file(&self.path);
        ImageError::SizeMismatch {
            digest: self.expected.clone(),
            expected: self.expected_size.unwrap_or(0),
            actual,
        }
    }

    /// Verifies size and digest and moves the blob into place durably. On a mismatch the ingest
    /// file is deleted (resuming it would only reproduce the bad bytes) and a DataLoss error is
    /// returned.
    pub fn commit(mut self) -> Result<(), ImageError> {
        if self.existing > 0 {
            self.hash_existing(None)?;
        }
        let written = self.hasher.written();
        if let Some(size) = self.expected_size {
            if written != size {
                return Err(self.fail_mismatch_size(written));
            }
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.expected {
            let _ = fs::remove_file(&self.path);
            return Err(ImageError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        self.file
            .sync_all()
            .map_err(|e| ImageError::io("fsync", &self.path, e))?;
        let dest = self.store.blob_path(&self.expected);
        fs::rename(&self.path, &dest).map_err(|e| ImageError::io("rename", &dest, e))?;
        fsync_dir(&self.store.blobs).map_err(|e| ImageError::io("fsync", &self.store.blobs, e))
    }

    /// Stops writing but keeps the partial file so a later pull can resume from it.
    pub fn abort(self) {}
}

/// The entries of `dir` named by a digest's hex, sorted. Anything else there (temp files,
/// staging dirs) is skipped; an unreadable directory is logged and yields an empty list.
pub(crate) fn digests_in(dir: &Path) -> Vec<Digest> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = %e, "cannot list directory");
            return Vec::new();
        }
    };
    let mut out: Vec<Digest> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Digest::from_hex(e.file_name().to_str()?).ok())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{ErrorKind, HasKind};

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn write_verified_and_read_round_trip() {
        let (_dir, store) = store();
        let data = b"{\"schemaVersion\":2}";
        let d = Digest::of_bytes(data);
        assert!(!store.has(&d));
        store.write_verified(&d, data).unwrap();
        assert!(store.has(&d));
        assert_eq!(store.size(&d), Some(data.len() as u64));
        assert_eq!(store.read(&d, 1024).unwrap(), data);
        assert_eq!(store.list(), vec![d.clone()]);
        assert_eq!(
            store.read(&d, 4).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let wrong = Digest::of_bytes(b"other");
        assert_eq!(
            store.write_verified(&wrong, data).unwrap_err().kind(),
            ErrorKind::DataLoss
        );
        store.delete(&d).unwrap();
        store.delete(&d).unwrap();
        assert_eq!(
            store.read(&d, 1024).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(store.list().is_empty());
    }

    #[test]
    fn read_detects_corruption_on_disk() {
        let (_dir, store) = store();
        let d = Digest::of_bytes(b"good");
        store.write_verified(&d, b"good").unwrap();
        fs::write(store.blob_path(&d), b"evil").unwrap();
        assert_eq!(
            store.read(&d, 1024).unwrap_err().kind(),
            ErrorKind::DataLoss
        );
        assert!(!store.has(&d));
    }

    #[test]
    fn ingest_commit_verifies() {
        let (_dir, store) = store();
        let data = b"layer bytes".repeat(100);
        let d = Digest::of_bytes(&data);
        let mut ing = store.ingest(&d, Some(data.len() as u64)).unwrap();
        assert_eq!(ing.existing_len(), 0);
        for chunk in data.chunks(7) {
            ing.write(chunk).unwrap();
        }
        assert_eq!(ing.written(), data.len() as u64);
        ing.commit().unwrap();
        assert_eq!(store.read(&d, usize::MAX).unwrap(), data);
        assert!(!store.ingest_path(&d).exists());
    }

    #[test]
    fn ingest_mismatch_deletes_and_reports_data_loss() {
        let (_dir, store) = store();
        let d = Digest::of_bytes(b"expected");
        let mut ing = store.ingest(&d, None).unwrap();
        ing.write(b"tampered").unwrap();
        let err = ing.commit().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DataLoss);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("blob {d} digest mismatch: got sha256:")),
            "{msg}"
        );
        assert!(!store.ingest_path(&d).exists());
        assert!(!store.has(&d));

        // A wrong size is caught too, before the digest.
        let mut ing = store.ingest(&d, Some(3)).unwrap();
        assert_eq!(
            ing.write(b"toolong").unwrap_err().kind(),
            ErrorKind::DataLoss
        );
        drop(ing);
        let mut ing = store.ingest(&d, Some(100)).unwrap();
        ing.write(b"short").unwrap();
        assert_eq!(ing.commit().unwrap_err().kind(), ErrorKind::DataLoss);
        assert!(!store.ingest_path(&d).exists());
    }

    #[test]
    fn ingest_resumes_after_abort() {
        let (_dir, store) = store();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of_bytes(&data);
        let mut ing = store.ingest(&d, Some(data.len() as u64)).unwrap();
        ing.write(&data[..1_234_567]).unwrap();
        ing.abort();

        let mut ing = store.ingest(&d, Some(data.len() as u64)).unwrap();
        assert_eq!(ing.existing_len(), 1_234_567);
        let mut replayed = Vec::new();
        ing.replay_existing(&mut |b| {
            replayed.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(replayed, &data[..1_234_567]);
        ing.write(&data[1_234_567..]).unwrap();
        ing.commit().unwrap();
        assert_eq!(store.size(&d), Some(data.len() as u64));
    }

    #[test]
    fn ingest_resume_without_replay_still_hashes_prefix() {
        let (_dir, store) = store();
        let data = b"0123456789";
        let d = Digest::of_bytes(data);
        let mut ing = store.ingest(&d, None).unwrap();
        ing.write(&data[..4]).unwrap();
        ing.abort();
        let mut ing = store.ingest(&d, None).unwrap();
        assert_eq!(ing.written(), 4);
        ing.write(&data[4..]).unwrap();
        ing.commit().unwrap();
        assert!(store.has(&d));
    }

    #[test]
    fn ingest_restart_discards_partial() {
        let (_dir, store) = store();
        let data = b"full blob";
        let d = Digest::of_bytes(data);
        let mut ing = store.ingest(&d, None).unwrap();
        ing.write(b"garbage").unwrap();
        ing.abort();
        let mut ing = store.ingest(&d, Some(data.len() as u64)).unwrap();
        assert_eq!(ing.existing_len(), 7);
        // The server ignored our Range header and sent everything from byte 0.
        ing.restart().unwrap();
        assert_eq!(ing.written(), 0);
        ing.write(data).unwrap();
        ing.commit().unwrap();
        assert_eq!(store.read(&d, 100).unwrap(), data);
    }

    #[test]
    fn concurrent_ingest_of_same_digest_is_refused() {
        let (_dir, store) = store();
        let d = Digest::of_bytes(b"x");
        let first = store.ingest(&d, None).unwrap();
        assert_eq!(
            store.ingest(&d, None).unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        first.abort();
        store.ingest(&d, None).unwrap().abort();
        store.remove_ingest(&d).unwrap();
        store.remove_ingest(&d).unwrap();
    }

    #[test]
    fn usage_counts_blobs() {
        let (_dir, store) = store();
        store.write_verified(&Digest::of_bytes(b"a"), b"a").unwrap();
        let (bytes, inodes) = store.usage();
        assert_eq!(inodes, 1);
        assert!(bytes > 0);
    }
}
