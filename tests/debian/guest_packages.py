"""The three Debian packages on the QEMU arm64 guest, end to end: installed by apt from
local files, DKMS compiling u-dma-buf for the running Debian arm64 kernel, the module
loaded and the package's udev rule applied by real udev, the on-target suite
(tests/target) passing with a non-root member of the package's `dma` group; twice:

  dt      QEMU's own DTB with three pools added by device-tree/pynq-alloc-dtb (a no-map
          pool and two CMA pools: udmabuf0, udmabuf1, udmabuf2);
  params  QEMU's own DTB (no reserved-memory node, no u-dma-buf node), `cma=256M` on the
          kernel command line, and udmabuf0=<bytes> in the board package's
          /etc/modprobe.d/u-dma-buf.conf (the buffer comes from CMA);

each ending in `apt-get purge` of the three and a check that nothing is left (group, rule,
module options, module files, DKMS tree, state directory, dpkg entries).

    python3 tests/debian/guest_packages.py --debs build/debian [--mode dt|params|both]

The guest's root is an initramfs of Debian bookworm arm64 packages (dpkg, apt, adduser,
passwd, udev, kmod, dkms, gcc, make, python3, python3-numpy, python3-pytest, the kernel's
linux-headers-<abi>-arm64 and modules indexes), fetched with the QEMU harness's private
apt (tests/qemu/harness.py, used read-only) and unpacked with dpkg -x on this host (it has
no arm64 emulation for maintainer scripts). The dpkg database of those packages is written
here from their own control files ("install ok installed", with their file lists), which
is what a bootstrap's configure stage leaves; their maintainer scripts do not run (what
they would do and the guest needs, /etc/passwd and /etc/group from base-passwd, /bin/sh,
is done here). Our three packages are then installed in the guest by Debian's apt and
dpkg with all their maintainer scripts: DKMS builds there, addgroup makes `dma`.
The image (everything but the suite's run) is cached by input hash under
--build-dir; the module is compiled in every boot (that is what is tested).

The suite runs as ptest-runner runs run-ptest (the layer's run-ptest: `pytest --automake`
on tests/target, with the harness's --automake plugin), as root, with `dmauser` (in dma)
and `nodma` made by useradd after the install; its PASS:/FAIL:/SKIP: lines are counted by
the harness's Console. Exit 0 only when, in every mode: apt installed the three, DKMS
built and installed the module, modprobe made the expected devices, udev gave them to
group dma 0660, the suite ran every collected test with no FAIL and no error, and purge
left nothing.
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

import harness  # noqa: E402  (read-only use: its apt, cpio writer, pyc compiler, Console)

IMAGE_RECIPE = "4"  # bump when the image recipe below changes in a way its inputs miss
MEMORY = "3G"  # the root (toolchain, headers, python) lives in RAM
CMA = "256M"
PARAM_BYTES = 16 << 20
DT_POOLS = ["--nomap", "16M", "--cma", "16M", "--cma", "8M"]  # udmabuf0, 1, 2
PACKAGES = ["busybox-static", "dash", "bash", "coreutils", "base-files", "base-passwd",
            "libc-bin", "dpkg", "apt", "adduser", "passwd", "sed", "grep", "findutils", "mawk", "gzip",
            "xz-utils", "tar", "diffutils", "kmod", "udev", "make", "gcc", "dkms",
            "python3", "python3-numpy", "python3-pytest"]
PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "usr/share/lintian", "usr/share/zoneinfo", "usr/share/i18n", "lib/udev/hwdb.d",
         "usr/lib/python3.11/test", "usr/lib/python3/dist-packages/numpy/core/include"]
MARK = harness.MARK
SUITE_DIR = "/usr/lib/pynq-alloc-debian/ptest"

INIT = r"""#!/bin/sh
M=@@PYNQ-QEMU
MODE=@MODE@
/bin/busybox mkdir -p /usr/lib/busybox
/bin/busybox --install -s /usr/lib/busybox
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/busybox HOME=/root LANG=C.UTF-8
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TERM=dumb DEBIAN_FRONTEND=noninteractive
finish() { echo "$M done"; sync; poweroff -f; }
trap finish EXIT
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run; mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd
echo "127.0.0.1 localhost" > /etc/hosts
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk "BEGIN{printf \"%.0f\", $(up)-$1}"; }
check() { if eval "$2"; then echo "$M check ok $1"; else echo "$M check FAIL $1"; fi; }
echo "$M init-start $(uname -r) $(uname -m) mode=$MODE t=$(up)"
echo "$M cmdline $(cat /proc/cmdline)"
dmesg | grep -i -E 'reserved mem|cma: ' | sed "s/^/$M info dmesg: /"
/lib/systemd/systemd-udevd --daemon >/dev/null 2>&1
udevadm trigger --type=subsystems --action=add; udevadm trigger --type=devices --action=add
udevadm settle --timeout=120
check "no group dma before the install" '! getent group dma >/dev/null'

