"""meta-pynq-alloc under real bitbake, on both series: `bitbake -p`, `bitbake -g` of
both images, and what bitbake itself expands (tests/layer/bitbake-facts, through
tinfoil: the values `bitbake -e` prints) checked against the oeqa case's package
guards, the installed-file layout the docs name, and the recipes' own claims.

Not part of `make test`: CI reaches only PyPI and Debian, not the OpenEmbedded git
servers. `make test-layer-bitbake` runs these: it installs OE-Core's host tools and
the en_US.UTF-8 locale, checks out OE-Core and bitbake at the commits of
kas/qemuarm64.lock.yml (wrynose) and kas/qemuarm64-scarthgap.lock.yml (scarthgap)
into build/layer/src/ (tests/layer/checkout-yocto), and parses in
build/layer/bitbake-<series>/ with BB_NO_NETWORK = "1" (about 3 minutes a series
on 2 cores). bitbake refuses root: as root it runs as BITBAKE_USER."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Dict

import bitbake_runner
import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LAYER = REPO / "meta-pynq-alloc"
SRC = Path(os.environ.get("LAYER_YOCTO_SRC", REPO / "build" / "layer" / "src"))
SERIES = {"wrynose": "qemuarm64", "scarthgap": "qemuarm64-scarthgap"}
OUR_RECIPES = {"python3-pynq-alloc", "u-dma-buf", "u-dma-buf-udev-rules", "pynq-alloc-qemu-dtb"}
IMAGES = ("pynq-alloc-image", "pynq-alloc-image-ptest")


def run_bitbake(series: str, *command: str) -> subprocess.CompletedProcess:
    return bitbake_runner.run_bitbake(
        SRC / SERIES[series], ("openembedded-core", "bitbake"), f"{SERIES[series]}.lock.yml",
        REPO / "build" / "layer" / f"bitbake-{series}", "qemuarm64",
        'DISTRO_FEATURES:append = " ptest"', (), command)


_cache: Dict[str, Any] = {}


def once(key: str, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def parse(series: str) -> subprocess.CompletedProcess:
    return once(f"parse-{series}", lambda: run_bitbake(series, "bitbake", "-p"))


def facts(series: str) -> Dict[str, Any]:
    def make():
        out = REPO / "build" / "layer" / f"bitbake-{series}" / "facts.json"
        out.unlink(missing_ok=True)
        proc = run_bitbake(series, str(HERE / "bitbake-facts"), str(out))
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return json.loads(out.read_text())
    return once(f"facts-{series}", make)


@pytest.mark.parametrize("series", SERIES)
def test_bitbake_parses_every_recipe_without_error(series):
    proc = parse(series)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "ERROR:" not in out, out[-4000:]
    # a full parse prints its summary; with every recipe unchanged since the last
    # parse bitbake only loads its cache (a recipe that failed is never cached)
    summary = (re.search(r"Parsing of \d+ \.bb files complete .* (\d+) errors", out)
               or re.search(r"Loaded \d+ entries from dependency cache", out))
    assert summary, out[-2000:]
    assert summary.lastindex is None or summary.group(1) == "0", out[-2000:]
    print(f"{series}: {summary.group(0)}")


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("image", IMAGES)
def test_bitbake_resolves_the_dependency_graph_of(image, series):
    proc = run_bitbake(series, "bitbake", "-g", image)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    buildlist = REPO / "build" / "layer" / f"bitbake-{series}" / "pn-buildlist"
    built = set(buildlist.read_text().split())
    missing = (OUR_RECIPES | {image}) - built
    assert not missing, f"not in the graph of {image}: {sorted(missing)}"
    print(f"{series}: bitbake -g {image}: {len(built)} recipes")


@pytest.mark.parametrize("series", SERIES)
def test_every_oeqa_package_guard_names_a_package_of_the_ptest_image(series):
    """OEHasPackage/OERequirePackage compare with the image manifest, which lists real
    package names: each guard must name a literal PACKAGES entry that the image's
    IMAGE_INSTALL reaches, and OE-Core's own setUpDecorator() must let every case run."""
    f = facts(series)
    image = f["images"]["pynq-alloc-image-ptest"]
    assert "pynq_alloc" in image["TEST_SUITES"]
    cases = f["oeqa"]
    assert len(cases) >= 4, cases
    for case, entry in cases.items():
        assert entry["guards"], f"{case}: no package guard"
        for guard in entry["guards"]:
            for pkg in guard["packages"]:
                assert pkg.lstrip("!") in image["packages"], \
                    f"{case}: {guard['class']} names {pkg}, not a package of " \
                    f"pynq-alloc-image-ptest ({image['packages']})"
        assert entry["decision"] == "run", f"{case}: {entry['decision']}"


