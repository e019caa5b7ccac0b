"""The package's wheel and sdist, built by the real build front end and backend.

Each build runs in a fresh venv with the tools from PyPI (network: PyPI only):
the newest hatchling and build, and the versions the supported Yocto series ship
(their recipes build with `python3 -m build --no-isolation --wheel`, so those
builds use --no-isolation too). Every one must give SPDX licence metadata
(`License-Expression: MIT`, `License-File: LICENSE`) with LICENSE inside, and
print no warning: a deprecation today is a build that fails on a later release.
"""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "python-pynq-alloc"

# name -> pip requirements of the build venv. Yocto versions from openembedded-core's
# recipes: scarthgap python3-hatchling_1.21.1 + python3-build_1.1.1, wrynose
# python3-hatchling_1.29.0 + python3-build_1.4.0.
TOOLCHAINS: Dict[str, List[str]] = {
    "newest": ["--upgrade", "hatchling", "build"],
    "scarthgap": ["hatchling==1.21.1", "build==1.1.1"],
    "wrynose": ["hatchling==1.29.0", "build==1.4.0"],
}


def run(args: List[str], cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                            check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{output}"
    return output


def make_venv(path: Path, requirements: List[str]) -> Path:
    run([sys.executable, "-m", "venv", path])
    python = path / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", *requirements])
    return python


def pyproject_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (PKG / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def clean_copy(dest: Path) -> Path:
    """The package folder as a fresh clone has it (no caches, no earlier build)."""
    shutil.copytree(PKG, dest, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "build", "dist", "*.egg-info", ".*_cache"))
    return dest


@pytest.fixture(scope="module", params=sorted(TOOLCHAINS))
def built(request, tmp_path_factory) -> Tuple[str, Path, Path, str, Dict[str, str]]:
    """(toolchain, wheel, sdist, build output, tool versions)."""
    name = request.param
    work = tmp_path_factory.mktemp(f"build-{name}")
    python = make_venv(work / "venv", TOOLCHAINS[name])
    versions = {tool: run([python, "-c", f"import importlib.metadata as m; "
                                         f"print(m.version({tool!r}))"]).strip()
                for tool in ("hatchling", "build")}
    source = clean_copy(work / "src")
    output = run([python, "-m", "build", "--no-isolation", "--outdir", work / "dist", source])
    (wheel,) = (work / "dist").glob("*.whl")
    (sdist,) = (work / "dist").glob("*.tar.gz")
    return name, wheel, sdist, output, versions


def metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


def wheel_metadata(wheel: Path) -> Tuple[email.message.Message, Dict[str, bytes]]:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        licenses = {n: zf.read(n) for n in names
                    if ".dist-info/" in n and n.rsplit("/", 1)[-1] == "LICENSE"}
        return metadata(zf.read(meta).decode()), licenses


def sdist_members(sdist: Path) -> Dict[str, bytes]:
    with tarfile.open(sdist) as tf:
        out = {}
        for member in tf.getmembers():
            if member.isfile():
                handle = tf.extractfile(member)
                assert handle is not None
                out[member.name.split("/", 1)[1]] = handle.read()
        return out


def assert_spdx_mit(meta: email.message.Message, where: str) -> None:
    assert meta.get_all("License-Expression") == ["MIT"], f"{where}: {meta.items()}"
    assert meta.get_all("License-File") == ["LICENSE"], where
    assert meta.get("License") is None, f"{where}: legacy License field"
    assert not [c for c in meta.get_all("Classifier", []) if c.startswith("License ::")], \
        f"{where}: licence classifiers are deprecated beside License-Expression"
    assert meta["Name"] == "pynq-alloc" and meta["Version"] == pyproject_version(), where


def test_build_prints_no_warning(built):
    name, _, _, output, versions = built
    noisy = [line for line in output.splitlines() if re.search(r"warn|deprecat", line, re.I)]
    assert not noisy, f"{name} {versions}: {noisy}"


def test_wheel_has_spdx_licence_metadata_and_the_licence_file(built):
    name, wheel, _, _, versions = built
    meta, licenses = wheel_metadata(wheel)
    assert_spdx_mit(meta, f"{wheel.name} ({name} {versions})")
    assert list(licenses.values()) == [(PKG / "LICENSE").read_bytes()], licenses.keys()


def test_sdist_has_spdx_licence_metadata_and_nothing_generated(built):
    name, _, sdist, _, versions = built
    members = sdist_members(sdist)
    assert_spdx_mit(metadata(members["PKG-INFO"].decode()), f"{sdist.name} ({name} {versions})")
    assert members["LICENSE"] == (PKG / "LICENSE").read_bytes()
    assert {"pyproject.toml", "README.md", "src/pynq_alloc/__init__.py",
            "src/pynq_alloc/py.typed"} <= set(members)
    stray = [m for m in members if re.search(r"__pycache__|\.pyc$|^build/|\.egg-info", m)]
    assert not stray


def test_wheel_ships_the_package_typed_with_its_command(built):
    _, wheel, _, _, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    tracked = subprocess.run(["git", "ls-files", "-z", "src"], cwd=PKG, capture_output=True,
                             check=True).stdout.decode().split("\0")
    sources = {name.removeprefix("src/") for name in tracked if name}
    assert "pynq_alloc/__init__.py" in sources
    assert sources <= names, sources - names
    assert re.search(r"^pynq-alloc\s*=\s*pynq_alloc\.cli:main$", scripts, re.M), scripts


def test_pip_install_from_the_source_folder_leaves_nothing_behind(tmp_path):
    """`pip install ./python-pynq-alloc` as a user runs it (isolated build with the
    newest backend from PyPI): the folder is unchanged, and pip shows the licence."""
    source = clean_copy(tmp_path / "src")
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    python = make_venv(tmp_path / "venv", ["--upgrade", "pip"])
    run([python, "-m", "pip", "install", "-q", "--no-deps", source], cwd=tmp_path)
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    shown = run([python, "-m", "pip", "show", "pynq-alloc"])
    assert re.search(r"^License-Expression: MIT$", shown, re.M), shown
    version = run([tmp_path / "venv" / "bin" / "python", "-c",
                   "import importlib.metadata as m; print(m.version('pynq-alloc'))"])
    assert version.strip() == pyproject_version()


def test_licence_files_are_the_layers_mit_terms():
    """LICENSE at the top and in the package are one text: a copyright line and the
    MIT terms that meta-pynq-alloc/COPYING.MIT carries."""
    top = (REPO / "LICENSE").read_text()
    assert (PKG / "LICENSE").read_text() == top

    def words(text: str) -> List[str]:
        return text.split()

    terms = words((REPO / "meta-pynq-alloc/COPYING.MIT").read_text())
    assert words(top)[:2] == ["MIT", "License"]
    assert re.search(r"^Copyright \(c\) \d{4} \S", top, re.M)
    assert words(top)[-len(terms):] == terms


def test_changelog_has_an_entry_for_the_version():
    text = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(pyproject_version())}\b", text, re.M)
    assert re.search(r"^## Unreleased$", text, re.M)
