"""Fixtures: the built packages (build/debian, made by `make debs`) and fresh
Debian bookworm roots (tests/debian/rootfs.py) to install them into."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import rootfs  # noqa: E402

DEB_DIR = Path(os.environ.get("PYNQ_ALLOC_DEB_DIR", REPO / "build/debian"))
ROOTFS_DIR = Path(os.environ.get("PYNQ_ALLOC_ROOTFS_DIR", REPO / "build/debian/rootfs"))
UDEV_RULE = REPO / "meta-pynq-alloc/recipes-kernel/u-dma-buf-udev-rules/files/60-u-dma-buf.rules"
RECIPE = next((REPO / "meta-pynq-alloc/recipes-kernel/u-dma-buf").glob("u-dma-buf_*.bb"))
DRIVER_PV = RECIPE.stem.split("_", 1)[1]
SRCREV = re.search(r'^SRCREV\s*=\s*"([0-9a-f]{40})"', RECIPE.read_text(), re.M).group(1)
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
       "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}


def deb(name: str) -> Path:
    found = sorted(DEB_DIR.glob(f"{name}_*_all.deb"))
    if not found:
        if name == "u-dma-buf-dkms":
            pytest.skip("u-dma-buf-dkms was not built: give UDMABUF_SRC=<u-dma-buf clone or "
                        "mirror> to `make debs` (the driver is fetched from no archive)")
        pytest.fail(f"{name}_*.deb not in {DEB_DIR}: run `make debs` first")
    assert len(found) == 1, f"several {name} packages in {DEB_DIR}: {found}"
    return found[0]


class Root:
    """A throw-away Debian root; run() executes inside it through chroot."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *cmd: str, check: bool = True, env: dict | None = None):
        result = subprocess.run(["chroot", str(self.path), *cmd], capture_output=True,
                                text=True, env={**ENV, **(env or {})}, check=False)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed in the root (exit "
                                 f"{result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def copy_in(self, *debs: Path) -> list[str]:
        target = self.path / "tmp/debs"
        target.mkdir(parents=True, exist_ok=True)
        out = []
        for d in debs:
            (target / d.name).write_bytes(d.read_bytes())
            out.append(f"/tmp/debs/{d.name}")
        return out

    def dpkg(self, *args: str, check: bool = True):
        return self.run("dpkg", *args, check=check)

    def group(self, name: str) -> str | None:
        result = self.run("getent", "group", name, check=False)
        return result.stdout.strip() or None

    def status(self, package: str) -> str:
        result = self.run("dpkg-query", "-W", "-f=${Status}", package, check=False)
        status = result.stdout.strip() if result.returncode == 0 else ""
        return "not-installed" if status in ("", "unknown ok not-installed") else status


def need_root_and_chroot() -> None:
    if os.geteuid() != 0:
        pytest.skip("installing into a Debian root needs root (chroot, mount): run as root")
    if subprocess.run(["chroot", "/", "true"], capture_output=True, check=False).returncode:
        pytest.skip("chroot is not permitted here (no CAP_SYS_CHROOT): run the Debian "
                    "package tests on a machine or container that allows it")


@pytest.fixture
def base_root(tmp_path) -> Root:
    need_root_and_chroot()
    with rootfs.fresh_root(ROOTFS_DIR, "base", tmp_path / "root") as path:
        yield Root(path)


@pytest.fixture
def dkms_root(tmp_path) -> Root:
    need_root_and_chroot()
    with rootfs.fresh_root(ROOTFS_DIR, "dkms", tmp_path / "root") as path:
        yield Root(path)
