//! CRI container end-to-end tests: real overlay rootfs, real runc under berth-shim, real
//! namespaces and cgroups, against a real berthd, with images from the local registry
//! (`hack/build-images.sh`). Each daemon gets its own bridge, subnet and nftables table, and the
//! guards remove containers, shims and network objects even when a test fails.
//! Run: `hack/test.sh` or `cargo test -p berth-e2e --test containers -- --test-threads=1`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::cri::{self, ContainerConfig};
use berth_e2e::ctr::*;
use berth_e2e::*;
use tonic::Code;

const NET: Net = Net {
    bridge: "be2ec0",
    table: "berth_e2ec",
    subnet: "10.232.0.0/16",
};

/// Tests share the bridge and table names, so they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start() -> Option<Env> {
    start_with("").await
}

async fn start_with(extra_config: &str) -> Option<Env> {
    Env::start(&NET, extra_config, &SERIAL).await
}

fn node_hostname() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("utf-8 hostname")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_container_with_env_args_workdir_and_user_logs_in_cri_format() {
    let Some(mut e) = start().await else { return };
    let image_id = e.pull(&e.img.get("BUSYBOX_REF")).await;
    let (pod, pc) = e.pod("basic").await;
    let mut c = container("app", &e.img.get("BUSYBOX_REF"), &["sh", "-c"]);
    c.args = vec!["echo out-$FOO; echo err-$FOO >&2; pwd; id -u; id -g".into()];
    c.envs = vec![cri::KeyValue {
        key: "FOO".into(),
        value: "bar".into(),
    }];
    c.working_dir = "/tmp/wd".into();
    let mut c = with_security(c, |s| {
        s.run_as_user = Some(cri::Int64Value { value: 1234 });
        s.run_as_group = Some(cri::Int64Value { value: 5678 });
    });
    // kubelet asks guaranteed pods for -998; root here lacks CAP_SYS_RESOURCE, so berth clamps
    // to its own score instead of failing the container.
    c.linux.get_or_insert_with(Default::default).resources = Some(cri::LinuxContainerResources {
        oom_score_adj: -998,
        ..Default::default()
    });
    c.args[0].push_str("; cat /proc/self/oom_score_adj");
    let own_score: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let id = e.run_ctr(&pod, &pc, c).await;
    let st = e.wait_exit(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0);
    assert_eq!(st.reason, "Completed");
    assert!(st.started_at >= st.created_at && st.finished_at >= st.started_at);
    assert_eq!(
        st.image.as_ref().map(|i| i.image.as_str()),
        Some(e.img.get("BUSYBOX_REF").as_str())
    );
    assert_eq!(st.image_id, image_id);
    assert!(!st.image_ref.is_empty());
    assert_eq!(st.labels.get("app").map(String::as_str), Some("app"));
    assert_eq!(
        st.annotations.get("note").map(String::as_str),
        Some("about app")
    );
    assert_eq!(PathBuf::from(&st.log_path), e.log_of(&pc, "app"));
    let user = st.user.and_then(|u| u.linux).expect("user");
    assert_eq!((user.uid, user.gid), (1234, 5678));

    let lines = e.read_log(&pc, "app");
    assert!(!lines.is_empty(), "empty log");
    for l in &lines {
        assert!(valid_timestamp(&l.ts), "bad timestamp in {l:?}");
        assert!(l.stream == "stdout" || l.stream == "stderr", "{l:?}");
        assert_eq!(l.tag, "F");
    }
    let score = joined(&lines, "stdout").last().cloned().unwrap_or_default();
    let score: i64 = score.parse().unwrap_or(i64::MIN);
    assert!(
        score >= -998 && score <= own_score.max(-998),
        "oom_score_adj {score}"
    );
    assert_eq!(
        joined(&lines, "stdout")[..4],
        ["out-bar", "/tmp/wd", "1234", "5678"]
    );
    assert_eq!(joined(&lines, "stderr"), vec!["err-bar"]);

    let listed = e.list(None).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].pod_sandbox_id, pod);
    assert_eq!(listed[0].image_id, image_id);
    e.remove_ctr(&id).await;
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_image_user_gets_supplementary_groups_from_the_image() {
    let Some(mut e) = start().await else { return };
    let entry = e.img.get("ENTRY_REF");
    e.pull(&entry).await;
    let (pod, pc) = e.pod("groups").await;
    // Image USER app: uid 1000, gid 1000, member of audio (29) and video (44) in /etc/group;
    // the request adds 50 (Merge policy, Kubernetes' default).
    let c = with_security(container("ids", &entry, &["id"]), |s| {
        s.supplemental_groups = vec![50];
    });
    let id = e.run_ctr(&pod, &pc, c).await;
    e.wait_exit(&id, Duration::from_secs(20)).await;
    let out = joined(&e.read_log(&pc, "ids"), "stdout").join("\n");
    assert!(out.starts_with("uid=1000(app) gid=1000(app)"), "{out}");
    for g in ["29(audio)", "44(video)", "50(staff)"] {
        assert!(out.contains(g), "{g} missing in {out}");
    }
    let (st, _) = e.status(&id).await;
    let user = st.user.and_then(|u| u.linux).expect("user");
    assert_eq!((user.uid, user.gid), (1000, 1000));
    // Every group the process holds, the primary one included, as critest expects.
    assert_eq!(user.supplemental_groups, vec![29, 44, 50, 1000]);

    // Strict: only the requested groups.
    let c = with_security(container("strict", &entry, &["id", "-G"]), |s| {
        s.supplemental_groups = vec![50];
        s.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    });
    let id = e.run_ctr(&pod, &pc, c).await;
    e.wait_exit(&id, Duration::from_secs(20)).await;
    let out = joined(&e.read_log(&pc, "strict"), "stdout").join(" ");
    let mut got: Vec<&str> = out.split_whitespace().collect();
    got.sort();
    assert_eq!(got, vec!["1000", "50"], "{out}");

    // A name the image does not know is refused at create.
    let c = with_security(container("nouser", &entry, &["id"]), |s| {
        s.run_as_username = "ghost".into();
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("ghost"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_cmd_command_and_args_combine_as_kubelet_expects() {
    let Some(mut e) = start().await else { return };
    let entry = e.img.get("ENTRY_REF");
    e.pull(&entry).await;
    let (pod, pc) = e.pod("argv").await;
    // The image: ENTRYPOINT ["/bin/echo", "entry"], CMD ["from-cmd"].
    let cases: [(&str, Vec<&str>, Vec<&str>, &str); 4] = [
        ("neither", vec![], vec![], "entry from-cmd"),
        ("args", vec![], vec!["a", "b"], "entry a b"),
        ("command", vec!["/bin/echo", "cmd"], vec![], "cmd"),
        ("both", vec!["/bin/echo", "cmd"], vec!["x"], "cmd x"),
    ];
    for (name, command, args, want) in cases {
        let mut c = container(name, &entry, &command);
        c.args = args.iter().map(|s| s.to_string()).collect();
        assert_eq!(e.stdout_of(&pod, &pc, c).await, vec![want], "{name}");
    }
    // Environment: image first, the request's value wins, PATH from the image; the image's
    // WorkingDir is created; the image VOLUME is a mount of its own.
    let mut c = sh(
        "env",
        &entry,
        "echo $FOO $KEEP; echo $PATH; pwd; grep -c ' /vol ' /proc/mounts",
    );
    c.envs = vec![cri::KeyValue {
        key: "FOO".into(),
        value: "request".into(),
    }];
    let id = e.run_ctr(&pod, &pc, c).await;
    let st = e.wait_exit(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0, "{:?}", e.read_log(&pc, "env"));
    assert_eq!(
        joined(&e.read_log(&pc, "env"), "stdout"),
        vec![
            "request image",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "/work/dir",
            "1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_zero_one_and_137_with_sigkill_after_the_timeout() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("exits").await;
    let ok = e.run_ctr(&pod, &pc, container("ok", &bb, &["true"])).await;
    let fail = e.run_ctr(&pod, &pc, sh("fail", &bb, "exit 1")).await;
    let st = e.wait_exit(&ok, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
    let st = e.wait_exit(&fail, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (1, "Error"));

    // Ignores SIGTERM: StopContainer escalates to SIGKILL after its timeout and returns as
    // soon as the process is gone.
    let stubborn = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "stubborn",
                &bb,
                "trap '' TERM; while :; do usleep 20000; done",
            ),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    e.stop_ctr(&stubborn, 1).await;
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900), "stopped after {took:?}");
    assert!(took < Duration::from_secs(4), "stopped after {took:?}");
    let (st, _) = e.status(&stubborn).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((st.exit_code, st.reason.as_str()), (137, "Error"));
    // Idempotent: stopping again, or an unknown container, is fine.
    e.stop_ctr(&stubborn, 1).await;
    e.stop_ctr("0123456789abcdef-unknown", 1).await;
    e.remove_ctr("0123456789abcdef-unknown").await;

    // A process that ends on SIGTERM returns at once. (It needs a handler: as PID 1 of its
    // namespace, a process without one never sees SIGTERM.)
    let quick = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "quick",
                &bb,
                "trap 'exit 143' TERM; while :; do usleep 20000; done",
            ),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    e.stop_ctr(&quick, 30).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (st, _) = e.status(&quick).await;
    assert_eq!(st.exit_code, 143);

    // Stopped before its handler is set up: the kernel drops a PID 1's unhandled SIGTERM, so
    // the shim sends it again once the handler shows, long before the SIGKILL grace runs out.
    let late = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "late",
                &bb,
                "usleep 300000; trap 'exit 42' TERM; while :; do usleep 20000; done",
            ),
        )
        .await;
    let t = Instant::now();
    e.stop_ctr(&late, 20).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let (st, _) = e.status(&late).await;
    assert_eq!(st.exit_code, 42);
    e.remove_pod(&pod).await;
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_stop_signal_is_what_stop_container_sends() {
    let Some(mut e) = start().await else { return };
    let entry = e.img.get("ENTRY_REF");
    e.pull(&entry).await;
    let (pod, pc) = e.pod("stopsig").await;
    // The image's STOPSIGNAL is SIGUSR1.
    let id = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "usr1",
                &entry,
                "trap 'exit 42' USR1; trap '' TERM; while :; do usleep 20000; done",
            ),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    e.stop_ctr(&id, 10).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let (st, _) = e.status(&id).await;
    assert_eq!(st.exit_code, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_refuses_writes_and_host_path_mounts_are_seen() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("mounts").await;
    let host = tempfile::tempdir_in("/var/tmp").expect("host dir");
    std::fs::write(host.path().join("hello"), "from the host\n").unwrap();
    let mut c = sh(
        "ro",
        &bb,
        "cat /mnt/rw/hello; echo written > /mnt/rw/out; touch /newfile && echo root-writable; touch /mnt/ro/x && echo ro-writable; exit 0",
    );
    let missing = host.path().join("created/by/berth");
    c.mounts = vec![
        cri::Mount {
            container_path: "/mnt/new".into(),
            host_path: missing.display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/mnt/rw".into(),
            host_path: host.path().display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/mnt/ro/".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    let c = with_security(c, |s| s.readonly_rootfs = true);
    let id = e.run_ctr(&pod, &pc, c).await;
    e.wait_exit(&id, Duration::from_secs(20)).await;
    let lines = e.read_log(&pc, "ro");
    assert_eq!(joined(&lines, "stdout"), vec!["from the host"], "{lines:?}");
    let err = joined(&lines, "stderr").join("\n");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out")).unwrap(),
        "written\n"
    );
    assert!(!host.path().join("x").exists());
    // A missing host path is created as a directory, as containerd does.
    assert!(missing.is_dir());
    let (st, _) = e.status(&id).await;
    assert_eq!(st.mounts.len(), 3);
    assert_eq!(st.mounts[2].container_path, "/mnt/ro");
    assert!(st.mounts[2].readonly);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_of_a_pod_share_localhost_and_dev_shm() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("shared").await;
    let server = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "server",
                &bb,
                "mkdir -p /www && echo hello-from-server > /www/index.html && echo shm-data > /dev/shm/note && httpd -f -p 127.0.0.1:8080 -h /www",
            ),
        )
        .await;
    let client = e
        .run_ctr(&pod, &pc, container("client", &bb, &["sleep", "1000"]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let r = e
            .exec(&client, &["wget", "-q", "-O-", "http://127.0.0.1:8080/"], 5)
            .await
            .expect("ExecSync");
        if r.exit_code == 0 || Instant::now() > deadline {
            break String::from_utf8_lossy(&r.stdout).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(page.trim(), "hello-from-server");
    assert_eq!(
        e.exec_out(&client, &["cat", "/dev/shm/note"]).await.trim(),
        "shm-data"
    );
    let df = e
        .exec_out(&client, &["sh", "-c", "grep ' /dev/shm ' /proc/mounts"])
        .await;
    assert!(df.contains("tmpfs"), "{df}");
    // Same hostname: the pod's UTS namespace.
    assert_eq!(e.exec_out(&server, &["hostname"]).await.trim(), "shared");
    e.remove_pod(&pod).await;
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_shared_pid_pod_see_each_other_and_others_do_not() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let pod_ns = |mode: cri::NamespaceMode| cri::NamespaceOption {
        pid: mode as i32,
        ..Default::default()
    };
    let mut pc = pod_config("sharedpid", e.logs.path());
    pc.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(pod_ns(cri::NamespaceMode::Pod)),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = e.run_pod(pc.clone()).await;
    let in_pod = |name: &str, args: &[&str]| {
        with_security(container(name, &bb, args), |s| {
            s.namespace_options = Some(pod_ns(cri::NamespaceMode::Pod));
        })
    };
    e.run_ctr(&pod, &pc, in_pod("a", &["sleep", "1001"])).await;
    let b = e.run_ctr(&pod, &pc, in_pod("b", &["sleep", "1002"])).await;
    let ps = e.exec_out(&b, &["ps", "-o", "pid,args"]).await;
    assert!(
        ps.contains("sleep 1001") && ps.contains("sleep 1002"),
        "{ps}"
    );
    // PID 1 is the pod's holder, not either container.
    let first = ps.lines().nth(1).unwrap_or_default();
    assert!(
        first.trim_start().starts_with("1 ") && !first.contains("sleep"),
        "{ps}"
    );
    // A container of a pod without a shared namespace is PID 1 of its own and sees nothing else.
    let (other, opc) = e.pod("ownpid").await;
    let c = e
        .run_ctr(&other, &opc, container("c", &bb, &["sleep", "1003"]))
        .await;
    let ps = e.exec_out(&c, &["ps", "-o", "pid,args"]).await;
    assert!(
        !ps.contains("sleep 1001") && ps.contains("1 sleep 1003"),
        "{ps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layered_image_whiteouts_and_opaque_dirs_are_visible_as_such() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("layers").await;
    let script = "ls /data/old; test -e /etc/removed-me && echo still-there; exit 0";
    // Layer 2 wrote /data/old/{a,b} and /etc/removed-me; layer 3 made /data/old opaque (with
    // `new`) and whited out /etc/removed-me.
    assert_eq!(
        e.stdout_of(&pod, &pc, sh("ls", &bb, script)).await,
        vec!["new"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_image_with_120_layers_runs() {
    let Some(mut e) = start().await else { return };
    let deep = e.img.get("DEEP_REF");
    e.pull(&deep).await;
    let (pod, pc) = e.pod("deep").await;
    let id = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "deep",
                &deep,
                "cat /layers/001 /layers/119; ls /layers | wc -l",
            ),
        )
        .await;
    let st = e.wait_exit(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0, "{:?}", e.read_log(&pc, "deep"));
    assert_eq!(
        joined(&e.read_log(&pc, "deep"), "stdout"),
        vec!["1", "119", "119"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_remove_of_a_never_started_container() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("unstarted").await;
    let id = e
        .create_ok(&pod, &pc, container("idle", &bb, &["sleep", "1000"]))
        .await;
    let (st, info) = e.status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
    let pid = info["pid"].as_i64().expect("pid") as i32;
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    e.stop_ctr(&id, 5).await;
    e.remove_ctr(&id).await;
    assert!(e.list(None).await.is_empty());
    assert!(!Path::new(&format!("/proc/{pid}/exe")).exists());
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_runs_in_the_container_and_its_timeout_kills_the_process() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("exec").await;
    let mut c = container("target", &bb, &["sleep", "1000"]);
    c.envs = vec![cri::KeyValue {
        key: "WHO".into(),
        value: "container-env".into(),
    }];
    c.working_dir = "/tmp".into();
    let id = e.run_ctr(&pod, &pc, c).await;
    let r = e
        .exec(
            &id,
            &["sh", "-c", "echo $WHO; pwd; echo oops >&2; exit 3"],
            10,
        )
        .await
        .expect("ExecSync");
    assert_eq!(r.exit_code, 3);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "container-env\n/tmp\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "oops\n");

    // Nothing the container runs starts with a signal ignored (glibc's posix_spawn would
    // pass its internal signal 32 on as ignored).
    for pid in ["1", "self"] {
        let status = e
            .exec_out(&id, &["cat", &format!("/proc/{pid}/status")])
            .await;
        let ign = status
            .lines()
            .find(|l| l.starts_with("SigIgn:"))
            .unwrap_or_default();
        assert_eq!(
            ign.split_whitespace().nth(1),
            Some("0000000000000000"),
            "{pid}: {ign}"
        );
    }

    let t = Instant::now();
    let err = e.exec(&id, &["sleep", "100"], 1).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(took < Duration::from_secs(3), "returned after {took:?}");
    let left = e.exec_out(&id, &["ps", "-o", "args"]).await;
    assert!(!left.lines().any(|l| l.trim() == "sleep 100"), "{left}");
    // Nothing berth started for the exec stays on the host either.
    let host_left = Command::new("pgrep")
        .args(["-f", "^sleep 100$"])
        .output()
        .unwrap();
    assert!(
        host_left.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&host_left.stdout)
    );

    // A missing binary is an error, not a hang.
    let err = e.exec(&id, &["/no/such/binary"], 5).await;
    match err {
        Err(s) => assert!(
            s.message().contains("no such file") || s.message().contains("not found"),
            "{}",
            s.message()
        ),
        Ok(r) => assert_ne!(r.exit_code, 0),
    }

    // Output beyond the cap is cut, not buffered without bound.
    let r = e
        .exec(
            &id,
            &["sh", "-c", "yes 0123456789abcdef | head -c 20000000"],
            60,
        )
        .await
        .expect("ExecSync big");
    assert_eq!(r.exit_code, 0);
    // Cut so the response fits the 16 MiB that kubelet and crictl accept.
    assert!(
        r.stdout.len() <= 16 << 20 && r.stdout.len() > (16 << 20) - 4096,
        "{}",
        r.stdout.len()
    );

    // Not running → FAILED_PRECONDITION.
    e.stop_ctr(&id, 0).await;
    let err = e.exec(&id, &["true"], 5).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_split_into_partial_pieces_and_rotation_loses_no_line() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("logs").await;
    let id = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "long",
                &bb,
                "head -c 102400 /dev/zero | tr '\\0' a; echo; echo done",
            ),
        )
        .await;
    e.wait_exit(&id, Duration::from_secs(20)).await;
    let lines = e.read_log(&pc, "long");
    let tags: Vec<&str> = lines.iter().map(|l| l.tag.as_str()).collect();
    assert_eq!(
        tags,
        vec!["P", "P", "P", "P", "P", "P", "F", "F"],
        "{tags:?}"
    );
    assert!(lines[..6].iter().all(|l| l.text.len() == 16 * 1024));
    let full = joined(&lines, "stdout");
    assert_eq!(full.len(), 2);
    assert_eq!(full[0].len(), 102_400);
    assert!(full[0].bytes().all(|b| b == b'a'));
    assert_eq!(full[1], "done");

    // Rotation as kubelet does it: rename, then ReopenContainerLog; every line lands in one of
    // the two files, in order, once.
    let id = e
        .run_ctr(
            &pod,
            &pc,
            sh(
                "rot",
                &bb,
                "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); [ $((i % 10)) = 0 ] && usleep 10000; done",
            ),
        )
        .await;
    let log = e.log_of(&pc, "rot");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    e.rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    e.wait_exit(&id, Duration::from_secs(30)).await;
    let before = joined(
        &parse_log(&std::fs::read_to_string(&rotated).unwrap()),
        "stdout",
    );
    let after = joined(
        &parse_log(&std::fs::read_to_string(&log).unwrap()),
        "stdout",
    );
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{} / {}",
        before.len(),
        after.len()
    );
    let all: Vec<String> = before.into_iter().chain(after).collect();
    let want: Vec<String> = (0..3000).map(|i| format!("line-{i}")).collect();
    assert_eq!(all, want);
    // Reopening the log of a container that is not running is refused.
    let err =
        e.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: id })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_ten_running_containers_then_restart_keeps_them() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("survive").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let name = format!("tick{i}");
        let id = e
            .run_ctr(
                &pod,
                &pc,
                sh(&name, &bb, "while :; do echo tick; usleep 100000; done"),
            )
            .await;
        ids.push((name, id));
    }
    let quitter = e
        .run_ctr(&pod, &pc, sh("quitter", &bb, "sleep 2; exit 7"))
        .await;
    let mut pids = Vec::new();
    for (_, id) in &ids {
        let (_, info) = e.status(id).await;
        pids.push(info["pid"].as_i64().expect("pid"));
    }
    e.d.kill9();
    // Meanwhile the quitter exits and the others keep logging.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sizes: Vec<u64> = ids
        .iter()
        .map(|(n, _)| {
            std::fs::metadata(e.log_of(&pc, n))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .collect();
    e.d.start_again().await.expect("restart");
    e.rt = e.d.runtime().await.expect("client");
    for ((name, id), pid) in ids.iter().zip(&pids) {
        let (st, info) = e.status(id).await;
        assert_eq!(
            st.state,
            cri::ContainerState::ContainerRunning as i32,
            "{name}"
        );
        assert_eq!(info["pid"].as_i64(), Some(*pid), "{name}");
    }
    let st = e.wait_exit(&quitter, Duration::from_secs(5)).await;
    assert_eq!(st.exit_code, 7);
    assert!(st.finished_at > 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ((name, _), before) in ids.iter().zip(sizes) {
        let now = std::fs::metadata(e.log_of(&pc, name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(now > before, "{name} stopped logging ({before} -> {now})");
    }
    // The restarted daemon drives them as before.
    let (_, first) = &ids[0];
    assert_eq!(e.exec_out(first, &["echo", "alive"]).await.trim(), "alive");
    e.stop_ctr(first, 5).await;
    let new = e
        .run_ctr(&pod, &pc, container("after", &bb, &["true"]))
        .await;
    e.wait_exit(&new, Duration::from_secs(20)).await;
    e.remove_pod(&pod).await;
    assert!(e.list(None).await.is_empty());
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_remove_leave_no_mount_cgroup_shim_runc_state_or_upper_dir() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("clean").await;
    let id = e
        .run_ctr(&pod, &pc, container("c", &bb, &["sleep", "1000"]))
        .await;
    let (_, info) = e.status(&id).await;
    let cgroup = info["cgroupsPath"]
        .as_str()
        .expect("cgroupsPath")
        .to_string();
    assert!(!cgroup_dirs(&cgroup).is_empty(), "no cgroup {cgroup}");
    let upper = PathBuf::from(info["upperDir"].as_str().expect("upperDir"));
    assert!(upper.is_dir());
    assert!(!shims_under(e.d.base()).is_empty());
    e.stop_ctr(&id, 5).await;
    e.remove_ctr(&id).await;
    assert!(cgroup_dirs(&cgroup).is_empty(), "cgroup {cgroup} left");
    assert!(!upper.exists());
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
    // Removing the pod with a running container removes the container too.
    let id = e
        .run_ctr(&pod, &pc, container("c2", &bb, &["sleep", "1000"]))
        .await;
    let (_, info) = e.status(&id).await;
    let cgroup = info["cgroupsPath"].as_str().unwrap().to_string();
    e.remove_pod(&pod).await;
    assert!(e.list(None).await.is_empty());
    assert!(cgroup_dirs(&cgroup).is_empty(), "cgroup {cgroup} left");
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_codes_and_leave_nothing() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("bad").await;
    let good = || container("c", &bb, &["sleep", "1000"]);

    let err = e.create("nosuchpod", &pc, good()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());

    let mut c = good();
    c.image = Some(spec("127.0.0.1:5000/berth/never-pulled:latest"));
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("never-pulled"), "{}", err.message());

    for (edit, field) in [
        (
            Box::new(|c: &mut ContainerConfig| c.log_path = "../../escape.log".into())
                as Box<dyn Fn(&mut ContainerConfig)>,
            "log_path",
        ),
        (
            Box::new(|c: &mut ContainerConfig| c.metadata = None),
            "config.metadata",
        ),
        (
            Box::new(|c: &mut ContainerConfig| c.image = None),
            "config.image",
        ),
        (
            Box::new(|c: &mut ContainerConfig| {
                c.mounts.push(cri::Mount {
                    container_path: "relative/path".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                })
            }),
            "config.mounts[0].container_path",
        ),
    ] {
        let mut c = good();
        edit(&mut c);
        let err = e.create(&pod, &pc, c).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // A create that fails in the runtime (no such command) leaves nothing either.
    let err = e
        .create(&pod, &pc, container("nocmd", &bb, &["/no/such/command"]))
        .await;
    if let Ok(id) = err {
        // runc reports a missing binary only at start.
        let start =
            e.rt.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await;
        assert!(start.is_err());
        e.remove_ctr(&id).await;
    }
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());

    let id = e.create_ok(&pod, &pc, good()).await;
    let err = e.create(&pod, &pc, good()).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&id), "{}", err.message());
    e.start_ctr(&id).await;
    let err =
        e.rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    e.remove_ctr(&id).await;

    // A stopped pod takes no containers.
    e.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    let err = e.create(&pod, &pc, good()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_status_and_runtime_readiness() {
    let Some(mut e) = start().await else { return };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod_a, pca) = e.pod("list-a").await;
    let (pod_b, pcb) = e.pod("list-b").await;
    let a = e
        .run_ctr(&pod_a, &pca, container("a", &bb, &["sleep", "1000"]))
        .await;
    let b = e
        .create_ok(&pod_b, &pcb, container("b", &bb, &["sleep", "1000"]))
        .await;
    let by = |f: cri::ContainerFilter| Some(f);
    let ids = |v: Vec<cri::Container>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        ids(e
            .list(by(cri::ContainerFilter {
                id: a[..12].into(),
                ..Default::default()
            }))
            .await),
        vec![a.clone()]
    );
    assert_eq!(
        ids(e
            .list(by(cri::ContainerFilter {
                pod_sandbox_id: pod_b.clone(),
                ..Default::default()
            }))
            .await),
        vec![b.clone()]
    );
    assert_eq!(
        ids(e
            .list(by(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32
                }),
                ..Default::default()
            }))
            .await),
        vec![a.clone()]
    );
    assert_eq!(
        ids(e
            .list(by(cri::ContainerFilter {
                label_selector: HashMap::from([("app".to_string(), "b".to_string())]),
                ..Default::default()
            }))
            .await),
        vec![b.clone()]
    );
    let status =
        e.rt.status(cri::StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner();
    let conds = status.status.expect("conditions").conditions;
    let ready = conds
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady");
    assert!(ready.status, "{ready:?}");
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, vec!["", "runc"]);
    // A pod with an empty hostname and a long name gets the node's hostname.
    let long = "p".repeat(100);
    let mut pc = pod_config(&long, e.logs.path());
    pc.hostname.clear();
    let pod = e.run_pod(pc.clone()).await;
    let id = e
        .run_ctr(&pod, &pc, container("h", &bb, &["sleep", "1000"]))
        .await;
    assert_eq!(e.exec_out(&id, &["hostname"]).await.trim(), node_hostname());
}

