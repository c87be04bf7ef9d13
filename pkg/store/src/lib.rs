//! Crash-safe metadata records: one JSON file per record, replaced atomically.
//!
//! Every mutation is a write-then-rename with fsync (see `berth_core::atomic_write`), so a
//! `kill -9` or power cut leaves each record either old or new. Records are small and few (images,
//! pods, containers, leases), so a file per record keeps recovery trivial and needs no WAL.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use berth_core::{atomic_write, ErrorKind, HasKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

mod records;
pub use records::ImageRecord;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store key {key:?} in bucket {bucket}")]
    InvalidKey { bucket: String, key: String },
    #[error("store io on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store record {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl HasKind for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidKey { .. } => ErrorKind::InvalidArgument,
            StoreError::Io { .. } | StoreError::Corrupt { .. } => ErrorKind::Internal,
        }
    }
}

/// The kinds of record berth keeps; each is a directory of `<key>.json` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Images,
    Pods,
    Containers,
    Leases,
}

impl Bucket {
    fn dir_name(self) -> &'static str {
        match self {
            Bucket::Images => "images",
            Bucket::Pods => "pods",
            Bucket::Containers => "containers",
            Bucket::Leases => "leases",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let root = root.join("store");
        for b in [
            Bucket::Images,
            Bucket::Pods,
            Bucket::Containers,
            Bucket::Leases,
        ] {
            let dir = root.join(b.dir_name());
            fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        Ok(Self { root })
    }

    fn path(&self, bucket: Bucket, key: &str) -> Result<PathBuf, StoreError> {
        // Keys become file names: allow only what IDs and digests' hex use.
        let valid = !key.is_empty()
            && key.len() <= 200
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(StoreError::InvalidKey {
                bucket: bucket.dir_name().to_string(),
                key: key.to_string(),
            });
        }
        Ok(self
            .root
            .join(bucket.dir_name())
            .join(format!("{key}.json")))
    }

    /// Writes the record durably: a crash at any moment leaves the old or the new one.
    pub fn put<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let (path, data) = self.encode(bucket, key, value)?;
        atomic_write(&path, &data).map_err(|source| StoreError::Io { path, source })
    }

    /// Like [`Store::put`] but without waiting for the disk: for updates the daemon can
    /// re-derive after a crash (a container's state after creation comes from its shim and exit
    /// file). Readers still see the old record or the new one, never a mix.
    pub fn put_volatile<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let (path, data) = self.encode(bucket, key, value)?;
        berth_core::replace_file_volatile(&path, &data)
            .map_err(|source| StoreError::Io { path, source })
    }

    fn encode<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
    ) -> Result<(PathBuf, Vec<u8>), StoreError> {
        let path = self.path(bucket, key)?;
        let data = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        Ok((path, data))
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        bucket: Bucket,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let path = self.path(bucket, key)?;
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    pub fn delete(&self, bucket: Bucket, key: &str) -> Result<(), StoreError> {
        let path = self.path(bucket, key)?;
        match fs::remove_file(&path) {
            Ok(()) => berth_core::fsync_dir(&self.root.join(bucket.dir_name()))
                .map_err(|source| StoreError::Io { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Loads every record of a bucket. A record that cannot be parsed is reported and skipped so
    /// one bad file cannot keep the daemon from starting; leftover temp files from a crash are
    /// removed.
    pub fn list<T: DeserializeOwned>(
        &self,
        bucket: Bucket,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let dir = self.root.join(bucket.dir_name());
        let entries = fs::read_dir(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            let path = entry.path();
            let parsed = fs::read(&path)
                .map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })
                .and_then(|data| {
                    serde_json::from_slice(&data).map_err(|source| StoreError::Corrupt {
                        path: path.clone(),
                        source,
                    })
                });
            match parsed {
                Ok(v) => out.push((key.to_string(), v)),
                Err(e) => tracing::error!(error = %e, "skipping unreadable store record"),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put(Bucket::Pods, "abc", &vec![1, 2, 3]).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.get::<Vec<i32>>(Bucket::Pods, "abc").unwrap(),
            Some(vec![1, 2, 3])
        );
        assert_eq!(store.list::<Vec<i32>>(Bucket::Pods).unwrap().len(), 1);
        store.delete(Bucket::Pods, "abc").unwrap();
        store.delete(Bucket::Pods, "abc").unwrap();
        assert!(store
            .get::<Vec<i32>>(Bucket::Pods, "abc")
            .unwrap()
            .is_none());
    }

    #[test]
    fn path_like_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for key in ["../x", "a/b", "", ".hidden"] {
            assert!(matches!(
                store.put(Bucket::Images, key, &1),
                Err(StoreError::InvalidKey { .. })
            ));
        }
    }

    #[test]
    fn corrupt_record_is_skipped_in_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put(Bucket::Images, "good", &1).unwrap();
        fs::write(dir.path().join("store/images/bad.json"), b"{").unwrap();
        let all = store.list::<i32>(Bucket::Images).unwrap();
        assert_eq!(all, vec![("good".to_string(), 1)]);
    }
}
