//! `berthctl inspect`: ContainerStatus of each container as crictl prints it,
//! `{"info": ..., "status": ...}` (an array of those for several), times in RFC 3339.

use std::collections::HashMap;

use anyhow::{bail, Result};
use chrono::{DateTime, Local, SecondsFormat};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerState, ContainerStatus, ContainerStatusRequest, ContainerStatusResponse,
    MountPropagation,
};
use serde_json::Value;
use tonic::transport::Channel;

use super::ps::{list_ids, sorted_map, state_proto_name, FilterArgs};
use crate::client::{GlobalOpts, RpcError};
use crate::output;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusFormat {
    Json,
    Yaml,
    GoTemplate,
    Table,
}

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Containers to inspect; without any, those the filters select
    #[arg(value_name = "CONTAINER-ID")]
    ids: Vec<String>,
    #[command(flatten)]
    filters: FilterArgs,
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    output: StatusFormat,
    /// Do not show verbose information
    #[arg(short, long)]
    quiet: bool,
    /// The template string is only used when output is go-template (Go template syntax)
    #[arg(long, default_value = "")]
    template: String,
}

/// ContainerStatus of `id`.
pub(crate) async fn container_status(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    verbose: bool,
) -> Result<ContainerStatusResponse, RpcError> {
    let req = ContainerStatusRequest {
        container_id: id.to_string(),
        verbose,
    };
    g.call(
        &format!("container status of {id:?}"),
        Some(g.call_timeout()),
        req,
        |r| c.container_status(r),
    )
    .await
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    let mut ids = args.ids.clone();
    if ids.is_empty() {
        ids = list_ids(g, &mut c, &args.filters.selector(None)).await?;
        if ids.is_empty() {
            bail!("no IDs provided or nothing found per filter");
        }
    }
    let verbose = !args.quiet;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let mut values = Vec::new();
    for id in &ids {
        let r = container_status(g, &mut c, id, verbose).await?;
        let Some(status) = &r.status else {
            bail!("no status returned for container {id:?}");
        };
        if args.output == StatusFormat::Table {
            print!("{}", status_table(status, verbose.then_some(&r.info), now));
        } else {
            values.push(output::status_with_info(
                Some(status_json(status)?),
                Vec::new(),
                &r.info,
            ));
        }
    }
    if values.is_empty() {
        return Ok(());
    }
    // crictl prints one status as an object and several as an array
    let v = if values.len() == 1 {
        values.remove(0)
    } else {
        Value::Array(values)
    };
    match args.output {
        StatusFormat::Json => print!("{}", output::go_json(&v)?),
        StatusFormat::Yaml => output::print(&v, output::Format::Yaml)?,
        StatusFormat::GoTemplate => println!("{}", output::go_template(&args.template, &v)?),
        StatusFormat::Table => {}
    }
    Ok(())
}

/// Go's `time.Time.Format(time.RFC3339Nano)` of `time.Unix(0, nanos)` in local time: the
/// fraction without trailing zeros.
fn rfc3339_nano(nanos: i64) -> String {
    let t = DateTime::from_timestamp_nanos(nanos).with_timezone(&Local);
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    match s.split_once('.') {
        Some((secs, rest)) => {
            let zone_at = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (frac, zone) = rest.split_at(zone_at);
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{secs}{zone}")
            } else {
                format!("{secs}.{frac}{zone}")
            }
        }
        None => s,
    }
}

