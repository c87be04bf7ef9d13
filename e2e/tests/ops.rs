//! Operations end to end: `berthd config default|dump`, refusal of unknown keys, a restart with
//! the systemd unit's own command line, JSON logs, and the Prometheus endpoint after real RPCs.
//! Run: `cargo test -p berth-e2e --test ops -- --test-threads=1`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::ctr::*;
use berth_e2e::{berthctl_bin, berthd_bin, cri, workspace_root};

const NET: Net = Net {
    bridge: "be2eo0",
    table: "berth_e2eo",
    subnet: "10.236.0.0/16",
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn berthd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(berthd_bin())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running berthd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing config");
    p.display().to_string()
}

#[test]
fn config_default_parses_back_into_the_same_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, default, err) = berthd(&["config", "default"]);
    assert!(ok, "{err}");
    assert!(default.contains("# shim_path = "), "{default}");
    assert!(default.contains("[runtime.handlers.runc]"), "{default}");
    let from_default = write(dir.path(), "default.toml", &default);
    let empty = write(dir.path(), "empty.toml", "");
    let (ok, dump_default, err) = berthd(&["config", "dump", "--config", &from_default]);
    assert!(ok, "{err}");
    let (ok, dump_empty, err) = berthd(&["--config", &empty, "config", "dump"]);
    assert!(ok, "{err}");
    assert_eq!(dump_default, dump_empty);
    // Flags land in the dump as they would in the daemon.
    let (ok, dump, err) = berthd(&[
        "config",
        "dump",
        "--config",
        &empty,
        "--root",
        "/srv/b",
        "--listen",
        "/run/b.sock",
    ]);
    assert!(ok, "{err}");
    assert!(dump.contains("root = \"/srv/b\"\n"), "{dump}");
    assert!(dump.contains("listen = \"/run/b.sock\"\n"), "{dump}");
    // The dump is itself a config that gives the same dump.
    let again = write(dir.path(), "dump.toml", &dump);
    let (ok, dump2, err) = berthd(&["config", "dump", "--config", &again]);
    assert!(ok, "{err}");
    assert_eq!(dump, dump2);
}

#[test]
fn an_unknown_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        "root = \"/var/tmp/berth-ops-never\"\n[network]\nbrige = \"x0\"\n",
    );
    for args in [
        vec!["--config", bad.as_str(), "config", "dump"],
        vec!["--config", bad.as_str()],
    ] {
        let (ok, _, err) = berthd(&args);
        assert!(!ok, "{args:?} accepted an unknown key");
        assert!(err.contains("network.brige"), "{args:?}: {err}");
    }
    assert!(!Path::new("/var/tmp/berth-ops-never").exists());
}

/// A berthd started by the test itself, outside the harness; SIGTERM (then SIGKILL) on drop.
struct Manual(Child);

