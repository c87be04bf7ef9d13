//! Running code inside another namespace.
//!
//! setns(2) changes only the calling thread, so each call gets a fresh, scoped std thread that
//! enters the namespace, runs the closure and exits. No thread (and never a tokio worker) is
//! left behind in a pod's namespace, and the closure may borrow from the caller.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::error::{NetworkError, Result};

/// Runs `f` on a dedicated thread inside the network namespace pinned at `path`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    in_namespace(path, CloneFlags::CLONE_NEWNET, f)
}

/// Runs `f` on a dedicated thread inside the namespace of kind `kind` pinned at `path`.
pub(crate) fn in_namespace<T: Send>(
    path: &Path,
    kind: CloneFlags,
    f: impl FnOnce() -> T + Send,
) -> Result<T> {
    let ns_err = |source| NetworkError::Namespace {
        path: path.to_path_buf(),
        source,
    };
    // Open on the caller's thread: a missing path is reported before a thread is spawned.
    let file = File::open(path).map_err(ns_err)?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            setns(&file, kind).map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r.map_err(ns_err),
            // A panic inside the closure is a bug in our code; propagate it like a normal call.
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}
