"""Why no region is usable: the checks `pynq-alloc info` runs, each with its fix.

From the kernel up, as an allocation needs them: the u-dma-buf module (loaded, built
in, or at least installed), the device tree's ``ikwzm,u-dma-buf`` nodes, the regions
the driver made (``/sys/class/u-dma-buf/<name>``), their device files (present, a
character device, open-able read-write by this user), and the ledger directory every
process shares (``/run/pynq-alloc``). Every path is a field of :class:`Roots`, so the
checks run on a board, on the simulator's files, or on a tree a test writes.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

U_DMA_BUF_COMPATIBLE = b"ikwzm,u-dma-buf"
#: The module's name in /proc/modules and /sys/module (dashes become underscores).
MODULE_NAME = "u_dma_buf"
#: The group meta-pynq-alloc's udev rule gives the devices (and its tmpfiles.d entry the
#: ledger directory).
DMA_GROUP = "dma"


@dataclass(frozen=True)
class Roots:
    """Where the checks look; the defaults are the real system's paths."""

    proc: str = "/proc"
    device_tree: Tuple[str, ...] = ("/proc/device-tree", "/sys/firmware/devicetree/base")
    sys_module: str = "/sys/module"
    lib_modules: str = "/lib/modules"
    kernel_release: str = field(default_factory=lambda: os.uname().release)
    sysfs_class: str = "/sys/class/u-dma-buf"
    dev: str = "/dev"
    run_dir: str = "/run/pynq-alloc"


@dataclass(frozen=True)
class Check:
    """One finding: what was looked at, whether it stops allocation, and the fix."""

    check: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DtNode:
    """A u-dma-buf node of the running device tree, and the device it should give."""

    path: str
    device: str
    enabled: bool
    size: Optional[int]
    memory_region: bool


@dataclass
class Diagnosis:
    checks: List[Check]
    regions: List[str]
    dt_nodes: List[DtNode]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def find_dt_nodes(dt_root: str) -> List[DtNode]:
    """Every node under ``dt_root`` (the /proc/device-tree form: a directory per node, a
    file per property) whose ``compatible`` names u-dma-buf."""
    found: List[DtNode] = []
    for directory, subdirs, files in os.walk(dt_root):
        subdirs.sort()
        if "compatible" not in files:
            continue
        compatible = (_read(os.path.join(directory, "compatible")) or b"").split(b"\0")
        if U_DMA_BUF_COMPATIBLE not in compatible:
            continue

        def prop(name: str, where: str = directory, present: List[str] = files) -> Optional[bytes]:
            return _read(os.path.join(where, name)) if name in present else None

        path = "/" + os.path.relpath(directory, dt_root).replace(os.sep, "/").lstrip("./")
        name = (prop("device-name") or b"").rstrip(b"\0").decode("ascii", "replace")
        minor = prop("minor-number")
        if not name and minor and len(minor) == 4:
            name = f"udmabuf{int.from_bytes(minor, 'big')}"
        status = (prop("status") or b"okay").rstrip(b"\0")
        size = prop("size")
        found.append(DtNode(
            path=path,
            device=name or os.path.basename(directory),
            enabled=status in (b"okay", b"ok"),
            size=int.from_bytes(size, "big") if size and len(size) in (4, 8) else None,
            memory_region=prop("memory-region") is not None,
        ))
    return found


def _module_state(roots: Roots) -> str:
    """'loaded', 'built-in', 'installed' (a .ko for this kernel) or 'missing'."""
    for line in (_read(os.path.join(roots.proc, "modules")) or b"").decode().splitlines():
        if line.split(" ", 1)[0] == MODULE_NAME:
            return "loaded"
    if os.path.isdir(os.path.join(roots.sys_module, MODULE_NAME)):
        return "built-in"
    modules_dep = os.path.join(roots.lib_modules, roots.kernel_release, "modules.dep")
    for line in (_read(modules_dep) or b"").decode(errors="replace").splitlines():
        if os.path.basename(line.split(":", 1)[0]).startswith("u-dma-buf.ko"):
            return "installed"
    return "missing"


