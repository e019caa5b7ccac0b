"""Read and run the layer's recipes the way bitbake would, for the QEMU guest.

The guest must run what meta-pynq-alloc ships, not a copy of it: this module
parses a recipe (the subset of bitbake's syntax the layer uses), expands its
variables (``${VAR}`` and inline python ``${@...}`` with a ``d`` datastore),
unpacks its ``file://`` entries from FILESPATH and runs its shell tasks
(``do_install``, ``do_install_ptest``) with ``sh -e`` into a staging directory,
with the directory variables of OE-core's bitbake.conf. Syntax it does not
know is an error naming the line, never a silent misreading.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

# OE-core bitbake.conf's directory layout (no usrmerge, as poky's default distro).
BITBAKE_CONF = {
    "base_prefix": "", "prefix": "/usr", "exec_prefix": "/usr",
    "base_bindir": "/bin", "base_sbindir": "/sbin", "base_libdir": "/lib",
    "nonarch_base_libdir": "/lib", "bindir": "/usr/bin", "sbindir": "/usr/sbin",
    "libdir": "/usr/lib", "nonarch_libdir": "/usr/lib", "libexecdir": "/usr/libexec",
    "datadir": "/usr/share", "sysconfdir": "/etc", "localstatedir": "/var",
    "includedir": "/usr/include", "systemd_unitdir": "/lib/systemd",
    "systemd_system_unitdir": "/lib/systemd/system", "MACHINE": "qemuarm64",
    "TARGET_ARCH": "aarch64", "DISTRO_FEATURES": "ptest",
    "PTEST_PATH": "${libdir}/${BPN}/ptest",
}
# kernel-module-split.bbclass without the systemd distro feature (poky's sysvinit default).
MODULESLOADDIR = "/etc/modules-load.d"
MODPROBEDIR = "/etc/modprobe.d"

_ASSIGN = re.compile(
    r"^(?:export\s+)?(?P<key>[A-Za-z0-9_${}:.\-+/@]+?)(?:\[(?P<flag>[\w-]+)\])?\s*"
    r"(?P<op>\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)\s*(?P<q>[\"'])(?P<val>.*)(?P=q)\s*$", re.S)
_FUNC = re.compile(r"^(?:fakeroot\s+)?(?P<py>python\s+)?(?P<name>[\w${}:.\-]*)\s*\(\)\s*\{\s*$")
# bitbake's rule for where inline python ends: at the first `}` not closing a `{`.
_PYTHON_EXPR = re.compile(r"\$\{@((?:\{.*?\}|.)+?)\}")
_IGNORED = re.compile(r"^(addtask|deltask|EXPORT_FUNCTIONS|addhandler|addpylib)\b")


class RecipeError(Exception):
    """A recipe the harness cannot read (names the file, the line and the fix)."""


class _Utils:
    @staticmethod
    def contains(var: str, checkvalues: str, truevalue: Any, falsevalue: Any, d: Any) -> Any:
        have = set((d.getVar(var) or "").split())
        return truevalue if set(str(checkvalues).split()) <= have else falsevalue

    @staticmethod
    def to_boolean(value: Any, default: bool = False) -> bool:
        if value in (None, ""):
            return default
        return str(value).lower() in ("1", "yes", "y", "true", "t")


class _Bb:
    utils = _Utils


class Recipe:
    """One .bb file: its variables (d.getVar) and its shell functions."""

    def __init__(self, path: Path, extra: dict[str, str] | None = None):
        self.path = path
        stem = path.name[:-3]
        pn, _, pv = stem.partition("_")
        self.vars: dict[str, str] = dict(BITBAKE_CONF)
        self.vars.update(PN=pn, BPN=pn, PV=pv or "1.0", BP="${BPN}-${PV}",
                         FILE_DIRNAME=str(path.parent), THISDIR=str(path.parent))
        self.vars.update(extra or {})
        self.weak: dict[str, str] = {}
        self.suffixes: list[tuple[str, str, str]] = []  # (var, append|prepend|remove, value)
        self.funcs: dict[str, str] = {}
        self.inherits: list[str] = []
        self._parse(path.read_text(), path)

    # ------------------------------------------------------------ parsing
    def _parse(self, text: str, where: Path) -> None:
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            lineno = i + 1
            i += 1
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            m = _FUNC.match(stripped)
            if m:
                body = []
                while i < len(lines) and lines[i].rstrip() != "}":
                    body.append(lines[i])
                    i += 1
                i += 1
                if not m.group("py"):
                    name = m.group("name")
                    base, _, suffix = name.partition(":")
                    if suffix == "append":
                        self.funcs[base] = self.funcs.get(base, "") + "\n" + "\n".join(body)
                    elif suffix == "prepend":
                        self.funcs[base] = "\n".join(body) + "\n" + self.funcs.get(base, "")
                    else:
                        self.funcs[name] = "\n".join(body)
                continue
            while stripped.endswith("\\") and i < len(lines):
                stripped = stripped[:-1] + " " + lines[i].strip()
                i += 1
            if stripped.startswith("inherit "):
                self.inherits += self.expand(stripped.split(None, 1)[1]).split()
                continue
            if stripped.startswith(("require ", "include ")):
                kind, rel = stripped.split(None, 1)
                target = (where.parent / self.expand(rel)).resolve()
                if target.exists():
                    self._parse(target.read_text(), target)
                elif kind == "require":
                    raise RecipeError(f"{where}:{lineno}: required file {rel} not found")
                continue
            if _IGNORED.match(stripped):
                continue
            m = _ASSIGN.match(stripped)
            if not m:
                raise RecipeError(
                    f"{where}:{lineno}: cannot read `{stripped[:80]}` (tests/qemu/recipe.py "
                    "knows assignments, inherit, require/include and shell functions): "
                    "write it in that subset or teach recipe.py the new syntax")
            if m.group("flag"):
                continue  # varflags (do_compile[noexec] ...) do not change what is installed
            self._assign(self.expand_key(m.group("key")), m.group("op"), m.group("val"))

    def expand_key(self, key: str) -> str:
        return self.expand(key) if "${" in key else key

    def _assign(self, key: str, op: str, val: str) -> None:
        for op_name in ("append", "prepend", "remove"):
            if key.endswith(":" + op_name):
                var = key[: -len(op_name) - 1]
                self.suffixes.append((var, op_name, self.expand(val) if op == ":=" else val))
                return
        old = self.vars.get(key)
        if op == "??=":
            self.weak[key] = val
        elif op == "?=":
            if old is None:
                self.vars[key] = val
        elif op == ":=":
            self.vars[key] = self.expand(val)
        elif op == "+=":
            self.vars[key] = f"{old} {val}" if old else val
        elif op == "=+":
            self.vars[key] = f"{val} {old}" if old else val
        elif op == ".=":
            self.vars[key] = (old or "") + val
        elif op == "=.":
            self.vars[key] = val + (old or "")
        else:
            self.vars[key] = val

    # ------------------------------------------------------------ datastore
    def getVar(self, name: str, expand: bool = True) -> str | None:  # noqa: N802 (bitbake's name)
        value = self.vars.get(name, self.weak.get(name))
        for var, kind, extra in self.suffixes:
            if var != name:
                continue
            if kind == "append":
                value = (value or "") + extra
            elif kind == "prepend":
                value = extra + (value or "")
            elif value is not None:
                drop = set(self.expand(extra).split())
                value = " ".join(w for w in self.expand(value).split() if w not in drop)
        if value is None:
            return None
        return self.expand(value) if expand else value

    def expand(self, text: str, depth: int = 0) -> str:
        if depth > 20:
            raise RecipeError(f"{self.path}: recursive variable expansion in {text[:80]}")

        def python(m: re.Match) -> str:
            try:
                return str(eval(m.group(1), {"d": self, "bb": _Bb, "os": os}))
            except Exception as exc:  # the recipe's own inline python failed
                raise RecipeError(f"{self.path}: inline python ${{@{m.group(1)}}}: {exc}") from exc

        def var(m: re.Match) -> str:
            value = self.getVar(m.group(1))
            return m.group(0) if value is None else value

        out = text
        for _ in range(20):
            new = _PYTHON_EXPR.sub(python, out)
            new = re.sub(r"\$\{([A-Za-z0-9_:\-.+]+)\}", var, new)
            if new == out:
                break
            out = new
        return out

    # ------------------------------------------------------------ tasks
    def src_uri(self) -> list[str]:
        return (self.getVar("SRC_URI") or "").split()

    def files_path(self) -> list[Path]:
        """FILESPATH: FILESEXTRAPATHS, then <recipe dir>/{BP,BPN,files}, as base.bbclass."""
        extra = [Path(p) for p in (self.getVar("FILESEXTRAPATHS") or "").split(":")
                 if p and "__default" not in p and "${" not in p]
        here = self.path.parent
        return extra + [here / (self.getVar("BP") or ""), here / (self.getVar("BPN") or ""),
                        here / "files", here]

    def unpack_local(self, unpackdir: Path) -> list[str]:
        """Copy every file:// entry of SRC_URI into unpackdir (do_unpack for local
        files); returns their names. A missing file is an error."""
        names = []
        for uri in self.src_uri():
            if not uri.startswith("file://"):
                continue
            rel = uri[len("file://"):].split(";", 1)[0].rstrip("/")
            for d in self.files_path():
                src = d / rel
                if src.exists():
                    dst = unpackdir / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if src.is_dir():
                        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
                            "__pycache__", "*.pyc", ".pytest_cache"))
                    else:
                        shutil.copy2(src, dst)
                    names.append(rel)
                    break
            else:
                raise RecipeError(f"{self.path}: SRC_URI entry {uri} is in none of "
                                  f"{[str(p) for p in self.files_path()]}")
        return names

    def run_shell(self, func: str, dest: Path, unpackdir: Path) -> None:
        """Run shell task `func` as bitbake does: ${...} expanded first, then
        `sh -e` with D/S/WORKDIR/UNPACKDIR set. The recipe's other shell
        functions are defined (empty ones stand for the class defaults, e.g.
        ptest.bbclass's `do_install_ptest() { : }`), so a task may call them."""
        for k in ("WORKDIR", "UNPACKDIR"):
            self.vars[k] = str(unpackdir)
        self.vars["D"] = str(dest)
        funcs = {"do_install": ":", "do_install_ptest": ":", **self.funcs}
        defs = "".join(f"{name}() {{\n:\n{self.expand(text)}\n}}\n"
                       for name, text in funcs.items() if re.fullmatch(r"\w+", name))
        script = ("bbnote() { :; }\nbbwarn() { echo \"WARNING: $*\" >&2; }\n"
                  "bbfatal() { echo \"ERROR: $*\" >&2; exit 1; }\n" + defs + func + "\n")
        cwd = Path(self.getVar("S") or unpackdir)
        if not cwd.is_dir():
            cwd = unpackdir
        proc = subprocess.run(["sh", "-e", "-c", script], cwd=cwd, capture_output=True, text=True,
                              env=dict(os.environ, D=str(dest)))
        if proc.returncode != 0:
            raise RecipeError(f"{self.path}: {func} failed ({proc.returncode}):\n"
                              f"{proc.stderr[-2000:]}")


#: Classes whose do_install builds and installs a wheel: the harness installs the
#: package from the checkout instead.
PYTHON_BUILD_CLASSES = {"python_setuptools_build_meta", "python_hatchling", "python_pep517"}


def install_recipe(recipe: Recipe, dest: Path, work: Path, ptest: bool = False) -> None:
    """do_unpack (local files) + do_install (+ ptest.bbclass's do_install_ptest_base
    when ptest) of `recipe` into dest. A python package's own do_install (a
    wheel build) is not run: the harness installs the package from the checkout."""
    unpackdir = work / f"unpack-{recipe.getVar('PN')}"
    shutil.rmtree(unpackdir, ignore_errors=True)
    unpackdir.mkdir(parents=True)
    recipe.unpack_local(unpackdir)
    dest.mkdir(parents=True, exist_ok=True)
    if "pynq_alloc_source" in recipe.inherits:
        # The class fetches this repository at PYNQ_ALLOC_SRCREV into PYNQ_ALLOC_SRC; the
        # checkout stands in for it (tests/layer holds the pin to the checkout's
        # python-pynq-alloc/, tests/target/ and device-tree/).
        recipe.vars["PYNQ_ALLOC_SRC"] = str(Path(__file__).resolve().parents[2])
    if not PYTHON_BUILD_CLASSES & set(recipe.inherits):
        recipe.run_shell("do_install", dest, unpackdir)
    if ptest:
        ptest_path = dest / (recipe.getVar("PTEST_PATH") or "").lstrip("/")
        if (unpackdir / "run-ptest").exists():  # do_install_ptest_base's first step
            ptest_path.mkdir(parents=True, exist_ok=True)
            shutil.copy2(unpackdir / "run-ptest", ptest_path / "run-ptest")
        recipe.run_shell("do_install_ptest", dest, unpackdir)


def groupadd_params(recipe: Recipe) -> list[str]:
    """useradd.bbclass: GROUPADD_PARAM:<pkg> for each USERADD_PACKAGES entry,
    split on ';' (each one a groupadd command line)."""
    out = []
    for pkg in (recipe.getVar("USERADD_PACKAGES") or "").split():
        for part in (recipe.getVar(f"GROUPADD_PARAM:{pkg}") or "").split(";"):
            if part.strip():
                out.append(part.strip())
    return out


def module_files(recipe: Recipe) -> dict[str, str]:
    """What kernel-module-split.bbclass writes for the recipe's module(s):
    {path in the image: content} for KERNEL_MODULE_AUTOLOAD and
    KERNEL_MODULE_PROBECONF + module_conf_<name>."""
    files = {}
    autoload = (recipe.getVar("KERNEL_MODULE_AUTOLOAD") or "").split()
    for name in autoload:
        lines = (recipe.getVar(f"module_autoload_{name}") or name).split()
        files[f"{MODULESLOADDIR}/{name}.conf"] = "".join(f"{m}\n" for m in lines)
    for name in (recipe.getVar("KERNEL_MODULE_PROBECONF") or "").split():
        conf = recipe.getVar(f"module_conf_{name}")
        if conf:
            files[f"{MODPROBEDIR}/{name}.conf"] = conf + "\n"
    return files


def git_pin(recipe: Recipe) -> tuple[str, str, str]:
    """(https URL, branch, SRCREV) of the recipe's git:// SRC_URI entry."""
    for uri in recipe.src_uri():
        if uri.startswith("git://"):
            loc, *params = uri[len("git://"):].split(";")
            opts = dict(p.split("=", 1) for p in params if "=" in p)
            url = f"{opts.get('protocol', 'git')}://{loc}"
            rev = recipe.getVar("SRCREV") or ""
            if not re.fullmatch(r"[0-9a-f]{40}", rev):
                raise RecipeError(f"{recipe.path}: SRCREV {rev!r} is not a 40-digit commit")
            return url, opts.get("branch", "master"), rev
    raise RecipeError(f"{recipe.path}: no git:// entry in SRC_URI")
