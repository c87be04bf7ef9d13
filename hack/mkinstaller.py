#!/usr/bin/env python3
"""Build the berth node installer image (manifests/installer/) as an OCI layout, no docker.

Called by hack/build-installer-image.sh. Reuses hack/mkimages.py's tar and layout writers, so
the image is reproducible: the same binaries give the same digest.
Contents: a static busybox (sh, cp, mv, cmp, nsenter, sleep...) and /opt/berth/{bin/berthd,
bin/berthctl, bin/berth-shim, config.toml, berthd.service, operations.md}, with berth-install as entrypoint.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mkimages  # noqa: E402

APPLETS = ["sh", "cp", "mv", "cmp", "chmod", "mkdir", "rm", "cat", "echo", "sed", "sleep",
           "nsenter", "dirname", "test", "[", "ls", "true", "false"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True, help="holds berthd, berthctl, berth-shim")
    ap.add_argument("--repo", required=True, help="the source tree (for manifests/)")
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--out", required=True, help="OCI layout directory to write")
    ap.add_argument("--tag", default="dev")
    a = ap.parse_args()

    def read(p):
        with open(p, "rb") as f:
            return f.read()

    base = mkimages.Tar()
    for d in ["bin", "etc", "dev", "proc", "sys", "host", "run", "usr", "usr/local", "usr/local/bin"]:
        base.dir(d)
    base.dir("tmp", 0o1777)
    base.file("bin/busybox", read(a.busybox), 0o755)
    for app in APPLETS:
        base.symlink("bin/" + app, "busybox")
    base.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")

    berth = mkimages.Tar()
    for d in ["opt", "opt/berth", "opt/berth/bin", "usr", "usr/local", "usr/local/bin"]:
        berth.dir(d)
    for b in ["berthd", "berthctl", "berth-shim"]:
        berth.file("opt/berth/bin/" + b, read(os.path.join(a.bin_dir, b)), 0o755)
    m = os.path.join(a.repo, "manifests")
    berth.file("opt/berth/config.toml", read(os.path.join(m, "config.toml")))
    berth.file("opt/berth/berthd.service", read(os.path.join(m, "berthd.service")))
    berth.file("opt/berth/operations.md", read(os.path.join(a.repo, "docs", "operations.md")))
    berth.file("usr/local/bin/berth-install", read(os.path.join(m, "installer", "berth-install")), 0o755)

    lay = mkimages.Layout(a.out)
    desc = lay.image([mkimages.layer_gz(base.bytes()), mkimages.layer_gz(berth.bytes())],
                     cmd=["/usr/local/bin/berth-install", "--root", "/host"])
    lay.tag(desc, a.tag)
    print(desc["manifest_digest"])


if __name__ == "__main__":
    main()
