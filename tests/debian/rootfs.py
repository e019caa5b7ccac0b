"""Throw-away Debian roots for the package tests: mmdebstrap (or debootstrap) from
Debian's archive once, cached as a directory by input hash; every test gets a
fresh overlay of it (overlayfs: the cache stays untouched, the test's writes go
to its own upper directory; a full copy where overlayfs cannot be mounted).

    python3 tests/debian/rootfs.py --build-dir build/debian/rootfs --profile base

Two profiles:
  base  minbase + what python3-pynq-alloc and pynq-alloc-board depend on
        (adduser, python3, python3-numpy): install/upgrade/purge of those two.
  dkms  base + dkms, its compiler and Debian's kernel headers (linux-headers-amd64
        on this x86_64 host, or the host's architecture): a real DKMS build of
        u-dma-buf-dkms inside the root.

The root is real Debian bookworm: dpkg runs the packages' maintainer scripts in
it through chroot, with the root's own adduser, dkms and gcc. Needs root
(chroot, mounts), mmdebstrap or debootstrap, and network to the Debian archive.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE = ["adduser", "python3", "python3-numpy"]


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def profile_packages(profile: str) -> list[str]:
    if profile == "base":
        return list(BASE)
    if profile == "dkms":
        # dkms pulls gcc, make, dpkg-dev; the headers metapackage the kernel's ABI.
        return [*BASE, "dkms", "kmod", f"linux-headers-{host_arch()}"]
    raise SystemExit(f"rootfs: unknown profile '{profile}': give base or dkms")


def key(profile: str) -> str:
    text = "\n".join([SUITE, MIRROR, host_arch(), "minbase", *profile_packages(profile)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_root(build_dir: Path, profile: str) -> Path:
    """The cached root for a profile, made with debootstrap when missing."""
    out = build_dir / f"{SUITE}-{profile}-{key(profile)}"
    if out.is_dir():
        return out
    if os.geteuid() != 0:
        raise SystemExit("rootfs: debootstrap needs root (run the Debian package tests as root)")
    # mmdebstrap (apt does the downloads, in parallel) takes about half the time.
    tool = "mmdebstrap" if shutil.which("mmdebstrap") else "debootstrap"
    if shutil.which(tool) is None:
        raise SystemExit("rootfs: neither mmdebstrap nor debootstrap found: "
                         "apt-get install mmdebstrap")
    build_dir.mkdir(parents=True, exist_ok=True)
    work = build_dir / f"tmp-{profile}"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    print(f"rootfs: {tool} {SUITE} ({profile}: {' '.join(profile_packages(profile))}) "
          f"from {MIRROR}", file=sys.stderr, flush=True)
    result = subprocess.run(
        [tool, "--variant=minbase", f"--include={','.join(profile_packages(profile))}",
         *(["--quiet"] if tool == "mmdebstrap" else []), SUITE, str(work), MIRROR],
        capture_output=True, text=True, check=False)
    if result.returncode:
        log = work / "debootstrap/debootstrap.log"
        detail = log.read_text()[-3000:] if log.exists() else result.stderr[-3000:]
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"rootfs: {tool} failed (exit {result.returncode}); is {MIRROR} "
                         f"reachable? (DEBIAN_MIRROR= picks another)\n{detail}")
    # Downloaded packages and apt's lists are not part of the root.
    for deb in (work / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    for lists in (work / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    # Maintainer scripts must not start services in the root.
    policy = work / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    work.rename(out)
    print(f"rootfs: {out.name} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return out


@contextlib.contextmanager
def fresh_root(build_dir: Path, profile: str, where: Path) -> Iterator[Path]:
    """A fresh root at `where/merged` for one test, with /proc mounted while in use."""
    lower = cached_root(build_dir, profile)
    merged, upper, work = where / "merged", where / "upper", where / "work"
    for d in (merged, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    overlay = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
        capture_output=True, check=False).returncode == 0
    if not overlay:
        subprocess.run(["cp", "-a", f"{lower}/.", str(merged)], check=True)
    mounted = []
    try:
        # dpkg itself does without /proc; dkms and python like to have it.
        if subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")],
                          capture_output=True, check=False).returncode == 0:
            mounted.append(merged / "proc")
        yield merged
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], check=False)
        if overlay:
            subprocess.run(["umount", "-l", str(merged)], check=False)
        shutil.rmtree(where, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="build the cached Debian roots")
    parser.add_argument("--build-dir", type=Path, default=Path("build/debian/rootfs"))
    parser.add_argument("--profile", choices=["base", "dkms"], default="base")
    args = parser.parse_args()
    print(cached_root(args.build_dir, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
