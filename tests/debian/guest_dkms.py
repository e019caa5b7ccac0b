"""DKMS inside the QEMU arm64 guest: u-dma-buf-dkms compiled by Debian's dkms and gcc
for Debian's arm64 kernel, under TCG, then loaded on the DTB that build-dtb makes.

    python3 tests/debian/guest_dkms.py --deb build/debian/u-dma-buf-dkms_5.5.0-1_all.deb

The guest's root is an initramfs of Debian bookworm arm64 packages (dkms, gcc, make,
kmod, bash and the tools dkms calls, linux-headers-<abi>-arm64, the kernel's own
modules) fetched with the QEMU harness's private apt (tests/qemu/harness.py, used
read-only) and unpacked with dpkg -x, plus the u-dma-buf-dkms package unpacked the
same way. No maintainer script runs: /init does what the package's postinst does
(dkms add, build, install for the running kernel), times it, loads the module and
checks that the DTB's two devices exist. Prints `guest-dkms: ...` lines; exit 0 when
the module built, loaded and created udmabuf0 and udmabuf1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests/qemu"))

import harness  # noqa: E402  (read-only use: its private apt and cpio writer)

MEMORY = "3G"  # the unpacked toolchain and headers live in RAM (initramfs)
TOOLS = ["busybox-static", "bash", "coreutils", "sed", "grep", "findutils", "mawk", "gzip",
         "xz-utils", "tar", "diffutils", "kmod", "make", "gcc", "dkms"]
PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "usr/share/lintian", "usr/share/zoneinfo", "usr/share/i18n"]

INIT = r"""#!/bin/sh
/bin/busybox mkdir -p /usr/lib/busybox
/bin/busybox --install -s /usr/lib/busybox
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/busybox HOME=/root LANG=C
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp; mkdir -p /var/lib/dkms /run; ln -sf /proc/self/fd /dev/fd
K=$(uname -r)
echo "guest-dkms: kernel $K $(uname -m)"
t0=$(cut -d' ' -f1 /proc/uptime)
dkms add -m u-dma-buf -v @PV@ >/tmp/dkms.log 2>&1 &&
dkms build -m u-dma-buf -v @PV@ -k "$K" >>/tmp/dkms.log 2>&1 &&
dkms install -m u-dma-buf -v @PV@ -k "$K" >>/tmp/dkms.log 2>&1
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
echo "guest-dkms: dkms add+build+install rc=$rc in $(awk "BEGIN{print $t1-$t0}") s"
[ $rc -eq 0 ] || { tail -40 /tmp/dkms.log;
                  tail -40 /var/lib/dkms/u-dma-buf/@PV@/build/make.log 2>/dev/null; }
dkms status u-dma-buf | sed 's/^/guest-dkms: status /'
modprobe u-dma-buf; echo "guest-dkms: modprobe rc=$?"
for d in /sys/class/u-dma-buf/*; do
  [ -e "$d" ] &&
    echo "guest-dkms: device $(basename $d) phys_addr=$(cat $d/phys_addr) size=$(cat $d/size)"
done
echo "guest-dkms: done"
poweroff -f
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=REPO / "build/debian/guest")
    parser.add_argument("--deb", type=Path, required=True)
    parser.add_argument("--timeout", type=int, default=1800)
    args = parser.parse_args()
    build: Path = args.build_dir.resolve()
    build.mkdir(parents=True, exist_ok=True)
    pv = args.deb.name.split("_")[1].rsplit("-", 1)[0]
    t0 = time.monotonic()
    apt = harness.Apt(build / "apt")
    apt.update()
    kpkg = apt.kernel_abi_package()
    abi = kpkg[len("linux-image-"):]
    pkgs = apt.resolve([*TOOLS, f"linux-headers-{abi}", kpkg])
    debs = apt.download(pkgs)
    rootfs = build / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir()
    for deb in [*debs, args.deb]:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(rootfs)], check=True)
    for p in PRUNE:
        shutil.rmtree(rootfs / p, ignore_errors=True)
    # The kernel's own modules: u-dma-buf depends on none, and this guest needs none
    # (console, devtmpfs, CMA and dma-buf are built in); modules.* indexes stay.
    for kernel_dir in rootfs.glob("lib/modules/*/kernel"):
        shutil.rmtree(kernel_dir)
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "var/lib/dkms"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    sh = rootfs / "bin/sh"
    if sh.exists() or sh.is_symlink():
        sh.unlink()
    sh.symlink_to("bash")
    (rootfs / "init").write_text(INIT.replace("@PV@", pv))
    (rootfs / "init").chmod(0o755)
    vmlinuz = next(rootfs.glob("boot/vmlinuz-*"))
    shutil.copy(vmlinuz, build / "vmlinuz")
    initrd = build / "initrd.cpio"
    with open(initrd, "wb") as f:
        cpio = harness.Cpio(f)
        cpio.tree(rootfs)
        cpio.chardev("dev/console", 5, 1)
        cpio.chardev("dev/null", 1, 3, 0o666)
        cpio.close()
    shutil.rmtree(rootfs)
    dtb = build / "virt.dtb"
    subprocess.run([str(REPO / "device-tree/qemu-virt/build-dtb"), "--memory", MEMORY, "--smp",
                    "1", "--cpu", "cortex-a53", "--out", str(dtb)], check=True)
    prepared = time.monotonic() - t0
    print(f"guest-dkms: image {initrd.stat().st_size >> 20} MiB ({len(pkgs)} packages, kernel "
          f"{abi}) in {prepared:.0f} s", flush=True)
    cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-smp", "1", "-m", MEMORY,
           "-nographic", "-nic", "none", "-no-reboot", "-kernel", str(build / "vmlinuz"),
           "-initrd", str(initrd), "-dtb", str(dtb),
           "-append", "console=ttyAMA0 panic=-1 quiet loglevel=4 rdinit=/init"]
    t1 = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                            timeout=args.timeout, check=False)
    (build / "console.log").write_text(result.stdout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("guest-dkms:")]
    print("\n".join(lines))
    print(f"guest-dkms: boot to power-off {time.monotonic() - t1:.0f} s "
          f"(console: {build / 'console.log'})")
    text = "\n".join(lines)
    ok = (re.search(r"dkms add\+build\+install rc=0", text) and "modprobe rc=0" in text
          and "device udmabuf0" in text and "device udmabuf1" in text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
