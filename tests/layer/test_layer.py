"""Checks of meta-pynq-alloc/ and kas/ that need no network and no Yocto checkout:
oelint-adv, kas files against kas's own schema, layer layout, and the contract with
the other areas of the repository (python-pynq-alloc/, device-tree/, tests/target/).

The bitbake checks (bitbake -p, bitbake -g, bitbake's own expansions) are in
test_bitbake.py, run by `make test-layer-bitbake` (not part of make test); the udev
rule, tmpfiles.d and volatiles entries are checked in test_udev_rules.py."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAYER = REPO / "meta-pynq-alloc"
KAS_DIR = REPO / "kas"
HERE = Path(__file__).resolve().parent
SERIES = ("scarthgap", "wrynose")

RECIPES = sorted(LAYER.rglob("*.bb"))
METADATA = sorted([*RECIPES, *LAYER.rglob("*.bbappend"), *LAYER.rglob("*.bbclass")])
KAS_FILES = sorted(KAS_DIR.glob("*.yml"))
# machine files set `machine`; base.yml and the fragments (ptest.yml, ...) do not
KAS_MACHINE_FILES = [p for p in KAS_FILES if not p.name.endswith(".lock.yml")
                     and "machine" in (yaml.safe_load(p.read_text()) or {})]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def assignments(text: str) -> Dict[str, str]:
    """VAR = "value" (also ?=, ??=, :=, +=) of a recipe, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    found: Dict[str, str] = {}
    for m in re.finditer(r'^([A-Za-z0-9_:${}\-\.]+)\s*(?:\?\?=|\?=|:=|\+=|=)\s*"(.*)"\s*$',
                         joined, re.MULTILINE):
        found.setdefault(m.group(1), m.group(2))
    return found


# --- oelint-adv -------------------------------------------------------------------

def oelint(release: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oelint_adv", "--quiet", "--relpaths", "--mode", "all",
           "--release", release,
           # The rule pings every HOMEPAGE over the network: make test has none, so it
           # would report every recipe. The URLs are checked by hand instead.
           "--suppress", "oelint.vars.homepageping",
           # Variables oelint's database does not know: QB_DTB (OE-Core's runqemu),
           # DT_INCLUDE (devicetree.bbclass), module_conf_u-dma-buf, our own knobs;
           # zynq/zynqmp are meta-xilinx's SoC machine overrides.
           f"--constantmods=+{HERE / 'oelint-known-vars.json'}",
           *[str(p) for p in METADATA]]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_layer_has_recipes_appends_to_lint():
    assert len(RECIPES) >= 6, [rel(p) for p in RECIPES]
    assert any(p.suffix == ".bbappend" for p in METADATA)


@pytest.mark.parametrize("release", SERIES)
def test_oelint_adv_reports_zero_findings(release):
    proc = oelint(release)
    findings = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not findings, f"oelint-adv --release {release}:\n{findings}"


def test_oelint_suppressions_state_a_reason_and_never_cover_a_whole_file():
    for path in METADATA:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"#\s+nooelint:", line):
                continue
            neighbours = [lines[j] for j in (i - 1, i + 1) if 0 <= j < len(lines)]
            reasons = [n for n in neighbours
                       if n.startswith("#") and "nooelint" not in n and len(n.strip("# ")) > 15]
            assert reasons, f"{rel(path)}:{i + 1}: '# nooelint:' without a reason next to it"
            ids = re.sub(r"#\s+nooelint:\s*", "", line).replace(",", " ").split()
            assert ids and all(x.startswith("oelint.") for x in ids), \
                f"{rel(path)}:{i + 1}: name the rules suppressed, not the file: {line}"
            assert "oelint.file" not in line, f"{rel(path)}:{i + 1}: file-wide rule suppressed"


# --- layer layout -----------------------------------------------------------------

def layer_conf() -> Dict[str, str]:
    return assignments((LAYER / "conf" / "layer.conf").read_text())


def test_layer_conf_is_compatible_with_both_lts_series():
    compat = layer_conf()["LAYERSERIES_COMPAT_pynq-alloc"].split()
    assert sorted(compat) == sorted(SERIES)


