//! CRI ImageService end-to-end tests against a real berthd and the local
//! registries from `hack/registry.sh` / `hack/build-images.sh`.
//! Run: `hack/test.sh` or `cargo test -p berth-e2e -- --test-threads=1`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::cri::{ImageFsInfoRequest, StatusRequest, VersionRequest};
use berth_e2e::*;
use tonic::Code;

macro_rules! setup {
    () => {
        setup!(DaemonOpts::default())
    };
    ($opts:expr) => {
        match setup($opts).await {
            Some(x) => x,
            None => return,
        }
    };
}

fn assert_code(
    res: Result<impl std::fmt::Debug, tonic::Status>,
    codes: &[Code],
    what: &str,
) -> tonic::Status {
    match res {
        Ok(v) => panic!("{what}: expected error {codes:?}, got Ok({v:?})"),
        Err(s) => {
            assert!(
                codes.contains(&s.code()),
                "{what}: expected {codes:?}, got {:?}: {}",
                s.code(),
                s.message()
            );
            s
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_reports_config_digest_as_id() {
    let (d, img) = setup!();
    let r = img.get("BUSYBOX_REF");
    let id = img.get("BUSYBOX_IMAGE_ID");
    let image_ref = d.pull_ok(&r).await;
    assert_eq!(
        image_ref, id,
        "PullImage image_ref must be the config digest"
    );

    let st = d
        .status(&r)
        .await
        .expect("ImageStatus")
        .expect("image present");
    assert_eq!(st.id, id);
    assert!(
        st.repo_tags.contains(&r),
        "repo_tags {:?} lacks {r}",
        st.repo_tags
    );
    let want_digest = format!(
        "{}@{}",
        img.get("BUSYBOX_REPO"),
        img.get("BUSYBOX_MANIFEST_DIGEST")
    );
    assert!(
        st.repo_digests.contains(&want_digest),
        "repo_digests {:?} lacks {want_digest}",
        st.repo_digests
    );
    assert!(st.size > 0, "size should be > 0");

    // status by ID and by digest reference give the same image
    let by_id = d
        .status(&id)
        .await
        .expect("ImageStatus by id")
        .expect("present by id");
    assert_eq!(by_id.id, id);
    let by_dig = d
        .status(&want_digest)
        .await
        .expect("ImageStatus by digest")
        .expect("present by digest");
    assert_eq!(by_dig.id, id);

    let list = d.list().await;
    let li = find_image(&list, &id).expect("ListImages contains the image");
    assert!(li.repo_tags.contains(&r));
    assert!(li.repo_digests.contains(&want_digest));
    assert_eq!(list.iter().filter(|i| i.id == id).count(), 1);

    // all layer snapshots committed
    for c in img.list("BUSYBOX_CHAIN_IDS") {
        assert!(
            d.snapshot_fs(&c).is_dir(),
            "snapshot {} missing",
            d.snapshot_fs(&c).display()
        );
    }
    let top = d.snapshot_fs(&img.get("BUSYBOX_TOP_CHAIN_ID"));
    let bb = std::fs::metadata(top.join("data/old/new")).expect("data/old/new in top snapshot");
    assert!(bb.is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_digest() {
    let (d, img) = setup!();
    let by_digest = format!(
        "{}@{}",
        img.get("BUSYBOX_REPO"),
        img.get("BUSYBOX_MANIFEST_DIGEST")
    );
    let id = img.get("BUSYBOX_IMAGE_ID");
    assert_eq!(d.pull_ok(&by_digest).await, id);
    let st = d
        .status(&by_digest)
        .await
        .expect("ImageStatus")
        .expect("present");
    assert_eq!(st.id, id);
    assert!(
        st.repo_digests.contains(&by_digest),
        "repo_digests {:?}",
        st.repo_digests
    );
    assert!(
        !st.repo_tags.iter().any(|t| t.contains('@')),
        "a digest is not a tag: {:?}",
        st.repo_tags
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_tag_same_manifest_is_one_image() {
    let (d, img) = setup!();
    let repo = img.get("BUSYBOX_REPO");
    let id = img.get("BUSYBOX_IMAGE_ID");
    assert_eq!(d.pull_ok(&format!("{repo}:latest")).await, id);
    assert_eq!(d.pull_ok(&format!("{repo}:v2")).await, id);
    let list = d.list().await;
    let same: Vec<_> = list.iter().filter(|i| i.id == id).collect();
    assert_eq!(same.len(), 1, "one image expected, got {list:?}");
    let tags = &same[0].repo_tags;
    assert!(
        tags.contains(&format!("{repo}:latest")) && tags.contains(&format!("{repo}:v2")),
        "tags {tags:?}"
    );
    // pulling again is a no-op success
    assert_eq!(d.pull_ok(&format!("{repo}:v2")).await, id);
    assert_eq!(d.list().await.iter().filter(|i| i.id == id).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiarch_selects_amd64() {
    let (d, img) = setup!();
    let r = img.get("MULTIARCH_REF");
    let id = d.pull_ok(&r).await;
    assert_eq!(
        id,
        img.get("MULTIARCH_AMD64_CONFIG_DIGEST"),
        "must pick the linux/amd64 manifest"
    );
    assert_ne!(id, img.get("MULTIARCH_ARM64_CONFIG_DIGEST"));
    let top = d.snapshot_fs(&img.get("MULTIARCH_TOP_CHAIN_ID"));
    let arch = std::fs::read_to_string(top.join("arch"))
        .unwrap_or_else(|e| panic!("{}: {e}", top.join("arch").display()));
    assert_eq!(arch.trim(), "amd64");
    let st = d.status(&r).await.unwrap().expect("present");
    let idx = format!(
        "{}@{}",
        img.get("MULTIARCH_REPO"),
        img.get("MULTIARCH_INDEX_DIGEST")
    );
    assert!(
        st.repo_digests.contains(&idx),
        "repo_digests {:?} should hold the index digest {idx}",
        st.repo_digests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_layers_pull() {
    let (d, img) = setup!();
    let id = d.pull_ok(&img.get("ZSTD_REF")).await;
    assert_eq!(id, img.get("ZSTD_IMAGE_ID"));
    let top = d.snapshot_fs(&img.get("ZSTD_TOP_CHAIN_ID"));
    assert_eq!(
        std::fs::read_to_string(top.join("zstd-marker"))
            .expect("zstd-marker")
            .trim(),
        "compressed with zstd"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_become_overlay_format() {
    let (d, img) = setup!();
    d.pull_ok(&img.get("BUSYBOX_REF")).await;
    let top = d.snapshot_fs(&img.get("BUSYBOX_TOP_CHAIN_ID"));
    let wh = top.join("etc/removed-me");
    let m = std::fs::symlink_metadata(&wh).unwrap_or_else(|e| panic!("{}: {e}", wh.display()));
    assert!(
        m.file_type().is_char_device(),
        "{} should be a char device",
        wh.display()
    );
    assert_eq!(m.rdev(), 0, "whiteout must be device 0:0");
    assert!(
        !top.join("etc/.wh.removed-me").exists(),
        "whiteout marker file must not be kept"
    );
    let old = top.join("data/old");
    assert_eq!(
        get_xattr(&old, "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..]),
        "{} needs trusted.overlay.opaque=y",
        old.display()
    );
    assert!(
        !old.join(".wh..wh..opq").exists(),
        "opaque marker file must not be kept"
    );
    assert!(old.join("new").is_file());
    // lower layer still has the originals
    let l2 = d.snapshot_fs(&img.list("BUSYBOX_CHAIN_IDS")[1]);
    assert!(l2.join("etc/removed-me").is_file());
    assert!(l2.join("data/old/a").is_file());
    // layer 1 has busybox and applet symlinks
    let l1 = d.snapshot_fs(&img.list("BUSYBOX_CHAIN_IDS")[0]);
    assert!(l1.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(l1.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::metadata(l1.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_basic_auth() {
    let (d, img) = setup!();
    let r = format!("{REG_TLS}/berth/busybox:latest");
    let id = img.get("BUSYBOX_IMAGE_ID");

    let s = assert_code(
        d.pull(&r, None).await,
        &[Code::Unauthenticated, Code::PermissionDenied],
        "no creds",
    );
    assert!(
        s.message().contains(REG_TLS),
        "error should name the registry: {}",
        s.message()
    );
    let s = assert_code(
        d.pull(&r, Some(basic_auth(USER, "wrong"))).await,
        &[Code::Unauthenticated, Code::PermissionDenied],
        "wrong password",
    );
    assert!(
        s.message().contains(REG_TLS),
        "error should name the registry: {}",
        s.message()
    );
    assert!(
        d.status(&r).await.unwrap().is_none(),
        "failed pull must not leave an image"
    );

    assert_eq!(
        d.pull(&r, Some(basic_auth(USER, PASS)))
            .await
            .expect("pull with creds"),
        id
    );
    let st = d.status(&r).await.unwrap().expect("present");
    assert!(st.repo_tags.contains(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_basic_auth_via_auth_field() {
    let (d, img) = setup!();
    let r = format!("{REG_TLS}/berth/busybox:latest");
    use base64_lite::encode;
    let auth = berth_e2e::cri::AuthConfig {
        auth: encode(format!("{USER}:{PASS}").as_bytes()),
        ..Default::default()
    };
    assert_eq!(
        d.pull(&r, Some(auth)).await.expect("pull with auth field"),
        img.get("BUSYBOX_IMAGE_ID")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth() {
    let (d, img) = setup!();
    let r = format!("{REG_TOKEN}/berth/busybox:latest");
    let s = assert_code(
        d.pull(&r, None).await,
        &[Code::Unauthenticated, Code::PermissionDenied],
        "no creds",
    );
    assert!(
        s.message().contains(REG_TOKEN) || s.message().contains("127.0.0.1:5002"),
        "error should name the registry or token realm: {}",
        s.message()
    );
    assert_code(
        d.pull(&r, Some(basic_auth(USER, "wrong"))).await,
        &[Code::Unauthenticated, Code::PermissionDenied],
        "wrong password",
    );
    assert_eq!(
        d.pull(&r, Some(basic_auth(USER, PASS)))
            .await
            .expect("pull with token creds"),
        img.get("BUSYBOX_IMAGE_ID")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_mismatch_is_data_loss_and_leaves_nothing() {
    if prerequisites().is_none() {
        return;
    }
    let img = Images::load().unwrap();
    let layers = img.list("BUSYBOX_LAYERS");
    let bad = layers[0].clone();
    let proxy = Proxy::start(0, &["--corrupt-blob", &bad]).expect("proxy");
    let (d, _) = setup!(DaemonOpts::default().http_host(proxy.host()));
    let r = format!("{}/berth/busybox:latest", proxy.host());
    let s = assert_code(d.pull(&r, None).await, &[Code::DataLoss], "tampered blob");
    assert!(
        proxy.blob_gets(&bad) >= 1,
        "the proxy never served the tampered blob"
    );
    eprintln!("digest mismatch error: {}", s.message());
    assert!(
        d.status(&r).await.unwrap().is_none(),
        "no image after failed pull"
    );
    assert!(
        !d.list()
            .await
            .iter()
            .any(|i| i.id == img.get("BUSYBOX_IMAGE_ID")),
        "image listed after failed pull"
    );
    let leftovers = d.find_in_root(hex_of(&bad));
    assert!(
        leftovers.is_empty(),
        "tampered blob left in root: {leftovers:?}"
    );
    // The tampered layer's snapshot must not exist. Snapshots of the other,
    // intact layers may legitimately be kept for reuse (policy), so only note them.
    let chains = img.list("BUSYBOX_CHAIN_IDS");
    assert!(
        !d.snapshot_dir(&chains[0]).exists(),
        "snapshot {} of the tampered layer exists after failed pull",
        d.snapshot_dir(&chains[0]).display()
    );
    for c in &chains[1..] {
        if d.snapshot_dir(c).exists() {
            eprintln!("note: intact layer snapshot {c} kept after failed pull");
        }
    }
    let diff = img.list("BUSYBOX_DIFF_IDS")[0].clone();
    let leftovers = d.find_in_root(hex_of(&diff));
    assert!(
        leftovers.is_empty(),
        "tampered layer left in root: {leftovers:?}"
    );
}

const EVIL: &[&str] = &["evil-dotdot", "evil-abs", "evil-symlink", "evil-hardlink"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_layers_stay_confined() {
    let (d, img) = setup!();
    let canary_dir = std::path::PathBuf::from(img.get("BERTH_CANARY_DIR"));
    let _ = std::fs::remove_dir_all(&canary_dir);
    std::fs::create_dir_all(&canary_dir).unwrap();
    let canary = canary_dir.join("canary");
    std::fs::write(&canary, b"canary - must never change\n").unwrap();
    let tmp_evil = ["/tmp/berth-evil-abs", "/tmp/berth-evil-symlink"];
    for t in tmp_evil {
        let _ = std::fs::remove_file(t);
    }
    let before = file_facts(&canary).unwrap();
    let before_names = dir_names(&canary_dir);
    let base = d.base().to_path_buf();
    let base_names = dir_names(&base);
    let parent_names = dir_names(base.parent().unwrap());

    let mut outcomes = Vec::new();
    for name in EVIL {
        let r = format!("{REG_PLAIN}/berth/{name}:latest");
        let res = d.pull(&r, None).await;
        match &res {
            Ok(id) => outcomes.push(format!("{name}: pulled {id}")),
            Err(s) => outcomes.push(format!("{name}: {:?}: {}", s.code(), s.message())),
        }
        assert_eq!(
            file_facts(&canary).unwrap(),
            before,
            "{name}: canary changed"
        );
        assert_eq!(
            dir_names(&canary_dir),
            before_names,
            "{name}: files created in canary dir"
        );
        for t in tmp_evil {
            assert!(!Path::new(t).exists(), "{name}: created {t}");
        }
        assert_eq!(
            dir_names(&base),
            base_names,
            "{name}: files created next to berth's root"
        );
        let now_parent: Vec<String> = dir_names(base.parent().unwrap())
            .into_iter()
            .filter(|n| n.starts_with("canary") || n.starts_with("created"))
            .collect();
        let was_parent: Vec<&String> = parent_names
            .iter()
            .filter(|n| n.starts_with("canary") || n.starts_with("created"))
            .collect();
        assert_eq!(
            now_parent.len(),
            was_parent.len(),
            "{name}: files created above berth's dirs"
        );
        assert!(!Path::new("/created-dotdot-2").exists() && !Path::new("/canary-x").exists());
        if let Ok(id) = res {
            // confined content: the benign file landed inside the snapshot
            let key = name.replace('-', "_").to_uppercase();
            assert_eq!(id, img.get(&format!("{key}_IMAGE_ID")));
            let fs = d.snapshot_fs(&img.get(&format!("{key}_TOP_CHAIN_ID")));
            assert!(
                fs.join("inside").is_file(),
                "{name}: benign file missing from {}",
                fs.display()
            );
        } else if let Err(s) = res {
            assert_ne!(
                s.code(),
                Code::Unavailable,
                "{name}: daemon died? {}",
                s.message()
            );
        }
    }
    eprintln!("malicious layer outcomes:\n  {}", outcomes.join("\n  "));
    // daemon still healthy
    d.pull_ok(&img.get("BUSYBOX_REF")).await;
    let _ = std::fs::remove_dir_all(&canary_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_fetch_each_blob_once() {
    if prerequisites().is_none() {
        return;
    }
    let img = Images::load().unwrap();
    let proxy = Proxy::start(0, &[]).expect("proxy");
    let (d, _) = setup!(DaemonOpts::default().http_host(proxy.host()));
    let r = format!("{}/berth/busybox:latest", proxy.host());
    let d = std::sync::Arc::new(d);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let d = d.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move { d.pull(&r, None).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => ids.push(id),
            Err(s) => panic!(
                "concurrent pull failed: {:?}: {}\n{}",
                s.code(),
                s.message(),
                d.log_tail(40)
            ),
        }
    }
    assert!(
        ids.iter().all(|i| *i == img.get("BUSYBOX_IMAGE_ID")),
        "ids {ids:?}"
    );
    for l in img.list("BUSYBOX_LAYERS") {
        assert_eq!(
            proxy.blob_gets(&l),
            1,
            "layer {l} fetched {} times",
            proxy.blob_gets(&l)
        );
    }
    assert!(
        proxy.blob_gets(&img.get("BUSYBOX_CONFIG_DIGEST")) <= 1,
        "config fetched {} times",
        proxy.blob_gets(&img.get("BUSYBOX_CONFIG_DIGEST"))
    );
    assert_eq!(
        d.list()
            .await
            .iter()
            .filter(|i| i.id == img.get("BUSYBOX_IMAGE_ID"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_by_id_tag_and_digest() {
    let (d, img) = setup!();
    let r = img.get("BUSYBOX_REF");
    let id = img.get("BUSYBOX_IMAGE_ID");
    let by_digest = format!(
        "{}@{}",
        img.get("BUSYBOX_REPO"),
        img.get("BUSYBOX_MANIFEST_DIGEST")
    );

    for (how, target) in [
        ("id", id.clone()),
        ("tag", r.clone()),
        ("digest", by_digest.clone()),
    ] {
        d.pull_ok(&r).await;
        assert!(d.status(&r).await.unwrap().is_some());
        d.remove(&target).await.unwrap_or_else(|s| {
            panic!(
                "RemoveImage by {how} ({target}): {:?}: {}",
                s.code(),
                s.message()
            )
        });
        assert!(
            d.status(&r).await.unwrap().is_none(),
            "image still there after remove by {how}"
        );
        assert!(
            d.status(&id).await.unwrap().is_none(),
            "image id still there after remove by {how}"
        );
        assert!(
            find_image(&d.list().await, &id).is_none(),
            "still listed after remove by {how}"
        );
        for c in img.list("BUSYBOX_CHAIN_IDS") {
            assert!(
                !d.snapshot_dir(&c).exists(),
                "snapshot {c} left after remove by {how}"
            );
        }
    }
    // idempotent: removing a missing image is not an error (CRI contract)
    d.remove(&r)
        .await
        .expect("RemoveImage of a missing image must succeed");
    d.remove(&id)
        .await
        .expect("RemoveImage of a missing id must succeed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_keeps_shared_snapshots() {
    let (d, img) = setup!();
    let bb = img.get("BUSYBOX_REF");
    let sib = img.get("SIBLING_REF");
    d.pull_ok(&bb).await;
    d.pull_ok(&sib).await;
    let bb_chains = img.list("BUSYBOX_CHAIN_IDS");
    let sib_chains = img.list("SIBLING_CHAIN_IDS");
    assert_eq!(
        bb_chains[..2],
        sib_chains[..2],
        "test images must share two layers"
    );
    d.remove(&sib).await.expect("remove sibling");
    assert!(d.status(&sib).await.unwrap().is_none());
    for c in &bb_chains {
        assert!(
            d.snapshot_fs(c).is_dir(),
            "shared/own snapshot {c} of busybox removed"
        );
    }
    assert!(
        !d.snapshot_dir(&sib_chains[2]).exists(),
        "sibling's own top snapshot should be gone"
    );
    let st = d.status(&bb).await.unwrap().expect("busybox still present");
    assert_eq!(st.id, img.get("BUSYBOX_IMAGE_ID"));
    assert!(d.snapshot_fs(&bb_chains[0]).join("bin/busybox").is_file());
    d.remove(&bb).await.expect("remove busybox");
    for c in &bb_chains {
        assert!(
            !d.snapshot_dir(c).exists(),
            "snapshot {c} left after last user removed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_persist_across_restart() {
    let (mut d, img) = setup!();
    let r = img.get("BUSYBOX_REF");
    let id = img.get("BUSYBOX_IMAGE_ID");
    d.pull_ok(&r).await;
    d.pull_ok(&img.get("ZSTD_REF")).await;
    d.restart().await.expect("restart after SIGTERM");
    let st = d
        .status(&r)
        .await
        .expect("ImageStatus after restart")
        .expect("image survived restart");
    assert_eq!(st.id, id);
    assert!(st.repo_tags.contains(&r));
    let list = d.list().await;
    assert!(find_image(&list, &id).is_some());
    assert!(find_image(&list, &img.get("ZSTD_IMAGE_ID")).is_some());
    for c in img.list("BUSYBOX_CHAIN_IDS") {
        assert!(d.snapshot_fs(&c).is_dir());
    }
    // and it still works
    d.remove(&r).await.expect("remove after restart");
    assert!(d.status(&r).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_pull_then_repull() {
    if prerequisites().is_none() {
        return;
    }
    let img = Images::load().unwrap();
    let l1 = img.list("BUSYBOX_LAYERS")[0].clone();
    let proxy = Proxy::start(0, &["--stall-blob", &l1, "--stall-after", "100000"]).expect("proxy");
    let port = proxy.port;
    let (mut d, _) = setup!(DaemonOpts::default().http_host(proxy.host()));
    let r = format!("{}/berth/busybox:latest", proxy.host());
    let pull = {
        let mut c = d.images().await.unwrap();
        let r = r.clone();
        tokio::spawn(async move {
            c.pull_image(berth_e2e::cri::PullImageRequest {
                image: Some(spec(&r)),
                ..Default::default()
            })
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !proxy.stalled() {
        assert!(
            Instant::now() < deadline,
            "pull never reached the stalled blob; log:\n{}",
            d.log_tail(40)
        );
        assert!(
            !pull.is_finished(),
            "pull finished before stalling: {:?}",
            pull.await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.kill9();
    let res = pull.await.unwrap();
    assert!(
        res.is_err(),
        "pull cannot succeed when the daemon was killed"
    );
    drop(proxy);
    // same port, no stall this time
    let mut proxy2 = None;
    for _ in 0..50 {
        match Proxy::start(port, &[]) {
            Ok(p) => {
                proxy2 = Some(p);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let proxy2 = proxy2.expect("restart proxy on the same port");
    d.start_again().await.expect("start after kill -9");
    assert!(
        d.status(&r).await.unwrap().is_none(),
        "half-pulled image must not be listed"
    );
    let id = d.pull_ok(&r).await;
    assert_eq!(id, img.get("BUSYBOX_IMAGE_ID"));
    // The partial blob left by the killed pull is resumed, not fetched again from byte 0.
    let resumed = proxy2.requests().into_iter().any(|e| {
        e["path"].as_str().is_some_and(|p| p.ends_with(&l1))
            && e["status"] == 206
            && e["range"]
                .as_str()
                .is_some_and(|r| r.starts_with("bytes=") && !r.starts_with("bytes=0-"))
    });
    assert!(
        resumed,
        "expected a Range request resuming {l1}: {:?}",
        proxy2.requests()
    );
    let l1fs = d.snapshot_fs(&img.list("BUSYBOX_CHAIN_IDS")[0]);
    let host_bb = std::fs::metadata("/bin/busybox")
        .map(|m| m.len())
        .unwrap_or(0);
    let got = std::fs::metadata(l1fs.join("bin/busybox"))
        .expect("bin/busybox")
        .len();
    if host_bb > 0 {
        assert_eq!(got, host_bb, "busybox binary truncated");
    }
    assert!(d
        .snapshot_fs(&img.get("BUSYBOX_TOP_CHAIN_ID"))
        .join("data/old/new")
        .is_file());
    let st = d.status(&r).await.unwrap().expect("present");
    assert_eq!(st.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_blob_hits_progress_timeout() {
    if prerequisites().is_none() {
        return;
    }
    let img = Images::load().unwrap();
    let l1 = img.list("BUSYBOX_LAYERS")[0].clone();
    let proxy = Proxy::start(0, &["--stall-blob", &l1, "--stall-after", "4096"]).expect("proxy");
    let opts = DaemonOpts {
        registry_extra: "progress_timeout_secs = 2".into(),
        ..DaemonOpts::default().http_host(proxy.host())
    };
    let (d, _) = setup!(opts);
    let r = format!("{}/berth/busybox:latest", proxy.host());
    let t = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(60), d.pull(&r, None))
        .await
        .expect("pull hung past 60s despite progress_timeout_secs = 2");
    let took = t.elapsed();
    let s = match res {
        Ok(id) => panic!("pull through a stalled blob succeeded: {id}"),
        Err(s) => s,
    };
    eprintln!(
        "stall error after {took:?}: {:?}: {}",
        s.code(),
        s.message()
    );
    assert!(proxy.stalled(), "the proxy never stalled the blob");
    assert!(
        took < Duration::from_secs(30),
        "progress timeout took {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "failed after {took:?}, before the 2s progress timeout could fire: {}",
        s.message()
    );
    assert!(
        matches!(s.code(), Code::DeadlineExceeded | Code::Unavailable),
        "unexpected code {:?}: {}",
        s.code(),
        s.message()
    );
    assert!(
        d.status(&r).await.unwrap().is_none(),
        "no image after timed-out pull"
    );
    assert!(
        !d.snapshot_dir(&img.list("BUSYBOX_CHAIN_IDS")[0]).exists(),
        "stalled layer committed"
    );
    // the daemon is still healthy and the same image pulls from the real registry
    assert_eq!(
        d.pull_ok(&img.get("BUSYBOX_REF")).await,
        img.get("BUSYBOX_IMAGE_ID")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_references_are_invalid_argument() {
    let (d, img) = setup!();
    let repo = img.get("BUSYBOX_REPO");
    // Every candidate is host-qualified with the local registry so that a lenient
    // parser can never send traffic off the machine.
    let bad = [
        String::new(),
        format!("{REG_PLAIN}/UPPER/Case:tag"),
        format!("{REG_PLAIN}/a b c"),
        format!("{repo}@sha256:1234"),
        format!("{repo}@sha256:{}", "z".repeat(64)),
        format!("{repo}@sha256:"),
        format!("{repo}@md5:{}", "0".repeat(32)),
        format!("{repo}:bad:tag:"),
        format!("{repo}:{}", "t".repeat(200)),
        format!("{REG_PLAIN}/"),
    ];
    for b in &bad {
        assert_code(
            d.pull(b, None).await,
            &[Code::InvalidArgument],
            &format!("PullImage({b:?})"),
        );
    }
    // ImageStatus of a valid but absent image: OK with no image
    let absent = format!("{REG_PLAIN}/berth/does-not-exist:latest");
    assert!(d
        .status(&absent)
        .await
        .expect("ImageStatus absent")
        .is_none());
    // pulling a missing image: NotFound
    assert_code(
        d.pull(&absent, None).await,
        &[Code::NotFound],
        "pull missing repo",
    );
    assert_code(
        d.pull(&format!("{repo}:no-such-tag"), None).await,
        &[Code::NotFound],
        "pull missing tag",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info() {
    let (d, img) = setup!();
    d.pull_ok(&img.get("BUSYBOX_REF")).await;
    let mut c = d.images().await.unwrap();
    let info = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    assert!(
        !info.image_filesystems.is_empty(),
        "no image filesystems: {info:?}"
    );
    let fs = &info.image_filesystems[0];
    let mp = fs.fs_id.as_ref().expect("fs_id").mountpoint.clone();
    assert!(
        Path::new(&mp).starts_with(&d.root),
        "mountpoint {mp} should be under root {}",
        d.root.display()
    );
    assert!(
        fs.used_bytes.as_ref().map(|v| v.value).unwrap_or(0) > 1_000_000,
        "used_bytes {fs:?}"
    );
    assert!(
        fs.inodes_used.as_ref().map(|v| v.value).unwrap_or(0) > 10,
        "inodes_used {fs:?}"
    );
    assert!(fs.timestamp > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_version() {
    let (d, _img) = setup!();
    let mut rt = d.runtime().await.unwrap();
    let v = rt
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert!(!v.runtime_name.is_empty(), "{v:?}");
    assert!(!v.runtime_version.is_empty(), "{v:?}");
    assert_eq!(v.runtime_api_version, "v1", "{v:?}");
    let st = rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let s = st.status.expect("RuntimeStatus");
    let names: Vec<_> = s.conditions.iter().map(|c| c.r#type.as_str()).collect();
    assert!(
        names.contains(&"RuntimeReady"),
        "conditions {:?}",
        s.conditions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_debian_image_pulls() {
    let (d, img) = setup!();
    let Some(r) = img.opt("DEBIAN_REF") else {
        eprintln!("SKIP: debian image not built (hack/build-images.sh --big)");
        return;
    };
    let t = Instant::now();
    assert_eq!(d.pull_ok(&r).await, img.get("DEBIAN_IMAGE_ID"));
    eprintln!("debian pull took {:?}", t.elapsed());
    let fs = d.snapshot_fs(&img.get("DEBIAN_TOP_CHAIN_ID"));
    assert!(fs.join("etc/debian_version").is_file());
    assert!(fs.join("usr/bin/bash").is_file() || fs.join("bin/bash").is_file());
}

mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(b: &[u8]) -> String {
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }
}
