//! ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats: cgroup, writable
//! layer and network counters in the CRI's units.
//!
//! `usage_nano_cores` is a rate, so it needs two readings of a cgroup. The last reading of every
//! cgroup is kept; a cgroup read for the first time (or read again within a few milliseconds) is
//! read a second time after a short pause, once for the whole call, so even the first answer
//! has a rate (containerd answers 0 until its second call).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use berth_runtime::stats::{self, CgroupSample};
use k8s_cri::v1;
use tonic::Status;

use super::record::{ContainerRecord, ContainerState};
use super::ContainerManager;
use crate::runtime::RuntimeApi;
use crate::sandbox::{lock, PodRecord};
use crate::task::blocking;

/// The pause between two readings of a cgroup seen for the first time.
const RATE_WINDOW: Duration = Duration::from_millis(100);
/// A previous reading younger than this is too close for a meaningful rate.
const MIN_RATE_WINDOW_NS: i64 = 10_000_000;

fn u64v(value: u64) -> Option<v1::UInt64Value> {
    Some(v1::UInt64Value { value })
}

/// A reading of a cgroup with its CPU rate.
struct Reading {
    sample: CgroupSample,
    nano_cores: Option<u64>,
}

impl ContainerManager {
    /// Reads every cgroup in `paths`, with rates (see the module doc). Forgets the readings of
    /// cgroups that are in none of `live`.
    fn read_cgroups(&self, paths: &[String], live: &HashSet<String>) -> Vec<Reading> {
        let mut readings: Vec<Reading> = paths
            .iter()
            .map(|p| Reading {
                // No cgroup (a pod made without one): nothing to read, and never the root's.
                sample: if p.is_empty() {
                    CgroupSample::default()
                } else {
                    stats::sample_cgroup(p)
                },
                nano_cores: None,
            })
            .collect();
        let mut need_second = Vec::new();
        {
            let last = lock(&self.cpu_samples);
            for (i, (path, r)) in paths.iter().zip(readings.iter_mut()).enumerate() {
                match last.get(path) {
                    Some(prev) if r.sample.timestamp - prev.timestamp >= MIN_RATE_WINDOW_NS => {
                        r.nano_cores = stats::nano_cores(prev, &r.sample);
                    }
                    _ if r.sample.cpu_usage_ns.is_some() => need_second.push(i),
                    _ => {}
                }
            }
        }
        if !need_second.is_empty() {
            std::thread::sleep(RATE_WINDOW);
            for i in need_second {
                let later = stats::sample_cgroup(&paths[i]);
                let r = &mut readings[i];
                r.nano_cores = stats::nano_cores(&r.sample, &later);
                r.sample = later;
            }
        }
        let mut last = lock(&self.cpu_samples);
        last.retain(|path, _| live.contains(path));
        for (path, r) in paths.iter().zip(&readings) {
            if r.sample.cpu_usage_ns.is_some() && live.contains(path) {
                last.insert(path.clone(), r.sample.clone());
            }
        }
        readings
    }

    /// Every cgroup berth may be asked about: its containers' and its pods'.
    fn live_cgroups(&self) -> HashSet<String> {
        self.list()
            .into_iter()
            .map(|c| c.cgroups_path)
            .chain(self.pods().list().into_iter().filter_map(|p| p.cgroup))
            .collect()
    }

    fn container_stats(&self, recs: &[ContainerRecord]) -> Vec<v1::ContainerStats> {
        let paths: Vec<String> = recs.iter().map(|r| r.cgroups_path.clone()).collect();
        let readings = self.read_cgroups(&paths, &self.live_cgroups());
        recs.iter()
            .zip(readings)
            .map(|(rec, reading)| self.one_container(rec, reading))
            .collect()
    }