impl Drop for Manual {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The unit's ExecStart, split, with its config path swapped for `config`.
fn unit_exec_start(config: &Path) -> Vec<String> {
    let unit = std::fs::read_to_string(workspace_root().join("manifests/berthd.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut argv: Vec<String> = line.split_whitespace().map(String::from).collect();
    assert_eq!(argv[0], "/usr/local/bin/berthd");
    argv[0] = berthd_bin().display().to_string();
    let at = argv.iter().position(|a| a == "--config").expect("--config");
    argv[at + 1] = config.display().to_string();
    argv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_units_command_line_keeps_containers_running() {
    let Some(mut e) = Env::start(&NET, "", &SERIAL).await else {
        return;
    };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, pc) = e.pod("restart").await;
    let id = e
        .run_ctr(&pod, &pc, container("c", &bb, &["sleep", "1000"]))
        .await;
    let (_, info) = e.status(&id).await;
    let pid = info["pid"].as_i64().expect("pid");
    // systemctl restart with KillMode=process: SIGTERM to berthd alone, then ExecStart again.
    assert!(e.d.stop(), "berthd ignored SIGTERM");
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let argv = unit_exec_start(&e.d.config);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&e.d.log)
        .unwrap();
    let manual = Manual(
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning berthd"),
    );
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from berthd");
    assert_eq!(&buf[..n], b"READY=1");
    e.rt = e.d.runtime().await.expect("client");
    let (st, info) = e.status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(info["pid"].as_i64(), Some(pid));
    assert_eq!(e.exec_out(&id, &["echo", "alive"]).await.trim(), "alive");
    // Back to the harness's daemon for the clean-up.
    drop(manual);
    e.d.start_again().await.expect("harness berthd");
    e.rt = e.d.runtime().await.expect("client");
    let (st, _) = e.status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    e.remove_pod(&pod).await;
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

/// The installer image built by hack/build-installer-image.sh, pulled and run by berth as the
/// DaemonSet's init container would be, into a scratch node root mounted at /host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installer_image_installs_into_a_mounted_node_root() {
    let Some(mut e) = Env::start(&NET, "", &SERIAL).await else {
        return;
    };
    let tmp = tempfile::Builder::new()
        .prefix("berth-e2e-ops-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Small stand-ins: the test is about the image and the script, not the binaries.
    let bins = tmp.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for b in ["berthd", "berthctl", "berth-shim"] {
        std::fs::write(bins.join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
    }
    let image = "127.0.0.1:5000/berth/installer:e2e-ops";
    let out = Command::new("bash")
        .arg(workspace_root().join("hack/build-installer-image.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(tmp.path().join("oci"))
        .arg("--push")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    e.pull(image).await;
    let node = tmp.path().join("node");
    std::fs::create_dir_all(&node).unwrap();
    let (pod, pc) = e.pod("installer").await;
    let mut c = container(
        "install",
        image,
        &[
            "/usr/local/bin/berth-install",
            "--root",
            "/host",
            "--no-start",
        ],
    );
    c.mounts.push(cri::Mount {
        container_path: "/host".into(),
        host_path: node.display().to_string(),
        ..Default::default()
    });
    let id = e.run_ctr(&pod, &pc, c).await;
    let st = e.wait_exit(&id, Duration::from_secs(20)).await;
    let log = joined(&e.read_log(&pc, "install"), "stdout").join("\n");
    assert_eq!(st.exit_code, 0, "{log}");
    assert!(
        log.contains("--container-runtime-endpoint=unix:///run/berth/berth.sock"),
        "{log}"
    );
    for b in ["berthd", "berthctl", "berth-shim"] {
        assert_eq!(
            std::fs::read_to_string(node.join("usr/local/bin").join(b)).unwrap(),
            format!("#!/bin/sh\necho {b}\n")
        );
    }
    let unit = std::fs::read(node.join("etc/systemd/system/berthd.service")).unwrap();
    assert_eq!(
        unit,
        std::fs::read(workspace_root().join("manifests/berthd.service")).unwrap()
    );
    assert!(node.join("etc/berth/config.toml").is_file());
    assert!(node.join("usr/share/doc/berth/operations.md").is_file());
    e.remove_pod(&pod).await;
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line() {
    let Some(mut e) = Env::start(&NET, "log_format = \"json\"", &SERIAL).await else {
        return;
    };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let (pod, _) = e.pod("json").await;
    e.remove_pod(&pod).await;
    let text = std::fs::read_to_string(&e.d.log).unwrap();
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "no {key}: {line}");
        }
        messages.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        messages.iter().any(|m| m == "berthd serving CRI v1"),
        "{messages:?}"
    );
    assert!(messages.len() > 2, "{messages:?}");
}

/// The value of the series `name{labels}` (exact label text), if the scrape has it.
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

async fn scrape(addr: &str) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scraping");
    assert_eq!(r.status(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_pull_a_pod_and_a_container() {
    const ADDR: &str = "127.0.0.1:18700";
    let Some(mut e) = Env::start(&NET, &format!("[metrics]\naddress = \"{ADDR}\""), &SERIAL).await
    else {
        return;
    };
    let bb = e.img.get("BUSYBOX_REF");
    e.pull(&bb).await;
    let missing =
        e.d.pull("127.0.0.1:5000/berth/does-not-exist:v1", None)
            .await
            .unwrap_err();
    let (pod, pc) = e.pod("metrics").await;
    let id = e
        .run_ctr(&pod, &pc, container("c", &bb, &["sleep", "1000"]))
        .await;
    let text = scrape(ADDR).await;
    let at_least = |s: &str, min: f64| {
        let v = series(&text, s);
        assert!(
            v.is_some_and(|v| v >= min),
            "{s} = {v:?}, want >= {min}:\n{text}"
        );
    };
    for method in [
        "PullImage",
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
    ] {
        at_least(
            &format!("berth_cri_requests_total{{method=\"{method}\",code=\"OK\"}}"),
            1.0,
        );
        at_least(
            &format!("berth_cri_request_duration_seconds_count{{method=\"{method}\",code=\"OK\"}}"),
            1.0,
        );
    }
    let code = format!("{:?}", missing.code());
    at_least(
        &format!("berth_cri_requests_total{{method=\"PullImage\",code=\"{code}\"}}"),
        1.0,
    );
    at_least("berth_image_pulls_total{result=\"ok\"}", 1.0);
    at_least("berth_image_pulls_total{result=\"failed\"}", 1.0);
    at_least("berth_image_pull_failures_total{reason=\"not_found\"}", 1.0);
    at_least("berth_image_pull_duration_seconds_count", 2.0);
    at_least("berth_image_pull_bytes_total", 1000.0);
    at_least("berth_image_pull_layers_total", 1.0);
    at_least("berth_image_pull_resumes_total", 0.0);
    at_least(
        "berth_network_setup_duration_seconds_count{result=\"ok\"}",
        1.0,
    );
    assert_eq!(
        series(&text, "berth_pods{state=\"ready\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "berth_containers{state=\"running\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "berth_containers{state=\"exited\"}"),
        Some(0.0),
        "{text}"
    );
    at_least("berth_shims_running", 1.0);
    // Nothing streams yet; a streaming exec counts while it runs.
    assert_eq!(
        series(&text, "berth_streaming_sessions{kind=\"exec\"}"),
        Some(0.0),
        "{text}"
    );
    let mut exec = Command::new(berthctl_bin())
        .arg("-r")
        .arg(format!("unix://{}", e.d.socket.display()))
        .args(["exec", &id, "sleep", "3"])
        .stdout(Stdio::null())
        .spawn()
        .expect("berthctl exec");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = None;
    while Instant::now() < deadline {
        open = series(
            &scrape(ADDR).await,
            "berth_streaming_sessions{kind=\"exec\"}",
        );
        if open == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, Some(1.0), "exec session not counted");
    assert!(exec.wait().expect("exec").success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && series(
            &scrape(ADDR).await,
            "berth_streaming_sessions{kind=\"exec\"}",
        ) != Some(0.0)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        series(
            &scrape(ADDR).await,
            "berth_streaming_sessions{kind=\"exec\"}"
        ),
        Some(0.0)
    );
    // The record gauges follow the records.
    e.stop_ctr(&id, 5).await;
    let text = scrape(ADDR).await;
    assert_eq!(
        series(&text, "berth_containers{state=\"running\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "berth_containers{state=\"exited\"}"),
        Some(1.0),
        "{text}"
    );
    e.remove_pod(&pod).await;
    let text = scrape(ADDR).await;
    assert_eq!(
        series(&text, "berth_pods{state=\"ready\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(series(&text, "berth_shims_running"), Some(0.0), "{text}");
    let r = reqwest::get(format!("http://{ADDR}/other")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());
}
