//! Resources, stats and events end to end: limits in the cgroups (seen from the host and from
//! inside), UpdateContainerResources, an OOM kill, container and pod stats from a busy loop, an
//! allocation, a written file and real traffic, and the GetContainerEvents stream.
//! Run: `hack/test.sh` or `cargo test -p berth-e2e --test stats -- --test-threads=1`.

use std::collections::HashMap;
use std::time::Duration;

use berth_e2e::cri::{self, ContainerConfig};
use berth_e2e::ctr::*;
use berth_e2e::{berthctl_bin, required};
use tonic::Code;

const NET: Net = Net {
    bridge: "be2ek0",
    table: "berth_e2ek",
    subnet: "10.235.0.0/16",
};
/// The bridge's own address: traffic to it leaves the pod through eth0.
const GATEWAY: &str = "10.235.0.1";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start() -> Option<Env> {
    Env::start(&NET, "", &SERIAL).await
}

fn with_resources(
    mut c: ContainerConfig,
    edit: impl FnOnce(&mut cri::LinuxContainerResources),
) -> ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    edit(linux.resources.get_or_insert_with(Default::default));
    c
}

fn read_cgroup(controller: &str, path: &str, file: &str) -> String {
    let p = format!("/sys/fs/cgroup/{controller}{path}/{file}");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {p}: {e}"))
        .trim()
        .to_string()
}

