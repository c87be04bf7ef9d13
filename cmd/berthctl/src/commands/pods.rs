//! `berthctl pods`: the pod list as crictl's table, IDs, or camelCase JSON/YAML.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use k8s_cri::v1::{
    ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox, PodSandboxFilter, PodSandboxState,
    PodSandboxStateValue,
};
use regex::Regex;

use crate::client::GlobalOpts;
use crate::output::{self, truncate_id, ListFormat};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Filter by pod ID
    #[arg(long)]
    id: Option<String>,
    /// Filter by pod name regular expression
    #[arg(long)]
    name: Option<String>,
    /// Filter by pod namespace regular expression
    #[arg(long)]
    namespace: Option<String>,
    /// Filter by pod state (ready or notready)
    #[arg(short, long)]
    state: Option<String>,
    /// Filter by key=value label (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Only display pod IDs
    #[arg(short, long)]
    quiet: bool,
    /// Show output without truncating the ID
    #[arg(long)]
    no_trunc: bool,
    /// Show the most recently created pod
    #[arg(short, long)]
    latest: bool,
    /// Show the N most recently created pods
    #[arg(short = 'n', long, value_name = "N", default_value_t = 0)]
    last: usize,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    output: ListFormat,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let filter = cri_filter(&args)?;
    let local = LocalFilter::new(args.name.as_deref(), args.namespace.as_deref())?;
    let mut c = g.runtime_client().await?;
    let r = g
        .call(
            "list pod sandboxes",
            Some(g.call_timeout()),
            ListPodSandboxRequest {
                filter: Some(filter),
            },
            |r| c.list_pod_sandbox(r),
        )
        .await?;
    let limit = if args.last > 0 {
        Some(args.last)
    } else if args.latest {
        Some(1)
    } else {
        None
    };
    let pods = select(r.items, &local, limit);
    if args.quiet {
        for p in &pods {
            println!("{}", p.id);
        }
        return Ok(());
    }
    match args.output.structured() {
        None => {
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
            print!(
                "{}",
                output::format_table(&pod_rows(&pods, args.no_trunc, now))
            );
            Ok(())
        }
        Some(fmt) => {
            let v = output::to_cri_json(&ListPodSandboxResponse { items: pods })?;
            output::print(&v, fmt)
        }
    }
}

/// The filters the runtime applies: ID, state, labels.
fn cri_filter(args: &Args) -> Result<PodSandboxFilter> {
    let state = match args
        .state
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => None,
        Some("ready") => Some(PodSandboxState::SandboxReady),
        Some("notready") => Some(PodSandboxState::SandboxNotready),
        Some(other) => bail!("--state should be ready or notready, not {other:?}"),
    };
    Ok(PodSandboxFilter {
        id: args.id.clone().unwrap_or_default(),
        state: state.map(|s| PodSandboxStateValue { state: s as i32 }),
        label_selector: parse_labels(&args.labels)?,
    })
}

/// `--label k=v` flags as a label selector.
pub(crate) fn parse_labels(labels: &[String]) -> Result<HashMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow!("incorrectly specified label: {l:?}, expected key=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The regular expression of `--{flag}`; none when not given or empty (crictl matches all then).
pub(crate) fn compile_regex(flag: &str, re: Option<&str>) -> Result<Option<Regex>> {
    re.filter(|s| !s.is_empty())
        .map(|s| Regex::new(s).with_context(|| format!("--{flag} {s:?}")))
        .transpose()
}

/// The filters crictl applies itself: name and namespace regular expressions.
struct LocalFilter {
    name: Option<Regex>,
    namespace: Option<Regex>,
}

impl LocalFilter {
    fn new(name: Option<&str>, namespace: Option<&str>) -> Result<Self> {
        Ok(Self {
            name: compile_regex("name", name)?,
            namespace: compile_regex("namespace", namespace)?,
        })
    }

    fn matches(&self, pod: &PodSandbox) -> bool {
        let meta = pod.metadata.clone().unwrap_or_default();
        self.name.as_ref().is_none_or(|re| re.is_match(&meta.name))
            && self
                .namespace
                .as_ref()
                .is_none_or(|re| re.is_match(&meta.namespace))
    }
}

/// crictl's `getSandboxesList`: filter, newest first, keep at most `limit`.
fn select(pods: Vec<PodSandbox>, filter: &LocalFilter, limit: Option<usize>) -> Vec<PodSandbox> {
    let mut pods: Vec<PodSandbox> = pods.into_iter().filter(|p| filter.matches(p)).collect();
    pods.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    if let Some(n) = limit {
        pods.truncate(n);
    }
    pods
}

/// crictl's `convertPodState`.
fn state_name(state: i32) -> &'static str {
    match PodSandboxState::try_from(state) {
        Ok(PodSandboxState::SandboxReady) => "Ready",
        Ok(PodSandboxState::SandboxNotready) => "NotReady",
        Err(_) => "Unknown",
    }
}

