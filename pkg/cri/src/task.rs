//! Helpers every RPC module shares: running kernel-facing work off the async workers, noticing
//! a caller that hung up, fresh IDs and timestamps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic::Status;

/// Runs `f(manager)` on a blocking thread. The work finishes even if the client hangs up: a
/// half-done create must reach its own rollback, not be cut off mid-way.
pub(crate) async fn blocking<M, T>(
    manager: &Arc<M>,
    f: impl FnOnce(&M) -> Result<T, Status> + Send + 'static,
) -> Result<T, Status>
where
    M: Send + Sync + 'static,
    T: Send + 'static,
{
    let manager = manager.clone();
    tokio::task::spawn_blocking(move || f(&manager))
        .await
        .map_err(|e| Status::internal(format!("operation panicked: {e}")))?
}

/// True while the RPC's caller still waits; dropping it (the handler future was cancelled)
/// flips it to false. A create that finishes for a caller who left keeps its result for the
/// caller's retry (CRI-O's resource store idea).
pub(crate) struct CallerPresent(Arc<AtomicBool>);

impl Default for CallerPresent {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl CallerPresent {
    /// A flag to read from the blocking work.
    pub(crate) fn flag(&self) -> CallerFlag {
        CallerFlag(self.0.clone())
    }
}

impl Drop for CallerPresent {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

pub(crate) struct CallerFlag(Arc<AtomicBool>);

impl CallerFlag {
    pub(crate) fn still_waiting(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A 64-hex random ID, as containerd makes them.
pub(crate) fn new_id() -> String {
    let mut buf = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) use berth_core::unix_nanos;

/// Finds a record by its full ID or a unique prefix of it, as crictl users type IDs. `field`
/// names the request field in errors, `what` the kind of object.
pub(crate) fn by_id_or_prefix<T: Clone>(
    records: &HashMap<String, T>,
    id: &str,
    field: &str,
    what: &str,
) -> Result<T, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    if let Some(r) = records.get(id) {
        return Ok(r.clone());
    }
    let mut matches = records.iter().filter(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, one)), None) => Ok(one.clone()),
        (None, _) => Err(Status::not_found(format!("{what} {id} not found"))),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "{field}: {id} matches more than one {what}"
        ))),
    }
}