    fn one_container(&self, rec: &ContainerRecord, reading: Reading) -> v1::ContainerStats {
        // An exited container's cgroup is gone; what it last used is not "now".
        let running = matches!(rec.state, ContainerState::Created | ContainerState::Running);
        let (cpu, memory, swap) = if running {
            cgroup_usage(&reading)
        } else {
            (None, None, None)
        };
        let writable_layer = match stats::disk_usage(&rec.paths.upper()) {
            Ok(du) => Some(v1::FilesystemUsage {
                timestamp: du.timestamp,
                fs_id: Some(v1::FilesystemIdentifier {
                    mountpoint: self.containers_storage().display().to_string(),
                }),
                used_bytes: u64v(du.bytes),
                inodes_used: u64v(du.inodes),
            }),
            Err(e) => {
                tracing::debug!(container = %rec.id, error = %e, "writable layer usage");
                None
            }
        };
        v1::ContainerStats {
            attributes: Some(v1::ContainerAttributes {
                id: rec.id.clone(),
                metadata: Some(rec.metadata()),
                labels: rec.labels.clone().into_iter().collect(),
                annotations: rec.annotations.clone().into_iter().collect(),
            }),
            cpu,
            memory,
            writable_layer,
            swap,
        }
    }

    fn pod_stats(&self, pods: &[PodRecord]) -> Vec<v1::PodSandboxStats> {
        let members: Vec<Vec<ContainerRecord>> = pods
            .iter()
            .map(|p| {
                self.in_pod(&p.id)
                    .into_iter()
                    .filter(|c| c.state != ContainerState::Exited)
                    .collect()
            })
            .collect();
        // One read for the pods and all their containers, so the rate pause happens once.
        let mut paths = Vec::new();
        for (pod, containers) in pods.iter().zip(&members) {
            paths.push(pod.cgroup.clone().unwrap_or_default());
            paths.extend(containers.iter().map(|c| c.cgroups_path.clone()));
        }
        let mut readings = self.read_cgroups(&paths, &self.live_cgroups()).into_iter();
        let mut out = Vec::with_capacity(pods.len());
        for (pod, containers) in pods.iter().zip(members) {
            let Some(reading) = readings.next() else {
                break;
            };
            let (cpu, memory, _) = cgroup_usage(&reading);
            let process = reading.sample.pids.map(|count| v1::ProcessUsage {
                timestamp: reading.sample.timestamp,
                process_count: u64v(count),
            });
            let containers = containers
                .iter()
                .zip(readings.by_ref())
                .map(|(c, r)| self.one_container(c, r))
                .collect();
            out.push(v1::PodSandboxStats {
                attributes: Some(v1::PodSandboxAttributes {
                    id: pod.id.clone(),
                    metadata: Some(pod.meta.to_cri()),
                    labels: pod.labels.clone().into_iter().collect(),
                    annotations: pod.annotations.clone().into_iter().collect(),
                }),
                linux: Some(v1::LinuxPodSandboxStats {
                    cpu,
                    memory,
                    network: network_usage(pod),
                    process,
                    containers,
                }),
                windows: None,
            });
        }
        out
    }
}

fn cgroup_usage(
    r: &Reading,
) -> (
    Option<v1::CpuUsage>,
    Option<v1::MemoryUsage>,
    Option<v1::SwapUsage>,
) {
    let ts = r.sample.timestamp;
    let cpu = r.sample.cpu_usage_ns.map(|used| v1::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(used),
        usage_nano_cores: r.nano_cores.and_then(u64v),
    });
    let memory = r.sample.memory.as_ref().map(|m| v1::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(m.working_set),
        available_bytes: m.available().and_then(u64v),
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
    });
    let swap = r.sample.swap.as_ref().map(|s| v1::SwapUsage {
        timestamp: ts,
        swap_available_bytes: s.available().and_then(u64v),
        swap_usage_bytes: u64v(s.usage),
    });
    (cpu, memory, swap)
}

