"""The Debian packages `make debs` builds: what they hold, lintian's verdict, and
install / upgrade / remove / purge of python3-pynq-alloc and pynq-alloc-board in
a real Debian bookworm root (debootstrap, maintainer scripts run by dpkg with the
root's own adduser). The DKMS build of u-dma-buf-dkms is in test_dkms.py.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import DEB_DIR, DRIVER_PV, REPO, SRCREV, UDEV_RULE, Root, deb

BOARD, PYTHON, DKMS = "pynq-alloc-board", "python3-pynq-alloc", "u-dma-buf-dkms"
MODPROBE_CONF = "etc/modprobe.d/u-dma-buf.conf"
MODULES_LOAD = "usr/lib/modules-load.d/u-dma-buf.conf"
RULE = "lib/udev/rules.d/60-u-dma-buf.rules"
STATE = "var/lib/pynq-alloc-board"
# What dpkg, adduser and the shadow tools themselves keep or back up (dpkg's
# database and logs, the account files' "-" backups, adduser's lock file
# /run/adduser): not the packages' traces.
BOOKKEEPING = ("var/lib/dpkg/", "var/log/", "var/cache/debconf/", "etc/group-", "etc/gshadow-",
               "etc/passwd-", "etc/shadow-", "etc/subuid-", "etc/subgid-", "run/adduser",
               "tmp/", "proc/")


def members(path: Path) -> dict[str, bytes]:
    """Paths (without './') -> contents of the files in a .deb's data."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True,
                          check=True).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            name = m.name.removeprefix("./")
            if m.isfile():
                out[name] = t.extractfile(m).read()
            elif m.issym():
                out[name] = f"-> {m.linkname}".encode()
    return out