/// A runtime handler whose `create` takes a few seconds: the window in which a client gives up
/// or the daemon is killed.
fn slow_runtime(dir: &Path) -> PathBuf {
    let script = dir.join("slow-runc");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = create ] && sleep 3; done\nexec runc \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_retry_after_a_client_timeout_and_a_crash_mid_create() {
    let tools = tempfile::tempdir_in("/var/tmp").expect("tools");
    let slow = slow_runtime(tools.path());
    let extra = format!(
        "[runtime]\ndefault_handler = \"runc\"\n[runtime.handlers.runc]\npath = \"runc\"\n[runtime.handlers.slow]\npath = \"{}\"\n",
        slow.display()
    );
    let Some(mut e) = start_with(&extra).await else {
        return;
    };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let pc = pod_config("slow", e.logs.path());
    let pod = e.run_pod_with(pc.clone(), "slow").await;

    // The client gives up after 1 s; the retry gets the container made for the first call.
    let mut req = tonic::Request::new(cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container("c", &bb, &["sleep", "1000"])),
        sandbox_config: Some(pc.clone()),
    });
    req.set_timeout(Duration::from_secs(1));
    let err = e.rt.create_container(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{:?} {}",
        err.code(),
        err.message()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let id = e
        .create_ok(&pod, &pc, container("c", &bb, &["sleep", "1000"]))
        .await;
    assert_eq!(e.list(None).await.len(), 1);
    e.start_ctr(&id).await;
    e.remove_ctr(&id).await;

    // berthd killed while runc create is under way: after the restart nothing is left.
    let mut rt = e.rt.clone();
    let pc2 = pc.clone();
    let pod2 = pod.clone();
    let c = container("crash", &bb, &["sleep", "1000"]);
    let pending = tokio::spawn(async move {
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod2,
            config: Some(c),
            sandbox_config: Some(pc2),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    e.d.kill9();
    let _ = pending.await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    e.d.start_again().await.expect("restart");
    e.rt = e.d.runtime().await.expect("client");
    assert!(e.list(None).await.is_empty());
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
    // The name is free again.
    let id = e
        .create_ok(&pod, &pc, container("crash", &bb, &["sleep", "1000"]))
        .await;
    e.remove_ctr(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthctl_drives_the_container_lifecycle_like_crictl() {
    let Some(e) = start().await else { return };
    if !berthctl_bin().is_file() {
        assert!(!required(), "berthctl binary missing");
        return;
    }
    let bb = e.img.get("BUSYBOX_REF");
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let podf = dir.path().join("pod.json");
    std::fs::write(
        &podf,
        serde_json::json!({
            "metadata": {"name": "ctl", "namespace": "e2e", "uid": "ctl-1"},
            "log_directory": e.logs.path().join("ctl").display().to_string(),
        })
        .to_string(),
    )
    .unwrap();
    let ctrf = dir.path().join("ctr.yaml");
    std::fs::write(
        &ctrf,
        format!(
            "metadata:\n  name: talker\nimage:\n  image: {bb}\ncommand: [sh, -c, 'echo hello-out; echo hello-err >&2; sleep 1000']\nlogPath: talker.log\nlabels:\n  app: talker\n"
        ),
    )
    .unwrap();
    ctl_ok(&e.d, &["pull", &bb]);
    let pod = ctl_ok(&e.d, &["runp", podf.to_str().unwrap()])
        .trim()
        .to_string();
    let id = ctl_ok(
        &e.d,
        &[
            "create",
            &pod,
            ctrf.to_str().unwrap(),
            podf.to_str().unwrap(),
        ],
    )
    .trim()
    .to_string();
    ctl_ok(&e.d, &["start", &id]);
    let ps = ctl_ok(&e.d, &["ps"]);
    assert!(ps.contains("talker") && ps.contains("Running"), "{ps}");
    assert_eq!(
        ctl_ok(&e.d, &["ps", "-q", "--label", "app=talker"]).trim(),
        id
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ctl_ok(&e.d, &["inspect", "-o", "json", &id])).expect("inspect json");
    assert_eq!(inspect["status"]["state"], "CONTAINER_RUNNING");
    assert!(inspect["info"]["pid"].as_i64().is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, err) = ctl(&e.d, &["logs", &id]);
        if out.contains("hello-out") && err.contains("hello-err") {
            break;
        }
        assert!(Instant::now() < deadline, "logs: {out} / {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, _) = ctl(
        &e.d,
        &["exec", "-s", &id, "sh", "-c", "echo in-exec; exit 4"],
    );
    assert!(!ok);
    assert_eq!(out.trim(), "in-exec");
    ctl_ok(&e.d, &["stop", "-t", "1", &id]);
    assert!(ctl_ok(&e.d, &["ps", "-a"]).contains("Exited"));
    ctl_ok(&e.d, &["rm", &id]);
    // `run`: pull + runp + create + start in one.
    let ctrf2 = dir.path().join("ctr2.json");
    std::fs::write(
        &ctrf2,
        serde_json::json!({
            "metadata": {"name": "runner"},
            "image": {"image": bb},
            "command": ["sleep", "1000"],
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        &podf,
        serde_json::json!({"metadata": {"name": "ctl-run", "namespace": "e2e", "uid": "ctl-2"}})
            .to_string(),
    )
    .unwrap();
    let id = ctl_ok(
        &e.d,
        &["run", ctrf2.to_str().unwrap(), podf.to_str().unwrap()],
    )
    .trim()
    .to_string();
    let (_, out, _) = ctl(&e.d, &["ps", "-q", "--state", "running"]);
    assert_eq!(out.trim(), id);
    ctl_ok(&e.d, &["rm", "-f", "-a"]);
    ctl_ok(&e.d, &["rmp", "-a", "-f"]);
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}
