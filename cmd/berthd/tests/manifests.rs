//! The Kubernetes manifests under manifests/: parsed and checked for what the API server and the
//! installer need (kubectl's client-side dry run needs a server, so this is a structure check),
//! and berth-install run into a scratch root.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const UNIT_DOC: &str = "file:///usr/share/doc/berth/operations.md";

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(manifests().join(rel)).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    for d in &docs {
        for key in ["apiVersion", "kind"] {
            assert!(
                d[key].as_str().is_some_and(|s| !s.is_empty()),
                "{rel}: no {key}"
            );
        }
    }
    docs
}

fn named<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

#[test]
fn every_manifest_parses_and_names_itself() {
    for rel in [
        "runtimeclass.yaml",
        "kubelet-config.yaml",
        "installer/daemonset.yaml",
    ] {
        for d in docs(rel) {
            if d["kind"] != "KubeletConfiguration" {
                assert!(
                    d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty()),
                    "{rel}: {} without metadata.name",
                    d["kind"]
                );
            }
        }
    }
    let kubelet = &docs("kubelet-config.yaml")[0];
    assert_eq!(
        kubelet["containerRuntimeEndpoint"],
        "unix:///run/berth/berth.sock"
    );
    assert_eq!(kubelet["cgroupDriver"], "cgroupfs");
}

#[test]
fn a_runtime_class_for_every_handler_of_the_default_config() {
    let cfg: toml::Table = std::fs::read_to_string(manifests().join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let handlers = cfg["runtime"]["handlers"].as_table().unwrap();
    assert!(handlers.contains_key("runc"));
    let docs = docs("runtimeclass.yaml");
    for d in &docs {
        assert_eq!(d["apiVersion"], "node.k8s.io/v1");
        assert_eq!(d["kind"], "RuntimeClass");
    }
    for h in handlers.keys() {
        assert!(
            docs.iter().any(|d| d["handler"] == h.as_str()),
            "no RuntimeClass for handler {h}"
        );
    }
}

#[test]
fn the_installer_daemonset_is_privileged_with_host_pid_and_the_node_mounts() {
    let docs = docs("installer/daemonset.yaml");
    let ds = named(&docs, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let ds = ds[0];
    assert_eq!(ds["apiVersion"], "apps/v1");
    let ns = str_of(&ds["metadata"]["namespace"], "namespace");
    let sa = str_of(
        &ds["spec"]["template"]["spec"]["serviceAccountName"],
        "serviceAccountName",
    );
    assert!(named(&docs, "ServiceAccount")
        .iter()
        .any(|a| a["metadata"]["name"] == sa && a["metadata"]["namespace"] == ns));
    // The selector must match the template, or the API server refuses the DaemonSet.
    let sel = ds["spec"]["selector"]["matchLabels"].as_object().unwrap();
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert!(!sel.is_empty());
    for (k, v) in sel {
        assert_eq!(&labels[k], v, "selector {k}");
    }
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let volumes: Vec<(&str, &str)> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                str_of(&v["name"], "volume name"),
                str_of(&v["hostPath"]["path"], "hostPath"),
            )
        })
        .collect();
    for need in [
        "/usr/local/bin",
        "/etc/berth",
        "/etc/systemd/system",
        "/run/systemd",
        "/var/lib/berth",
    ] {
        assert!(
            volumes.iter().any(|(_, p)| *p == need),
            "no hostPath {need}"
        );
    }
    let init = pod["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 1);
    let install = &init[0];
    assert_eq!(install["securityContext"]["privileged"], true);
    let cmd: Vec<&str> = install["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| str_of(c, "command"))
        .collect();
    assert_eq!(cmd, ["/usr/local/bin/berth-install", "--root", "/host"]);
    for c in init.iter().chain(pod["containers"].as_array().unwrap()) {
        assert!(!str_of(&c["image"], "image").is_empty());
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = str_of(&m["name"], "mount name");
            assert!(
                volumes.iter().any(|(n, _)| *n == name),
                "mount of unknown volume {name}"
            );
        }
    }
    // Each node path lands where berth-install --root /host writes it.
    for m in install["volumeMounts"].as_array().unwrap() {
        let name = str_of(&m["name"], "mount name");
        let host = volumes.iter().find(|(n, _)| *n == name).unwrap().1;
        let at = str_of(&m["mountPath"], "mountPath");
        assert!(
            at == format!("/host{host}") || at == host,
            "{name}: {host} at {at}"
        );
    }
}

