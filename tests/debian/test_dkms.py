"""u-dma-buf-dkms in a Debian bookworm root with dkms, gcc and Debian's kernel headers
for this host's architecture (linux-headers-amd64 on the x86_64 CI machine): dpkg
runs dh-dkms's maintainer scripts, DKMS really compiles the recipe's driver
against Debian's headers, and purge takes everything back out.

The module is built for the headers' kernel, not loaded: this host's kernel is not
Debian's, and a chroot shares it. Loading is what the arm64 QEMU guest does.
"""

from __future__ import annotations

import re
import time

import pytest
from conftest import DRIVER_PV, deb
from test_packages import BOARD, DKMS, PYTHON, bumped, snapshot

MODULE = "u-dma-buf"


def header_kernels(root) -> list[str]:
    # build is an absolute link (/usr/src/linux-headers-...): resolve it inside the root.
    return sorted(p.name for p in (root.path / "lib/modules").iterdir()
                  if (root.path / str((p / "build").readlink()).lstrip("/")).is_dir())


def built_modules(root, kver: str) -> list[str]:
    return sorted(str(p.relative_to(root.path))
                  for p in (root.path / "lib/modules" / kver).rglob(f"{MODULE}.ko*"))


@pytest.fixture
def kver(dkms_root) -> str:
    kernels = header_kernels(dkms_root)
    assert len(kernels) == 1, f"expected one kernel with headers in the root, found {kernels}"
    return kernels[0]


def test_dkms_builds_the_module_for_debians_kernel_and_purge_removes_it(dkms_root, kver, capsys):
    root = dkms_root
    started = time.monotonic()
    root.dpkg("-i", *root.copy_in(deb(DKMS)))
    seconds = time.monotonic() - started
    status = root.run("dkms", "status", MODULE).stdout
    installed = rf"{MODULE}/{re.escape(DRIVER_PV)}, {re.escape(kver)}, \S+: installed"
    assert re.search(installed, status), status
    modules = built_modules(root, kver)
    assert modules == [f"lib/modules/{kver}/updates/dkms/{MODULE}.ko"], modules
    info = root.run("modinfo", "-k", kver, MODULE).stdout
    assert re.search(r"^parm:\s+udmabuf0:", info, re.M), info
    assert re.search(rf"^vermagic:\s+{re.escape(kver)} ", info, re.M), info
    with capsys.disabled():
        print(f"\n  dpkg -i {DKMS}: DKMS build + install for {kver} in {seconds:.0f} s")
    root.dpkg("--purge", DKMS)
    assert root.run("dkms", "status", MODULE).stdout.strip() == ""
    assert built_modules(root, kver) == []
    assert not (root.path / f"usr/src/{MODULE}-{DRIVER_PV}").exists()
    assert not (root.path / f"var/lib/dkms/{MODULE}").exists()


def test_dkms_package_upgrade_rebuilds_the_module(dkms_root, kver, tmp_path):
    root = dkms_root
    root.dpkg("-i", *root.copy_in(deb(DKMS)))
    root.dpkg("-i", *root.copy_in(bumped(deb(DKMS), tmp_path)))
    assert "installed" in root.run("dkms", "status", MODULE).stdout
    assert built_modules(root, kver) == [f"lib/modules/{kver}/updates/dkms/{MODULE}.ko"]
    assert root.dpkg("--audit").stdout == ""


def test_all_three_packages_install_together_and_purge_without_trace(dkms_root, kver):
    root = dkms_root
    before = snapshot(root)
    root.dpkg("-i", *root.copy_in(deb(DKMS), deb(BOARD), deb(PYTHON)))
    for package in (DKMS, BOARD, PYTHON):
        assert root.status(package) == "install ok installed", package
    assert root.group("dma") is not None
    assert built_modules(root, kver)
    root.dpkg("--purge", PYTHON, BOARD, DKMS)
    for f in root.path.glob("tmp/debs/*"):
        f.unlink()
    after = snapshot(root)
    # depmod's index files (modules.dep, modules.alias, ...) are made for the headers'
    # kernel by dkms's depmod runs; a real system has them from linux-image already.
    # They must no longer name the module.
    index = re.compile(rf"usr/lib/modules/{re.escape(kver)}/modules\.[a-z.]+$")
    new = sorted(p for p in after[0] - before[0] if not index.match(p))
    assert new == [] and sorted(before[0] - after[0]) == []
    assert after[1] == before[1]
    dep = root.path / f"lib/modules/{kver}/modules.dep"
    assert MODULE not in (dep.read_text() if dep.exists() else "")
