//! ExecSync and ReopenContainerLog.

use std::time::Duration;

use berth_runtime::shim;
use berth_shim_proto::Request;
use k8s_cri::v1;
use tonic::Status;

use super::record::{ContainerRecord, ContainerState};
use super::ContainerManager;
use crate::edge::{invalid, to_status};

/// Each output stream of an ExecSync is read up to this size and the rest dropped, so a chatty
/// command cannot cost unbounded memory.
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// kubelet and crictl accept CRI messages of at most 16 MiB: the response's two streams share
/// that, minus room for the protobuf framing, stdout first.
const MAX_EXEC_RESPONSE: usize = (16 << 20) - 1024;

fn running(mgr: &ContainerManager, id: &str) -> Result<ContainerRecord, Status> {
    let rec = mgr.get(id)?;
    if rec.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    Ok(rec)
}

/// The container's own process spec (env, user, cwd, capabilities) with `cmd` as its argv, the
/// way containerd derives an exec process.
pub(super) fn exec_process(
    rec: &ContainerRecord,
    cmd: &[String],
) -> Result<serde_json::Value, Status> {
    let path = rec.paths.config_json();
    let data = std::fs::read(&path)
        .map_err(|e| Status::internal(format!("reading {}: {e}", path.display())))?;
    let spec: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| Status::internal(format!("parsing {}: {e}", path.display())))?;
    let mut process = spec
        .get("process")
        .cloned()
        .ok_or_else(|| Status::internal(format!("{} has no process", path.display())))?;
    if let Some(obj) = process.as_object_mut() {
        obj.insert("args".into(), serde_json::json!(cmd));
        obj.insert("terminal".into(), serde_json::Value::Bool(false));
        obj.remove("consoleSize");
    }
    Ok(process)
}

pub fn exec_sync(
    mgr: &ContainerManager,
    req: v1::ExecSyncRequest,
) -> Result<v1::ExecSyncResponse, Status> {
    if req.cmd.is_empty() {
        return Err(invalid("cmd", "must not be empty"));
    }
    if req.timeout < 0 {
        return Err(invalid("timeout", format!("{} is negative", req.timeout)));
    }
    let rec = running(mgr, &req.container_id)?;
    let handler = mgr.handler(&rec.handler)?;
    let process = exec_process(&rec, &req.cmd)?;
    let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
    let out = handler
        .exec_sync(
            &rec.id,
            &process,
            &rec.paths.bundle,
            timeout,
            MAX_EXEC_OUTPUT,
        )
        .map_err(to_status)?;
    if out.timed_out {
        // kubelet tells a probe timeout by this code.
        return Err(Status::deadline_exceeded(format!(
            "command {:?} in container {} timed out after {}s",
            req.cmd, rec.id, req.timeout
        )));
    }
    let (mut stdout, mut stderr) = (out.stdout, out.stderr);
    stdout.truncate(MAX_EXEC_RESPONSE);
    stderr.truncate(MAX_EXEC_RESPONSE - stdout.len());
    Ok(v1::ExecSyncResponse {
        stdout,
        stderr,
        exit_code: out.exit_code,
    })
}

pub fn reopen_log(mgr: &ContainerManager, id: &str) -> Result<(), Status> {
    let rec = running(mgr, id)?;
    if rec.log_path.is_none() {
        return Err(Status::failed_precondition(format!(
            "container {} has no log file",
            rec.id
        )));
    }
    shim::call(&rec.id, &rec.paths.socket, &Request::ReopenLog)
        .map(|_| ())
        .map_err(to_status)
}
