//! berth's Prometheus metrics. One process-wide set ([`metrics`]) that the domain crates record
//! into (`berth-image` its pulls, `berth-network` its setup time, `berth-cri` every RPC) without
//! knowing who serves it; berthd encodes it ([`encode`]) on its `[metrics] address`. Gauges that
//! describe the daemon's records (pods and containers by state, shims running) are set by berthd
//! right before each scrape.
//!
//! Names follow Prometheus conventions: a `berth_` prefix, base units (seconds, bytes), counters
//! ending in `_total` (added by the encoder).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The gRPC method, e.g. `RunPodSandbox`.
    pub method: String,
    /// The gRPC status code name, e.g. `OK`, `NotFound`.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `exec`, `attach` or `portforward`.
    pub kind: String,
}

/// The `kind`s of `berth_streaming_sessions`.
pub const STREAMING_KINDS: &[&str] = &["exec", "attach", "portforward"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series berth exports.
pub struct Metrics {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_duration: HistogramFamily<RpcLabels>,
    pub pulls: Family<ResultLabels, Counter>,
    pub pull_failures: Family<ReasonLabels, Counter>,
    pub pull_duration: Histogram,
    pub pull_bytes: Counter,
    pub pull_layers: Counter,
    pub pull_resumes: Counter,
    pub pods: Family<StateLabels, Gauge>,
    pub containers: Family<StateLabels, Gauge>,
    pub shims_running: Gauge,
    pub network_setup_duration: HistogramFamily<ResultLabels>,
    pub streaming_sessions: Family<KindLabels, Gauge>,
}

/// 1 ms .. ~33 s: CRI calls range from a map lookup to a container start.
fn rpc_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// 0.1 s .. ~27 min: a pull of a small image from a local registry up to a large one.
fn pull_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// 0.5 ms .. ~4 s: a veth and a lease normally, a slow CNI plugin at worst.
fn network_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "cri_requests",
            "CRI requests handled, by method and gRPC code",
            rpc_requests.clone(),
        );
        let rpc_duration = HistogramFamily::<RpcLabels>::new_with_constructor(rpc_buckets);
        registry.register_with_unit(
            "cri_request_duration",
            "Time to answer a CRI request, by method and gRPC code",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let pulls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "image_pulls",
            "Image pulls finished, by result",
            pulls.clone(),
        );
        let pull_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "image_pull_failures",
            "Failed image pulls, by reason (the error kind)",
            pull_failures.clone(),
        );
        let pull_duration = pull_buckets();
        registry.register_with_unit(
            "image_pull_duration",
            "Time of an image pull, resolve to last layer unpacked",
            Unit::Seconds,
            pull_duration.clone(),
        );
        let pull_bytes = Counter::default();
        registry.register_with_unit(
            "image_pull",
            "Layer bytes received from registries",
            Unit::Bytes,
            pull_bytes.clone(),
        );
        let pull_layers = Counter::default();
        registry.register(
            "image_pull_layers",
            "Layers unpacked into snapshots by pulls",
            pull_layers.clone(),
        );
        let pull_resumes = Counter::default();
        registry.register(
            "image_pull_resumes",
            "Layer downloads resumed with a Range request after an interruption",
            pull_resumes.clone(),
        );
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register("pods", "Pod sandboxes, by CRI state", pods.clone());
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register("containers", "Containers, by CRI state", containers.clone());
        let shims_running = Gauge::default();
        registry.register(
            "shims_running",
            "berth-shim processes alive (container monitors and pod PID-namespace holders)",
            shims_running.clone(),
        );
        let network_setup_duration =
            HistogramFamily::<ResultLabels>::new_with_constructor(network_buckets);
        registry.register_with_unit(
            "network_setup_duration",
            "Time to set up a pod's network (built-in bridge or CNI ADD), by result",
            Unit::Seconds,
            network_setup_duration.clone(),
        );
        let streaming_sessions = Family::<KindLabels, Gauge>::default();
        // Written as 0 from the start: a family without members is not exposed at all.
        for kind in STREAMING_KINDS {
            streaming_sessions
                .get_or_create(&KindLabels {
                    kind: kind.to_string(),
                })
                .set(0);
        }
        registry.register(
            "streaming_sessions",
            "Streaming sessions open (exec, attach, port-forward)",
            streaming_sessions.clone(),
        );
        Self {
            registry,
            rpc_requests,
            rpc_duration,
            pulls,
            pull_failures,
            pull_duration,
            pull_bytes,
            pull_layers,
            pull_resumes,
            pods,
            containers,
            shims_running,
            network_setup_duration,
            streaming_sessions,
        }
    }

    /// One finished RPC.
    pub fn rpc(&self, method: &str, code: &str, took: Duration) {
        let labels = RpcLabels {
            method: method.to_string(),
            code: code.to_string(),
        };
        self.rpc_requests.get_or_create(&labels).inc();
        self.rpc_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One finished pull; `failure` is the reason when it failed.
    pub fn pull_finished(&self, took: Duration, failure: Option<&str>) {
        self.pull_duration.observe(took.as_secs_f64());
        let result = if failure.is_some() { "failed" } else { "ok" };
        self.pulls
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        if let Some(reason) = failure {
            self.pull_failures
                .get_or_create(&ReasonLabels {
                    reason: reason.into(),
                })
                .inc();
        }
    }

    pub fn network_setup(&self, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.network_setup_duration
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Sets a by-state gauge family to `counts`; every state in `states` is written, so a state
    /// that emptied reads 0 rather than its last value.
    pub fn set_by_state(
        family: &Family<StateLabels, Gauge>,
        states: &[&str],
        counts: &[(&str, i64)],
    ) {
        for s in states {
            let n = counts
                .iter()
                .filter(|(state, _)| state == s)
                .map(|(_, n)| n)
                .sum();
            family
                .get_or_create(&StateLabels {
                    state: s.to_string(),
                })
                .set(n);
        }
    }

    /// Counts a streaming session as open until the returned guard drops.
    pub fn streaming_session(&self, kind: &str) -> SessionGuard {
        let gauge = self
            .streaming_sessions
            .get_or_create(&KindLabels { kind: kind.into() })
            .clone();
        gauge.inc();
        SessionGuard(gauge)
    }
}

/// Keeps one streaming session counted in `berth_streaming_sessions`.
pub struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process-wide metrics, created on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The Prometheus text exposition (OpenMetrics 1.0 text, which Prometheus scrapes as such).
pub fn encode() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn records_show_up_in_the_exposition() {
        let m = metrics();
        m.rpc("Version", "OK", Duration::from_millis(3));
        m.rpc("Version", "OK", Duration::from_millis(5));
        m.rpc("PullImage", "NotFound", Duration::from_millis(40));
        m.pull_finished(Duration::from_secs(2), Some("not_found"));
        m.pull_bytes.inc_by(1234);
        m.network_setup(Duration::from_millis(2), true);
        Metrics::set_by_state(&m.pods, &["ready", "notready"], &[("ready", 2)]);
        let text = encode();
        assert!(
            line_value(
                &text,
                "berth_cri_requests_total{method=\"Version\",code=\"OK\"}"
            )
            .is_some_and(|v| v >= 2.0),
            "{text}"
        );
        assert!(text.contains(
            "berth_cri_request_duration_seconds_count{method=\"PullImage\",code=\"NotFound\"}"
        ));
        assert!(text.contains("# TYPE berth_cri_request_duration_seconds histogram"));
        assert!(line_value(
            &text,
            "berth_image_pull_failures_total{reason=\"not_found\"}"
        )
        .is_some_and(|v| v >= 1.0));
        assert!(line_value(&text, "berth_image_pull_bytes_total").is_some_and(|v| v >= 1234.0));
        assert_eq!(line_value(&text, "berth_pods{state=\"ready\"}"), Some(2.0));
        assert_eq!(
            line_value(&text, "berth_pods{state=\"notready\"}"),
            Some(0.0)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_session_counts_while_its_guard_lives() {
        let m = metrics();
        let g = m.streaming_session("attach");
        let open = |t: &str| line_value(t, "berth_streaming_sessions{kind=\"attach\"}");
        assert_eq!(open(&encode()), Some(1.0));
        drop(g);
        assert_eq!(open(&encode()), Some(0.0));
    }
}
