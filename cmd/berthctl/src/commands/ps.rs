//! `berthctl ps`: the container list as crictl's table, IDs, verbose text or protojson-like
//! JSON/YAML. The container selection (`Selector`) is shared with `inspect`, `exec`, `stop -a`.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Container, ContainerFilter, ContainerState, ContainerStateValue, ImageStatusRequest,
    ListContainersRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::image_spec;
use super::pods::{compile_regex, parse_labels};
use crate::client::GlobalOpts;
use crate::output::{self, truncate_id, ListFormat};

/// kubelet's pod name and namespace labels on every container it creates.
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// crictl's container filter flags of `ps` and `inspect`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct FilterArgs {
    /// Show all containers
    #[arg(short, long)]
    all: bool,
    /// Filter by container image
    #[arg(long)]
    image: Option<String>,
    /// Filter by key=value label
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Show last n recently created containers (includes all states). Set 0 for unlimited.
    #[arg(short = 'n', long, default_value_t = 0)]
    last: usize,
    /// Show the most recently created container (includes all states)
    #[arg(short, long)]
    latest: bool,
    /// Filter by container name regular expression pattern
    #[arg(long)]
    name: Option<String>,
    /// Filter by pod namespace regular expression pattern
    #[arg(long)]
    namespace: Option<String>,
    /// Filter by pod id
    #[arg(short, long)]
    pod: Option<String>,
    /// Filter by container state (created, running, exited, unknown)
    #[arg(short, long)]
    state: Option<String>,
}

