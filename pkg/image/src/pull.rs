//! The pull pipeline: resolve, fetch config, then every missing layer streamed from the registry
//! straight through the hasher into the content store and through the decompressor into its
//! snapshot, all layers at once. Nothing is re-read from disk unless a download resumes.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use berth_core::Digest;
use berth_registry::{
    chain_ids, parse_manifest, select_platform, Credentials, Descriptor, ImageConfig, ManifestKind,
    Platform, Reference, RegistryClient, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::apply::apply_layer;
use crate::compression::Compression;
use crate::content::ContentStore;
use crate::snapshot::Snapshotter;
use crate::ImageError;

/// How many compressed chunks may wait for the unpacker before the download pauses.
const UNPACK_QUEUE_CHUNKS: usize = 256;

/// What a finished pull learned, enough to write the image record.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub id: Digest,
    pub reference: Reference,
    pub repo_digest: Digest,
    pub manifest_digest: Digest,
    pub media_type: String,
    pub layers: Vec<Digest>,
    pub chain_ids: Vec<Digest>,
    pub size: u64,
    /// The image config's default user.
    pub user: String,
}

/// Errors are shared between every caller of one deduplicated job, hence the `Arc`.
pub type SharedResult<T> = Result<T, Arc<ImageError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LayerState {
    Waiting = 0,
    Downloading = 1,
    Exists = 2,
    Done = 3,
    Failed = 4,
}

impl LayerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => LayerState::Downloading,
            2 => LayerState::Exists,
            3 => LayerState::Done,
            4 => LayerState::Failed,
            _ => LayerState::Waiting,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LayerState::Waiting => "waiting",
            LayerState::Downloading => "downloading",
            LayerState::Exists => "exists",
            LayerState::Done => "done",
            LayerState::Failed => "failed",
        }
    }
}

/// Live counters of one layer. Atomics, so the download loop never takes a lock to report.
#[derive(Debug)]
pub struct LayerProgress {
    pub digest: Digest,
    pub total: u64,
    done: AtomicU64,
    state: AtomicU8,
}

impl LayerProgress {
    fn new(digest: Digest, total: u64) -> Self {
        Self {
            digest,
            total,
            done: AtomicU64::new(0),
            state: AtomicU8::new(LayerState::Waiting as u8),
        }
    }
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
    pub fn state(&self) -> LayerState {
        LayerState::from_u8(self.state.load(Ordering::Relaxed))
    }
    fn set_state(&self, s: LayerState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
}

/// Progress of one pull job, readable by watchers while the job runs.
#[derive(Debug, Default)]
pub struct PullProgress {
    layers: Mutex<Vec<Arc<LayerProgress>>>,
    result: Mutex<Option<String>>,
}

impl PullProgress {
    pub fn layers(&self) -> Vec<Arc<LayerProgress>> {
        self.layers.lock().map(|l| l.clone()).unwrap_or_default()
    }
    /// `None` while running, then "done" or "failed: <message>".
    pub fn result(&self) -> Option<String> {
        self.result.lock().ok().and_then(|r| r.clone())
    }
    pub(crate) fn finish(&self, result: String) {
        if let Ok(mut r) = self.result.lock() {
            *r = Some(result);
        }
    }
}

/// A job that runs to completion on its own task and whose result any number of callers await.
pub(crate) type SharedJob<T> = Shared<BoxFuture<'static, SharedResult<T>>>;
type LayerJob = SharedJob<()>;

/// Spawns `fut` so that it finishes even when every caller goes away (tonic drops a handler's
/// future when the client hangs up) and returns a handle every caller can await.
pub(crate) fn spawn_shared<T, F>(fut: F) -> SharedJob<T>
where
    T: Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<T, ImageError>> + Send + 'static,
{
    let handle = tokio::spawn(async move { fut.await.map_err(Arc::new) });
    async move {
        match handle.await {
            Ok(r) => r,
            Err(e) => Err(Arc::new(ImageError::TaskFailed(e.to_string()))),
        }
    }
    .boxed()
    .shared()
}

/// Everything a pull needs; cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct Puller {
    pub(crate) registry: RegistryClient,
    pub(crate) content: ContentStore,
    pub(crate) snapshots: Snapshotter,
    pub(crate) platform: Platform,
    /// In-flight layer unpacks by chain ID, so two images (or two tags) that share a layer
    /// download and unpack it once.
    layer_jobs: Arc<Mutex<HashMap<Digest, LayerJob>>>,
    /// Caps layer downloads across all pulls (containerd's `max_concurrent_downloads`): an image
    /// with 40 layers must not open 40 connections and 40 unpack threads at once.
    downloads: Arc<tokio::sync::Semaphore>,
}