/// Go's zero `time.Time`, which crictl prints for times a container does not have yet.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// crictl's `marshalContainerStatus`: the status as protojson spells it (enum names, 64-bit
/// integers as strings), and its times as RFC 3339, zero for those not reached.
pub(crate) fn status_json(s: &ContainerStatus) -> Result<Value> {
    let mut v = output::to_cri_json(s)?;
    let state = ContainerState::try_from(s.state).ok();
    let started = state != Some(ContainerState::ContainerCreated);
    let finished = state == Some(ContainerState::ContainerExited)
        || (state == Some(ContainerState::ContainerUnknown) && s.finished_at > 0);
    let Some(m) = v.as_object_mut() else {
        return Ok(v);
    };
    // crictl lists every field of the status itself (null when unset), but protojson leaves
    // unset messages out further down
    m.values_mut().for_each(output::drop_nulls);
    m.insert("state".into(), state_proto_name(s.state));
    m.insert("createdAt".into(), rfc3339_nano(s.created_at).into());
    let time = |yes: bool, nanos: i64| {
        if yes {
            rfc3339_nano(nanos)
        } else {
            GO_ZERO_TIME.to_string()
        }
    };
    m.insert("startedAt".into(), time(started, s.started_at).into());
    m.insert("finishedAt".into(), time(finished, s.finished_at).into());
    if let Some(Value::Array(mounts)) = m.get_mut("mounts") {
        for mount in mounts.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(p) = mount.get("propagation").and_then(Value::as_i64) {
                let name = i32::try_from(p)
                    .ok()
                    .and_then(|p| MountPropagation::try_from(p).ok())
                    .map_or_else(|| Value::from(p), |p| Value::from(p.as_str_name()));
                mount.insert("propagation".into(), name);
            }
        }
    }
    if let Some(linux) = m
        .get_mut("resources")
        .and_then(|r| r.get_mut("linux"))
        .and_then(Value::as_object_mut)
    {
        for key in [
            "cpuPeriod",
            "cpuQuota",
            "cpuShares",
            "memoryLimitInBytes",
            "oomScoreAdj",
            "memorySwapLimitInBytes",
        ] {
            int64_as_string(linux.get_mut(key));
        }
        if let Some(Value::Array(limits)) = linux.get_mut("hugepageLimits") {
            for l in limits.iter_mut() {
                int64_as_string(l.get_mut("limit"));
            }
        }
    }
    if let Some(user) = m.get_mut("user").and_then(|u| u.get_mut("linux")) {
        int64_as_string(user.get_mut("uid"));
        int64_as_string(user.get_mut("gid"));
        if let Some(Value::Array(groups)) = user.get_mut("supplementalGroups") {
            groups.iter_mut().for_each(|g| int64_as_string(Some(g)));
        }
    }
    Ok(v)
}

/// protojson writes 64-bit integers as strings.
fn int64_as_string(v: Option<&mut Value>) {
    if let Some(v) = v {
        if let Value::Number(n) = v {
            *v = Value::String(n.to_string());
        }
    }
}