impl FilterArgs {
    pub(crate) fn selector(&self, id: Option<String>) -> Selector {
        Selector {
            id,
            pod: self.pod.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            state: self.state.clone(),
            labels: self.labels.clone(),
            all: self.all,
            latest: self.latest,
            last: self.last,
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    filters: FilterArgs,
    /// Filter by container id
    #[arg(long)]
    id: Option<String>,
    /// Show output without truncating the ID
    #[arg(long)]
    no_trunc: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    output: ListFormat,
    /// Only display container IDs
    #[arg(short, long)]
    quiet: bool,
    /// Show image path instead of image id
    #[arg(short, long)]
    resolve_image_path: bool,
    /// Show verbose information for containers
    #[arg(short, long)]
    verbose: bool,
}

/// Which containers a command is about, as crictl's filter flags say.
#[derive(Debug, Default, Clone)]
pub(crate) struct Selector {
    pub id: Option<String>,
    pub pod: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub image: Option<String>,
    pub state: Option<String>,
    pub labels: Vec<String>,
    /// Not only running containers.
    pub all: bool,
    pub latest: bool,
    pub last: usize,
}

impl Selector {
    /// The filter the runtime applies: ID, pod, state (running unless `all` or a state is
    /// given; any with `latest`/`last`), labels.
    pub(crate) fn cri_filter(&self) -> Result<ContainerFilter> {
        let state = match self
            .state
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") if self.all => None,
            None | Some("") => Some(ContainerState::ContainerRunning),
            Some("created") => Some(ContainerState::ContainerCreated),
            Some("running") => Some(ContainerState::ContainerRunning),
            Some("exited") => Some(ContainerState::ContainerExited),
            Some("unknown") => Some(ContainerState::ContainerUnknown),
            Some(_) => bail!("--state should be one of created, running, exited or unknown"),
        };
        let state = if self.latest || self.last > 0 {
            None
        } else {
            state
        };
        Ok(ContainerFilter {
            id: self.id.clone().unwrap_or_default(),
            pod_sandbox_id: self.pod.clone().unwrap_or_default(),
            state: state.map(|s| ContainerStateValue { state: s as i32 }),
            label_selector: parse_labels(&self.labels)?,
        })
    }

    /// How many of the newest to keep.
    fn limit(&self) -> Option<usize> {
        if self.last > 0 {
            Some(self.last)
        } else if self.latest {
            Some(1)
        } else {
            None
        }
    }
}

/// crictl's `ListContainers`: the runtime's list, filtered by name, namespace and image, newest
/// first, cut to `--latest`/`--last`.
pub(crate) async fn list_containers(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    sel: &Selector,
) -> Result<Vec<Container>> {
    let filter = sel.cri_filter()?;
    let name = compile_regex("name", sel.name.as_deref())?;
    let namespace = compile_regex("namespace", sel.namespace.as_deref())?;
    let r = g
        .call(
            "list containers",
            Some(g.call_timeout()),
            ListContainersRequest {
                filter: Some(filter),
            },
            |r| c.list_containers(r),
        )
        .await?;
    let mut out: Vec<Container> = r
        .containers
        .into_iter()
        .filter(|c| {
            let meta_name = c.metadata.as_ref().map(|m| m.name.as_str());
            meta_name.is_some()
                && name
                    .as_ref()
                    .is_none_or(|re| re.is_match(meta_name.unwrap_or_default()))
                && namespace
                    .as_ref()
                    .is_none_or(|re| re.is_match(&pod_namespace(c)))
        })
        .collect();
    if let Some(image) = sel.image.as_deref().filter(|s| !s.is_empty()) {
        out = filter_by_image(g, image, out).await?;
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    if let Some(n) = sel.limit() {
        out.truncate(n);
    }
    Ok(out)
}

/// The IDs of the containers `sel` selects, newest first.
pub(crate) async fn list_ids(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    sel: &Selector,
) -> Result<Vec<String>> {
    Ok(list_containers(g, c, sel)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect())
}

/// crictl's `matchesImage`: the same image ID as `image` (by ImageStatus of both).
async fn filter_by_image(
    g: &GlobalOpts,
    image: &str,
    containers: Vec<Container>,
) -> Result<Vec<Container>> {
    let mut ic = g.image_client().await?;
    let mut ids: HashMap<String, Option<String>> = HashMap::new();
    let want = image_id(g, &mut ic, image).await?;
    let Some(want) = want else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for c in containers {
        let img = c
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let id = match ids.get(&img) {
            Some(id) => id.clone(),
            None => {
                let id = image_id(g, &mut ic, &img).await?;
                ids.insert(img, id.clone());
                id
            }
        };
        if id.as_deref() == Some(want.as_str()) {
            out.push(c);
        }
    }
    Ok(out)
}

async fn image_id(
    g: &GlobalOpts,
    ic: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<Option<String>> {
    Ok(image_status(g, ic, image).await?.map(|i| i.id))
}

async fn image_status(
    g: &GlobalOpts,
    ic: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<Option<k8s_cri::v1::Image>> {
    let req = ImageStatusRequest {
        image: Some(image_spec(image)),
        verbose: false,
    };
    let r = g
        .call(
            &format!("image status of {image:?}"),
            Some(g.call_timeout()),
            req,
            |r| ic.image_status(r),
        )
        .await?;
    Ok(r.image)
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let sel = args.filters.selector(args.id.clone());
    let mut c = g.runtime_client().await?;
    let mut containers = list_containers(g, &mut c, &sel).await?;
    if let Some(fmt) = args.output.structured() {
        let items = containers
            .iter()
            .map(container_json)
            .collect::<Result<Vec<_>>>()?;
        return output::print(&json!({ "containers": items }), fmt);
    }
    if args.quiet {
        for ctr in &containers {
            println!("{}", ctr.id);
        }
        return Ok(());
    }
    if args.resolve_image_path {
        let mut ic = g.image_client().await?;
        for ctr in &mut containers {
            if let Some(spec) = ctr.image.as_mut() {
                let status = image_status(g, &mut ic, &spec.image)
                    .await
                    .context("failed to fetch repo image")?;
                if let Some(tag) = status.and_then(|i| i.repo_tags.into_iter().next()) {
                    spec.image = tag;
                }
            }
        }
    }
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    if args.verbose {
        print!("{}", verbose_text(&containers, now));
    } else {
        let rows = container_rows(&containers, args.no_trunc, now);
        print!("{}", output::format_table(&rows));
    }
    Ok(())
}

/// crictl's `convertContainerState`.
pub(crate) fn state_name(state: i32) -> &'static str {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerCreated) => "Created",
        Ok(ContainerState::ContainerRunning) => "Running",
        Ok(ContainerState::ContainerExited) => "Exited",
        Ok(ContainerState::ContainerUnknown) | Err(_) => "Unknown",
    }
}

/// The enum's protobuf name (`CONTAINER_RUNNING`), or its number when it has none.
pub(crate) fn state_proto_name(state: i32) -> Value {
    match ContainerState::try_from(state) {
        Ok(s) => Value::from(s.as_str_name()),
        Err(_) => Value::from(state),
    }
}

fn label_or_unknown(c: &Container, key: &str) -> String {
    c.labels
        .get(key)
        .cloned()
        .unwrap_or_else(|| "unknown".to_string())
}

fn pod_namespace(c: &Container) -> String {
    label_or_unknown(c, POD_NAMESPACE_LABEL)
}

/// An image reference that is a digest (`sha256:<64 hex>`), as go-digest parses one.
fn is_digest(s: &str) -> bool {
    let Some((algo, hex)) = s.split_once(':') else {
        return false;
    };
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Header and rows of `crictl ps`; `now` in unix nanoseconds.
fn container_rows(containers: &[Container], no_trunc: bool, now: i64) -> Vec<Vec<String>> {
    let header = [
        "CONTAINER",
        "IMAGE",
        "CREATED",
        "STATE",
        "NAME",
        "ATTEMPT",
        "POD ID",
        "POD",
        "NAMESPACE",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for c in containers {
        let meta = c.metadata.clone().unwrap_or_default();
        let mut image = c
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let (id, pod) = if no_trunc {
            (c.id.clone(), c.pod_sandbox_id.clone())
        } else {
            if is_digest(&image) {
                let prefix = image.split_once(':').map_or("", |(a, _)| a).to_string() + ":";
                image = truncate_id(&image, &prefix);
            }
            (truncate_id(&c.id, ""), truncate_id(&c.pod_sandbox_id, ""))
        };
        rows.push(vec![
            id,
            image,
            output::created_ago(c.created_at, now),
            state_name(c.state).to_string(),
            meta.name,
            meta.attempt.to_string(),
            pod,
            label_or_unknown(c, POD_NAME_LABEL),
            pod_namespace(c),
        ]);
    }
    rows
}

/// `Title:` and a `\tkey -> value` line per entry, sorted, as crictl's verbose outputs.
pub(crate) fn sorted_map(title: &str, m: &HashMap<String, String>) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let mut out = format!("{title}:\n");
    for k in keys {
        out.push_str(&format!("\t{k} -> {}\n", m[k]));
    }
    out
}

/// `crictl ps -v`.
fn verbose_text(containers: &[Container], now: i64) -> String {
    let mut out = String::new();
    for c in containers {
        out.push_str(&format!("ID: {}\nPodID: {}\n", c.id, c.pod_sandbox_id));
        out.push_str(&format!("Namespace: {}\n", pod_namespace(c)));
        if let Some(m) = &c.metadata {
            if !m.name.is_empty() {
                out.push_str(&format!("Name: {}\n", m.name));
            }
            out.push_str(&format!("Attempt: {}\n", m.attempt));
        }
        out.push_str(&format!("State: {}\n", state_name(c.state)));
        if let Some(i) = &c.image {
            out.push_str(&format!("Image: {}\n", i.image));
        }
        out.push_str(&format!(
            "Created: {}\n",
            output::created_ago(c.created_at, now)
        ));
        // crictl prints these only for maps that are set; an empty one arrives as unset
        if !c.labels.is_empty() {
            out.push_str(&sorted_map("Labels", &c.labels));
        }
        if !c.annotations.is_empty() {
            out.push_str(&sorted_map("Annotations", &c.annotations));
        }
        out.push('\n');
    }
    out
}

/// A `Container` as crictl prints it (protojson): camelCase, the state by name, 64-bit
/// integers as strings.
pub(crate) fn container_json(c: &Container) -> Result<Value> {
    let mut v = output::to_cri_json(c)?;
    output::drop_nulls(&mut v);
    if let Some(m) = v.as_object_mut() {
        m.insert("state".into(), state_proto_name(c.state));
        m.insert("createdAt".into(), Value::from(c.created_at.to_string()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{ContainerMetadata, ImageSpec};

    const NOW: i64 = 1_700_000_000_000_000_000;
    const SEC: i64 = 1_000_000_000;

    fn ctr(id: &str, name: &str, state: ContainerState, age_secs: i64) -> Container {
        Container {
            id: id.into(),
            pod_sandbox_id: format!("pod-{id}-0123456789abcdef"),
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "127.0.0.1:5000/berth/busybox:latest".into(),
                ..Default::default()
            }),
            state: state as i32,
            created_at: NOW - age_secs * SEC,
            ..Default::default()
        }
    }

    fn sel(f: impl FnOnce(&mut Selector)) -> Selector {
        let mut s = Selector::default();
        f(&mut s);
        s
    }

    #[test]
    fn running_only_unless_all_state_or_latest() {
        let running = Some(ContainerStateValue {
            state: ContainerState::ContainerRunning as i32,
        });
        assert_eq!(sel(|_| {}).cri_filter().unwrap().state, running);
        assert_eq!(sel(|s| s.all = true).cri_filter().unwrap().state, None);
        let f = sel(|s| s.state = Some("Exited".into()))
            .cri_filter()
            .unwrap();
        assert_eq!(
            f.state.map(|s| s.state),
            Some(ContainerState::ContainerExited as i32)
        );
        let f = sel(|s| {
            s.state = Some("created".into());
            s.all = true;
        });
        assert_eq!(
            f.cri_filter().unwrap().state.map(|s| s.state),
            Some(ContainerState::ContainerCreated as i32)
        );
        assert_eq!(sel(|s| s.latest = true).cri_filter().unwrap().state, None);
        assert_eq!(sel(|s| s.last = 3).cri_filter().unwrap().state, None);
        assert!(sel(|s| s.state = Some("paused".into()))
            .cri_filter()
            .is_err());
    }

    #[test]
    fn id_pod_and_labels_go_to_the_runtime() {
        let f = sel(|s| {
            s.id = Some("abc".into());
            s.pod = Some("p1".into());
            s.labels = vec!["app=web".into()];
        })
        .cri_filter()
        .unwrap();
        assert_eq!((f.id.as_str(), f.pod_sandbox_id.as_str()), ("abc", "p1"));
        assert_eq!(f.label_selector["app"], "web");
        assert!(sel(|s| s.labels = vec!["novalue".into()])
            .cri_filter()
            .is_err());
    }

    #[test]
    fn table_has_crictl_columns() {
        let id = "f1c03701f6b33424d08be00c3734df429bc6f84ac03a7e1f4be787e9da71a1b1";
        let mut c = ctr(id, "sleeper", ContainerState::ContainerRunning, 2);
        c.labels = HashMap::from([
            (POD_NAME_LABEL.to_string(), "web".to_string()),
            (POD_NAMESPACE_LABEL.to_string(), "prod".to_string()),
        ]);
        let rows = container_rows(&[c], false, NOW);
        assert_eq!(
            rows[0],
            [
                "CONTAINER",
                "IMAGE",
                "CREATED",
                "STATE",
                "NAME",
                "ATTEMPT",
                "POD ID",
                "POD",
                "NAMESPACE"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "f1c03701f6b33",
                "127.0.0.1:5000/berth/busybox:latest",
                "2 seconds ago",
                "Running",
                "sleeper",
                "0",
                "pod-f1c03701f",
                "web",
                "prod"
            ]
        );
    }

    #[test]
    fn digests_are_truncated_and_pod_labels_default_to_unknown() {
        let mut c = ctr("abc", "x", ContainerState::ContainerExited, 60);
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        c.image = Some(ImageSpec {
            image: digest.clone(),
            ..Default::default()
        });
        let rows = container_rows(std::slice::from_ref(&c), false, NOW);
        assert_eq!(rows[1][1], "0123456789abc");
        assert_eq!(rows[1][3], "Exited");
        assert_eq!(
            (rows[1][7].as_str(), rows[1][8].as_str()),
            ("unknown", "unknown")
        );
        let rows = container_rows(&[c], true, NOW);
        assert_eq!(rows[1][1], digest);
        assert_eq!(rows[1][6], "pod-abc-0123456789abcdef");
        assert!(!is_digest("sha256:abc"));
        assert!(!is_digest("busybox:latest"));
    }

    #[test]
    fn json_spells_state_and_created_like_protojson() {
        let c = ctr("abc", "x", ContainerState::ContainerRunning, 0);
        let v = container_json(&c).unwrap();
        assert_eq!(v["state"], "CONTAINER_RUNNING");
        assert_eq!(v["createdAt"], NOW.to_string());
        assert_eq!(v["podSandboxId"], c.pod_sandbox_id);
        assert_eq!(v["metadata"]["name"], "x");
        assert_eq!(state_proto_name(9), json!(9));
    }

    #[test]
    fn verbose_lists_each_container() {
        let mut c = ctr("abc", "x", ContainerState::ContainerCreated, 120);
        c.labels = HashMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]);
        let t = verbose_text(&[c], NOW);
        assert!(t.starts_with("ID: abc\nPodID: pod-abc-0123456789abcdef\nNamespace: unknown\n"));
        assert!(t.contains("Name: x\nAttempt: 0\nState: Created\n"));
        assert!(t.contains("Created: 2 minutes ago\nLabels:\n\ta -> 1\n\tb -> 2\n"));
    }

    #[test]
    fn ps_flags_parse_like_crictl() {
        let a: Args = crate::commands::parse_args(&[
            "-a",
            "-q",
            "-p",
            "pod1",
            "--name",
            "^web",
            "--label",
            "a=b",
            "-s",
            "exited",
            "-n",
            "2",
            "--no-trunc",
            "-o",
            "yaml",
            "-r",
            "-v",
        ])
        .unwrap();
        assert!(a.filters.all && a.quiet && a.no_trunc && a.resolve_image_path && a.verbose);
        let sel = a.filters.selector(None);
        assert_eq!(sel.pod.as_deref(), Some("pod1"));
        assert_eq!(sel.state.as_deref(), Some("exited"));
        assert_eq!(sel.labels, ["a=b"]);
        assert_eq!((sel.last, a.output), (2, ListFormat::Yaml));
    }
}