def check_module(roots: Roots, have_regions: bool) -> Check:
    state = _module_state(roots)
    if state == "loaded":
        return Check("kernel module", True, f"{MODULE_NAME} is loaded ({roots.proc}/modules)")
    if state == "built-in":
        return Check("kernel module", True, "u-dma-buf is built into the kernel")
    if have_regions:
        return Check("kernel module", True, "u-dma-buf regions exist (the driver is present)")
    if state == "installed":
        return Check(
            "kernel module", False,
            f"u-dma-buf is installed for kernel {roots.kernel_release} but not loaded",
            "load it: `sudo modprobe u-dma-buf`; to load it at every boot, name it in "
            "/etc/modules-load.d/u-dma-buf.conf (the meta-pynq-alloc layer's recipe does, "
            "through KERNEL_MODULE_AUTOLOAD)")
    return Check(
        "kernel module", False,
        f"no u-dma-buf module is loaded, built in, or installed for kernel "
        f"{roots.kernel_release} ({roots.lib_modules}/{roots.kernel_release}/modules.dep)",
        "install the driver: on a Yocto image, add the meta-pynq-alloc layer and "
        "IMAGE_INSTALL:append = \" u-dma-buf u-dma-buf-udev-rules\"; on Debian or Ubuntu, "
        "install linux-headers-$(uname -r) and pynq-alloc's u-dma-buf-dkms and "
        "pynq-alloc-board packages (built from the pynq-alloc repository by `make debs`; its "
        "docs/other-images.md walks through it); elsewhere build u-dma-buf 5.5.0 "
        "(github.com/ikwzm/udmabuf) against this kernel's headers, `sudo insmod u-dma-buf.ko`")


def check_device_tree(roots: Roots, nodes: List[DtNode], dt_root: Optional[str],
                      have_regions: bool, module_present: bool) -> Check:
    enabled = [n for n in nodes if n.enabled]
    listing = ", ".join(
        f"{n.path} -> {n.device}" + ("" if n.enabled else " (status disabled)") for n in nodes)
    if dt_root is None:
        if have_regions:
            return Check("device tree", True,
                         "this system has no device tree; the regions come from the "
                         "module parameters (udmabuf0=<size>, ...)")
        return Check(
            "device tree", False,
            f"this system has no device tree (none of {', '.join(roots.device_tree)})",
            "without a device tree, make a region with the module parameter: "
            "`sudo modprobe u-dma-buf udmabuf0=0x1000000` (16 MiB from the kernel's CMA area)")
    if enabled:
        if have_regions or not module_present:
            return Check("device tree", True, f"u-dma-buf node(s): {listing}")
        return Check(
            "device tree", False,
            f"u-dma-buf node(s) {listing} are in the device tree, the module is there, "
            f"and yet the driver made no region: its probe failed",
            "read why: `dmesg | grep -i u-dma-buf` (a memory-region too small for the "
            "node's size, a CMA area used up, a repeated minor-number...); "
            "`sudo pynq-alloc check-dtb` checks the booted tree's pools and nodes")
    if have_regions:
        return Check("device tree", True,
                     "no u-dma-buf node in the device tree; the regions come from the module "
                     "parameters (udmabuf0=<size>, ...)")
    what = (f"the device tree's u-dma-buf node(s) are all disabled: {listing}" if nodes
            else f"no node with compatible = \"ikwzm,u-dma-buf\" under {dt_root}")
    return Check(
        "device tree", False, what,
        "describe a pool and a u-dma-buf node in the board's device tree (meta-pynq-alloc "
        "builds them in for QEMU virt, ZCU102, ZCU104, KV260, Ultra96-V2, RFSoC 4x2, ZC702, "
        "PYNQ-Z1 and PYNQ-Z2; on other images `pynq-alloc-dtb` from the pynq-alloc-board "
        "package adds them to any board's DTB), check the DTB with "
        "`pynq-alloc check-dtb <file.dtb>`, and reboot; or, without a node, "
        "`sudo modprobe u-dma-buf udmabuf0=0x1000000` (16 MiB from the kernel's CMA area)")


def list_regions(sysfs_class: str) -> List[str]:
    try:
        return sorted(os.listdir(sysfs_class))
    except OSError:
        return []


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _in_group_after_login(gid: int) -> bool:
    """The user is listed in the group (/etc/group) but this session predates it."""
    try:
        members = grp.getgrgid(gid).gr_mem
    except KeyError:
        return False
    return _user_name() in members and gid not in os.getgroups() and os.getegid() != gid


