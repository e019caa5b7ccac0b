"""bitbake -p and bitbake -g pynq-alloc-image with meta-pynq-alloc on a real
OE-Core checkout: POKY_DIR=<poky>, or OE_CORE_DIR=<openembedded-core> and
BITBAKE_DIR=<bitbake>. Without them these tests skip (make test has no network
and no checkout). bitbake refuses root: as root set BITBAKE_USER=<user>.
MACHINE is qemuarm64 unless BITBAKE_MACHINE says otherwise. The build directory
is build/layer/bitbake-<checkout>/ (git-ignored); nothing is fetched (BB_NO_NETWORK)."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_BITBAKE = Path(__file__).resolve().parent / "run-bitbake"
CHECKOUT = os.environ.get("POKY_DIR") or os.environ.get("OE_CORE_DIR") or ""
# one build directory per checkout (series), e.g. build/layer/bitbake-poky-1a2b3c4d
BUILDDIR = REPO / "build" / "layer" / "bitbake-{}-{}".format(
    Path(CHECKOUT).name, hashlib.md5(CHECKOUT.encode()).hexdigest()[:8])
OUR_RECIPES = {"python3-pynq-alloc", "u-dma-buf", "u-dma-buf-udev-rules"}

HAVE_CHECKOUT = bool(os.environ.get("POKY_DIR")
                     or (os.environ.get("OE_CORE_DIR") and os.environ.get("BITBAKE_DIR")))
pytestmark = pytest.mark.skipif(
    not HAVE_CHECKOUT,
    reason="no Yocto checkout given: set POKY_DIR, or OE_CORE_DIR and BITBAKE_DIR, "
           "to run bitbake -p / bitbake -g pynq-alloc-image")


def bitbake(*command: str) -> subprocess.CompletedProcess:
    if os.geteuid() == 0 and not os.environ.get("BITBAKE_USER"):
        pytest.fail("bitbake refuses to run as root: set BITBAKE_USER to a normal user")
    machine = os.environ.get("BITBAKE_MACHINE", "qemuarm64")
    env = dict(os.environ, BB_EXTRA_CONF='DISTRO_FEATURES:append = " ptest"')
    proc = subprocess.run([str(RUN_BITBAKE), str(BUILDDIR), machine, "--", *command],
                          capture_output=True, text=True, env=env, timeout=1800)
    return proc


def test_bitbake_parses_every_recipe_without_error():
    proc = bitbake("bitbake", "-p")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "ERROR:" not in out, out[-4000:]


@pytest.mark.parametrize("image", ["pynq-alloc-image", "pynq-alloc-image-ptest"])
def test_bitbake_resolves_the_dependency_graph_of(image):
    proc = bitbake("bitbake", "-g", image)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    built = set((BUILDDIR / "pn-buildlist").read_text().split())
    missing = (OUR_RECIPES | {image}) - built
    assert not missing, f"not in the graph of {image}: {sorted(missing)}"