/// Header and rows of `crictl pods`; `now` in unix nanoseconds.
fn pod_rows(pods: &[PodSandbox], no_trunc: bool, now: i64) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "POD ID",
        "CREATED",
        "STATE",
        "NAME",
        "NAMESPACE",
        "ATTEMPT",
        "RUNTIME",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    for p in pods {
        let meta = p.metadata.clone().unwrap_or_default();
        let id = if no_trunc {
            p.id.clone()
        } else {
            truncate_id(&p.id, "")
        };
        let runtime = if p.runtime_handler.is_empty() {
            "(default)".to_string()
        } else {
            p.runtime_handler.clone()
        };
        rows.push(vec![
            id,
            output::created_ago(p.created_at, now),
            state_name(p.state).to_string(),
            meta.name,
            meta.namespace,
            meta.attempt.to_string(),
            runtime,
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::PodSandboxMetadata;

    const NOW: i64 = 1_700_000_000_000_000_000;
    const SEC: i64 = 1_000_000_000;

    fn pod(id: &str, name: &str, ns: &str, state: PodSandboxState, age_secs: i64) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: ns.into(),
                uid: format!("uid-{name}"),
                attempt: 1,
            }),
            state: state as i32,
            created_at: NOW - age_secs * SEC,
            ..Default::default()
        }
    }

    fn ids(pods: &[PodSandbox]) -> Vec<&str> {
        pods.iter().map(|p| p.id.as_str()).collect()
    }

    fn sample() -> Vec<PodSandbox> {
        vec![
            pod(
                "aaa",
                "web-1",
                "default",
                PodSandboxState::SandboxReady,
                300,
            ),
            pod("bbb", "db-0", "prod", PodSandboxState::SandboxNotready, 30),
            pod("ccc", "web-2", "prod", PodSandboxState::SandboxReady, 7200),
        ]
    }

    #[test]
    fn table_has_crictl_columns() {
        let id = "f84dd361f8dc51518ed291fbadd6db537b0496536c1d2d6c05ff943ce8c9a54f";
        let mut p = pod(
            id,
            "nginx-sandbox",
            "default",
            PodSandboxState::SandboxReady,
            17,
        );
        let rows = pod_rows(std::slice::from_ref(&p), false, NOW);
        assert_eq!(
            rows[0],
            [
                "POD ID",
                "CREATED",
                "STATE",
                "NAME",
                "NAMESPACE",
                "ATTEMPT",
                "RUNTIME"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "f84dd361f8dc5",
                "17 seconds ago",
                "Ready",
                "nginx-sandbox",
                "default",
                "1",
                "(default)"
            ]
        );
        p.state = PodSandboxState::SandboxNotready as i32;
        p.runtime_handler = "runc".into();
        let rows = pod_rows(&[p], true, NOW);
        assert_eq!(rows[1][0], id);
        assert_eq!(rows[1][2], "NotReady");
        assert_eq!(rows[1][6], "runc");
    }

    #[test]
    fn table_output_is_aligned() {
        let p = pod(
            "0123456789abcdef",
            "nginx",
            "default",
            PodSandboxState::SandboxReady,
            120,
        );
        let t = output::format_table(&pod_rows(&[p], false, NOW));
        let want = format!(
            "{:<20}{:<20}{:<20}{:<20}{:<20}{:<20}RUNTIME\n{:<20}{:<20}{:<20}{:<20}{:<20}{:<20}(default)\n",
            "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT",
            "0123456789abc", "2 minutes ago", "Ready", "nginx", "default", "1"
        );
        assert_eq!(t, want);
    }

    #[test]
    fn pods_sort_newest_first_and_limit() {
        let all = LocalFilter::new(None, None).unwrap();
        assert_eq!(ids(&select(sample(), &all, None)), ["bbb", "aaa", "ccc"]);
        assert_eq!(ids(&select(sample(), &all, Some(1))), ["bbb"]);
        assert_eq!(ids(&select(sample(), &all, Some(10))).len(), 3);
    }

    #[test]
    fn name_and_namespace_filters_are_regexes() {
        let f = LocalFilter::new(Some("^web-"), None).unwrap();
        assert_eq!(ids(&select(sample(), &f, None)), ["aaa", "ccc"]);
        let f = LocalFilter::new(Some("web"), Some("^prod$")).unwrap();
        assert_eq!(ids(&select(sample(), &f, None)), ["ccc"]);
        let f = LocalFilter::new(Some(""), Some("")).unwrap();
        assert_eq!(select(sample(), &f, None).len(), 3);
        assert!(LocalFilter::new(Some("(unclosed"), None).is_err());
    }

    fn args(extra: &[&str]) -> Args {
        crate::commands::parse_args(extra).unwrap()
    }

    #[test]
    fn id_state_and_labels_go_to_the_cri_filter() {
        let f = cri_filter(&args(&[
            "--id", "abc", "--state", "Ready", "--label", "app=web", "--label", "tier=fe",
        ]))
        .unwrap();
        assert_eq!(f.id, "abc");
        assert_eq!(
            f.state.map(|s| s.state),
            Some(PodSandboxState::SandboxReady as i32)
        );
        assert_eq!(
            f.label_selector,
            HashMap::from([
                ("app".to_string(), "web".to_string()),
                ("tier".to_string(), "fe".to_string())
            ])
        );
        let f = cri_filter(&args(&["-s", "notready"])).unwrap();
        assert_eq!(
            f.state.map(|s| s.state),
            Some(PodSandboxState::SandboxNotready as i32)
        );
        let f = cri_filter(&args(&[])).unwrap();
        assert_eq!(f, PodSandboxFilter::default());
        assert!(cri_filter(&args(&["--state", "running"])).is_err());
        assert!(cri_filter(&args(&["--label", "novalue"])).is_err());
    }

    #[test]
    fn list_flags_parse_like_crictl() {
        let a = args(&["-q", "--no-trunc", "-l", "--last", "3", "-o", "json"]);
        assert!(a.quiet && a.no_trunc && a.latest);
        assert_eq!(a.last, 3);
        assert_eq!(a.output, ListFormat::Json);
    }
}