fn cgroup_v1() -> bool {
    std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

async fn cgroups_path(e: &mut Env, id: &str) -> String {
    let (_, info) = e.status(id).await;
    info["cgroupsPath"]
        .as_str()
        .expect("cgroupsPath")
        .to_string()
}

async fn container_stats(e: &mut Env, id: &str) -> cri::ContainerStats {
    e.rt.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .expect("ContainerStats")
    .into_inner()
    .stats
    .expect("stats")
}

fn value(v: &Option<cri::UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stats_show_a_busy_loop_an_allocation_and_a_written_file() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("stats").await;
    let busy = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "busy",
                &bb,
                "head -c 2000000 /dev/urandom > /written; while :; do :; done",
            ),
        )
        .await;
    let filler = with_resources(
        sh(
            "filler",
            &bb,
            "head -c 40000000 /dev/zero > /dev/shm/fill; echo filled; sleep 1000",
        ),
        |r| r.memory_limit_in_bytes = 200 << 20,
    );
    let filler = e.run_ctr(&pod, &pc, filler).await;
    // Wait until both have done their part.
    for _ in 0..100 {
        let written = e.exec(&busy, &["test", "-s", "/written"], 5).await;
        if written.is_ok_and(|r| r.exit_code == 0)
            && joined(&e.read_log(&pc, "filler"), "stdout").contains(&"filled".to_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let s = container_stats(&mut e, &busy).await;
    let attrs = s.attributes.as_ref().expect("attributes");
    assert_eq!(attrs.id, busy);
    assert_eq!(
        attrs.metadata.as_ref().map(|m| m.name.as_str()),
        Some("busy")
    );
    assert_eq!(attrs.labels.get("app").map(String::as_str), Some("busy"));
    assert_eq!(
        attrs.annotations.get("note").map(String::as_str),
        Some("about busy")
    );
    let cpu = s.cpu.as_ref().expect("cpu");
    assert!(cpu.timestamp > 0);
    let used = value(&cpu.usage_core_nano_seconds);
    assert!(used > 100_000_000, "a busy loop used {used} ns of CPU");
    // Even the first call has a rate; a busy loop keeps at least a few percent of a core on a
    // loaded two-core machine.
    let rate = value(&cpu.usage_nano_cores);
    assert!(rate > 20_000_000, "usage_nano_cores {rate}");
    // The host's own counter agrees (it only grows).
    let path = cgroups_path(&mut e, &busy).await;
    if cgroup_v1() {
        let host: u64 = read_cgroup("cpuacct", &path, "cpuacct.usage")
            .parse()
            .expect("cpuacct.usage");
        assert!(host >= used, "host {host} < reported {used}");
    }
    let layer = s.writable_layer.as_ref().expect("writable layer");
    assert!(value(&layer.used_bytes) >= 2_000_000, "{layer:?}");
    assert!(value(&layer.inodes_used) >= 2, "{layer:?}");
    assert!(layer
        .fs_id
        .as_ref()
        .is_some_and(|f| f.mountpoint.ends_with("/containers")));

    let s = container_stats(&mut e, &filler).await;
    let mem = s.memory.as_ref().expect("memory");
    let ws = value(&mem.working_set_bytes);
    assert!(ws >= 40_000_000, "working set {ws} after 40 MB in /dev/shm");
    assert!(value(&mem.usage_bytes) >= ws);
    assert!(value(&mem.page_faults) > 0);
    assert_eq!(value(&mem.available_bytes), (200u64 << 20) - ws);
    // The rate of a sleeping process is about zero.
    let cpu = s.cpu.as_ref().expect("cpu");
    assert!(
        value(&cpu.usage_nano_cores) < 50_000_000,
        "sleep uses {} nano cores",
        value(&cpu.usage_nano_cores)
    );

    // The second call measures against the first.
    let again = container_stats(&mut e, &busy).await;
    assert!(value(&again.cpu.as_ref().expect("cpu").usage_core_nano_seconds) >= used);

    let missing =
        e.rt.container_stats(cri::ContainerStatsRequest {
            container_id: "doesnotexist".into(),
        })
        .await
        .expect_err("unknown container");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_stats_filter_by_id_pod_and_labels_and_skip_exited_containers() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pa, pca) = e.pod("lsa").await;
    let (pb, pcb) = e.pod("lsb").await;
    let a1 = e
        .run_ctr(&pa, &pca, container("a1", &bb, &["sleep", "1000"]))
        .await;
    let a2 = e
        .run_ctr(&pa, &pca, container("a2", &bb, &["sleep", "1000"]))
        .await;
    let b1 = e
        .run_ctr(&pb, &pcb, container("b1", &bb, &["sleep", "1000"]))
        .await;
    let done = e
        .run_ctr(&pb, &pcb, container("done", &bb, &["true"]))
        .await;
    e.wait_exit(&done, Duration::from_secs(20)).await;

    let list = |filter: Option<cri::ContainerStatsFilter>| {
        let mut rt = e.rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_container_stats(cri::ListContainerStatsRequest { filter })
                .await
                .expect("ListContainerStats")
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.expect("attributes").id)
                .collect();
            ids.sort();
            ids
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        list(None).await,
        sorted(vec![a1.clone(), a2.clone(), b1.clone()])
    );
    let by_id = cri::ContainerStatsFilter {
        id: a2.clone(),
        ..Default::default()
    };
    assert_eq!(list(Some(by_id)).await, vec![a2.clone()]);
    let by_pod = cri::ContainerStatsFilter {
        pod_sandbox_id: pa.clone(),
        ..Default::default()
    };
    assert_eq!(
        list(Some(by_pod)).await,
        sorted(vec![a1.clone(), a2.clone()])
    );
    let by_label = cri::ContainerStatsFilter {
        label_selector: HashMap::from([("app".to_string(), "b1".to_string())]),
        ..Default::default()
    };
    assert_eq!(list(Some(by_label)).await, vec![b1.clone()]);
    let nothing = cri::ContainerStatsFilter {
        label_selector: HashMap::from([("app".to_string(), "nope".to_string())]),
        ..Default::default()
    };
    assert!(list(Some(nothing)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_stats_have_cgroup_network_process_and_container_numbers() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("podstats").await;
    let (other, _) = e.pod("otherpod").await;
    // Connection attempts to a closed port of the bridge: ARP, SYNs out and RSTs back.
    let talker = sh(
        "talker",
        &bb,
        &format!(
            "for i in 1 2 3 4 5; do nc -w 1 {GATEWAY} 9 </dev/null; done; echo talked; sleep 1000"
        ),
    );
    let talker = e.run_ctr(&pod, &pc, talker).await;
    for _ in 0..100 {
        if joined(&e.read_log(&pc, "talker"), "stdout").contains(&"talked".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats =
        e.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("stats");
    let attrs = stats.attributes.as_ref().expect("attributes");
    assert_eq!(attrs.id, pod);
    assert_eq!(
        attrs.labels.get("pod").map(String::as_str),
        Some("podstats")
    );
    let linux = stats.linux.as_ref().expect("linux");
    assert!(value(&linux.cpu.as_ref().expect("cpu").usage_core_nano_seconds) > 0);
    assert!(value(&linux.memory.as_ref().expect("memory").working_set_bytes) > 0);
    let net = linux.network.as_ref().expect("network");
    let eth0 = net.default_interface.as_ref().expect("default interface");
    assert_eq!(eth0.name, "eth0");
    assert!(
        value(&eth0.tx_bytes) > 0 && value(&eth0.rx_bytes) > 0,
        "{eth0:?}"
    );
    assert!(net.interfaces.iter().all(|i| i.name != "lo"), "{net:?}");
    // The container's sleep (the shim counts too, as CRI-O's conmon does in its pod).
    let procs = value(&linux.process.as_ref().expect("process").process_count);
    assert!(procs >= 1, "process count {procs}");
    let ids: Vec<&str> = linux
        .containers
        .iter()
        .filter_map(|c| c.attributes.as_ref().map(|a| a.id.as_str()))
        .collect();
    assert_eq!(ids, vec![talker.as_str()]);

    let list = |filter: Option<cri::PodSandboxStatsFilter>| {
        let mut rt = e.rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter })
                .await
                .expect("ListPodSandboxStats")
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.expect("attributes").id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![pod.clone(), other.clone()];
    both.sort();
    assert_eq!(list(None).await, both);
    let by_label = cri::PodSandboxStatsFilter {
        label_selector: HashMap::from([("pod".to_string(), "otherpod".to_string())]),
        ..Default::default()
    };
    assert_eq!(list(Some(by_label)).await, vec![other.clone()]);
    let by_id = cri::PodSandboxStatsFilter {
        id: pod.clone(),
        ..Default::default()
    };
    assert_eq!(list(Some(by_id)).await, vec![pod.clone()]);

    for (id, code) in [("", Code::InvalidArgument), ("nosuchpod", Code::NotFound)] {
        let err =
            e.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .expect_err("bad pod id");
        assert_eq!(err.code(), code, "{err:?}");
    }
    // No CRI metrics of berth's own: empty lists, not UNIMPLEMENTED.
    let d =
        e.rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
            .await
            .expect("ListMetricDescriptors")
            .into_inner();
    assert!(d.descriptors.is_empty());
    let m =
        e.rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await
            .expect("ListPodSandboxMetrics")
            .into_inner();
    assert!(m.pod_metrics.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_at_create_land_in_the_cgroup_and_update_changes_them() {
    let Some(mut e) = start().await else { return };
    if !cgroup_v1() {
        eprintln!("skipping: the cgroup file checks are written for cgroup v1");
        return;
    }
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("limits").await;
    let c = with_resources(container("limited", &bb, &["sleep", "1000"]), |r| {
        r.cpu_period = 100_000;
        r.cpu_quota = 50_000;
        r.cpu_shares = 256;
        r.cpuset_cpus = "0".into();
        r.cpuset_mems = "0".into();
        r.memory_limit_in_bytes = 100 << 20;
    });
    let id = e.run_ctr(&pod, &pc, c).await;
    let path = cgroups_path(&mut e, &id).await;
    assert_eq!(read_cgroup("cpu", &path, "cpu.cfs_period_us"), "100000");
    assert_eq!(read_cgroup("cpu", &path, "cpu.cfs_quota_us"), "50000");
    assert_eq!(read_cgroup("cpu", &path, "cpu.shares"), "256");
    assert_eq!(read_cgroup("cpuset", &path, "cpuset.cpus"), "0");
    assert_eq!(read_cgroup("cpuset", &path, "cpuset.mems"), "0");
    assert_eq!(
        read_cgroup("memory", &path, "memory.limit_in_bytes"),
        (100u64 << 20).to_string()
    );
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        // No swap beyond the memory limit unless the request allows it (containerd's default).
        assert_eq!(
            read_cgroup("memory", &path, "memory.memsw.limit_in_bytes"),
            (100u64 << 20).to_string()
        );
    }

    let update = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 20_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 150 << 20,
        ..Default::default()
    };
    e.rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(update.clone()),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("UpdateContainerResources: {s:?}\n{}", e.d.log_tail(30)));
    assert_eq!(read_cgroup("cpu", &path, "cpu.cfs_quota_us"), "20000");
    assert_eq!(read_cgroup("cpu", &path, "cpu.shares"), "512");
    assert_eq!(
        read_cgroup("memory", &path, "memory.limit_in_bytes"),
        (150u64 << 20).to_string()
    );
    // The container sees its new limits in its own cgroup mounts.
    let inside = e
        .exec_out(
            &id,
            &[
                "cat",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
            ],
        )
        .await;
    assert_eq!(
        inside.split_whitespace().collect::<Vec<_>>(),
        vec![(150u64 << 20).to_string().as_str(), "20000"]
    );
    // ContainerStatus reports what was asked last, and the bundle's spec agrees.
    let (st, info) = e.status(&id).await;
    let res = st.resources.and_then(|r| r.linux).expect("resources");
    assert_eq!(res.memory_limit_in_bytes, 150 << 20);
    assert_eq!(res.cpu_quota, 20_000);
    assert_eq!(
        info["runtimeSpec"]["linux"]["resources"]["memory"]["limit"],
        serde_json::json!(150u64 << 20)
    );
    assert!(info["runtimeSpec"]["linux"]["resources"]["devices"].is_array());

    // Refusals, each naming its field; none changes the cgroup.
    let rt = e.rt.clone();
    let refused = |req: cri::UpdateContainerResourcesRequest| {
        let mut rt = rt.clone();
        async move {
            rt.update_container_resources(req)
                .await
                .expect_err("refused")
        }
    };
    let bad = refused(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            cpu_period: -5,
            ..update.clone()
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("linux.cpu_period"), "{bad:?}");
    let bad = refused(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            unified: HashMap::from([("memory.high".to_string(), "1000000".to_string())]),
            ..update.clone()
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("linux.unified"), "{bad:?}");
    let bad = refused(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: None,
        ..Default::default()
    })
    .await;
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("linux"), "{bad:?}");
    let bad = refused(cri::UpdateContainerResourcesRequest {
        container_id: "nosuchcontainer".into(),
        linux: Some(update.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(bad.code(), Code::NotFound);
    assert_eq!(
        read_cgroup("memory", &path, "memory.limit_in_bytes"),
        (150u64 << 20).to_string()
    );
    // cgroup v2 keys at create on a v1 node: refused by name, and nothing is left.
    let v2_only = with_resources(container("v2keys", &bb, &["true"]), |r| {
        r.unified = HashMap::from([("memory.high".to_string(), "1000000".to_string())]);
    });
    let bad = e
        .create(&pod, &pc, v2_only)
        .await
        .expect_err("unified on v1");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("config.linux.resources.unified"),
        "{bad:?}"
    );
    // An exited container's limits cannot change.
    e.stop_ctr(&id, 0).await;
    let bad = refused(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(update),
        ..Default::default()
    })
    .await;
    assert_eq!(bad.code(), Code::FailedPrecondition);
    e.remove_pod(&pod).await;
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("oom").await;
    // `tail` keeps the whole (endless) last line of /dev/zero in memory.
    let hog = with_resources(container("hog", &bb, &["tail", "/dev/zero"]), |r| {
        r.memory_limit_in_bytes = 32 << 20;
    });
    let id = e.run_ctr(&pod, &pc, hog).await;
    let st = e.wait_exit(&id, Duration::from_secs(60)).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    // A container that ends by itself under its limit is not marked.
    let fine = with_resources(sh("fine", &bb, "exit 3"), |r| {
        r.memory_limit_in_bytes = 32 << 20;
    });
    let fine = e.run_ctr(&pod, &pc, fine).await;
    let st = e.wait_exit(&fine, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
}

/// Reads events from `stream` until `want` of them arrived (or 20 s passed).
async fn take_events(
    stream: &mut tonic::Streaming<cri::ContainerEventResponse>,
    want: usize,
) -> Vec<cri::ContainerEventResponse> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(ev))) => out.push(ev),
            Ok(other) => panic!("event stream ended: {other:?} after {out:?}"),
            Err(_) => panic!("only {} of {want} events: {out:?}", out.len()),
        }
    }
    out
}