t=$(up)
apt-get install -y --no-install-recommends /root/debs/*.deb >/tmp/apt.log 2>&1
rc=$?
echo "$M apt-install rc=$rc took=$(since $t)"
[ $rc -eq 0 ] || tail -n 40 /tmp/apt.log
grep -i -E 'building module|dkms|done|error|warn' /tmp/apt.log | tail -n 12 | sed "s/^/$M info apt: /"
dkms status u-dma-buf 2>&1 | sed "s/^/$M info dkms: /"
check "dkms installed u-dma-buf for $(uname -r)" \
    'dkms status u-dma-buf -k "$(uname -r)" 2>/dev/null | grep -q ": installed"'
check "the module file is under /lib/modules/$(uname -r)" \
    '[ -n "$(find /lib/modules/$(uname -r) -name "u-dma-buf.ko*")" ]'
check "postinst made the system group dma" 'getent group dma >/dev/null'
check "the udev rule is installed" '[ -f /lib/udev/rules.d/60-u-dma-buf.rules ]'
check "the module autoload is installed" 'grep -qx u-dma-buf /usr/lib/modules-load.d/u-dma-buf.conf'

if [ "$MODE" = params ]; then
    # What the conffile's comment tells a user to do: one options line.
    echo "options u-dma-buf udmabuf0=@BYTES@" >> /etc/modprobe.d/u-dma-buf.conf
    grep -v '^#' /etc/modprobe.d/u-dma-buf.conf | grep . | sed "s/^/$M info modprobe.d: /"
fi
# systemd-modules-load's work at the next boot: every modules-load.d entry.
for conf in /usr/lib/modules-load.d/*.conf /etc/modules-load.d/*.conf; do
    [ -f "$conf" ] || continue
    grep -v -E '^[#;]|^$' "$conf" | while read -r mod rest; do
        out=$(/sbin/modprobe "$mod" 2>&1); echo "$M modprobe $mod rc=$? $out"
    done
done
udevadm settle --timeout=120
regions=""
for d in /sys/class/u-dma-buf/*; do
    [ -d "$d" ] || continue
    n=${d##*/}
    regions="$regions $n@$(cat $d/phys_addr)+$(cat $d/size)"
    stat -c "%n %U:%G %a" /dev/$n $d/sync_for_cpu | sed "s/^/$M info /"
done
echo "$M regions$regions"
for n in @DEVICES@; do
    check "/dev/$n exists" '[ -c /dev/$n ]'
    check "udev gave /dev/$n to group dma, mode 660" \
        '[ "$(stat -c %G:%a /dev/$n)" = dma:660 ]'
done
[ "$MODE" = params ] && check "udmabuf0 has the size of the module option" \
    '[ "$(cat /sys/class/u-dma-buf/udmabuf0/size)" = @BYTES@ ]'