def test_layer_depends_on_core_only():
    assert layer_conf()["LAYERDEPENDS_pynq-alloc"].split() == ["core"]


def test_layer_conf_is_in_meta_skeleton_style():
    conf = layer_conf()
    for var in ("BBFILE_COLLECTIONS", "BBFILE_PATTERN_pynq-alloc", "BBFILE_PRIORITY_pynq-alloc",
                "LAYERVERSION_pynq-alloc"):
        assert var in conf, f"conf/layer.conf lacks {var}"


def test_layer_ships_license_security_policy_and_a_readme_check_layer_accepts():
    assert (LAYER / "COPYING.MIT").read_text().startswith("Permission is hereby granted")
    assert (LAYER / "SECURITY.md").stat().st_size > 0
    text = (LAYER / "README.md").read_text()
    # yocto-check-layer's test_readme: maintainer, patch, an e-mail address; and a
    # README naming another README would make it skip those checks.
    assert "maintainer" in text.lower() and "patch" in text.lower()
    assert re.search(r"[^@\s]+@[^@\s]+\.[a-z]+", text)
    assert "readme" not in text.lower()
    assert "kas build kas/qemuarm64.yml" in text


def is_image(path: Path) -> bool:
    text = path.read_text()
    inc = path.with_name("pynq-alloc-image.inc")
    if "require pynq-alloc-image.inc" in text and inc.exists():
        text += inc.read_text()
    return bool(re.search(r"^inherit\s+.*\b(core-image|image)\b", text, re.MULTILINE))


@pytest.mark.parametrize("recipe", RECIPES, ids=rel)
def test_recipe_has_license(recipe):
    assert assignments(recipe.read_text()).get("LICENSE"), f"{rel(recipe)}: no LICENSE"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if not is_image(r)], ids=rel)
def test_recipe_has_lic_files_chksum(recipe):
    # (images have no do_populate_lic: they take LICENSE only)
    chksum = assignments(recipe.read_text()).get("LIC_FILES_CHKSUM", "")
    assert re.search(r"file://\S+;(\S*;)?md5=[0-9a-f]{32}", chksum), \
        f"{rel(recipe)}: LIC_FILES_CHKSUM missing or without md5"


def local_source_dirs(recipe: Path) -> List[Path]:
    """Where a recipe's file:// sources are: files/ and <BPN>/ next to it."""
    bpn = recipe.stem.split("_")[0]
    return [recipe.parent / "files", recipe.parent / bpn]


def pinned_srcrev() -> str:
    return layer_conf()["PYNQ_ALLOC_SRCREV"]


def git_show(commit: str, path: str) -> bytes:
    """A file of this repository at COMMIT (what the pynq_alloc_source class fetches)."""
    proc = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True)
    assert proc.returncode == 0, \
        f"{path} is not in commit {commit} of this repository (PYNQ_ALLOC_SRCREV in " \
        f"meta-pynq-alloc/conf/layer.conf): {proc.stderr.decode().strip()}"
    return proc.stdout


def uses_pynq_alloc_source(recipe: Path) -> bool:
    return bool(re.search(r"^inherit .*\bpynq_alloc_source\b", recipe.read_text(), re.M))


def source_subdir(recipe: Path) -> str:
    """S of a pynq_alloc_source recipe, relative to the repository root."""
    s = assignments(recipe.read_text())["S"]
    m = re.fullmatch(r"\$\{PYNQ_ALLOC_SRC\}/([\w\-./]+)", s)
    assert m, f"{rel(recipe)}: S = {s}, expected ${{PYNQ_ALLOC_SRC}}/<folder of pynq-alloc>"
    return m.group(1)


def lic_files(recipe: Path) -> Iterator[Tuple[str, Dict[str, str]]]:
    chksum = assignments(recipe.read_text()).get("LIC_FILES_CHKSUM", "")
    for entry in chksum.split():
        name, *params = entry[len("file://"):].split(";")
        yield name, dict(p.split("=", 1) for p in params)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if not is_image(r)
                                    and "git://" not in r.read_text()], ids=rel)
