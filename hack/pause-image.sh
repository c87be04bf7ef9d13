#!/usr/bin/env bash
# The pause image containerd's CRI plugin needs for its sandboxes, built without docker and
# pushed to the local registry (berthd needs none: it pins the namespaces itself).
#   hack/pause-image.sh [--force]
# Image: 127.0.0.1:5000/berth/pause:3.9 (BERTH_BENCH_SANDBOX_IMAGE overrides), linux/amd64,
# one layer: /pause, a static C binary built here with `gcc -static` that sleeps in pause(2),
# reaps zombies and exits 0 on SIGINT/SIGTERM (what k8s' pause.c does), plus busybox-static as
# /bin/busybox for poking around. Deterministic (mtime 0, sorted entries, gzip without a
# timestamp): reruns produce the same digest, and a registry that already has it is left
# alone unless --force.
# Work files live in $BERTH_HACK_DIR/pause (default /var/tmp/berth-hack).
set -euo pipefail

DIR="${BERTH_HACK_DIR:-/var/tmp/berth-hack}/pause"
IMAGE="${BERTH_BENCH_SANDBOX_IMAGE:-127.0.0.1:5000/berth/pause:3.9}"
force=0
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "pause-image: unknown argument $a" >&2; exit 2 ;;
  esac
done

log() { echo "pause-image: $*" >&2; }

registry="${IMAGE%%/*}"
if ! curl -sf -o /dev/null -m 2 "http://$registry/v2/"; then
  log "registry on $registry is not up: run hack/registry.sh start"
  exit 1
fi
BB=/bin/busybox
[ -x "$BB" ] || BB=/usr/bin/busybox
if ! file -L "$BB" 2>/dev/null | grep -q 'statically linked'; then
  log "$BB is not statically linked (apt-get install busybox-static)"
  exit 1
fi

mkdir -p "$DIR"
cat >"$DIR/pause.c" <<'EOF'
/* pause: the sandbox process. Holds the pod's namespaces, reaps zombies, exits on signal. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static void on_chld(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_term;
  if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) return 1;
  sa.sa_handler = on_chld;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGCHLD, &sa, NULL) < 0) return 2;
  if (getpid() != 1) fprintf(stderr, "pause: warning: not pid 1\n");
  for (;;) pause();
}
EOF
gcc -static -Os -s -o "$DIR/pause" "$DIR/pause.c"

# OCI layout in $DIR/layout with tag 3.9; prints the manifest digest.
digest="$(python3 - "$DIR" "$BB" <<'PY'
import gzip, hashlib, io, json, os, shutil, sys, tarfile

work, busybox = sys.argv[1], sys.argv[2]
layout = os.path.join(work, "layout")
shutil.rmtree(layout, ignore_errors=True)
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d

def entry(name, kind, mode, data=None):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = kind, mode, 0, 0, 0, "", ""
    if data is not None:
        ti.size = len(data)
    return ti, (io.BytesIO(data) if data is not None else None)

def read(p):
    with open(p, "rb") as f:
        return f.read()

tar_buf = io.BytesIO()
with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    for name, kind, mode, data in [
        ("bin", tarfile.DIRTYPE, 0o755, None),
        ("bin/busybox", tarfile.REGTYPE, 0o755, read(busybox)),
        ("dev", tarfile.DIRTYPE, 0o755, None),
        ("etc", tarfile.DIRTYPE, 0o755, None),
        ("pause", tarfile.REGTYPE, 0o755, read(os.path.join(work, "pause"))),
        ("proc", tarfile.DIRTYPE, 0o555, None),
        ("sys", tarfile.DIRTYPE, 0o555, None),
    ]:
        t.addfile(*entry(name, kind, mode, data))
raw = tar_buf.getvalue()
gz_buf = io.BytesIO()
with gzip.GzipFile(fileobj=gz_buf, mode="wb", mtime=0, filename="") as g:
    g.write(raw)
layer = gz_buf.getvalue()
layer_digest = put(layer)

config = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Entrypoint": ["/pause"], "WorkingDir": "/", "User": "65535:65535"},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    "history": [{"created_by": "hack/pause-image.sh"}],
}
cfg = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": put(cfg), "size": len(cfg)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest, "size": len(layer)}],
}
man = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
man_digest = put(man)
index = {
    "schemaVersion": 2,
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": man_digest, "size": len(man),
                   "annotations": {"org.opencontainers.image.ref.name": "3.9"}}],
}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print(man_digest)
PY
)"

repo_tag="${IMAGE#*/}"
repo="${repo_tag%%:*}"
tag="${repo_tag##*:}"
remote="$(curl -sf -o /dev/null -D - -m 5 -I \
  -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://$registry/v2/$repo/manifests/$tag" 2>/dev/null \
  | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')" || true
if [ "$force" = 0 ] && [ "$remote" = "$digest" ]; then
  log "$IMAGE is up to date ($digest)"
else
  skopeo copy --quiet --retry-times 3 --preserve-digests --dest-tls-verify=false \
    "oci:$DIR/layout:3.9" "docker://$IMAGE" >&2
  log "pushed $IMAGE ($digest)"
fi
echo "$IMAGE@$digest"