/// crictl's `outputContainerStatusTable`; `now` in unix nanoseconds.
fn status_table(s: &ContainerStatus, info: Option<&HashMap<String, String>>, now: i64) -> String {
    let mut out = format!("ID: {}\n", s.id);
    if let Some(m) = &s.metadata {
        if !m.name.is_empty() {
            out.push_str(&format!("Name: {}\n", m.name));
        }
        if m.attempt != 0 {
            out.push_str(&format!("Attempt: {}\n", m.attempt));
        }
    }
    let state = ContainerState::try_from(s.state).ok();
    let state_text = match state_proto_name(s.state) {
        Value::String(name) => name,
        other => other.to_string(),
    };
    out.push_str(&format!("State: {state_text}\n"));
    out.push_str(&format!(
        "Created: {}\n",
        output::created_ago(s.created_at, now)
    ));
    if state != Some(ContainerState::ContainerCreated) {
        out.push_str(&format!(
            "Started: {}\n",
            output::created_ago(s.started_at, now)
        ));
    }
    if state == Some(ContainerState::ContainerExited) {
        if s.finished_at > 0 {
            out.push_str(&format!(
                "Finished: {}\n",
                output::created_ago(s.finished_at, now)
            ));
        }
        out.push_str(&format!("Exit Code: {}\n", s.exit_code));
    }
    // crictl prints these only for maps that are set; an empty one arrives as unset
    if !s.labels.is_empty() {
        out.push_str(&sorted_map("Labels", &s.labels));
    }
    if !s.annotations.is_empty() {
        out.push_str(&sorted_map("Annotations", &s.annotations));
    }
    if let Some(info) = info {
        let mut keys: Vec<&String> = info.keys().collect();
        keys.sort();
        let items: Vec<String> = keys.iter().map(|k| format!("{k}:{}", info[*k])).collect();
        out.push_str(&format!("Info: map[{}]\n", items.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{ContainerMetadata, ContainerResources, LinuxContainerResources, Mount};
    use serde_json::json;

    const NOW: i64 = 1_700_000_000_000_000_000;
    const SEC: i64 = 1_000_000_000;

    fn status(state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            id: "abc".into(),
            metadata: Some(ContainerMetadata {
                name: "sleeper".into(),
                attempt: 0,
            }),
            state: state as i32,
            created_at: NOW - 300 * SEC - 188_504_318,
            started_at: NOW - 240 * SEC - 286_527_840,
            finished_at: NOW - 60 * SEC,
            exit_code: 137,
            labels: HashMap::from([("app".into(), "sleeper".into())]),
            mounts: vec![Mount {
                container_path: "/data".into(),
                propagation: MountPropagation::PropagationHostToContainer as i32,
                ..Default::default()
            }],
            resources: Some(ContainerResources {
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 1 << 20,
                    ..Default::default()
                }),
                windows: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn times_are_rfc3339_like_go() {
        // these only hold when the test runs in UTC, as CI does; elsewhere the zone differs
        if Local::now().offset().local_minus_utc() != 0 {
            return;
        }
        assert_eq!(
            rfc3339_nano(1_796_115_224_188_504_318),
            "2026-12-01T08:53:44.188504318Z"
        );
        assert_eq!(
            rfc3339_nano(1_796_115_224_286_527_840),
            "2026-12-01T08:53:44.28652784Z"
        );
        assert_eq!(
            rfc3339_nano(1_796_115_224_000_000_000),
            "2026-12-01T08:53:44Z"
        );
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn running_status_has_no_finish_time() {
        let v = status_json(&status(ContainerState::ContainerRunning)).unwrap();
        assert_eq!(v["state"], "CONTAINER_RUNNING");
        assert_eq!(v["finishedAt"], GO_ZERO_TIME);
        assert_ne!(v["startedAt"], GO_ZERO_TIME);
        assert!(v["createdAt"].as_str().is_some_and(|t| t.contains('T')));
        assert_eq!(
            v["mounts"][0]["propagation"],
            "PROPAGATION_HOST_TO_CONTAINER"
        );
        assert_eq!(
            v["resources"]["linux"]["memoryLimitInBytes"],
            json!("1048576")
        );
        assert_eq!(v["resources"]["linux"]["cpuShares"], json!("0"));
        assert_eq!(v["exitCode"], json!(137));
        assert_eq!(v["labels"]["app"], "sleeper");
    }

    #[test]
    fn created_status_has_neither_start_nor_finish() {
        let v = status_json(&status(ContainerState::ContainerCreated)).unwrap();
        assert_eq!(
            (v["startedAt"].as_str(), v["finishedAt"].as_str()),
            (Some(GO_ZERO_TIME), Some(GO_ZERO_TIME))
        );
        let v = status_json(&status(ContainerState::ContainerExited)).unwrap();
        assert_ne!(v["finishedAt"], GO_ZERO_TIME);
        let mut unknown = status(ContainerState::ContainerUnknown);
        unknown.finished_at = 0;
        let v = status_json(&unknown).unwrap();
        assert_eq!(v["finishedAt"], GO_ZERO_TIME);
    }

    #[test]
    fn table_like_crictl() {
        let t = status_table(&status(ContainerState::ContainerExited), None, NOW);
        assert_eq!(
            t,
            "ID: abc\nName: sleeper\nState: CONTAINER_EXITED\nCreated: 5 minutes ago\n\
             Started: 4 minutes ago\nFinished: About a minute ago\nExit Code: 137\n\
             Labels:\n\tapp -> sleeper\n"
        );
        let info = HashMap::from([("pid".to_string(), "7".to_string())]);
        let t = status_table(&status(ContainerState::ContainerCreated), Some(&info), NOW);
        assert!(!t.contains("Started"), "{t}");
        assert!(t.ends_with("Info: map[pid:7]\n"), "{t}");
    }
}
