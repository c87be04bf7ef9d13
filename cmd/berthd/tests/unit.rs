//! manifests/berthd.service: the settings that keep containers alive across restarts, and
//! `systemd-analyze verify` on it in a scratch root holding the built berthd.

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../../../manifests/berthd.service");

fn service_values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_unit_keeps_shims_on_restart_and_runs_without_limits() {
    for (key, want) in [
        ("Type", "notify"),
        ("KillMode", "process"),
        ("Delegate", "yes"),
        ("Restart", "always"),
        ("OOMScoreAdjust", "-999"),
        ("TasksMax", "infinity"),
        ("LimitNPROC", "infinity"),
        ("LimitCORE", "infinity"),
        ("LimitNOFILE", "1048576"),
    ] {
        assert_eq!(service_values(key), [want], "{key}");
    }
    assert_eq!(
        service_values("ExecStart"),
        ["/usr/local/bin/berthd --config /etc/berth/config.toml"]
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let units = Path::new("/usr/lib/systemd/system");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
        || !units.is_dir()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze missing (hack/deps.sh installs systemd)"
        );
        eprintln!("SKIP: no systemd-analyze");
        return;
    }
    // verify resolves ExecStart and the unit's dependencies (multi-user.target…) inside --root.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["usr/local/bin", "etc/systemd/system", "usr/lib/systemd"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let cp = Command::new("cp")
        .arg("-a")
        .arg(units)
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::copy(env!("CARGO_BIN_EXE_berthd"), r.join("usr/local/bin/berthd")).unwrap();
    std::fs::write(r.join("etc/systemd/system/berthd.service"), UNIT).unwrap();
    let verify = |unit: &str| {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", r.display()))
            .arg(unit)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = verify("berthd.service");
    assert!(ok && err.trim().is_empty(), "systemd-analyze verify: {err}");
    // The check can fail: a misspelt key is reported.
    std::fs::write(
        r.join("etc/systemd/system/berthd.service"),
        UNIT.replace("KillMode=", "KilMode="),
    )
    .unwrap();
    let (_, err) = verify("berthd.service");
    assert!(err.contains("KilMode"), "{err}");
}