fn kind(ev: &cri::ContainerEventResponse) -> cri::ContainerEventType {
    cri::ContainerEventType::try_from(ev.container_event_type).expect("event type")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_two_subscribers_in_order_and_a_stalled_one_blocks_nothing() {
    use cri::ContainerEventType::*;
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let subscribe = || {
        let mut rt = e.rt.clone();
        async move {
            rt.get_container_events(cri::GetEventsRequest {})
                .await
                .expect("GetContainerEvents")
                .into_inner()
        }
    };
    let mut first = subscribe().await;
    let mut second = subscribe().await;
    // Subscribed and never read.
    let _stalled = subscribe().await;

    let (pod, pc) = e.pod("events").await;
    let id = e
        .run_ctr(&pod, &pc, sh("ev", &bb, "sleep 0.5; exit 4"))
        .await;
    e.wait_exit(&id, Duration::from_secs(20)).await;
    e.remove_ctr(&id).await;
    e.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    e.remove_pod(&pod).await;

    let expected = [
        (pod.as_str(), ContainerCreatedEvent),
        (pod.as_str(), ContainerStartedEvent),
        (id.as_str(), ContainerCreatedEvent),
        (id.as_str(), ContainerStartedEvent),
        (id.as_str(), ContainerStoppedEvent),
        (id.as_str(), ContainerDeletedEvent),
        (pod.as_str(), ContainerStoppedEvent),
        (pod.as_str(), ContainerDeletedEvent),
    ];
    for stream in [&mut first, &mut second] {
        let events = take_events(stream, expected.len()).await;
        let got: Vec<(&str, cri::ContainerEventType)> = events
            .iter()
            .map(|ev| (ev.container_id.as_str(), kind(ev)))
            .collect();
        assert_eq!(got, expected);
        assert!(events
            .windows(2)
            .all(|w| w[0].created_at <= w[1].created_at));
        // Each carries the pod's status and its containers' statuses as they were then.
        let status_of = |ev: &cri::ContainerEventResponse| {
            ev.containers_statuses
                .iter()
                .find(|s| s.id == id)
                .map(|s| (s.state, s.exit_code))
        };
        assert_eq!(
            status_of(&events[3]).map(|s| s.0),
            Some(cri::ContainerState::ContainerRunning as i32)
        );
        assert_eq!(
            status_of(&events[4]),
            Some((cri::ContainerState::ContainerExited as i32, 4))
        );
        assert_eq!(status_of(&events[5]), None);
        let pod_state = |ev: &cri::ContainerEventResponse| {
            ev.pod_sandbox_status
                .as_ref()
                .map(|p| (p.id.clone(), p.state))
        };
        assert_eq!(
            pod_state(&events[4]),
            Some((pod.clone(), cri::PodSandboxState::SandboxReady as i32))
        );
        assert_eq!(
            pod_state(&events[6]),
            Some((pod.clone(), cri::PodSandboxState::SandboxNotready as i32))
        );
        // Removed: no status left to carry.
        assert_eq!(pod_state(&events[7]), None);
    }
    // The daemon kept answering although one subscriber never read.
    e.rt.version(cri::VersionRequest::default())
        .await
        .expect("Version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthctl_stats_statsp_update_events_and_security_in_inspect() {
    let Some(mut e) = start().await else { return };
    if !berthctl_bin().is_file() {
        assert!(!required(), "berthctl binary missing");
        return;
    }
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    // `events` follows the stream from before the pod exists.
    let mut events = std::process::Command::new(berthctl_bin())
        .arg("-r")
        .arg(format!("unix://{}", e.d.socket.display()))
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("berthctl events");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (pod, pc) = e.pod("ctlstats").await;
    let id = e
        .run_ctr(
            &pod,
            &pc,
            with_security(sh("spin", &bb, "while :; do :; done"), |s| {
                s.masked_paths = vec!["/proc/kcore".into()];
                s.readonly_paths = vec!["/proc/sys".into()];
            }),
        )
        .await;

    let table = ctl_ok(&e.d, &["stats", "-s", "1"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "CONTAINER",
            "NAME",
            "CPU %",
            "MEM",
            "DISK",
            "INODES",
            "SWAP"
        ]
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row[0], &id[..13]);
    assert_eq!(row[1], "spin");
    let cpu: f64 = row[2].parse().expect("cpu %");
    assert!(cpu > 2.0, "a busy loop at {cpu}%\n{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ctl_ok(&e.d, &["stats", "-o", "json", "--id", &id])).expect("json");
    assert_eq!(json["stats"][0]["attributes"]["id"], id.as_str());
    assert!(json["stats"][0]["cpu"]["usageCoreNanoSeconds"]["value"].is_string());

    let pods = ctl_ok(&e.d, &["statsp", "-s", "1"]);
    assert!(pods.starts_with("POD "), "{pods}");
    assert!(
        pods.contains("ctlstats") && pods.contains(&pod[..13]),
        "{pods}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl_ok(&e.d, &["statsp", "-o", "json", "--id", &pod])).expect("json");
    assert_eq!(
        json["stats"][0]["linux"]["network"]["defaultInterface"]["name"],
        "eth0"
    );

    if cgroup_v1() {
        assert_eq!(
            ctl_ok(
                &e.d,
                &[
                    "update",
                    "--memory",
                    "123731968",
                    "--cpu-quota",
                    "30000",
                    "--cpu-period",
                    "100000",
                    &id
                ]
            )
            .trim(),
            id
        );
        let path = cgroups_path(&mut e, &id).await;
        assert_eq!(
            read_cgroup("memory", &path, "memory.limit_in_bytes"),
            "123731968"
        );
        assert_eq!(read_cgroup("cpu", &path, "cpu.cfs_quota_us"), "30000");
    }
    let (ok, _, err) = ctl(&e.d, &["update", "--memory", "1000", "nosuchcontainer"]);
    assert!(!ok && err.contains("NotFound"), "{err}");

    // inspect tells what the security context became.
    let v: serde_json::Value =
        serde_json::from_str(&ctl_ok(&e.d, &["inspect", &id])).expect("inspect json");
    let sec = &v["info"]["effectiveSecurityContext"];
    assert_eq!(sec["user"]["uid"], 0, "{sec}");
    assert!(sec["capabilities"]["bounding"]
        .as_array()
        .is_some_and(|caps| caps.iter().any(|c| c == "CAP_CHOWN")));
    assert_eq!(
        sec["maskedPaths"],
        serde_json::json!(["/proc/kcore"]),
        "{sec}"
    );
    assert_eq!(
        sec["readonlyPaths"],
        serde_json::json!(["/proc/sys"]),
        "{sec}"
    );

    e.stop_ctr(&id, 0).await;
    e.remove_ctr(&id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = events.kill();
    let out = events.wait_with_output().expect("events output");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = Vec::new();
    let mut de = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
    while let Some(Ok(ev)) = de.next() {
        if ev["containerId"] == id.as_str() {
            seen.push(
                ev["containerEventType"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    assert_eq!(
        seen,
        [
            "CONTAINER_CREATED_EVENT",
            "CONTAINER_STARTED_EVENT",
            "CONTAINER_STOPPED_EVENT",
            "CONTAINER_DELETED_EVENT"
        ],
        "{text}"
    );
}