def check_device(roots: Roots, name: str, simulated: bool = False) -> Check:
    path = os.path.join(roots.dev, name)
    what = f"device {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dev = (_read(os.path.join(roots.sysfs_class, name, "dev")) or b"?:?").decode().strip()
        return Check(
            what, False, f"{path} does not exist although {roots.sysfs_class}/{name} does",
            f"devtmpfs or udev did not make it: mount devtmpfs on /dev, or `sudo udevadm "
            f"trigger`, or make it by hand from the driver's {dev}: "
            f"`sudo mknod {path} c {dev.replace(':', ' ')}`")
    except OSError as exc:
        return Check(what, False, f"cannot stat {path}: {exc.strerror}",
                     f"check the permissions of {os.path.dirname(path)}")
    owner = f"{_user_of(st.st_uid)}:{_group_name(st.st_gid)} {stat.filemode(st.st_mode)}"
    # (the simulator's device is a plain file standing in for the driver's)
    if not stat.S_ISCHR(st.st_mode) and not (simulated and stat.S_ISREG(st.st_mode)):
        return Check(what, False, f"{path} ({owner}) is not a character device",
                     "remove it and let udev or devtmpfs make the driver's device")
    if os.access(path, os.R_OK | os.W_OK):
        return Check(what, True, f"{owner}, {_user_name()} may open it read-write")
    group = _group_name(st.st_gid)
    if _in_group_after_login(st.st_gid):
        fix = (f"{_user_name()} is in group {group} but this login session predates it: "
               f"log out and in again (or `newgrp {group}`)")
    elif group == "root" or not st.st_mode & stat.S_IRWXG:
        fix = (f"the device is {owner}: no udev rule gives it to a group. Install "
               f"meta-pynq-alloc's rule (u-dma-buf-udev-rules: group {DMA_GROUP}, mode 0660) "
               f"or a rule of your own (SUBSYSTEM==\"u-dma-buf\", GROUP=\"{DMA_GROUP}\", "
               f"MODE=\"0660\"), or run as root")
    else:
        fix = (f"add {_user_name()} to group {group}: `sudo usermod -aG {group} "
               f"{_user_name()}`, then log in again")
    return Check(what, False, f"{owner}: {_user_name()} may not open it read-write", fix)


def _user_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_ledger_dir(roots: Roots) -> Check:
    path = roots.run_dir
    what = f"ledger directory {path}"
    create = (f"create it as root: `sudo install -d -m 2770 -g {DMA_GROUP} {path}` "
              f"(images with meta-pynq-alloc or the pynq-alloc-board package make "
              f"it at boot: /usr/lib/tmpfiles.d/pynq-alloc.conf), or point "
              f"PYNQ_ALLOC_RUN_DIR at a directory every user of the regions may write")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path.rstrip("/")) or "/"
        while not os.path.exists(parent) and parent != "/":  # makedirs makes those too
            parent = os.path.dirname(parent)
        if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
            return Check(what, True, f"absent; {_user_name()} may create it in {parent} "
                                     f"(the first allocation does)")
        return Check(what, False, f"absent, and {_user_name()} may not create it in {parent}",
                     create)
    except OSError as exc:
        return Check(what, False, f"cannot stat {path}: {exc.strerror}", create)
    owner = f"{_user_of(st.st_uid)}:{_group_name(st.st_gid)} {stat.filemode(st.st_mode)}"
    if not stat.S_ISDIR(st.st_mode):
        return Check(what, False, f"{path} ({owner}) is not a directory",
                     f"remove it; then {create}")
    if os.access(path, os.W_OK | os.X_OK):
        return Check(what, True, f"{owner}, {_user_name()} may write it")
    group = _group_name(st.st_gid)
    return Check(what, False, f"{owner}: {_user_name()} may not write it",
                 f"add {_user_name()} to group {group} (`sudo usermod -aG {group} "
                 f"{_user_name()}`, then log in again), or {create}")


def diagnose(roots: Roots = Roots(), *, kernel: bool = True) -> Diagnosis:
    """Run every check. ``kernel=False`` (the simulator) skips the module and the device
    tree, which a simulated region does not involve."""
    regions = list_regions(roots.sysfs_class)
    checks: List[Check] = []
    nodes: List[DtNode] = []
    if kernel:
        module = check_module(roots, bool(regions))
        checks.append(module)
        dt_root = next((d for d in roots.device_tree if os.path.isdir(d)), None)
        nodes = find_dt_nodes(dt_root) if dt_root else []
        module_present = _module_state(roots) in ("loaded", "built-in")
        checks.append(check_device_tree(roots, nodes, dt_root, bool(regions), module_present))
    if regions:
        checks.append(Check("regions", True, f"{', '.join(regions)} under {roots.sysfs_class}"))
    else:
        checks.append(Check(
            "regions", False, f"no u-dma-buf region under {roots.sysfs_class}",
            "the driver makes one region per enabled u-dma-buf node (or udmabufN= module "
            "parameter) when it loads: fix the findings above" if kernel else
            f"the simulator's files are missing: remove {os.path.dirname(roots.sysfs_class)} "
            f"or unset PYNQ_ALLOC_SIM_DIR"))
    checks += [check_device(roots, name, simulated=not kernel) for name in regions]
    checks.append(check_ledger_dir(roots))
    return Diagnosis(checks, regions, nodes)