fn stage(dir: &Path, version: &str) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    for b in ["berthd", "berthctl", "berth-shim"] {
        std::fs::write(
            src.join("bin").join(b),
            format!("#!/bin/sh\necho {b} {version}\n"),
        )
        .unwrap();
    }
    std::fs::copy(manifests().join("config.toml"), src.join("config.toml")).unwrap();
    std::fs::copy(
        manifests().join("berthd.service"),
        src.join("berthd.service"),
    )
    .unwrap();
    let doc = manifests().join("../docs/operations.md");
    std::fs::copy(doc, src.join("operations.md")).unwrap();
    src
}

fn berth_install(args: &[&Path]) -> (bool, String, String) {
    let mut cmd = Command::new("sh");
    cmd.arg(manifests().join("installer/berth-install"));
    let mut flags = ["--root", "--src"].iter();
    for a in args {
        cmd.arg(flags.next().unwrap()).arg(a);
    }
    let out = cmd.arg("--no-start").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_units_documentation_is_what_berth_install_installs() {
    let unit = std::fs::read_to_string(manifests().join("berthd.service")).unwrap();
    assert!(unit
        .lines()
        .any(|l| l == format!("Documentation={UNIT_DOC}")));
}

#[test]
fn berth_install_writes_a_node_root_and_keeps_an_edited_config() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("node");
    std::fs::create_dir_all(&root).unwrap();
    let src = stage(tmp.path(), "1");
    let (ok, out, err) = berth_install(&[&root, &src]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("--container-runtime-endpoint=unix:///run/berth/berth.sock")
            && out.contains("cgroupfs"),
        "{out}"
    );
    for b in ["berthd", "berthctl", "berth-shim"] {
        let p = root.join("usr/local/bin").join(b);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("#!/bin/sh\necho {b} 1\n")
        );
    }
    assert_eq!(
        std::fs::read(root.join("etc/systemd/system/berthd.service")).unwrap(),
        std::fs::read(manifests().join("berthd.service")).unwrap()
    );
    let cfg = root.join("etc/berth/config.toml");
    assert_eq!(
        std::fs::read(&cfg).unwrap(),
        std::fs::read(manifests().join("config.toml")).unwrap()
    );
    assert!(root.join("etc/berth/certs.d").is_dir());
    // Where the unit's Documentation= points.
    let doc = UNIT_DOC.strip_prefix("file://").unwrap();
    assert!(root.join(doc.trim_start_matches('/')).is_file());
    // An upgrade replaces the binaries and leaves the operator's config alone.
    std::fs::write(&cfg, "log_level = \"debug\"\n").unwrap();
    let src = stage(&tmp.path().join("v2"), "2");
    let (ok, out, err) = berth_install(&[&root, &src]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("keeping"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "log_level = \"debug\"\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("usr/local/bin/berthd")).unwrap(),
        "#!/bin/sh\necho berthd 2\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(root.join("usr/local/bin"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("berth-new"))
        .collect();
    assert!(leftovers.is_empty());
    // A source missing a binary is refused before anything is written.
    std::fs::remove_file(src.join("bin/berth-shim")).unwrap();
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let (ok, _, err) = berth_install(&[&fresh, &src]);
    assert!(!ok && err.contains("berth-shim is missing"), "{err}");
    assert!(!fresh.join("usr").exists());
}