[ "$MODE" = dt ] && check "no module option in dt mode" \
    '! grep -q "^options" /etc/modprobe.d/u-dma-buf.conf'

useradd -M -d /tmp -s /bin/sh -u 1000 -U -G dma dmauser
useradd -M -d /tmp -s /bin/sh -u 1001 -U nodma
check "dmauser is a non-root member of dma" 'id -nG dmauser | grep -qw dma'

# ptest-runner's protocol, as tests/qemu/guest/init prints it.
dir=@SUITE@
n=$(cd "$dir" && python3 -m pytest --collect-only -q -p no:cacheprovider tests/target 2>&1 | \
    sed -n 's/^\([0-9][0-9]*\) tests\{0,1\} collected.*/\1/p')
echo "$M ptest-expected $dir ${n:-0}"
echo "$M suite-begin t=$(up)"
echo "BEGIN: $dir"
t=$(up)
(cd "$dir" && timeout 1200 ./run-ptest) 2>&1
rc=$?
[ $rc -eq 0 ] || echo "ERROR: Exit status is $rc"
echo "DURATION: $(since $t)"
echo "END: $dir"
echo "$M suite-end t=$(up)"

# Purge, as an administrator would: unload the module first, then remove the three.
modprobe -r u-dma-buf; echo "$M modprobe-r rc=$?"
t=$(up)
apt-get purge -y python3-pynq-alloc pynq-alloc-board u-dma-buf-dkms >/tmp/purge.log 2>&1
rc=$?
echo "$M apt-purge rc=$rc took=$(since $t)"
[ $rc -eq 0 ] || tail -n 30 /tmp/purge.log
check "purge: no group dma" '! getent group dma >/dev/null'
check "purge: dmauser in no dma group" '! grep -q "^dma:" /etc/group /etc/gshadow 2>/dev/null'
check "purge: no udev rule" '[ -z "$(ls /lib/udev/rules.d /etc/udev/rules.d 2>/dev/null | grep u-dma-buf)" ]'
check "purge: no modprobe.d or modules-load.d file" \
    '! ls /etc/modprobe.d/u-dma-buf.conf /usr/lib/modules-load.d/u-dma-buf.conf >/dev/null 2>&1'
check "purge: no module file" '[ -z "$(find /lib/modules -name "u-dma-buf.ko*")" ]'
check "purge: no module in modules.dep" '! grep -q u-dma-buf /lib/modules/$(uname -r)/modules.dep'
check "purge: no DKMS tree or source" '[ ! -e /var/lib/dkms/u-dma-buf ] && [ -z "$(ls -d /usr/src/u-dma-buf* 2>/dev/null)" ]'
check "purge: no state or ledger directory" '[ ! -e /var/lib/pynq-alloc-board ] && [ ! -e /run/pynq-alloc ]'
check "purge: no python package" '! python3 -c "import pynq_alloc" 2>/dev/null'
check "purge: dpkg knows none of the three" \
    '[ -z "$(dpkg-query -W -f="\${db:Status-Abbrev}\${Package}\n" python3-pynq-alloc pynq-alloc-board u-dma-buf-dkms 2>/dev/null | grep -v "^un")" ]'
