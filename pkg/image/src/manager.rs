//! The image catalogue: pulled images, how names find them, removal and disk usage.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use berth_core::Digest;
use berth_registry::{
    ClientOptions, Credentials, ImageConfig, Reference, RegistryClient, MAX_CONFIG_BYTES,
};
use berth_store::{Bucket, ImageRecord, Store};

use crate::content::ContentStore;
use crate::pull::{spawn_shared, PullProgress, Puller, SharedJob};
use crate::snapshot::Snapshotter;
use crate::ImageError;

type PullJob = SharedJob<Digest>;

struct RunningPull {
    job: PullJob,
    progress: Arc<PullProgress>,
}

#[derive(Clone)]
pub struct ImageManager {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    store: Store,
    content: ContentStore,
    snapshots: Snapshotter,
    puller: Puller,
    images: RwLock<HashMap<Digest, ImageRecord>>,
    /// Pulls in flight by normalised reference: identical concurrent pulls join one job.
    pulls: Mutex<HashMap<String, RunningPull>>,
    /// Serialises record updates so concurrent pulls of two tags of one image merge, not race.
    record_lock: tokio::sync::Mutex<()>,
}

/// What `ImageFsInfo` reports.
#[derive(Debug, Clone, Copy)]
pub struct FsUsage {
    pub bytes: u64,
    pub inodes: u64,
}