@pytest.mark.parametrize("series", SERIES)
def test_the_driver_module_package_is_not_a_literal_package_name(series):
    """Why the driver's guard names u-dma-buf: the module's package is made at
    do_package time as kernel-module-u-dma-buf-<kernel version>, so the name
    kernel-module-u-dma-buf never appears in a manifest (the old guard skipped)."""
    f = facts(series)
    assert "kernel-module-u-dma-buf" not in f["images"]["pynq-alloc-image-ptest"]["packages"]
    assert "kernel-module-u-dma-buf" not in f["recipes"]["u-dma-buf"]["PACKAGES"]
    assert "u-dma-buf" in f["recipes"]["u-dma-buf"]["PACKAGES"]


def installed_paths(recipe: Dict[str, Any]) -> set:
    image_dir = recipe["D"]
    return {m.group(1) for m in re.finditer(re.escape(image_dir) + r"(/\S+)",
                                            recipe["do_install"] or "")}


@pytest.mark.parametrize("series", SERIES)
def test_udev_rules_recipe_installs_what_the_docs_name_and_packages_it(series):
    rules = facts(series)["recipes"]["u-dma-buf-udev-rules"]
    paths = installed_paths(rules)
    assert paths == {"/usr/lib/udev/rules.d/60-u-dma-buf.rules",
                     "/usr/lib/tmpfiles.d/pynq-alloc.conf",
                     "/etc/default/volatiles/99_pynq-alloc"}, paths
    readme = (LAYER / "README.md").read_text()
    for path in paths:
        assert f"`{path}`" in readme, f"README.md does not name {path}"
    files = rules["FILES"]["u-dma-buf-udev-rules"]
    for path in paths:
        assert any(path == f or path.startswith(f.rstrip("/") + "/") for f in files), \
            f"{path} is in no FILES entry of u-dma-buf-udev-rules: {files}"
    assert rules["SECTION"] != "kernel/modules"
    assert not rules["HOMEPAGE"], "our files: not the driver's home page"


@pytest.mark.parametrize("series", SERIES)
def test_module_options_file_goes_where_the_docs_say(series):
    drv = facts(series)["recipes"]["u-dma-buf"]
    assert "systemd" in drv["DISTRO_FEATURES"].split()  # run-bitbake's INIT_MANAGER
    conf = drv["modprobedir"] + "/u-dma-buf.conf"
    assert conf == "/usr/lib/modprobe.d/u-dma-buf.conf"
    assert f"`{conf}`" in (LAYER / "README.md").read_text()


@pytest.mark.parametrize("series", SERIES)
def test_driver_recipe_adds_nothing_module_base_already_gives(series):
    drv = facts(series)["recipes"]["u-dma-buf"]
    assert drv["CROSS_COMPILE"] == drv["TARGET_PREFIX"], "module-base exports CROSS_COMPILE"
    assert "CROSS_COMPILE" not in drv["EXTRA_OEMAKE"]
    assert "CONFIG_U_DMA_BUF" not in drv["EXTRA_OEMAKE"], "the Makefile defaults it to m"


@pytest.mark.parametrize("series", SERIES)
def test_our_sources_come_from_the_pinned_commit_not_the_checkout(series):
    """No FILESEXTRAPATHS into the repository: python3-pynq-alloc and
    pynq-alloc-qemu-dtb fetch pynq-alloc's git repository at PYNQ_ALLOC_SRCREV."""
    f = facts(series)
    for pn in ("python3-pynq-alloc", "pynq-alloc-qemu-dtb"):
        recipe = f["recipes"][pn]
        git = [u for u in recipe["SRC_URI"].split() if u.startswith("git://")]
        assert len(git) == 1 and "name=pynq-alloc" in git[0], recipe["SRC_URI"]
        assert re.fullmatch(r"[0-9a-f]{40}", recipe["SRCREV_pynq-alloc"])
        assert not [u for u in recipe["SRC_URI"].split()
                    if u.startswith("file://") and u != "file://run-ptest"], recipe["SRC_URI"]
        assert recipe["BBCLASSEXTEND"] in (None, ""), f"{pn}: no native/nativesdk consumer"
        assert not recipe["HOMEPAGE"], f"{pn}: our files, not the driver's home page"


@pytest.mark.parametrize("series", SERIES)
def test_qemu_image_boots_the_dtb_the_recipe_deploys_with_its_memory(series):
    f = facts(series)
    dtb = f["recipes"]["pynq-alloc-qemu-dtb"]
    for image in IMAGES:
        img = f["images"][image]
        assert img["QB_DTB"] == dtb["PYNQ_ALLOC_QEMU_DTB"]
        # runqemu reads QB_MEM as MiB and adds the "M" itself (mem=1024M, not 1GM)
        assert img["QB_MEM"] == "-m " + dtb["PYNQ_ALLOC_QEMU_MEMORY"]
        assert re.fullmatch(r"\d+", dtb["PYNQ_ALLOC_QEMU_MEMORY"])
        assert img["IMAGE_LINGUAS"] == "" and not img["LINGUAS_INSTALL"].split(), img