def test_lic_files_chksum_matches_the_file_it_names(recipe):
    """The md5 in LIC_FILES_CHKSUM is that of the lines it names: in the layer's
    files/ for local sources, in the pinned commit for pynq-alloc's own sources."""
    checked = 0
    for name, params in lic_files(recipe):
        if name.startswith("${COMMON_LICENSE_DIR}"):
            continue
        if uses_pynq_alloc_source(recipe):
            data = git_show(pinned_srcrev(), f"{source_subdir(recipe)}/{name}")
            where = f"{source_subdir(recipe)}/{name} at {pinned_srcrev()[:12]}"
        else:
            candidates = [d / name for d in local_source_dirs(recipe) if (d / name).is_file()]
            assert candidates, f"{rel(recipe)}: license file {name} not found"
            data, where = candidates[0].read_bytes(), rel(candidates[0])
        lines = data.splitlines(keepends=True)
        begin = int(params.get("beginline", 1))
        end = int(params.get("endline", len(lines)))
        got = hashlib.md5(b"".join(lines[begin - 1:end])).hexdigest()
        assert got == params["md5"], f"{rel(recipe)}: md5 of {where} lines {begin}-{end} is {got}"
        checked += 1
    assert checked, f"{rel(recipe)}: LIC_FILES_CHKSUM names no file of the recipe's sources"


def test_udmabuf_recipe_pins_the_v5_5_0_commit():
    text = (LAYER / "recipes-kernel/u-dma-buf/u-dma-buf_5.5.0.bb").read_text()
    values = assignments(text)
    assert values["SRCREV"] == "15bcde3cb960321e99983e227aeacc5807888333"
    assert values["LICENSE"] == "BSD-2-Clause"
    # upstream's Makefile defaults CONFIG_U_DMA_BUF to m; module-base exports CROSS_COMPILE
    assert "EXTRA_OEMAKE" not in values


PATCH_HEADER_RULES = {
    "Upstream-Status": re.compile(r"^Upstream-Status: (Pending|Submitted|Accepted|Backport|"
                                  r"Denied|Inappropriate|Inactive-Upstream)", re.M),
    "Signed-off-by": re.compile(r"^Signed-off-by: .+ <.+@.+>", re.M),
}


def patch_header_problems(text: str) -> List[str]:
    """What the OE patch guidelines require of a patch header and TEXT lacks."""
    header = text.split("\n---\n", 1)[0]
    return [tag for tag, rule in PATCH_HEADER_RULES.items() if not rule.search(header)]


def test_patch_header_check_rejects_a_patch_without_status_or_sign_off():
    good = ("From 1 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] fix\n\n"
            "Upstream-Status: Pending\nSigned-off-by: A B <a@b.example>\n---\n x | 1 +\n")
    assert patch_header_problems(good) == []
    assert patch_header_problems(good.replace("Upstream-Status: Pending\n", "")) == \
        ["Upstream-Status"]
    assert patch_header_problems(good.replace("Signed-off-by", "Acked-by")) == ["Signed-off-by"]
    # a status given only below the --- line (in the diff) does not count
    assert patch_header_problems("Subject: x\n---\nUpstream-Status: Pending\n") == \
        ["Upstream-Status", "Signed-off-by"]


def test_every_patch_is_used_and_carries_upstream_status_and_signed_off_by():
    patches = sorted([*LAYER.rglob("*.patch"), *LAYER.rglob("*.diff")])
    named = set()
    for recipe in METADATA:
        named.update(re.findall(r"file://([\w\-./]+\.(?:patch|diff))", recipe.read_text()))
    for name in named:
        assert any(p.name == Path(name).name for p in patches), f"SRC_URI names {name}: missing"
    for patch in patches:
        assert patch.name in {Path(n).name for n in named}, f"{rel(patch)}: named by no recipe"
        problems = patch_header_problems(patch.read_text(errors="replace"))
        assert not problems, f"{rel(patch)}: no {', '.join(problems)}"