impl Puller {
    pub fn new(
        registry: RegistryClient,
        content: ContentStore,
        snapshots: Snapshotter,
        max_concurrent_downloads: usize,
    ) -> Self {
        Self {
            registry,
            content,
            snapshots,
            platform: Platform::host(),
            layer_jobs: Arc::default(),
            downloads: Arc::new(tokio::sync::Semaphore::new(max_concurrent_downloads.max(1))),
        }
    }

    pub async fn pull(
        &self,
        reference: Reference,
        creds: Option<Credentials>,
        progress: Arc<PullProgress>,
    ) -> Result<PulledImage, ImageError> {
        let creds = creds.as_ref();
        let top = self.registry.resolve(&reference, creds).await?;
        self.content.write_verified(&top.digest, &top.body)?;
        let repo_digest = top.digest.clone();
        let (manifest, manifest_digest, media_type) =
            match parse_manifest(Some(&top.media_type), &top.body)? {
                ManifestKind::Image(m) => (m, top.digest.clone(), top.media_type.clone()),
                ManifestKind::Index(index) => {
                    let chosen = select_platform(&index, &self.platform).ok_or_else(|| {
                        ImageError::NoMatchingPlatform {
                            reference: reference.to_string(),
                            platform: self.platform.to_string(),
                        }
                    })?;
                    let resolved = self
                        .registry
                        .fetch_manifest(&reference, &chosen.digest, creds)
                        .await?;
                    if resolved.body.len() > MAX_MANIFEST_BYTES {
                        return Err(ImageError::TooLarge {
                            what: "manifest",
                            digest: chosen.digest.clone(),
                        });
                    }
                    self.content
                        .write_verified(&resolved.digest, &resolved.body)?;
                    match parse_manifest(Some(&resolved.media_type), &resolved.body)? {
                        ManifestKind::Image(m) => (m, resolved.digest, resolved.media_type),
                        ManifestKind::Index(_) => {
                            return Err(ImageError::NestedIndex {
                                digest: chosen.digest.clone(),
                            })
                        }
                    }
                }
            };

        let config_digest = manifest.config.digest.clone();
        let config_bytes = if self.content.has(&config_digest) {
            self.content.read(&config_digest, MAX_CONFIG_BYTES)?
        } else {
            let b = self
                .registry
                .fetch_blob_bytes(&reference, &config_digest, MAX_CONFIG_BYTES, creds)
                .await?;
            self.content.write_verified(&config_digest, &b)?;
            b.to_vec()
        };
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| ImageError::BadConfig {
                digest: config_digest.clone(),
                reason: e.to_string(),
            })?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadConfig {
                digest: config_digest,
                reason: format!(
                    "{} diff_ids for {} layers",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        let chains = chain_ids(&diff_ids);

        let layer_progress: Vec<Arc<LayerProgress>> = manifest
            .layers
            .iter()
            .map(|l| Arc::new(LayerProgress::new(l.digest.clone(), l.size)))
            .collect();
        if let Ok(mut l) = progress.layers.lock() {
            *l = layer_progress.clone();
        }

        let jobs: Vec<LayerJob> = manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .zip(&chains)
            .zip(&layer_progress)
            .map(|(((desc, diff_id), chain), prog)| {
                self.layer_job(
                    &reference,
                    creds.cloned(),
                    desc.clone(),
                    diff_id.clone(),
                    chain.clone(),
                    prog.clone(),
                )
            })
            .collect();
        for result in futures::future::join_all(jobs).await {
            result.map_err(|e| ImageError::Shared(e.clone()))?;
        }

        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        Ok(PulledImage {
            id: manifest.config.digest.clone(),
            reference,
            repo_digest,
            manifest_digest,
            media_type,
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            chain_ids: chains,
            size,
            user: config.config.user.clone().unwrap_or_default(),
        })
    }

    fn layer_job(
        &self,
        reference: &Reference,
        creds: Option<Credentials>,
        desc: Descriptor,
        diff_id: Digest,
        chain_id: Digest,
        progress: Arc<LayerProgress>,
    ) -> LayerJob {
        if self.snapshots.exists(&chain_id) {
            progress.done.store(progress.total, Ordering::Relaxed);
            progress.set_state(LayerState::Exists);
            return futures::future::ready(Ok(())).boxed().shared();
        }
        let mut jobs = match self.layer_jobs.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(job) = jobs.get(&chain_id) {
            return job.clone();
        }
        let this = self.clone();
        let reference = reference.clone();
        let key = chain_id.clone();
        // Spawned so the layer finishes (and is shared) even if the first requester goes away.
        let job = spawn_shared(async move {
            let _permit = this
                .downloads
                .acquire()
                .await
                .map_err(|e| ImageError::TaskFailed(e.to_string()))?;
            progress.set_state(LayerState::Downloading);
            let result = this
                .fetch_and_unpack(
                    &reference,
                    creds.as_ref(),
                    &desc,
                    &diff_id,
                    &chain_id,
                    &progress,
                )
                .await;
            progress.set_state(if result.is_ok() {
                LayerState::Done
            } else {
                LayerState::Failed
            });
            if let Ok(mut jobs) = this.layer_jobs.lock() {
                jobs.remove(&chain_id);
            }
            result
        });
        jobs.insert(key, job.clone());
        job
    }

    async fn fetch_and_unpack(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &Descriptor,
        diff_id: &Digest,
        chain_id: &Digest,
        progress: &LayerProgress,
    ) -> Result<(), ImageError> {
        let compression = Compression::from_media_type(&desc.media_type).ok_or_else(|| {
            ImageError::UnsupportedMediaType {
                media_type: desc.media_type.clone(),
                digest: desc.digest.clone(),
            }
        })?;
        let staging = self.snapshots.staging()?;
        let (tx, rx) = mpsc::sync_channel::<Bytes>(UNPACK_QUEUE_CHUNKS);
        let dest = staging.fs_path().to_path_buf();
        let unpacker = tokio::task::spawn_blocking(move || {
            apply_layer(ChannelReader::new(rx), compression, &dest)
        });

        let fed = if self.content.has(&desc.digest) {
            // The blob survived (e.g. its snapshot was removed with another image): unpack it
            // from disk instead of downloading again.
            self.feed_from_store(&desc.digest, &tx, progress)
        } else {
            self.download(reference, creds, desc, &tx, progress).await
        };
        drop(tx);
        let applied = unpacker
            .await
            .map_err(|e| ImageError::TaskFailed(e.to_string()))?;
        fed?;
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                // A blob that cannot be unpacked is useless; keep nothing of it.
                self.discard_blob(&desc.digest);
                return Err(e);
            }
        };
        if &applied.diff_id != diff_id {
            self.discard_blob(&desc.digest);
            return Err(ImageError::DiffIdMismatch {
                layer: desc.digest.clone(),
                expected: diff_id.clone(),
                actual: applied.diff_id,
            });
        }
        self.snapshots.commit(staging, chain_id)?;
        berth_metrics::metrics().pull_layers.inc();
        Ok(())
    }

    fn discard_blob(&self, digest: &Digest) {
        if let Err(e) = self.content.delete(digest) {
            tracing::warn!(blob = %digest, error = %e, "removing unusable blob");
        }
    }

    fn feed_from_store(
        &self,
        digest: &Digest,
        tx: &mpsc::SyncSender<Bytes>,
        progress: &LayerProgress,
    ) -> Result<(), ImageError> {
        let path = self.content.blob_path(digest);
        let mut f =
            std::fs::File::open(&path).map_err(|e| ImageError::io("open blob", &path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| ImageError::io("read blob", &path, e))?;
            if n == 0 {
                return Ok(());
            }
            progress.done.fetch_add(n as u64, Ordering::Relaxed);
            if tx.send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                // The unpacker stopped early; its own error explains why.
                return Ok(());
            }
        }
    }

    async fn download(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &Descriptor,
        tx: &mpsc::SyncSender<Bytes>,
        progress: &LayerProgress,
    ) -> Result<(), ImageError> {
        let mut ingest = self.content.ingest(&desc.digest, Some(desc.size))?;
        let resume_from = ingest.existing_len();
        let mut stream = match self
            .registry
            .fetch_blob(reference, &desc.digest, resume_from, creds)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                ingest.abort();
                return Err(e.into());
            }
        };
        let result = async {
            if resume_from > 0 && stream.offset == resume_from {
                tracing::info!(digest = %desc.digest, offset = resume_from, "resuming layer download");
                berth_metrics::metrics().pull_resumes.inc();
                ingest.replay_existing(&mut |chunk: &[u8]| {
                    progress
                        .done
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    let _ = tx.send(Bytes::copy_from_slice(chunk));
                    Ok(())
                })?;
            } else if resume_from > 0 {
                ingest.restart()?;
            }
            let mut unpacker_gone = false;
            let received = &berth_metrics::metrics().pull_bytes;
            while let Some(chunk) = stream.next_chunk().await? {
                ingest.write(&chunk)?;
                received.inc_by(chunk.len() as u64);
                progress
                    .done
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                // If the unpacker failed (a malicious entry, a corrupt stream) the download still
                // runs to the end: a digest mismatch is the more truthful error to report.
                if !unpacker_gone && tx.send(chunk).is_err() {
                    unpacker_gone = true;
                }
            }
            Ok::<(), ImageError>(())
        }
        .await;
        match result {
            Ok(()) => Ok(ingest.commit()?),
            Err(e) => {
                // Keep the partial blob so a retry resumes with a Range request.
                ingest.abort();
                Err(e)
            }
        }
    }
}

/// Turns the chunks sent by the download loop into a `Read` for the synchronous unpacker.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}
