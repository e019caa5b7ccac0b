"""The docs a new user reads: links that resolve inside the repository, device-tree
docs that stand alone, the kas pin the README gives, and a `make help` that lists
every target the Makefile and mk/*.mk define."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "build", "node_modules", "__pycache__", ".pytest_cache"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> List[Path]:
    return sorted(p for p in REPO.rglob("*.md")
                  if not SKIP_DIRS & set(p.relative_to(REPO).parts))


def links(path: Path) -> Iterator[Tuple[int, str]]:
    in_code = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if not in_code:
            for match in LINK.finditer(line):
                yield number, match.group(1)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and most renderers make it."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def anchors(path: Path) -> set:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


def test_every_relative_link_in_the_docs_resolves_inside_the_repository():
    bad = []
    for doc in markdown_files():
        for number, target in links(doc):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, fragment = target.partition("#")
            resolved = (doc.parent / file_part).resolve() if file_part else doc
            where = f"{doc.relative_to(REPO)}:{number}: {target}"
            if REPO not in resolved.parents and resolved != REPO:
                bad.append(f"{where} leaves the repository")
            elif not resolved.exists():
                bad.append(f"{where} does not exist")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                bad.append(f"{where}: no heading #{fragment}")
    assert not bad, "\n".join(bad)


def test_device_tree_docs_stand_alone():
    """What a user needs is written in them: no link to any other site or folder."""
    for doc in sorted((REPO / "device-tree").glob("*.md")):
        text = doc.read_text()
        assert not re.search(r"https?://", text), f"{doc.name} links outside the repository"
        assert "shared/" not in text, doc.name


def test_no_file_points_at_the_projects_private_notes():
    """The design notes beside the repository are not part of the product."""
    this = Path(__file__).resolve()
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    hits = []
    for name in filter(None, listed):
        path = REPO / name
        if path.resolve() == this or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if re.search(r"\.\./shared/|shared/(UDMABUF|DESIGN|STYLE)\.md", text):
            hits.append(name)
    assert not hits, hits


def test_pool_guide_covers_what_a_board_designer_chooses():
    text = (REPO / "device-tree/POOLS.md").read_text()
    for topic in ("no-map", "reusable", "/dev/mem", "migrat", "power-of-two", "4 MiB",
                  "udmabuf0=", "alloc-ranges", "check-dtb", "sync_mode"):
        assert topic in text, topic
    readme = (REPO / "README.md").read_text()
    assert "(device-tree/POOLS.md)" in readme
    assert "(POOLS.md)" in (REPO / "device-tree/README.md").read_text()


def test_readme_says_how_to_get_the_kas_it_is_tested_with():
    pin = re.search(r"^kas==(\S+)$", (REPO / "tests/layer/requirements.txt").read_text(), re.M)
    assert pin
    readme = (REPO / "README.md").read_text()
    assert f"pip install kas=={pin.group(1)}" in readme
    assert ".venv/layer/bin/kas" in readme


def make(*args: str, check: bool = True) -> str:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO,
                          capture_output=True, text=True, check=check).stdout


def test_make_help_lists_every_target():
    # -p prints the rule database; -q runs nothing (its exit status means "not up to date")
    database = make("-pRrq", "-f", "Makefile", ":", check=False)
    phony = set()
    for line in database.splitlines():
        if line.startswith(".PHONY:"):
            phony |= set(line.split()[1:])
    assert {"run", "test", "qemu-clean", "qemu-image", "test-python-np1"} <= phony
    shown = set(re.findall(r"^\s+make (\S+)", make("help"), re.M))
    assert phony <= shown, f"make help omits {sorted(phony - shown)}"
    assert shown <= phony, f"make help names no such target: {sorted(shown - phony)}"