def field(path: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(path), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def snapshot(root: Root) -> tuple[set[str], dict[str, str]]:
    """Every path of the root outside dpkg's bookkeeping, and the account files."""
    paths = set()
    for top, dirs, files in os.walk(root.path):
        rel = os.path.relpath(top, root.path)
        for name in dirs + files:
            path = os.path.normpath(os.path.join(rel, name))
            if not path.startswith(BOOKKEEPING):
                paths.add(path)
    accounts = {f: (root.path / "etc" / f).read_text() for f in ("group", "gshadow", "passwd")}
    return paths, accounts


def bumped(path: Path, tmp: Path, suffix: str = "+upgrade1") -> Path:
    """The same package with a higher version: an upgrade that runs every upgrade path
    of the maintainer scripts (prerm upgrade, postinst configure <old>)."""
    tree = tmp / f"{path.stem}-tree"
    subprocess.run(["dpkg-deb", "-R", str(path), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"^Version: (.*)$", rf"Version: \g<1>{suffix}", control.read_text(),
                              flags=re.M))
    out = tmp / f"{path.name.split('_')[0]}_upgraded_all.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zxz", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


# ------------------------------------------------------------------ what was built

def test_lintian_reports_no_error_and_no_warning():
    report = (DEB_DIR / "lintian.txt").read_text()
    tags = [line for line in report.splitlines() if re.match(r"^[EW]: ", line)]
    assert tags == [], report
    assert "== lintian pynq-alloc_" in report


def test_board_package_ships_the_layers_udev_rule_unchanged():
    files = members(deb(BOARD))
    assert files[RULE] == UDEV_RULE.read_bytes()


def test_board_package_loads_the_module_at_boot_and_sets_no_option():
    files = members(deb(BOARD))
    active = [line for line in files[MODULES_LOAD].decode().splitlines()
              if line.strip() and not line.startswith("#")]
    assert active == ["u-dma-buf"]
    options = files[MODPROBE_CONF].decode()
    assert not [line for line in options.splitlines() if line.strip() and not line.startswith("#")]
    assert "#options u-dma-buf udmabuf0=" in options


def test_board_package_ships_the_dtb_tool_with_the_one_dtsi():
    files = members(deb(BOARD))
    assert files["usr/bin/pynq-alloc-dtb"] == b"-> ../share/pynq-alloc/device-tree/pynq-alloc-dtb"
    tool = files["usr/share/pynq-alloc/device-tree/pynq-alloc-dtb"]
    assert re.match(rb"#! ?/usr/bin/python3\n", tool)  # dh_python3 rewrote env python3
    source = (REPO / "device-tree/pynq-alloc-dtb").read_bytes()
    assert tool.split(b"\n", 1)[1] == source.split(b"\n", 1)[1]
    assert (files["usr/share/pynq-alloc/device-tree/include/pynq-alloc.dtsi"]
            == (REPO / "device-tree/include/pynq-alloc.dtsi").read_bytes())


def test_python_package_holds_the_package_of_this_checkout():
    files = members(deb(PYTHON))
    src = REPO / "python-pynq-alloc/src/pynq_alloc"
    for py in src.rglob("*.py"):
        rel = py.relative_to(src.parent).as_posix()
        assert files[f"usr/lib/python3/dist-packages/{rel}"] == py.read_bytes(), rel
    assert "usr/bin/pynq-alloc" in files
    assert "python3-numpy" in field(deb(PYTHON), "Depends")


def test_dkms_package_is_the_recipes_driver_with_a_dkms_conf():
    files = members(deb(DKMS))
    top = f"usr/src/u-dma-buf-{DRIVER_PV}"
    conf = files[f"{top}/dkms.conf"].decode()
    assert f'PACKAGE_VERSION="{DRIVER_PV}"' in conf
    make = r'^MAKE\[0\]=".*KERNEL_SRC=\$\{kernel_source_dir\}.*CONFIG_U_DMA_BUF=m'
    assert re.search(make, conf, re.M)
    assert 'BUILT_MODULE_NAME[0]="u-dma-buf"' in conf
    assert re.search(rb'#define\s+DRIVER_VERSION\s+"' + re.escape(DRIVER_PV.encode()) + rb'"',
                     files[f"{top}/u-dma-buf.c"])
    src = os.environ.get("UDMABUF_SRC")
    if src:
        for name in ("u-dma-buf.c", "u-dma-buf-ioctl.h", "Makefile"):
            upstream = subprocess.run(["git", "-C", src, "show", f"{SRCREV}:{name}"],
                                      capture_output=True, check=False)
            if upstream.returncode == 0:
                assert files[f"{top}/{name}"] == upstream.stdout, name
    assert field(deb(DKMS), "Version") == f"{DRIVER_PV}-1"


# ------------------------------------------------------------------ in a Debian root

def test_install_creates_group_rule_autoload_and_a_working_package(base_root):
    root = base_root
    root.dpkg("-i", *root.copy_in(deb(PYTHON), deb(BOARD)))
    assert root.status(BOARD) == root.status(PYTHON) == "install ok installed"
    group = root.group("dma")
    assert group is not None
    assert int(group.split(":")[2]) < 1000, f"dma is not a system group: {group}"
    for path in (RULE, MODULES_LOAD, MODPROBE_CONF, "usr/bin/pynq-alloc", "usr/bin/pynq-alloc-dtb"):
        assert (root.path / path).exists(), path
    assert (root.path / STATE / "created-group").exists()
    assert root.dpkg("--audit").stdout == ""
    # The package from this checkout on Debian's own python3 and numpy, on the simulator.
    selftest = root.run("pynq-alloc", "--backend", "sim", "selftest")
    assert selftest.returncode == 0
    version = root.run("pynq-alloc", "--version").stdout
    assert "0.1.0" in version


def test_dtb_tool_in_the_root_names_the_missing_debian_packages(base_root, tmp_path):
    """minbase has no cpp/dtc: the tool reads the DTB itself, then says what to install."""
    root = base_root
    root.dpkg("-i", *root.copy_in(deb(PYTHON), deb(BOARD)))
    dtb = subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(root.path / "tmp/b.dtb"), "-"],
                         input=b"/dts-v1/;\n/ { #address-cells = <2>; #size-cells = <2>;\n"
                               b"memory@40000000 { device_type = \"memory\"; "
                               b"reg = <0x0 0x40000000 0x0 0x40000000>; }; };\n",
                         capture_output=True, check=False)
    assert dtb.returncode == 0, dtb.stderr
    result = root.run("pynq-alloc-dtb", "--in", "/tmp/b.dtb", "--out", "/tmp/o.dtb",
                      "--cma", "16M", check=False)
    assert result.returncode == 1
    assert "'cpp' not found: install cpp" in result.stderr