/// The pod's interfaces as its own network namespace counts them; `eth0` is the default one,
/// loopback is left out (kubelet and cAdvisor do the same). Host-network pods have none.
fn network_usage(pod: &PodRecord) -> Option<v1::NetworkUsage> {
    if pod.host.network {
        return None;
    }
    let netns = pod.pinned.as_ref()?.net.as_deref()?;
    let timestamp = crate::task::unix_nanos();
    let counters = match berth_network::in_netns(netns, stats::read_net_dev) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(pod = %pod.id, error = %e, "reading interface counters");
            return None;
        }
        Err(e) => {
            tracing::debug!(pod = %pod.id, error = %e, "entering the pod network namespace");
            return None;
        }
    };
    let usage = |c: &stats::InterfaceCounters| v1::NetworkInterfaceUsage {
        name: c.name.clone(),
        rx_bytes: u64v(c.rx_bytes),
        rx_errors: u64v(c.rx_errors),
        tx_bytes: u64v(c.tx_bytes),
        tx_errors: u64v(c.tx_errors),
    };
    let default_interface = counters.iter().find(|c| c.name == "eth0").map(usage);
    let interfaces = counters
        .iter()
        .filter(|c| c.name != "eth0" && c.name != "lo")
        .map(usage)
        .collect();
    Some(v1::NetworkUsage {
        timestamp,
        default_interface,
        interfaces,
    })
}

fn labels_match(
    labels: &std::collections::BTreeMap<String, String>,
    want: &HashMap<String, String>,
) -> bool {
    want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn container_matches(c: &ContainerRecord, f: &v1::ContainerStatsFilter) -> bool {
    c.id.starts_with(&f.id)
        && c.pod_id.starts_with(&f.pod_sandbox_id)
        && labels_match(&c.labels, &f.label_selector)
}

fn pod_matches(p: &PodRecord, f: &v1::PodSandboxStatsFilter) -> bool {
    p.id.starts_with(&f.id) && labels_match(&p.labels, &f.label_selector)
}

impl RuntimeApi {
    pub(crate) async fn container_stats(
        &self,
        req: v1::ContainerStatsRequest,
    ) -> Result<v1::ContainerStatsResponse, Status> {
        let rec = self.containers.get(&req.container_id)?;
        let stats = blocking(&self.containers, move |m| {
            Ok(m.container_stats(std::slice::from_ref(&rec)).pop())
        })
        .await?;
        Ok(v1::ContainerStatsResponse { stats })
    }

    pub(crate) async fn list_container_stats(
        &self,
        req: v1::ListContainerStatsRequest,
    ) -> Result<v1::ListContainerStatsResponse, Status> {
        let recs: Vec<ContainerRecord> = self
            .containers
            .list()
            .into_iter()
            // Exited containers have no usage; kubelet asks for the running ones.
            .filter(|c| c.state != ContainerState::Exited)
            .filter(|c| req.filter.as_ref().is_none_or(|f| container_matches(c, f)))
            .collect();
        let stats = blocking(&self.containers, move |m| Ok(m.container_stats(&recs))).await?;
        Ok(v1::ListContainerStatsResponse { stats })
    }

    pub(crate) async fn pod_sandbox_stats(
        &self,
        req: v1::PodSandboxStatsRequest,
    ) -> Result<v1::PodSandboxStatsResponse, Status> {
        if req.pod_sandbox_id.is_empty() {
            return Err(crate::edge::invalid(
                "pod_sandbox_id",
                "must name a pod sandbox",
            ));
        }
        let pod = self.pods.get(&req.pod_sandbox_id)?;
        let stats = blocking(&self.containers, move |m| {
            Ok(m.pod_stats(std::slice::from_ref(&pod)).pop())
        })
        .await?;
        Ok(v1::PodSandboxStatsResponse { stats })
    }

    pub(crate) async fn list_pod_sandbox_stats(
        &self,
        req: v1::ListPodSandboxStatsRequest,
    ) -> Result<v1::ListPodSandboxStatsResponse, Status> {
        let pods: Vec<PodRecord> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| req.filter.as_ref().is_none_or(|f| pod_matches(p, f)))
            .collect();
        let stats = blocking(&self.containers, move |m| Ok(m.pod_stats(&pods))).await?;
        Ok(v1::ListPodSandboxStatsResponse { stats })
    }
}