# --- contract with the other areas --------------------------------------------------

def test_no_recipe_reaches_into_the_checkout_with_fileextrapaths():
    for path in METADATA:
        text = path.read_text()
        assert "FILESEXTRAPATHS" not in text, f"{rel(path)}: fetch from the pinned commit instead"
        assert not re.search(r"file://[\w\-./]+/(?=[\s\"\\])", text), \
            f"{rel(path)}: a directory fetch pulls untracked files of the checkout"


def test_pinned_srcrev_is_a_commit_of_this_repository_and_an_ancestor_of_head():
    rev = pinned_srcrev()
    assert re.fullmatch(r"[0-9a-f]{40}", rev), rev
    proc = subprocess.run(["git", "merge-base", "--is-ancestor", rev, "HEAD"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, \
        f"PYNQ_ALLOC_SRCREV {rev} is not in the history of HEAD ({proc.stderr.strip()}): " \
        f"set it in meta-pynq-alloc/conf/layer.conf to a commit of this branch"


#: What the recipes fetch at PYNQ_ALLOC_SRCREV, and what this checkout's tests run.
SHIPPED_FROM_THE_PIN = ("python-pynq-alloc", "tests/target", "device-tree")


def test_pinned_commit_ships_what_this_checkout_tests():
    """The host tests, the QEMU run and ptest use this checkout's package, target suite
    and device tree; images build PYNQ_ALLOC_SRCREV's. Any difference is code that an
    image would ship (or miss) and no test ran."""
    rev = pinned_srcrev()
    proc = subprocess.run(["git", "diff", "--name-only", rev, "HEAD", "--",
                           *SHIPPED_FROM_THE_PIN], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    changed = proc.stdout.split()
    last = subprocess.run(["git", "log", "-1", "--format=%H", "--", *SHIPPED_FROM_THE_PIN],
                          cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert not changed, (
        f"PYNQ_ALLOC_SRCREV {rev[:12]} (meta-pynq-alloc/conf/layer.conf) lacks {len(changed)} "
        f"committed change(s) the tests ran, e.g. {changed[:3]}: set it to {last}, the "
        f"last commit that touched {', '.join(SHIPPED_FROM_THE_PIN)}")


def test_pinned_commit_holds_what_the_recipes_build():
    rev = pinned_srcrev()
    for path in ("python-pynq-alloc/pyproject.toml", "tests/target/conftest.py",
                 "device-tree/qemu-virt/build-dtb", "device-tree/include/pynq-alloc.dtsi"):
        git_show(rev, path)
    bbappend = (LAYER / "dynamic-layers/xilinx/recipes-bsp/device-tree/"
                "device-tree.bbappend").read_text()
    for dtsi in re.findall(r'"((?:zynqmp|zynq7000)/[\w\-.]+\.dtsi)"', bbappend):
        git_show(rev, f"device-tree/{dtsi}")


def test_pinned_package_version_is_the_recipe_version():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    pinned = tomllib.loads(git_show(pinned_srcrev(), "python-pynq-alloc/pyproject.toml").decode())
    assert python_recipe().stem.split("_")[1] == pinned["project"]["version"]


def test_device_tree_files_the_layer_names_exist():
    assert (REPO / "device-tree/qemu-virt/build-dtb").is_file()
    assert list((REPO / "device-tree/qemu-virt").glob("*.dtso"))
    bbappend = (LAYER / "dynamic-layers/xilinx/recipes-bsp/device-tree/"
                "device-tree.bbappend").read_text()
    named = re.findall(r'"((?:zynqmp|zynq7000)/[\w\-.]+\.dtsi)"', bbappend)
    assert named
    for dtsi in named:
        assert (REPO / "device-tree" / dtsi).is_file(), dtsi
    dtb = (LAYER / "recipes-bsp/pynq-alloc-qemu-dtb/pynq-alloc-qemu-dtb_1.0.bb").read_text()
    lic = re.search(r"file://([\w\-./]+);", dtb).group(1)
    assert (REPO / "device-tree" / lic).is_file(), lic


def pyproject() -> Dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    with open(REPO / "python-pynq-alloc/pyproject.toml", "rb") as f:
        return tomllib.load(f)


def python_recipe() -> Path:
    (recipe,) = LAYER.glob("recipes-devtools/python/python3-pynq-alloc_*.bb")
    return recipe


def test_python_recipe_version_is_the_package_version():
    assert python_recipe().stem.split("_")[1] == pyproject()["project"]["version"]


def test_python_recipe_uses_the_packages_pep517_backend():
    backend = pyproject()["build-system"]["build-backend"]
    classes = {"setuptools.build_meta": "python_setuptools_build_meta",
               "flit_core.buildapi": "python_flit_core", "hatchling.build": "python_hatchling"}
    assert backend in classes
    assert re.search(rf"^inherit .*\b{classes[backend]}\b", python_recipe().read_text(), re.M)


def test_ptest_installs_the_target_suite_next_to_the_package():
    text = python_recipe().read_text()
    assert source_subdir(python_recipe()) == "python-pynq-alloc"
    assert "${S}/../tests/target" in text
    assert list((REPO / "tests/target").glob("test_*.py"))
    run_ptest = (LAYER / "recipes-devtools/python/python3-pynq-alloc/run-ptest").read_text()
    assert "pytest --automake" in run_ptest and "tests/target" in run_ptest


def imported_modules(root: Path) -> Set[str]:
    mods: Set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods


# Standard-library modules OE-Core packages outside python3-core (python3-manifest.json,
# identical on scarthgap and wrynose for these); everything else the package imports
# is in python3-core. With OE_CORE_DIR/POKY_DIR set the manifest itself is used.
STDLIB_PACKAGES = {"fcntl": "python3-fcntl", "json": "python3-json", "mmap": "python3-mmap",
                   "numbers": "python3-numbers", "tempfile": "python3-io"}


def manifest_packages(mods: Set[str]) -> Dict[str, str] | None:
    """module -> python3-* package from OE-Core's python3-manifest.json. A module
    listed in python3-core and in a package of its own (wrynose moved fcntl's .so
    into core too) maps to its own package, which exists on both series."""
    base = os.environ.get("OE_CORE_DIR") or os.environ.get("POKY_DIR")
    if not base:
        return None
    path = Path(base) / "meta/recipes-devtools/python/python3/python3-manifest.json"
    data = json.loads("".join(line for line in path.read_text().splitlines(keepends=True)
                              if not line.lstrip().startswith("#")))
    owners: Dict[str, Set[str]] = {}
    for pkg, entry in data.items():
        for f in entry.get("files", []):
            base_name = f.rstrip("/").split("/")[-1]
            for mod in mods:
                if base_name in (mod, mod + ".py") or base_name.startswith(
                        (mod + ".cpython", mod + ".*")):
                    owners.setdefault(mod, set()).add(pkg)
    found: Dict[str, str] = {}
    for mod, pkgs in owners.items():
        own = sorted(pkgs - {"core"})
        found[mod] = "python3-" + (mod if mod in own else own[0] if own else "core")
    return found


def test_python_rdepends_are_exactly_what_the_package_imports():
    mods = imported_modules(REPO / "python-pynq-alloc/src") - {"pynq_alloc"}
    third_party = {m for m in mods if m not in sys.stdlib_module_names}
    assert third_party == {"numpy"}, f"imports outside the stdlib besides numpy: {third_party}"
    stdlib = mods - third_party
    mapping = manifest_packages(stdlib) or STDLIB_PACKAGES
    needed = {"python3-core", "python3-numpy"} | {
        mapping.get(m, "python3-core") for m in stdlib}
    text = re.sub(r"\\\n", " ", python_recipe().read_text())
    rdepends = set(re.search(r'^RDEPENDS:\$\{PN\} \+= "([^"]*)"', text, re.M).group(1).split())
    assert rdepends == needed, f"RDEPENDS:${{PN}} {sorted(rdepends)} != needed {sorted(needed)}"


# --- kas ----------------------------------------------------------------------------

def kas_schema() -> Dict[str, Any]:
    import kas
    return json.loads((Path(kas.__file__).parent / "schema-kas.json").read_text())


def load_yaml(path: Path) -> Dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("path", KAS_FILES, ids=rel)
def test_kas_file_matches_kas_schema(path):
    jsonschema.validate(load_yaml(path), kas_schema())


@pytest.mark.parametrize("path", KAS_FILES, ids=rel)
def test_kas_header_version_is_read_by_the_pinned_kas(path):
    import kas
    version = load_yaml(path)["header"]["version"]
    assert kas.__compatible_file_version__ <= version <= kas.__file_version__


def merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def kas_config(spec: str) -> Dict[str, Any]:
    """What `kas build spec` sees: includes (relative to the repo root) first, then
    the file, then its lock file, for each ':'-separated file in turn."""
    def load(path: Path) -> Dict[str, Any]:
        data = load_yaml(path)
        cfg: Dict[str, Any] = {}
        for inc in data.get("header", {}).get("includes", []):
            cfg = merge(cfg, load(REPO / inc))
        cfg = merge(cfg, data)
        lock = path.with_name(path.stem + ".lock.yml")
        if lock.exists():
            cfg = merge(cfg, load_yaml(lock))
        return cfg
    cfg: Dict[str, Any] = {}
    for name in spec.split(":"):
        cfg = merge(cfg, load(REPO / name))
    return cfg


@pytest.mark.parametrize("path", KAS_MACHINE_FILES, ids=rel)
def test_kas_machine_file_has_a_lock_pinning_every_remote_repo(path):
    cfg = kas_config(rel(path))
    assert cfg.get("machine")
    lock = path.with_name(path.stem + ".lock.yml")
    assert lock.exists(), f"no {rel(lock)}: run kas lock {rel(path)} (it writes {rel(lock)})"
    for name, repo in cfg["repos"].items():
        if repo and repo.get("url"):
            commit = cfg.get("overrides", {}).get("repos", {}).get(name, {}).get("commit", "")
            assert re.fullmatch(r"[0-9a-f]{40}", commit), f"{name} not pinned by {rel(lock)}"
    assert cfg["repos"]["pynq-alloc"]["layers"] == {"meta-pynq-alloc": None}


def test_kas_qemuarm64_with_ptest_builds_the_ptest_image_on_wrynose():
    cfg = kas_config("kas/qemuarm64.yml:kas/ptest.yml")
    assert cfg["machine"] == "qemuarm64"
    assert cfg["target"] == "pynq-alloc-image-ptest"
    assert cfg["defaults"]["repos"]["branch"] == "wrynose"
    assert "ptest" in cfg["local_conf_header"]["ptest"]


XILINX_BOARDS = ("zcu102", "zcu104", "kv260", "ultra96v2", "rfsoc4x2", "zc702", "pynq-z1", "pynq-z2")


@pytest.mark.parametrize("board", XILINX_BOARDS)
def test_kas_board_file_uses_scarthgap_with_meta_xilinx_meta_arm_and_our_dtb(board):
    cfg = kas_config(f"kas/{board}.yml")
    assert cfg["defaults"]["repos"]["branch"] == "scarthgap"
    assert "meta-xilinx-core" in cfg["repos"]["meta-xilinx"]["layers"]
    assert {"meta-arm", "meta-arm-toolchain"} <= set(cfg["repos"]["meta-arm"]["layers"])
    assert cfg["machine"] in ("zynqmp-common", "zynq-common")
    conf = "\n".join(cfg["local_conf_header"].values())
    assert 'PREFERRED_PROVIDER_virtual/dtb = "pynq-alloc-board-dtb"' in conf
    assert re.search(r'^PYNQ_ALLOC_BOARD_DTS = "\S+\.dts"$', conf, re.M), conf


# --- oeqa (testimage) ---------------------------------------------------------------

OEQA_CASE = LAYER / "lib/oeqa/runtime/cases/pynq_alloc.py"
PACKAGE_GUARDS = ("OEHasPackage", "OERequirePackage")


def oeqa_tests() -> Dict[str, Dict[str, List[Any]]]:
    """test method -> {decorator name: [its first argument, as a literal]}."""
    tree = ast.parse(OEQA_CASE.read_text())
    found: Dict[str, Dict[str, List[Any]]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            if not fn.name.startswith("test"):
                continue
            decs: Dict[str, List[Any]] = {}
            for dec in fn.decorator_list:
                assert isinstance(dec, ast.Call), f"{fn.name}: bare decorator"
                decs.setdefault(dec.func.id, []).append(ast.literal_eval(dec.args[0]))
            found[f"{cls.name}.{fn.name}"] = decs
    return found


def image_install(image: str) -> Set[str]:
    text = re.sub(r"\\\n", " ", (LAYER / f"recipes-core/images/{image}.bb").read_text())
    inc = re.sub(r"\\\n", " ", (LAYER / "recipes-core/images/pynq-alloc-image.inc").read_text())
    names: Set[str] = set()
    for src in (inc, text):
        for m in re.finditer(r'^IMAGE_INSTALL\s*\+?=\s*"([^"]*)"', src, re.M):
            names.update(w for w in m.group(1).split() if not w.startswith("$"))
    return names


def layer_packages() -> Set[str]:
    """Literal package names our recipes make: PN, and PN-ptest where ptest is
    inherited (test_bitbake.py checks the same against bitbake's PACKAGES)."""
    names: Set[str] = set()
    for recipe in RECIPES:
        if is_image(recipe):
            continue
        pn = recipe.stem.split("_")[0]
        names.add(pn)
        if re.search(r"^inherit .*\bptest\b", recipe.read_text(), re.M):
            names.add(pn + "-ptest")
    return names


def test_oeqa_case_is_loaded_by_testimage_of_the_ptest_image():
    assert re.search(r"^addpylib \$\{LAYERDIR\}/lib oeqa$",
                     (LAYER / "conf/layer.conf").read_text(), re.MULTILINE)
    suites = assignments((LAYER / "recipes-core/images/pynq-alloc-image-ptest.bb")
                         .read_text())["TEST_SUITES"].split()
    assert OEQA_CASE.stem in suites and "ssh" in suites


def test_every_oeqa_case_is_guarded_by_a_package_the_ptest_image_installs():
    """OEHasPackage skips (OERequirePackage fails) unless a guard's name is in the image
    manifest, which holds real package names: our recipes' literal packages that the
    image installs. kernel-module-u-dma-buf is not one (the module's package is named
    kernel-module-u-dma-buf-<kernel version>): a guard naming it skips every case."""
    installed = image_install("pynq-alloc-image-ptest") & layer_packages()
    tests = oeqa_tests()
    assert len(tests) >= 4, tests
    for name, decs in tests.items():
        guards = [pkg for d in PACKAGE_GUARDS for arg in decs.get(d, [])
                  for pkg in ([arg] if isinstance(arg, str) else arg)]
        assert guards, f"{name}: no {' or '.join(PACKAGE_GUARDS)}"
        for pkg in guards:
            assert pkg in installed, \
                f"{name}: guard names {pkg}, not a package pynq-alloc-image-ptest installs " \
                f"from this layer ({sorted(installed)})"


def test_oeqa_dependencies_name_cases_that_exist():
    tests = oeqa_tests()
    for name, decs in tests.items():
        for deps in decs.get("OETestDepends", []):
            for dep in deps:
                module, rest = dep.split(".", 1)
                if module == OEQA_CASE.stem:
                    assert rest in tests, f"{name} depends on {dep}, which does not exist"
                else:
                    assert dep == "ssh.SSHTest.test_ssh", f"{name}: unexpected dependency {dep}"


def test_oeqa_case_checks_what_the_udev_rule_and_tmpfiles_promise():
    text = OEQA_CASE.read_text()
    for needle in ("root:dma 660", "root:dma 2770", "/run/pynq-alloc", "sync_mode"):
        assert needle in text, needle