def test_upgrade_keeps_the_group_and_its_ownership_marker(base_root, tmp_path):
    root = base_root
    root.dpkg("-i", *root.copy_in(deb(PYTHON), deb(BOARD)))
    gid = root.group("dma").split(":")[2]
    root.run("useradd", "--groups", "dma", "alice")
    root.dpkg("-i", *root.copy_in(bumped(deb(PYTHON), tmp_path), bumped(deb(BOARD), tmp_path)))
    assert root.status(BOARD) == "install ok installed"
    assert "+upgrade1" in root.run("dpkg-query", "-W", "-f=${Version}", BOARD).stdout
    _name, _pw, gid_after, users = root.group("dma").split(":")
    assert gid_after == gid and "alice" in users.split(",")
    assert (root.path / STATE / "created-group").exists()
    assert root.dpkg("--audit").stdout == ""


def test_remove_keeps_conffile_and_group_then_purge_removes_them(base_root):
    root = base_root
    root.dpkg("-i", *root.copy_in(deb(PYTHON), deb(BOARD)))
    root.dpkg("-r", BOARD)
    assert root.status(BOARD) == "deinstall ok config-files"
    assert (root.path / MODPROBE_CONF).exists()
    assert not (root.path / RULE).exists() and not (root.path / MODULES_LOAD).exists()
    assert root.group("dma") is not None
    root.dpkg("--purge", BOARD)
    assert root.status(BOARD) == "not-installed"
    assert not (root.path / MODPROBE_CONF).exists()
    assert root.group("dma") is None
    assert not (root.path / STATE).exists()


def test_install_then_purge_leaves_no_trace(base_root):
    """Whole-root comparison: every path and the account files are as before."""
    root = base_root
    before = snapshot(root)
    debs = root.copy_in(deb(PYTHON), deb(BOARD))
    root.dpkg("-i", *debs)
    root.run("useradd", "--groups", "dma", "bob")
    (root.path / "run/pynq-alloc").mkdir()  # what the udev rule makes at boot
    (root.path / "run/pynq-alloc/udmabuf0.ledger").write_text("")
    root.run("userdel", "bob")
    root.dpkg("--purge", BOARD, PYTHON)
    for f in root.path.glob("tmp/debs/*"):
        f.unlink()
    after = snapshot(root)
    assert sorted(after[0] - before[0]) == [] and sorted(before[0] - after[0]) == []
    assert after[1] == before[1]


def test_purge_with_members_still_removes_the_group_it_made(base_root):
    root = base_root
    root.dpkg("-i", *root.copy_in(deb(PYTHON), deb(BOARD)))
    root.run("useradd", "--groups", "dma", "carol")
    root.dpkg("--purge", BOARD)
    assert root.group("dma") is None
    assert "dma" not in root.run("id", "-nG", "carol").stdout.split()


def test_purge_leaves_a_dma_group_that_existed_before(base_root):
    root = base_root
    root.run("addgroup", "--system", "dma")
    before = root.group("dma")
    root.dpkg("-i", *root.copy_in(deb(PYTHON), deb(BOARD)))
    assert not (root.path / STATE / "created-group").exists()
    root.dpkg("--purge", BOARD)
    assert root.group("dma") == before


@pytest.mark.parametrize("package", [PYTHON, BOARD])
def test_each_package_installs_and_purges_alone(base_root, package):
    root = base_root
    root.dpkg("-i", *root.copy_in(deb(package)))
    assert root.status(package) == "install ok installed"
    root.dpkg("--purge", package)
    assert root.status(package) == "not-installed"
    assert root.group("dma") is None