"""


def control(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                          check=True).stdout


def file_list(deb: Path) -> list[str]:
    out = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -t", shell=True,
                         capture_output=True, text=True, check=True).stdout
    names = []
    for line in out.splitlines():
        name = "/" + line.lstrip("./").rstrip("/")
        names.append("/." if name == "/" else name)
    return names


def register(root: Path, debs: list[Path]) -> None:
    """/var/lib/dpkg as a configured bootstrap leaves it: a status entry (from the
    package's own control file) and a file list for every unpacked package."""
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True, exist_ok=True)
    entries = []
    for deb in debs:
        fields = control(deb).rstrip("\n")
        name = re.search(r"^Package: (\S+)", fields, re.M).group(1)  # type: ignore[union-attr]
        arch = re.search(r"^Architecture: (\S+)", fields, re.M).group(1)  # type: ignore[union-attr]
        lines = fields.splitlines()
        lines.insert(1, "Status: install ok installed")
        entries.append("\n".join(lines) + "\n")
        same = re.search(r"^Multi-Arch: same", fields, re.M) is not None
        stem = f"{name}:{arch}" if same else name
        (info / f"{stem}.list").write_text("\n".join(file_list(deb)) + "\n")
    (root / "var/lib/dpkg/status").write_text("\n".join(entries))
    for f in ("available", "diversions", "statoverride"):
        (root / "var/lib/dpkg" / f).touch()
    for d in ("updates", "triggers", "alternatives", "parts"):
        (root / "var/lib/dpkg" / d).mkdir(exist_ok=True)
    for d in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt",
              "var/lib/dkms", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)


def build_image(build: Path, debs_dir: Path) -> tuple[Path, Path, str]:
    """The base initramfs (Debian packages, registered) and the kernel; cached by the
    resolved package versions and this recipe."""
    apt = harness.Apt(build / "apt")
    apt.update()
    kpkg = apt.kernel_abi_package()
    abi = kpkg[len("linux-image-"):]
    pkgs = apt.resolve([*PACKAGES, f"linux-headers-{abi}", kpkg])
    manifest = "\n".join(f"{n} {v} {a}" for n, v, a in sorted(pkgs))
    key = harness.sha(IMAGE_RECIPE, manifest, "\n".join(PRUNE))
    base = build / f"base-{key}.cpio"
    vmlinuz = build / f"vmlinuz-{abi}"
    if base.exists() and vmlinuz.exists():
        harness.log(f"guest image: cached {base.name} ({len(pkgs)} packages)")
        return base, vmlinuz, abi
    for old in build.glob("base-*.cpio"):
        old.unlink()
    t0 = time.monotonic()
    debs = apt.download(pkgs)
    root = build / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    register(root, debs)
    for p in PRUNE:
        shutil.rmtree(root / p, ignore_errors=True)
    # The kernel's own modules: u-dma-buf needs none and this guest loads none
    # (console, devtmpfs, CMA, dma-buf are built in); the modules.* indexes stay.
    for kdir in root.glob("lib/modules/*/kernel"):
        shutil.rmtree(kdir)
    for d in ("proc", "sys", "dev", "tmp", "run", "root/debs", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # What the unrun maintainer scripts would have done and the guest needs.
    for name in ("passwd", "group"):
        shutil.copy(root / f"usr/share/base-passwd/{name}.master", root / "etc" / name)
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).write_text("")
    sh = root / "bin/sh"
    if sh.exists() or sh.is_symlink():
        sh.unlink()
    sh.symlink_to("dash")
    # update-alternatives of mawk (dkms runs awk) and of libblas3/liblapack3 (numpy).
    alternatives = {"usr/bin/awk": "/usr/bin/mawk",
                    "usr/lib/aarch64-linux-gnu/libblas.so.3":
                        "/usr/lib/aarch64-linux-gnu/blas/libblas.so.3",
                    "usr/lib/aarch64-linux-gnu/liblapack.so.3":
                        "/usr/lib/aarch64-linux-gnu/lapack/liblapack.so.3"}
    (root / "etc/alternatives").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/alternatives").mkdir(parents=True, exist_ok=True)
    for link, target in alternatives.items():
        if not (root / target.lstrip("/")).exists():
            raise SystemExit(f"guest-packages: {target} is not in the image: the package "
                             f"that ships it changed; update `alternatives` here")
        name = Path(link).name
        (root / "etc/alternatives" / name).symlink_to(target)
        (root / link).symlink_to(f"/etc/alternatives/{name}")
    py3 = root / "usr/bin/python3"
    if not py3.exists():
        py3.symlink_to(f"python{harness.GUEST_PYTHON}")
    harness.compile_pyc(root, [f"usr/lib/python{harness.GUEST_PYTHON}",
                               "usr/lib/python3/dist-packages"])
    shutil.copy(next(root.glob("boot/vmlinuz-*")), vmlinuz)
    tmp = base.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        cpio = harness.Cpio(f)
        cpio.tree(root)
        cpio.chardev("dev/console", 5, 1)
        cpio.chardev("dev/null", 1, 3, 0o666)
        cpio.close()
    tmp.rename(base)
    shutil.rmtree(root)
    harness.log(f"guest image: {len(pkgs)} packages, {base.stat().st_size >> 20} MiB, "
                f"kernel {abi}, in {time.monotonic() - t0:.0f} s")
    return base, vmlinuz, abi


