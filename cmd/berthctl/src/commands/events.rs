//! `berthctl events`: follows GetContainerEvents and prints each event as it arrives, in
//! protojson (crictl's default), YAML or through a Go template.

use anyhow::{bail, Result};
use k8s_cri::v1::{
    ContainerEventResponse, ContainerEventType, ContainerState, GetEventsRequest, MountPropagation,
    NamespaceMode, PodSandboxState,
};
use serde_json::Value;

use super::inspect::StatusFormat;
use crate::client::GlobalOpts;
use crate::output;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    output: StatusFormat,
    /// The template string is only used when output is go-template (Go template syntax)
    #[arg(long, default_value = "")]
    template: String,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    match args.output {
        StatusFormat::Json | StatusFormat::Yaml if !args.template.is_empty() => {
            bail!("template can't be used with {:?} format", args.output)
        }
        StatusFormat::Table => bail!("don't support \"table\" format"),
        _ => {}
    }
    let mut c = g.runtime_client().await?;
    let mut stream = g
        .call("get container events", None, GetEventsRequest {}, |r| {
            c.get_container_events(r)
        })
        .await?;
    while let Some(event) = stream.message().await? {
        let v = event_json(&event)?;
        match args.output {
            StatusFormat::Json => println!("{}", output::go_json(&v)?),
            StatusFormat::Yaml => output::print(&v, output::Format::Yaml)?,
            StatusFormat::GoTemplate => println!("{}", output::go_template(&args.template, &v)?),
            StatusFormat::Table => {}
        }
    }
    Ok(())
}

fn enum_name(v: &mut Value, name: impl Fn(i32) -> Option<&'static str>) {
    if let Some(n) = v.as_i64().and_then(|n| i32::try_from(n).ok()) {
        if let Some(s) = name(n) {
            *v = Value::from(s);
        }
    }
}

/// An event as protojson prints it: enums by name, 64-bit integers as strings.
fn event_json(e: &ContainerEventResponse) -> Result<Value> {
    let mut v = output::to_cri_json(e)?;
    output::drop_nulls(&mut v);
    if let Some(t) = v.get_mut("containerEventType") {
        enum_name(t, |n| {
            ContainerEventType::try_from(n)
                .ok()
                .map(|t| t.as_str_name())
        });
    }
    if let Some(pod) = v.get_mut("podSandboxStatus") {
        if let Some(state) = pod.get_mut("state") {
            enum_name(state, |n| {
                PodSandboxState::try_from(n).ok().map(|s| s.as_str_name())
            });
        }
        if let Some(Value::Object(opts)) = pod.pointer_mut("/linux/namespaces/options") {
            for mode in opts.values_mut() {
                enum_name(mode, |n| {
                    NamespaceMode::try_from(n).ok().map(|m| m.as_str_name())
                });
            }
        }
    }
    if let Some(Value::Array(statuses)) = v.get_mut("containersStatuses") {
        for s in statuses.iter_mut() {
            if let Some(state) = s.get_mut("state") {
                enum_name(state, |n| {
                    ContainerState::try_from(n).ok().map(|s| s.as_str_name())
                });
            }
            if let Some(Value::Array(mounts)) = s.get_mut("mounts") {
                for m in mounts.iter_mut().filter_map(|m| m.get_mut("propagation")) {
                    enum_name(m, |n| {
                        MountPropagation::try_from(n).ok().map(|p| p.as_str_name())
                    });
                }
            }
        }
    }
    output::int64_as_strings(&mut v, &["attempt", "exitCode"]);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{ContainerStatus, PodSandboxStatus};

    #[test]
    fn events_print_enums_by_name_and_64_bit_numbers_as_strings() {
        let e = ContainerEventResponse {
            container_id: "c1".into(),
            container_event_type: ContainerEventType::ContainerStoppedEvent as i32,
            created_at: 1_700_000_000_000_000_000,
            pod_sandbox_status: Some(PodSandboxStatus {
                id: "p1".into(),
                state: PodSandboxState::SandboxReady as i32,
                ..Default::default()
            }),
            containers_statuses: vec![ContainerStatus {
                id: "c1".into(),
                state: ContainerState::ContainerExited as i32,
                exit_code: 4,
                finished_at: 5,
                ..Default::default()
            }],
        };
        let v = event_json(&e).unwrap();
        assert_eq!(v["containerEventType"], "CONTAINER_STOPPED_EVENT");
        assert_eq!(v["createdAt"], "1700000000000000000");
        assert_eq!(v["podSandboxStatus"]["state"], "SANDBOX_READY");
        assert_eq!(v["containersStatuses"][0]["state"], "CONTAINER_EXITED");
        assert_eq!(v["containersStatuses"][0]["exitCode"], 4);
        assert_eq!(v["containersStatuses"][0]["finishedAt"], "5");
    }

    #[test]
    fn template_only_goes_with_go_template() {
        let a: Args =
            crate::commands::parse_args(&["-o", "go-template", "--template", "{{.containerId}}"])
                .unwrap();
        assert_eq!(a.output, StatusFormat::GoTemplate);
    }
}
