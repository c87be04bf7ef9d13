#!/usr/bin/env python3
"""Build berth's test images as OCI layouts (no docker) and push them with skopeo.

Called by hack/build-images.sh; see there for usage. stdlib only (+ zstd, skopeo,
gzip, debootstrap CLIs). Output is deterministic: rebuilding yields the same digests.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

MTIME = 1700000000  # fixed timestamp -> reproducible layers
CANARY_DIR = "/var/tmp/berth-canary"
DEEP = "../" * 12  # enough ../ to climb out of any berth root

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def log(*a):
    print("build-images:", *a, file=sys.stderr, flush=True)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------- tar helpers
class Tar:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _ti(self, name, typ, mode):
        ti = tarfile.TarInfo(name)
        ti.type = typ
        ti.mode = mode
        ti.mtime = MTIME
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    def dir(self, name, mode=0o755):
        self.tf.addfile(self._ti(name.rstrip("/") + "/", tarfile.DIRTYPE, mode))

    def file(self, name, data, mode=0o644):
        if isinstance(data, str):
            data = data.encode()
        ti = self._ti(name, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tf.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target):
        ti = self._ti(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tf.addfile(ti)

    def hardlink(self, name, target):
        ti = self._ti(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.tf.addfile(ti)

    def raw(self, ti, data=None):
        self.tf.addfile(ti, io.BytesIO(data) if data is not None else None)

    def bytes(self):
        self.tf.close()
        return self.buf.getvalue()


def gz(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


def zst(data):
    return subprocess.run(["zstd", "-q", "-c", "-3", "--no-progress"], input=data,
                          stdout=subprocess.PIPE, check=True).stdout


def chain_ids(diff_ids):
    out = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append(sha((out[-1] + " " + d).encode()))
    return out


# ---------------------------------------------------------------- OCI layout
class Layout:
    def __init__(self, path):
        self.path = path
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.refs = []

    def blob(self, data):
        d = sha(data)
        p = os.path.join(self.path, "blobs", "sha256", d.split(":")[1])
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(data)
        return d

    def blob_file(self, src):
        h = hashlib.sha256()
        n = 0
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
        d = "sha256:" + h.hexdigest()
        p = os.path.join(self.path, "blobs", "sha256", h.hexdigest())
        if not os.path.exists(p):
            shutil.copyfile(src, p)
        return d, n

    def image(self, layers, arch="amd64", variant=None, cmd=None, env=None, extra_cfg=None):
        """layers: list of (uncompressed_tar_bytes or None, compressed_bytes_or_path, media_type, diff_id?)."""
        descs, diff_ids = [], []
        for layer in layers:
            diff_id, comp, mt = layer["diff_id"], layer["blob"], layer["media_type"]
            if isinstance(comp, (bytes, bytearray)):
                d = self.blob(comp)
                size = len(comp)
            else:
                d, size = self.blob_file(comp)
            descs.append({"mediaType": mt, "digest": d, "size": size})
            diff_ids.append(diff_id)
        cfg = {
            "created": "2023-11-14T22:13:20Z",
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": cmd or ["sh"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "berth hack/mkimages.py layer %d" % i}
                        for i in range(len(diff_ids))],
        }
        if variant:
            cfg["variant"] = variant
        if extra_cfg:
            cfg["config"].update(extra_cfg)
        cfg_b = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
        cfg_d = self.blob(cfg_b)
        man = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cfg_d, "size": len(cfg_b)},
            "layers": descs,
        }
        man_b = json.dumps(man, sort_keys=True, indent=2).encode()
        man_d = self.blob(man_b)
        return {
            "manifest_digest": man_d, "manifest_size": len(man_b), "config_digest": cfg_d,
            "layers": [d["digest"] for d in descs], "diff_ids": diff_ids,
            "chain_ids": chain_ids(diff_ids), "media_type": MT_MANIFEST,
        }

    def tag(self, desc, ref, platform=None):
        d = {"mediaType": desc["media_type"], "digest": desc["manifest_digest"], "size": desc["manifest_size"],
             "annotations": {"org.opencontainers.image.ref.name": ref}}
        if platform:
            d["platform"] = platform
        self.refs.append(d)
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": self.refs}, f, indent=2)


def layer_gz(tar_bytes):
    return {"diff_id": sha(tar_bytes), "blob": gz(tar_bytes), "media_type": MT_GZIP}


def layer_zstd(tar_bytes):
    return {"diff_id": sha(tar_bytes), "blob": zst(tar_bytes), "media_type": MT_ZSTD}


# ---------------------------------------------------------------- image contents
APPLETS = ["sh", "ls", "cat", "echo", "sleep", "nc", "httpd", "id", "wget", "true", "false", "mkdir",
           "rm", "touch", "env", "ps", "grep", "hostname", "mount", "stat", "test", "[", "head", "tr",
           "yes", "dd", "seq", "printf", "kill", "wc", "date", "tail", "pwd", "readlink", "sed",
           "chmod", "ln", "find", "uname", "whoami", "groups", "stty", "tty", "md5sum", "sha256sum",
           "usleep", "timeout", "xargs", "cut", "sort", "umask", "df", "du", "ip", "ifconfig"]


def busybox_layers(busybox_bin):
    with open(busybox_bin, "rb") as f:
        bb = f.read()
    l1 = Tar()
    for d in ["bin", "etc", "dev", "proc", "sys", "root", "data", "usr", "usr/bin"]:
        l1.dir(d)
    l1.dir("tmp", 0o1777)
    l1.file("bin/busybox", bb, 0o755)
    for a in APPLETS:
        l1.symlink("bin/" + a, "busybox")
    l1.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    l1.file("etc/group", "root:x:0:\nnogroup:x:65534:\n")
    l1.file("etc/hostname", "berth-busybox\n")
    l2 = Tar()
    l2.dir("etc")
    l2.file("etc/removed-me", "this file is deleted by a whiteout in layer 3\n")
    l2.dir("data")
    l2.dir("data/old")
    l2.file("data/old/a", "a\n")
    l2.file("data/old/b", "b\n")
    l3 = Tar()
    l3.dir("etc")
    l3.file("etc/.wh.removed-me", b"")
    l3.dir("data")
    l3.dir("data/old")
    l3.file("data/old/.wh..wh..opq", b"")
    l3.file("data/old/new", "new\n")
    return [l1.bytes(), l2.bytes(), l3.bytes()]


def arch_layer(arch):
    t = Tar()
    t.file("arch", arch + "\n")
    return t.bytes()


def evil_layers():
    c = CANARY_DIR.lstrip("/")
    out = {}
    t = Tar()
    t.file(DEEP + c + "/canary", "pwned-dotdot\n")
    t.file(DEEP + c + "/created-dotdot", "pwned\n")
    t.file("../canary-x", "pwned\n")
    t.file("ok/../../created-dotdot-2", "pwned\n")
    t.file("inside", "fine\n")
    out["evil-dotdot"] = t.bytes()

    t = Tar()
    t.file(CANARY_DIR + "/canary", "pwned-abs\n")
    t.file(CANARY_DIR + "/created-abs", "pwned\n")
    t.file("/tmp/berth-evil-abs", "pwned\n")
    t.file("inside", "fine\n")
    out["evil-abs"] = t.bytes()

    t = Tar()
    t.symlink("escape", "/")
    t.file("escape" + CANARY_DIR + "/canary", "pwned-symlink\n")
    t.file("escape" + CANARY_DIR + "/created-symlink", "pwned\n")
    t.file("escape/tmp/berth-evil-symlink", "pwned\n")
    t.symlink("up", DEEP.rstrip("/"))
    t.file("up/" + c + "/created-symlink-rel", "pwned\n")
    t.symlink("cdir", CANARY_DIR)
    t.dir("cdir/created-symlink-dir")
    t.file("inside", "fine\n")
    out["evil-symlink"] = t.bytes()

    t = Tar()
    t.hardlink("hl", DEEP + c + "/canary")
    t.file("hl", "pwned-hardlink\n")  # overwrite-through-link attempt
    t.hardlink("hl-abs", CANARY_DIR + "/canary")
    t.symlink("sl", CANARY_DIR)
    t.hardlink("hl-via-symlink", "sl/canary")
    t.file("hl-via-symlink", "pwned-hardlink-via-symlink\n")
    t.file("inside", "fine\n")
    out["evil-hardlink"] = t.bytes()
    return out


def debian_layer(cache_dir, mirror):
    os.makedirs(cache_dir, exist_ok=True)
    tar_path = os.path.join(cache_dir, "debian-bookworm-minbase.tar")
    gz_path = tar_path + ".gz"
    if not (os.path.exists(tar_path) and os.path.exists(gz_path)):
        rootfs = os.path.join(cache_dir, "debian-rootfs")
        if os.path.exists(rootfs):
            shutil.rmtree(rootfs)
        log("debootstrap --variant=minbase bookworm from %s (takes ~1-2 min)" % mirror)
        t0 = time.time()
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs, mirror], check=True,
                       stdout=subprocess.DEVNULL)
        log("debootstrap took %.0fs" % (time.time() - t0))
        # trim caches so the layer is reproducible-ish and smaller
        for sub in ["var/cache/apt/archives", "var/lib/apt/lists"]:
            p = os.path.join(rootfs, sub)
            if os.path.isdir(p):
                for e in os.listdir(p):
                    q = os.path.join(p, e)
                    if os.path.isfile(q):
                        os.unlink(q)
        subprocess.run(["tar", "--numeric-owner", "--sort=name", "--mtime=@%d" % MTIME, "--xattrs",
                        "-C", rootfs, "-cf", tar_path + ".tmp", "."], check=True)
        os.rename(tar_path + ".tmp", tar_path)
        with open(gz_path + ".tmp", "wb") as f:
            subprocess.run(["gzip", "-n", "-6", "-c", tar_path], stdout=f, check=True)
        os.rename(gz_path + ".tmp", gz_path)
        shutil.rmtree(rootfs)
    h = hashlib.sha256()
    with open(tar_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"diff_id": "sha256:" + h.hexdigest(), "blob": gz_path, "media_type": MT_GZIP}


def find_mirror():
    cands = []
    for p in ["/etc/apt/sources.list"] + sorted(
            os.path.join("/etc/apt/sources.list.d", f) for f in
            (os.listdir("/etc/apt/sources.list.d") if os.path.isdir("/etc/apt/sources.list.d") else [])):
        try:
            txt = open(p).read()
        except OSError:
            continue
        for line in txt.splitlines():
            line = line.strip()
            if line.startswith("#"):
                continue
            if line.startswith("URIs:"):
                cands.extend(line.split()[1:])
            elif line.startswith("deb "):
                parts = [x for x in line.split() if not x.startswith("[")]
                if len(parts) > 1:
                    cands.append(parts[1])
    for u in cands:
        if u.rstrip("/").endswith("/debian") and "security" not in u:
            return u
    return "http://deb.debian.org/debian"


# ---------------------------------------------------------------- push
def skopeo_copy(layout, tag, dest, multi=False, creds=None, cert_dir=None):
    cmd = ["skopeo", "copy", "--retry-times", "3", "--preserve-digests"]
    if multi:
        cmd += ["--all"]
    if creds:
        cmd += ["--dest-creds", creds]
    if cert_dir:
        cmd += ["--dest-cert-dir", cert_dir]
    else:
        cmd += ["--dest-tls-verify=false"]
    cmd += ["oci:%s:%s" % (layout, tag), "docker://" + dest]
    log("push", dest)
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit("skopeo copy to %s failed" % dest)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="hack state dir")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--no-push", action="store_true")
    a = ap.parse_args()

    plain, tls, token = "127.0.0.1:5000", "127.0.0.1:5443", "127.0.0.1:5001"
    creds = "berth:berthpass"
    certs = os.path.join(a.dir, "certs")
    ca_only = os.path.join(certs, "ca-only")
    os.makedirs(ca_only, exist_ok=True)
    if os.path.exists(os.path.join(certs, "ca.crt")):
        shutil.copyfile(os.path.join(certs, "ca.crt"), os.path.join(ca_only, "ca.crt"))
    oci = os.path.join(a.dir, "oci")
    os.makedirs(oci, exist_ok=True)
    images = {}
    pushes = []  # (layout, tag, dest, multi, creds, certdir)

    # busybox
    bl = busybox_layers(a.busybox)
    lay = Layout(os.path.join(oci, "busybox"))
    bb = lay.image([layer_gz(x) for x in bl])
    lay.tag(bb, "latest")
    bb["ref"] = plain + "/berth/busybox:latest"
    bb["tags"] = [plain + "/berth/busybox:latest", plain + "/berth/busybox:v2"]
    bb["repo"] = plain + "/berth/busybox"
    images["busybox"] = bb
    for t in ["latest", "v2"]:
        pushes.append((lay.path, "latest", plain + "/berth/busybox:" + t, False, None, None))
    pushes.append((lay.path, "latest", tls + "/berth/busybox:latest", False, creds, ca_only))
    pushes.append((lay.path, "latest", token + "/berth/busybox:latest", False, creds, None))

    # a second image sharing busybox's first two layers (for shared-snapshot removal tests)
    sib_extra = Tar()
    sib_extra.file("sibling", "I share layers 1-2 with berth/busybox\n")
    lay = Layout(os.path.join(oci, "sibling"))
    sib = lay.image([layer_gz(bl[0]), layer_gz(bl[1]), layer_gz(sib_extra.bytes())])
    lay.tag(sib, "latest")
    sib["ref"] = plain + "/berth/sibling:latest"
    sib["repo"] = plain + "/berth/sibling"
    images["sibling"] = sib
    pushes.append((lay.path, "latest", sib["ref"], False, None, None))

    # an application image: a named non-root USER with supplementary groups in /etc/group,
    # ENTRYPOINT + CMD, image ENV, a WorkingDir missing from the rootfs, a VOLUME and a
    # STOPSIGNAL — every default a container inherits from its image
    app = Tar()
    app.dir("etc")
    app.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
             "app:x:1000:1000:app user:/home/app:/bin/sh\n"
             "other:x:1001:1001::/home/other:/bin/sh\n"
             "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    app.file("etc/group", "root:x:0:\napp:x:1000:\naudio:x:29:app\nvideo:x:44:other,app\n"
             "staff:x:50:other\nnogroup:x:65534:\n")
    app.dir("home")
    app.dir("home/app")
    lay = Layout(os.path.join(oci, "entry"))
    en = lay.image([layer_gz(x) for x in bl] + [layer_gz(app.bytes())],
                   cmd=["from-cmd"],
                   env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "FOO=image", "KEEP=image"],
                   extra_cfg={"Entrypoint": ["/bin/echo", "entry"], "User": "app",
                              "WorkingDir": "/work/dir", "Volumes": {"/vol": {}},
                              "StopSignal": "SIGUSR1"})
    lay.tag(en, "latest")
    en["ref"] = plain + "/berth/entry:latest"
    en["repo"] = plain + "/berth/entry"
    images["entry"] = en
    pushes.append((lay.path, "latest", en["ref"], False, None, None))

    # a deep image: 120 layers, so a rootfs mount holds more lower dirs than fit one page of
    # mount(2) options
    deep_layers = [layer_gz(bl[0])]
    for n in range(1, 120):
        t = Tar()
        t.dir("layers")
        t.file("layers/%03d" % n, "%d\n" % n)
        deep_layers.append(layer_gz(t.bytes()))
    lay = Layout(os.path.join(oci, "deep"))
    dp = lay.image(deep_layers)
    lay.tag(dp, "latest")
    dp["ref"] = plain + "/berth/deep:latest"
    dp["repo"] = plain + "/berth/deep"
    images["deep"] = dp
    pushes.append((lay.path, "latest", dp["ref"], False, None, None))

    # multiarch
    lay = Layout(os.path.join(oci, "multiarch"))
    amd = lay.image([layer_gz(x) for x in bl] + [layer_gz(arch_layer("amd64"))], arch="amd64")
    arm = lay.image([layer_gz(arch_layer("arm64"))], arch="arm64", variant="v8")
    # attestation-like manifest (buildkit style): in-toto layer, platform unknown/unknown
    att_payload = json.dumps({"_type": "https://in-toto.io/Statement/v0.1",
                              "predicateType": "https://spdx.dev/Document",
                              "subject": [{"name": "berth/multiarch",
                                           "digest": {"sha256": amd["manifest_digest"].split(":")[1]}}],
                              "predicate": {}}, sort_keys=True).encode()
    att_cfg = json.dumps({"architecture": "unknown", "os": "unknown", "config": {},
                          "rootfs": {"type": "layers", "diff_ids": [sha(att_payload)]}}, sort_keys=True).encode()
    att_cfg_d = lay.blob(att_cfg)
    att_pd = lay.blob(att_payload)
    att_man = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                          "config": {"mediaType": MT_CONFIG, "digest": att_cfg_d, "size": len(att_cfg)},
                          "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": att_pd,
                                      "size": len(att_payload),
                                      "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}]},
                         sort_keys=True, indent=2).encode()
    att_d = lay.blob(att_man)
    idx = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": MT_MANIFEST, "digest": arm["manifest_digest"], "size": arm["manifest_size"],
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": MT_MANIFEST, "digest": amd["manifest_digest"], "size": amd["manifest_size"],
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": MT_MANIFEST, "digest": att_d, "size": len(att_man),
         "platform": {"architecture": "unknown", "os": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": amd["manifest_digest"]}},
    ]}
    idx_b = json.dumps(idx, sort_keys=True, indent=2).encode()
    idx_d = lay.blob(idx_b)
    lay.tag({"media_type": MT_INDEX, "manifest_digest": idx_d, "manifest_size": len(idx_b)}, "latest")
    images["multiarch"] = {
        "ref": plain + "/berth/multiarch:latest", "repo": plain + "/berth/multiarch",
        "index_digest": idx_d, "manifest_digest": idx_d,
        "config_digest": amd["config_digest"], "chain_ids": amd["chain_ids"], "diff_ids": amd["diff_ids"],
        "layers": amd["layers"],
        "amd64": amd, "arm64": arm, "attestation_digest": att_d,
    }
    pushes.append((lay.path, "latest", plain + "/berth/multiarch:latest", True, None, None))

    # zstd
    zl = Tar()
    zl.file("zstd-marker", "compressed with zstd\n")
    lay = Layout(os.path.join(oci, "zstd"))
    z = lay.image([layer_zstd(x) for x in bl] + [layer_zstd(zl.bytes())])
    lay.tag(z, "latest")
    z["ref"] = plain + "/berth/zstd:latest"
    z["repo"] = plain + "/berth/zstd"
    images["zstd"] = z
    pushes.append((lay.path, "latest", z["ref"], False, None, None))

    # evil
    for name, data in evil_layers().items():
        lay = Layout(os.path.join(oci, name))
        e = lay.image([layer_gz(data)])
        lay.tag(e, "latest")
        e["ref"] = plain + "/berth/" + name + ":latest"
        e["repo"] = plain + "/berth/" + name
        images[name.replace("-", "_")] = e
        pushes.append((lay.path, "latest", e["ref"], False, None, None))

    # big debian
    if a.big:
        mirror = find_mirror()
        dl = debian_layer(os.path.join(a.dir, "cache"), mirror)
        lay = Layout(os.path.join(oci, "debian"))
        d = lay.image([dl], cmd=["bash"])
        lay.tag(d, "bookworm")
        d["ref"] = plain + "/berth/debian:bookworm"
        d["repo"] = plain + "/berth/debian"
        images["debian"] = d
        pushes.append((lay.path, "bookworm", d["ref"], False, None, None))

    if not a.no_push:
        for p in pushes:
            skopeo_copy(*p)

    # merge with previous images.json so a small rebuild keeps the debian entry
    jpath = os.path.join(a.dir, "images.json")
    if os.path.exists(jpath) and not a.big:
        try:
            old = json.load(open(jpath)).get("images", {})
            if "debian" in old:
                images["debian"] = old["debian"]
        except Exception:
            pass
    doc = {"canary_dir": CANARY_DIR, "registries": {"plain": plain, "tls": tls, "token": token,
                                                    "token_realm": "http://127.0.0.1:5002/token",
                                                    "user": "berth", "password": "berthpass",
                                                    "ca": os.path.join(certs, "ca.crt")},
           "images": images}
    with open(jpath + ".tmp", "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    os.rename(jpath + ".tmp", jpath)

    env = ["# generated by hack/build-images.sh — do not edit", "BERTH_CANARY_DIR=%s" % CANARY_DIR,
           "BERTH_REG_PLAIN=%s" % plain, "BERTH_REG_TLS=%s" % tls, "BERTH_REG_TOKEN=%s" % token,
           "BERTH_REG_CA=%s" % os.path.join(certs, "ca.crt")]
    for name, im in sorted(images.items()):
        k = name.upper()
        env.append("%s_REF=%s" % (k, im["ref"]))
        env.append("%s_REPO=%s" % (k, im["repo"]))
        env.append("%s_MANIFEST_DIGEST=%s" % (k, im["manifest_digest"]))
        env.append("%s_CONFIG_DIGEST=%s" % (k, im["config_digest"]))
        env.append("%s_IMAGE_ID=%s" % (k, im["config_digest"]))
        env.append("%s_LAYERS=\"%s\"" % (k, " ".join(im["layers"])))
        env.append("%s_DIFF_IDS=\"%s\"" % (k, " ".join(im["diff_ids"])))
        env.append("%s_CHAIN_IDS=\"%s\"" % (k, " ".join(im["chain_ids"])))
        env.append("%s_TOP_CHAIN_ID=%s" % (k, im["chain_ids"][-1]))
        if name == "multiarch":
            env.append("MULTIARCH_INDEX_DIGEST=%s" % im["index_digest"])
            for arch in ["amd64", "arm64"]:
                env.append("MULTIARCH_%s_MANIFEST_DIGEST=%s" % (arch.upper(), im[arch]["manifest_digest"]))
                env.append("MULTIARCH_%s_CONFIG_DIGEST=%s" % (arch.upper(), im[arch]["config_digest"]))
            env.append("MULTIARCH_ATTESTATION_DIGEST=%s" % im["attestation_digest"])
    with open(os.path.join(a.dir, "images.env") + ".tmp", "w") as f:
        f.write("\n".join(env) + "\n")
    os.rename(os.path.join(a.dir, "images.env") + ".tmp", os.path.join(a.dir, "images.env"))
    log("wrote %s/images.env and images.json (%d images)" % (a.dir, len(images)))


if __name__ == "__main__":
    main()