def overlay(build: Path, debs: list[Path], mode: str, devices: list[str]) -> Path:
    """/init for the mode, the three .debs, and the suite as the layer's ptest ships it."""
    root = build / f"overlay-{mode}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "root/debs").mkdir(parents=True)
    for deb in debs:
        shutil.copy(deb, root / "root/debs" / deb.name)
    suite = root / SUITE_DIR.lstrip("/")
    shutil.copytree(REPO / "tests/target", suite / "tests/target",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run_ptest = REPO / "meta-pynq-alloc/recipes-devtools/python/python3-pynq-alloc/run-ptest"
    shutil.copy(run_ptest, suite / "run-ptest")
    (suite / "run-ptest").chmod(0o755)
    # pytest's --automake: the harness's stand-in, as a pytest11 entry point.
    site = root / harness.GUEST_SITE.lstrip("/")
    site.mkdir(parents=True)
    shutil.copy(REPO / "tests/qemu/guest/pytest_automake.py", site / "pytest_automake.py")
    am = site / "pytest_automake_standin-0.dist-info"
    am.mkdir()
    (am / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-automake-standin\n"
                                 "Version: 0\n")
    (am / "entry_points.txt").write_text("[pytest11]\nautomake = pytest_automake\n")
    init = (INIT.replace("@MODE@", mode).replace("@BYTES@", str(PARAM_BYTES))
            .replace("@DEVICES@", " ".join(devices)).replace("@SUITE@", SUITE_DIR))
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    out = build / f"overlay-{mode}.cpio"
    with open(out, "wb") as f:
        cpio = harness.Cpio(f)
        cpio.tree(root)
        cpio.close()
    shutil.rmtree(root)
    return out


def boot(build: Path, base: Path, vmlinuz: Path, mode: str, debs: list[Path],
         timeout: int) -> bool:
    devices = ["udmabuf0", "udmabuf1", "udmabuf2"] if mode == "dt" else ["udmabuf0"]
    over = overlay(build, debs, mode, devices)
    initrd = build / f"initrd-{mode}.img"
    with open(initrd, "wb") as out:
        for part in (base, over):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    machine = ["-cpu", "cortex-a53", "-smp", "1", "-m", MEMORY, "-nographic", "-nic", "none"]
    cmd = ["qemu-system-aarch64", "-M", "virt", *machine, "-no-reboot",
           "-kernel", str(vmlinuz), "-initrd", str(initrd)]
    append = "console=ttyAMA0 panic=-1 quiet loglevel=4 rdinit=/init"
    if mode == "dt":
        # QEMU's DTB for this very machine, then the board user's step: pynq-alloc-dtb.
        qemu_dtb, dtb = build / "qemu-virt.dtb", build / "virt-pools.dtb"
        subprocess.run(["qemu-system-aarch64", "-M", f"virt,dumpdtb={qemu_dtb}", *machine],
                       check=True, capture_output=True)
        subprocess.run([str(REPO / "device-tree/pynq-alloc-dtb"), "--in", str(qemu_dtb),
                        "--out", str(dtb), *DT_POOLS], check=True)
        cmd += ["-dtb", str(dtb)]
    else:
        append += f" cma={CMA}"  # QEMU's own DTB: no reserved-memory, no u-dma-buf node
    cmd += ["-append", append]
    harness.log(f"[{mode}] booting: {' '.join(cmd)}")
    t0 = time.monotonic()
    con = harness.Console()
    log_path = build / f"console-{mode}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        assert proc.stdout is not None
        deadline = t0 + timeout
        for line in proc.stdout:
            line = line.rstrip("\r\n")
            log_file.write(line + "\n")
            con.feed(line, lambda text: print(text, flush=True))
            if line.startswith(MARK) and not line.startswith(f"{MARK} info"):
                print(f"  [{mode} {time.monotonic() - t0:5.0f}s] {line[len(MARK) + 1:]}",
                      flush=True)
            if time.monotonic() > deadline:
                proc.kill()
                print(f"  [{mode}] TIMEOUT after {timeout} s")
                break
        proc.wait()
    elapsed = time.monotonic() - t0
    checks = con.notes.get("check", [])
    failed = [c for c in checks if not c.startswith("ok ")]
    ptest = con.ptest.get(SUITE_DIR, harness.Console._new())
    got = len(ptest["PASS"]) + len(ptest["FAIL"]) + len(ptest["SKIP"])
    expected = ptest["expected"]
    apt_ok = con.marks.get("apt-install", "").startswith("rc=0")
    purge_ok = con.marks.get("apt-purge", "").startswith("rc=0")
    suite_ok = (ptest["begun"] and not ptest["FAIL"] and not ptest["error"]
                and expected is not None and expected > 0 and got == expected)
    ok = (apt_ok and purge_ok and suite_ok and not failed and len(checks) >= 20
          and "done" in con.marks and not con.panic)
    print(f"guest-packages [{mode}]: {'OK' if ok else 'FAILED'} in {elapsed:.0f} s; "
          f"apt install {con.marks.get('apt-install', 'missing')}; "
          f"suite {len(ptest['PASS'])} passed, {len(ptest['FAIL'])} failed, "
          f"{len(ptest['SKIP'])} skipped of {expected} collected; "
          f"checks {len(checks) - len(failed)}/{len(checks)} ok; "
          f"purge {con.marks.get('apt-purge', 'missing')}; console: {log_path}")
    for c in failed:
        print(f"  check {c}")
    for s in ptest["SKIP"]:
        print(f"  SKIP: {s}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=REPO / "build/debian/guest-packages")
    parser.add_argument("--debs", type=Path, default=REPO / "build/debian",
                        help="the directory `make debs` filled")
    parser.add_argument("--mode", choices=["dt", "params", "both"], default="both")
    parser.add_argument("--timeout", type=int, default=2400, help="per boot, seconds")
    args = parser.parse_args()
    build: Path = args.build_dir.resolve()
    build.mkdir(parents=True, exist_ok=True)
    debs = []
    for name in ("u-dma-buf-dkms", "pynq-alloc-board", "python3-pynq-alloc"):
        found = sorted(args.debs.glob(f"{name}_*_all.deb"))
        if not found:
            fix = ("make debs UDMABUF_SRC=<u-dma-buf clone or mirror>"
                   if name == "u-dma-buf-dkms" else "make debs")
            raise SystemExit(f"guest-packages: no {name}_*_all.deb in {args.debs}: run '{fix}'")
        debs.append(found[-1])
    t0 = time.monotonic()
    base, vmlinuz, abi = build_image(build, args.debs)
    print(f"guest-packages: image ready in {time.monotonic() - t0:.0f} s (kernel {abi})",
          flush=True)
    modes = ["dt", "params"] if args.mode == "both" else [args.mode]
    results = {m: boot(build, base, vmlinuz, m, debs, args.timeout) for m in modes}
    print(f"guest-packages: {', '.join(f'{m} ' + ('OK' if r else 'FAILED') for m, r in results.items())}"
          f" in {time.monotonic() - t0:.0f} s")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