impl ImageManager {
    /// Opens (or creates) the image state under `root` and forgets whatever a crash left half
    /// done: staging snapshots are removed; partial downloads stay for resume.
    pub fn open(
        root: &Path,
        store: Store,
        registry_config_path: PathBuf,
        options: ClientOptions,
        max_concurrent_downloads: usize,
    ) -> Result<Self, ImageError> {
        let content = ContentStore::open(root)?;
        let snapshots = Snapshotter::open(root)?;
        match snapshots.cleanup_staging() {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "removed half-unpacked snapshots left by a crash"),
            Err(e) => tracing::warn!(error = %e, "cleaning up staging snapshots"),
        }
        let mut images = HashMap::new();
        for (_, rec) in store.list::<ImageRecord>(Bucket::Images)? {
            // A record is written only after its snapshots are committed; one that lost a
            // snapshot anyway (manual deletion) must not be offered to containers.
            if let Some(missing) = rec.chain_ids.iter().find(|c| !snapshots.exists(c)) {
                tracing::warn!(image = %rec.id, snapshot = %missing, "dropping image with missing snapshot");
                store.delete(Bucket::Images, rec.id.hex())?;
                continue;
            }
            images.insert(rec.id.clone(), rec);
        }
        let registry = RegistryClient::new(registry_config_path, options);
        let puller = Puller::new(
            registry,
            content.clone(),
            snapshots.clone(),
            max_concurrent_downloads,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                store,
                content,
                snapshots,
                puller,
                images: RwLock::new(images),
                pulls: Mutex::default(),
                record_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn snapshots(&self) -> &Snapshotter {
        &self.inner.snapshots
    }

    /// Pulls `image` and returns its ID (the config digest). Identical pulls in flight share
    /// one job; the job runs to completion even if every caller goes away.
    pub async fn pull(
        &self,
        image: &str,
        creds: Option<Credentials>,
    ) -> Result<Digest, ImageError> {
        let reference = Reference::parse(image)?;
        let key = reference.to_string();
        let job = {
            let mut pulls = lock(&self.inner.pulls);
            match pulls.get(&key) {
                Some(running) => running.job.clone(),
                None => {
                    let progress = Arc::new(PullProgress::default());
                    let this = self.clone();
                    let prog = progress.clone();
                    let key2 = key.clone();
                    let job = spawn_shared(async move {
                        let started = std::time::Instant::now();
                        let result = this.run_pull(reference, creds, prog.clone()).await;
                        let reason = result.as_ref().err().map(failure_reason);
                        berth_metrics::metrics()
                            .pull_finished(started.elapsed(), reason.as_deref());
                        prog.finish(match &result {
                            Ok(_) => "done".to_string(),
                            Err(e) => format!("failed: {e}"),
                        });
                        lock(&this.inner.pulls).remove(&key2);
                        result
                    });
                    pulls.insert(
                        key,
                        RunningPull {
                            job: job.clone(),
                            progress,
                        },
                    );
                    job
                }
            }
        };
        job.await.map_err(ImageError::Shared)
    }

    /// Progress of a running pull of `image`, if one is running.
    pub fn progress(&self, image: &str) -> Option<Arc<PullProgress>> {
        let key = Reference::parse(image).ok()?.to_string();
        lock(&self.inner.pulls)
            .get(&key)
            .map(|r| r.progress.clone())
    }

    async fn run_pull(
        &self,
        reference: Reference,
        creds: Option<Credentials>,
        progress: Arc<PullProgress>,
    ) -> Result<Digest, ImageError> {
        let started = std::time::Instant::now();
        let pulled = self.inner.puller.pull(reference, creds, progress).await?;
        let _guard = self.inner.record_lock.lock().await;
        let tag = pulled
            .reference
            .tag
            .as_ref()
            .map(|t| format!("{}:{}", pulled.reference.name(), t));
        let repo_digest = format!("{}@{}", pulled.reference.name(), pulled.repo_digest);

        // A tag names one image: moving it here takes it away from whichever image had it.
        if let Some(tag) = &tag {
            let others: Vec<ImageRecord> = read(&self.inner.images)
                .values()
                .filter(|r| r.id != pulled.id && r.repo_tags.contains(tag))
                .cloned()
                .collect();
            for mut other in others {
                other.repo_tags.retain(|t| t != tag);
                self.inner
                    .store
                    .put(Bucket::Images, other.id.hex(), &other)?;
                write(&self.inner.images).insert(other.id.clone(), other);
            }
        }

        let existing = read(&self.inner.images).get(&pulled.id).cloned();
        let mut rec = existing.unwrap_or_else(|| ImageRecord {
            id: pulled.id.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest: pulled.manifest_digest.clone(),
            media_type: pulled.media_type.clone(),
            layers: pulled.layers.clone(),
            chain_ids: pulled.chain_ids.clone(),
            size: pulled.size,
            user: pulled.user.clone(),
            pinned: false,
            pulled_at: berth_core::unix_nanos(),
        });
        if let Some(tag) = tag {
            push_unique(&mut rec.repo_tags, tag);
        }
        push_unique(&mut rec.repo_digests, repo_digest);
        self.inner.store.put(Bucket::Images, rec.id.hex(), &rec)?;
        write(&self.inner.images).insert(rec.id.clone(), rec);
        tracing::info!(image = %pulled.reference, id = %pulled.id, elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
        Ok(pulled.id)
    }

    /// Finds an image by ID (full, `sha256:`-less, or a unique prefix), tag or digest reference,
    /// as crictl users type them.
    pub fn find(&self, image: &str) -> Result<Option<ImageRecord>, ImageError> {
        let images = read(&self.inner.images);
        if let Ok(d) = Digest::parse(image) {
            return Ok(images.get(&d).cloned());
        }
        if is_hex_prefix(image) {
            let matches: Vec<&ImageRecord> = images
                .values()
                .filter(|r| r.id.hex().starts_with(image))
                .collect();
            if matches.len() == 1 {
                return Ok(Some(matches[0].clone()));
            }
            if image.len() == 64 || matches.len() > 1 {
                return Ok(None);
            }
        }
        let reference = Reference::parse(image)?;
        let found = images.values().find(|r| {
            if let Some(d) = &reference.digest {
                let want = format!("{}@{}", reference.name(), d);
                return r.repo_digests.contains(&want);
            }
            r.repo_tags.contains(&reference.to_string())
        });
        Ok(found.cloned())
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        let mut all: Vec<ImageRecord> = read(&self.inner.images).values().cloned().collect();
        all.sort_by(|a, b| {
            a.repo_tags
                .first()
                .cmp(&b.repo_tags.first())
                .then(a.id.cmp(&b.id))
        });
        all
    }

    pub fn config(&self, rec: &ImageRecord) -> Result<ImageConfig, ImageError> {
        let data = self.inner.content.read(&rec.id, MAX_CONFIG_BYTES)?;
        serde_json::from_slice(&data).map_err(|e| ImageError::BadConfig {
            digest: rec.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Removes the image with every name it has, as containerd's CRI does. Snapshots and blobs
    /// still used by another image stay. Removing an unknown image is not an error (CRI says
    /// RemoveImage must be idempotent).
    pub async fn remove(&self, image: &str) -> Result<(), ImageError> {
        let _guard = self.inner.record_lock.lock().await;
        let Some(rec) = self.find(image)? else {
            return Ok(());
        };
        // The record goes first: a crash after it leaves only unreferenced files, which the
        // next removal or pull cleans, never a record pointing at missing content.
        self.inner.store.delete(Bucket::Images, rec.id.hex())?;
        write(&self.inner.images).remove(&rec.id);

        let (chains_in_use, blobs_in_use) = {
            let images = read(&self.inner.images);
            let chains: HashSet<Digest> =
                images.values().flat_map(|r| r.chain_ids.clone()).collect();
            let blobs: HashSet<Digest> = images
                .values()
                .flat_map(|r| {
                    r.layers
                        .iter()
                        .cloned()
                        .chain([r.id.clone(), r.manifest_digest.clone()])
                        .collect::<Vec<_>>()
                })
                .collect();
            (chains, blobs)
        };
        for chain in rec.chain_ids.iter().filter(|c| !chains_in_use.contains(*c)) {
            self.inner.snapshots.remove(chain)?;
        }
        let mut blobs: Vec<Digest> = rec.layers.clone();
        blobs.push(rec.id.clone());
        blobs.push(rec.manifest_digest.clone());
        for repo_digest in &rec.repo_digests {
            if let Some((_, d)) = repo_digest.rsplit_once('@') {
                if let Ok(d) = Digest::parse(d) {
                    blobs.push(d);
                }
            }
        }
        for blob in blobs.iter().filter(|b| !blobs_in_use.contains(*b)) {
            if let Err(e) = self.inner.content.delete(blob) {
                tracing::warn!(blob = %blob, error = %e, "removing blob");
            }
        }
        tracing::info!(image = %rec.id, "removed image");
        Ok(())
    }

    pub fn fs_usage(&self) -> FsUsage {
        let (sb, si) = self.inner.snapshots.usage();
        let (cb, ci) = self.inner.content.usage();
        FsUsage {
            bytes: sb + cb,
            inodes: si + ci,
        }
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn is_hex_prefix(s: &str) -> bool {
    s.len() >= 3 && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// A poisoned lock only means another thread panicked mid-update of an in-memory cache that the
// store can rebuild; carrying on is better than taking the daemon down.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// The `reason` label of a failed pull: the error's kind in snake case (`not_found`,
/// `unauthenticated`, `data_loss`...), a small fixed set unlike the messages.
fn failure_reason(e: &ImageError) -> String {
    use berth_core::HasKind;
    let mut out = String::new();
    for (i, c) in format!("{:?}", e.kind()).chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    #[test]
    fn failure_reasons_are_snake_case_kinds() {
        let d = Digest::of_bytes(b"x");
        let e = ImageError::BlobNotFound { digest: d.clone() };
        assert_eq!(failure_reason(&e), "not_found");
        let e = ImageError::DigestMismatch {
            expected: d.clone(),
            actual: d,
        };
        assert_eq!(failure_reason(&e), "data_loss");
    }
}
