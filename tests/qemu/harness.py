#!/usr/bin/env python3
"""Boot Debian's arm64 kernel in qemu-system-aarch64 with our device tree and run
the seed example and tests/target/ inside it.

Stages, each cached under build/qemu/ and rebuilt only when its inputs change:
  base     Debian bookworm arm64 packages (kernel, busybox-static, python3, numpy,
           pytest) resolved by apt with a private configuration, unpacked with
           `dpkg -x`, fixed up (what maintainer scripts would have done), pruned,
           byte-compiled on the host, written as one cpio archive.
  dtb      device-tree/qemu-virt/build-dtb with the same -m/-smp as the boot.
  overlay  /init, our package from this checkout, tests/target/, and the
           u-dma-buf module given in UDMABUF_KO: a small second cpio archive.
The kernel unpacks concatenated cpio archives, so the initrd is base + overlay.

The guest prints markers (@@PYNQ-QEMU ...) and ptest-style PASS:/FAIL:/SKIP:
lines; QEMU exits 0 even after a guest panic, so only those markers decide the
exit status of this script.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEBIAN_RELEASE = "bookworm"
GUEST_PYTHON = "3.11"  # bookworm's python3; .pyc files are compiled on the host for it
# Userland of the guest. The kernel comes from the linux-image-arm64 metapackage.
GUEST_PACKAGES = ["busybox-static", "python3", "python3-numpy", "python3-pytest"]
# Bump when the base stage's recipe changes in a way its inputs do not show.
BASE_RECIPE = "4"
MARK = "@@PYNQ-QEMU"
GUEST_TESTS = "/usr/share/pynq-alloc/tests/target"
GUEST_SITE = "/usr/lib/python3/dist-packages"

# Trees never needed in the guest (documentation, tests of other projects,
# compilers' headers, tools nothing here runs).
PRUNE = [
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
    "usr/share/lintian", "usr/share/bug", "usr/share/zoneinfo", "usr/share/common-licenses",
    "usr/share/perl5", "usr/share/pam", "usr/share/pam-configs", "usr/share/menu",
    "usr/share/debconf", "usr/share/readline", "usr/share/python3/debian_defaults",
    "usr/include", "usr/lib/python3/dist-packages/numpy/f2py",
    "usr/lib/python3/dist-packages/numpy/distutils",
    "usr/lib/python3/dist-packages/numpy/core/include",
    "usr/lib/python3/dist-packages/numpy/typing/tests",
    "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/unittest/test",
    "usr/lib/python3.11/distutils", "usr/lib/python3.11/config-3.11-aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu/perl-base", "usr/lib/aarch64-linux-gnu/gconv",
    "usr/lib/aarch64-linux-gnu/security", "usr/lib/aarch64-linux-gnu/audit",
    "var/lib/dpkg", "var/cache", "var/log", "etc/cron.daily",
    # python3-numpy also ships its extension modules here; /usr/lib/python3/dist-packages
    # comes first on sys.path and holds the same files.
    "usr/lib/python3.11/dist-packages",
]
# Pulled in by python3-minimal's dependency on dpkg; nothing in the guest runs them.
UNPACK_SKIP = ("dpkg", "tar")


def log(msg: str) -> None:
    print(f"qemu: {msg}", flush=True)


def die(msg: str, fix: str = "") -> NoReturn:
    print(f"qemu: error: {msg}", file=sys.stderr)
    if fix:
        print(f"qemu: fix: {fix}", file=sys.stderr)
    sys.exit(2)


def sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def tree_digest(*paths: Path) -> str:
    """Digest of the names, modes and contents of files under paths (sorted)."""
    h = hashlib.sha256()
    for top in paths:
        if not top.exists():
            h.update(f"missing:{top}".encode())
            continue
        files = [top] if top.is_file() else sorted(
            p for p in top.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc"))
        for p in files:
            h.update(str(p.relative_to(top.parent)).encode())
            h.update(str(p.stat().st_mode & 0o111).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, **kw)
    except FileNotFoundError:
        die(f"{cmd[0]} not found", "run `make deps` (installs the Debian packages of every target)")
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        die(f"command failed ({e.returncode}): {' '.join(cmd)}\n{err[-3000:]}")


# ---------------------------------------------------------------- apt (private)

class Apt:
    """apt with a private configuration: arm64 indexes, an empty dpkg status, its
    own lists and cache; it never reads or changes the host's dpkg state."""

    def __init__(self, root: Path, extra_arch: str | None = None):
        self.root = root
        for d in ("etc/sources.list.d", "etc/preferences.d", "lists/partial",
                  "cache/archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        arches = '"arm64";' + (f' "{extra_arch}";' if extra_arch else "")
        user = "root" if os.geteuid() == 0 else None
        conf = [
            'APT::Architecture "arm64";',
            f"APT::Architectures {{ {arches} }};",
            f'Dir::State::status "{root}/status";',
            f'Dir::State::Lists "{root}/lists";',
            f'Dir::Cache "{root}/cache";',
            f'Dir::Etc::SourceList "{root}/etc/sources.list";',
            f'Dir::Etc::SourceParts "{root}/etc/sources.list.d";',
            f'Dir::Etc::Preferences "{root}/etc/preferences";',
            f'Dir::Etc::PreferencesParts "{root}/etc/preferences.d";',
            'APT::Install-Recommends "false";',
            'APT::Get::Assume-Yes "true";',
            'Acquire::Languages "none";',
            'Dpkg::Use-Pty "false";',
        ]
        if user:  # the _apt sandbox user cannot write to a private cache owned by root
            conf.append(f'APT::Sandbox::User "{user}";')
        (root / "apt.conf").write_text("\n".join(conf) + "\n")
        (root / "etc/sources.list").write_text(self.sources())
        self.env = dict(os.environ, APT_CONFIG=str(root / "apt.conf"), LC_ALL="C")

    @staticmethod
    def sources() -> str:
        """The host's Debian sources for our release (the archive the host is set up
        to reach), as one-line entries; QEMU_APT_SOURCES=<file> replaces them."""
        override = os.environ.get("QEMU_APT_SOURCES")
        if override:
            text = Path(override).read_text()
            if "Types:" in text:
                die("QEMU_APT_SOURCES must be in one-line format (deb URI suite components)")
            return text
        lines: list[str] = []
        etc = Path("/etc/apt")
        files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
        for f in files:
            if not f.is_file():
                continue
            if f.suffix == ".list" or f.name == "sources.list":
                for line in f.read_text().splitlines():
                    m = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
                    if m and m.group(3).startswith(DEBIAN_RELEASE):
                        lines.append(f"deb {m.group(2)} {m.group(3)} {m.group(4)}")
            elif f.suffix == ".sources":
                for stanza in re.split(r"\n\s*\n", f.read_text()):
                    fields: dict[str, str] = {}
                    for line in stanza.splitlines():
                        if line.startswith("#") or ":" not in line or line[0].isspace():
                            continue
                        k, v = line.split(":", 1)
                        fields[k.strip().lower()] = v.strip()
                    if "deb" not in fields.get("types", "").split():
                        continue
                    if fields.get("enabled", "yes").lower() == "no":
                        continue
                    for uri in fields.get("uris", "").split():
                        for suite in fields.get("suites", "").split():
                            if suite.startswith(DEBIAN_RELEASE):
                                comps = fields.get("components", "main")
                                lines.append(f"deb {uri} {suite} {comps}")
        if not lines:
            die(f"no Debian {DEBIAN_RELEASE} entry in /etc/apt/sources.list(.d)",
                "point QEMU_APT_SOURCES at a file of one-line `deb URI bookworm main` entries")
        return "\n".join(lines) + "\n"

    def __call__(self, *args: str, capture: bool = True) -> str:
        cmd = ["apt-get", "-q", *args] if args[0] != "apt-cache" else list(args)
        out = run(cmd, env=self.env, stdout=subprocess.PIPE if capture else None,
                  stderr=subprocess.PIPE)
        return out.stdout.decode() if capture else ""

    def update(self) -> None:
        self("update")

    def kernel_abi_package(self) -> str:
        """linux-image-<abi>-arm64, as the linux-image-arm64 metapackage depends on it."""
        out = self("apt-cache", "depends", "linux-image-arm64")
        m = re.search(r"Depends: (linux-image-\S+-arm64)", out)
        if not m:
            die("cannot resolve the kernel ABI from linux-image-arm64:\n" + out)
        return m.group(1)

    def resolve(self, packages: list[str]) -> list[tuple[str, str, str]]:
        """(name, version, arch) of every package apt would install for `packages`."""
        out = self("install", "-s", *packages)
        got = re.findall(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", out, re.M)
        if not got:
            die("apt resolved nothing for " + " ".join(packages) + ":\n" + out)
        return [(n.split(":")[0], v, a) for n, v, a in got]

    def download(self, pkgs: list[tuple[str, str, str]]) -> list[Path]:
        """Fetch exactly these versions into the private cache (reused when present)."""
        archives = self.root / "cache/archives"
        paths, missing = [], []
        for name, ver, arch in pkgs:
            p = archives / f"{name}_{ver.replace(':', '%3a')}_{arch}.deb"
            paths.append(p)
            if not p.exists():
                missing.append(f"{name}:{arch}={ver}")
        if missing:  # `apt-get download` fetches exactly these, no dependency resolution
            log(f"downloading {len(missing)} Debian packages")
            run(["apt-get", "-q", "download", *missing], cwd=archives, env=self.env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for p in paths:
            if not p.exists():
                die(f"apt did not leave {p.name} in {archives}")
        return paths


def apt_for_base(build: Path) -> tuple[Apt, str]:
    apt = Apt(build / "apt")
    return apt, (build / "apt/etc/sources.list").read_text()


# ---------------------------------------------------------------- cpio (newc)

class Cpio:
    """Writes a newc cpio archive without needing root: every entry is owned by
    root, device nodes are declared rather than created on the host."""

    def __init__(self, f):
        self.f = f
        self.ino = 1000

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               mtime: int = 0) -> None:
        self.ino += 1
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, mtime, len(data), 0, 0, rdev[0], rdev[1],
                  len(name_b), 0]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.f.write(hdr + name_b + b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.f.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def tree(self, top: Path, prefix: str = "") -> None:
        """Add everything under top (sorted, directories first), keeping modes."""
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = os.path.relpath(dirpath, top)
            base = prefix if rel == "." else f"{prefix}/{rel}" if prefix else rel
            if base:
                self.dir(base, os.lstat(dirpath).st_mode & 0o7777)
            for name in sorted(filenames) + sorted(d for d in dirnames
                                                    if os.path.islink(os.path.join(dirpath, d))):
                p = os.path.join(dirpath, name)
                arc = f"{base}/{name}" if base else name
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(arc, os.readlink(p))
                elif stat.S_ISREG(st.st_mode):
                    with open(p, "rb") as fh:
                        self.file(arc, fh.read(), st.st_mode & 0o7777)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


# ---------------------------------------------------------------- base stage

def compile_pyc(root: Path, dirs: list[str]) -> None:
    """Byte-compile for the guest's python (halves the guest's time): only when a
    host python of the same minor version exists; otherwise the guest compiles."""
    host_py = None
    for cand in (sys.executable, f"python{GUEST_PYTHON}"):
        exe = shutil.which(cand) or cand
        try:
            v = subprocess.run([exe, "-c", "import sys;print('%d.%d'%sys.version_info[:2])"],
                               capture_output=True, text=True).stdout.strip()
        except OSError:
            continue
        if v == GUEST_PYTHON:
            host_py = exe
            break
    if not host_py:
        log(f"no host python{GUEST_PYTHON}: .pyc files are not precompiled (slower guest)")
        return
    targets = [str(root / d) for d in dirs if (root / d).exists()]
    subprocess.run([host_py, "-m", "compileall", "-q", "-j", "1", "-s", str(root), "-p", "/",
                    "--invalidation-mode", "unchecked-hash", *targets],
                   check=False, stdout=subprocess.DEVNULL)


def build_base(build: Path, refresh: bool) -> Path:
    apt, sources = apt_for_base(build)
    key_inputs = sha(BASE_RECIPE, sources, " ".join(GUEST_PACKAGES), json.dumps(PRUNE),
                     json.dumps(UNPACK_SKIP))
    stamp = build / "base-inputs"
    base = build / "base"
    # The resolved versions are part of the key; apt lists are refreshed only when
    # the recipe changed, when asked (QEMU_REFRESH=1), or when there are none yet.
    if (not refresh and stamp.exists() and stamp.read_text() == key_inputs
            and (base / "done").exists()):
        return base
    t0 = time.monotonic()
    log("resolving Debian arm64 packages (private apt configuration)")
    apt.update()
    kpkg = apt.kernel_abi_package()
    abi = kpkg[len("linux-image-"):]
    pkgs = apt.resolve(GUEST_PACKAGES)
    kernel = [p for p in apt.resolve([kpkg]) if p[0] == kpkg]
    manifest = "\n".join(f"{n} {v} {a}" for n, v, a in sorted(pkgs + kernel)) + "\n"
    key = sha(key_inputs, manifest)
    if (base / "done").exists() and (base / "key").read_text() == key:
        stamp.write_text(key_inputs)
        return base
    debs = apt.download(pkgs + kernel)
    shutil.rmtree(base, ignore_errors=True)
    rootfs = base / "rootfs"
    kdir = base / "kernel"
    rootfs.mkdir(parents=True)
    kdir.mkdir()
    log(f"unpacking {len(debs)} packages (dpkg -x)")
    for deb in debs:
        if deb.name.split("_")[0] in UNPACK_SKIP:
            continue
        target = kdir if deb.name.startswith(kpkg + "_") else rootfs
        run(["dpkg-deb", "-x", str(deb), str(target)])
    # What dpkg's maintainer scripts would have done.
    ma = rootfs / "usr/lib/aarch64-linux-gnu"
    for lib in ("blas/libblas.so.3", "lapack/liblapack.so.3"):
        link = ma / Path(lib).name
        if (ma / lib).exists() and not link.exists():
            link.symlink_to(lib)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp",
              "root", "etc", "mnt", "var/tmp", "lib/modules"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    sh = rootfs / "bin/sh"
    if sh.exists() or sh.is_symlink():
        sh.unlink()
    sh.symlink_to("busybox")
    py3 = rootfs / "usr/bin/python3"
    if not py3.exists():
        py3.symlink_to(f"python{GUEST_PYTHON}")
    for p in PRUNE:
        shutil.rmtree(rootfs / p, ignore_errors=True)
    for tests in (rootfs / "usr/lib/python3/dist-packages/numpy").rglob("tests"):
        shutil.rmtree(tests, ignore_errors=True)
    log("byte-compiling python for the guest (host compileall)")
    compile_pyc(rootfs, [f"usr/lib/python{GUEST_PYTHON}", "usr/lib/python3/dist-packages"])
    vmlinuz = next(kdir.glob("boot/vmlinuz-*"))
    shutil.copy(vmlinuz, base / "vmlinuz")
    (base / "abi").write_text(abi)
    (base / "manifest").write_text(manifest)
    with open(base / "base.cpio", "wb") as f:
        c = Cpio(f)
        c.tree(rootfs)
        c.chardev("dev/console", 5, 1)
        c.chardev("dev/null", 1, 3, 0o666)
        c.close()
    shutil.rmtree(rootfs)
    (base / "key").write_text(key)
    (base / "done").touch()
    stamp.write_text(key_inputs)
    size = (base / "base.cpio").stat().st_size >> 20
    log(f"base image: kernel {abi}, {len(debs)} packages, {size} MiB, "
        f"{time.monotonic() - t0:.0f} s")
    return base


# ---------------------------------------------------------------- dtb stage

def build_dtb(build: Path, memory: str, smp: int, cpu: str) -> Path:
    tool = REPO / "device-tree/qemu-virt/build-dtb"
    given = os.environ.get("QEMU_DTB")
    if given:
        log(f"device tree: {given} (from QEMU_DTB)")
        return Path(given)
    if not tool.exists():
        die(f"{tool.relative_to(REPO)} is missing (it makes the DTB with our reserved memory)",
            "set QEMU_DTB=<file.dtb> to boot another device tree")
    key = sha(tree_digest(REPO / "device-tree"), memory, str(smp), cpu,
              subprocess.run(["qemu-system-aarch64", "--version"], capture_output=True,
                             text=True).stdout)
    out = build / f"dtb/virt-{key}.dtb"
    if not out.exists():
        shutil.rmtree(build / "dtb", ignore_errors=True)
        out.parent.mkdir(parents=True)
        log("device tree: device-tree/qemu-virt/build-dtb")
        tmp = out.with_suffix(".tmp")
        run([str(tool), "--memory", memory, "--smp", str(smp), "--cpu", cpu, "--out", str(tmp)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tmp.rename(out)
    return out


# ---------------------------------------------------------------- overlay stage

def console_script() -> tuple[str, str, str]:
    """(script name, module, function) of the package's console entry point and
    the distribution's name/version from pyproject.toml."""
    text = (REPO / "python-pynq-alloc/pyproject.toml").read_text()
    try:
        import tomllib
        data = tomllib.loads(text)
        scripts = data.get("project", {}).get("scripts", {})
    except ImportError:
        scripts = dict(re.findall(r'^\s*"?([\w-]+)"?\s*=\s*"([\w.]+:\w+)"', text.split(
            "[project.scripts]", 1)[-1].split("\n[", 1)[0], re.M))
    target = scripts.get("pynq-alloc", "pynq_alloc.cli:main")
    mod, func = target.split(":")
    return "pynq-alloc", mod, func


def dist_info(text: str) -> tuple[str, str]:
    name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
    ver = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return (name.group(1) if name else "pynq-alloc"), (ver.group(1) if ver else "0")


def modinfo_depends(ko: Path) -> list[str]:
    m = re.search(rb"depends=([\w,-]*)\0", ko.read_bytes())
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def module_closure(moddir: Path, names: list[str]) -> list[str]:
    """Paths (relative to moddir) of the modules `names` need, dependencies first,
    as modules.dep lists them."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.split(".ko")[0].replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for d in deps.get(path, []):
            visit(d)
        if path not in order:
            order.append(path)

    for n in names:
        path = by_name.get(n.replace("-", "_"))
        if not path:
            die(f"module {n} is not in the kernel package's modules.dep")
        visit(path)
    return order


def build_overlay(build: Path, base: Path, udmabuf_ko: str | None, mode: str) -> Path:
    pkg_src = REPO / "python-pynq-alloc/src/pynq_alloc"
    if not (pkg_src / "__init__.py").exists():
        die("python-pynq-alloc/src/pynq_alloc is not there yet: nothing to install in the guest")
    ko = Path(udmabuf_ko).resolve() if udmabuf_ko else None
    if ko and not ko.is_file():
        die(f"UDMABUF_KO={udmabuf_ko}: no such file",
            "build it as tests/qemu/README.md says, or leave UDMABUF_KO unset")
    key = sha(tree_digest(pkg_src, REPO / "python-pynq-alloc/pyproject.toml",
                          REPO / "tests/target", HERE / "guest"),
              tree_digest(ko) if ko else "no-ko", (base / "key").read_text(), mode)
    out = build / f"overlay-{key}.cpio"
    if out.exists():
        return out
    for old in build.glob("overlay-*.cpio"):
        old.unlink()
    abi = (base / "abi").read_text()
    with tempfile.TemporaryDirectory(dir=build) as tmp:
        root = Path(tmp)
        site = root / GUEST_SITE.lstrip("/")
        shutil.copytree(pkg_src, site / "pynq_alloc",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        pyproject = (REPO / "python-pynq-alloc/pyproject.toml").read_text()
        name, version = dist_info(pyproject)
        script, mod, func = console_script()
        di = site / f"{name.replace('-', '_')}-{version}.dist-info"
        di.mkdir()
        (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (di / "entry_points.txt").write_text(f"[console_scripts]\n{script} = {mod}:{func}\n")
        (di / "INSTALLER").write_text("tests/qemu\n")
        (di / "RECORD").write_text("")
        bindir = root / "usr/bin"
        bindir.mkdir(parents=True)
        (bindir / script).write_text(
            f"#!/usr/bin/python3\nimport sys\nfrom {mod} import {func}\nsys.exit({func}())\n")
        (bindir / script).chmod(0o755)
        tests = root / GUEST_TESTS.lstrip("/")
        shutil.copytree(REPO / "tests/target", tests,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        guest = root / "usr/lib/pynq-alloc-qemu"
        shutil.copytree(HERE / "guest", guest, ignore=shutil.ignore_patterns("__pycache__"))
        (guest / "mode").write_text(mode + "\n")
        init = root / "init"
        shutil.copy(HERE / "guest/init", init)
        init.chmod(0o755)
        if ko:
            extra = root / f"lib/modules/{abi}/extra"
            extra.mkdir(parents=True)
            shutil.copy(ko, extra / "u-dma-buf.ko")
            moddir = base / f"kernel/lib/modules/{abi}"
            needed = module_closure(moddir, modinfo_depends(ko)) if modinfo_depends(ko) else []
            for rel in needed:
                dst = root / f"lib/modules/{abi}" / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(moddir / rel, dst)
            (guest / "modules").write_text(
                "".join(f"/lib/modules/{abi}/{rel}\n" for rel in needed)
                + f"/lib/modules/{abi}/extra/u-dma-buf.ko\n")
        compile_pyc(root, [GUEST_SITE.lstrip("/"), GUEST_TESTS.lstrip("/"),
                           "usr/lib/pynq-alloc-qemu"])
        tmp_out = out.with_suffix(".tmp")
        with open(tmp_out, "wb") as f:
            c = Cpio(f)
            c.tree(root)
            c.close()
        tmp_out.rename(out)
    return out


# ---------------------------------------------------------------- u-dma-buf.ko

def build_udmabuf(build: Path, src: Path) -> Path:
    """Cross-build u-dma-buf.ko against Debian's headers for the guest's kernel ABI:
    linux-headers-<abi>-arm64 + -common and the host's linux-kbuild-<ver> (host
    tools), unpacked with dpkg -x; the headers' Makefile includes -common by an
    absolute /usr/src path, rewritten to the unpack location."""
    if not (src / "u-dma-buf.c").exists():
        die(f"{src} has no u-dma-buf.c", "clone the driver's source and check out a release tag")
    host_arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                               text=True).stdout.strip()
    apt = Apt(build / "apt-kbuild", extra_arch=host_arch if host_arch != "arm64" else None)
    apt.update()
    kpkg = apt.kernel_abi_package()
    abi = kpkg[len("linux-image-"):]  # 6.1.0-57-arm64
    common = abi.rsplit("-", 1)[0] + "-common"
    hdr = [p for p in apt.resolve([f"linux-headers-{abi}"])
           if p[0] in (f"linux-headers-{abi}", f"linux-headers-{common}")
           or p[0].startswith("linux-kbuild-")]
    kbuild = [p for p in hdr if p[0].startswith("linux-kbuild-")]
    if not kbuild:
        die("linux-headers did not bring a linux-kbuild package")
    # The kbuild tools run on the host: its architecture, not arm64.
    hdr = [p for p in hdr if not p[0].startswith("linux-kbuild-")]
    hdr += [(kbuild[0][0], kbuild[0][1], host_arch)]
    debs = apt.download(hdr)
    root = build / f"headers-{abi}"
    shutil.rmtree(root, ignore_errors=True)
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(root)])
    kdir = root / f"usr/src/linux-headers-{abi}"
    mk = kdir / "Makefile"
    mk.write_text(mk.read_text().replace("include /usr/src/", f"include {root}/usr/src/"))
    cross = [] if host_arch == "arm64" else ["CROSS_COMPILE=aarch64-linux-gnu-"]
    log(f"building {src}/u-dma-buf.ko against linux-headers-{abi}")
    # The driver's Makefile uses $(PWD): run it from inside the source directory.
    run(["make", "ARCH=arm64", *cross, f"KERNEL_SRC={kdir}"], cwd=src,
        env=dict(os.environ, PWD=str(src)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = build / "udmabuf/u-dma-buf.ko"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "u-dma-buf.ko", out)
    vermagic = re.search(rb"vermagic=([^\0]*)\0", out.read_bytes())
    log(f"{out}  (vermagic {vermagic.group(1).decode() if vermagic else '?'})")
    return out


# ---------------------------------------------------------------- boot

def reserved_pools(notes: dict[str, list[str]]) -> list[str]:
    """The reserved-memory pools the guest kernel made (dmesg), each with the
    /proc/iomem line that holds its base: proof the region is live."""
    iomem = [line.strip() for line in notes.get("iomem", [])]
    pools = []
    for line in notes.get("info", []):
        m = re.search(r"created (\w+) memory pool at 0x([0-9a-f]+), size (\d+ \w+)", line)
        if m:
            base = int(m.group(2), 16)
            hit = []  # the smallest /proc/iomem range holding the base
            for entry in iomem:
                r = re.match(r"([0-9a-f]+)-([0-9a-f]+) : (.*)", entry)
                if r and int(r.group(1), 16) <= base <= int(r.group(2), 16):
                    hit.append((int(r.group(2), 16) - int(r.group(1), 16), entry))
            pools.append(f"{m.group(1)} pool at {base:#x}, {m.group(3)}"
                         + (f"; iomem {min(hit)[1]}" if hit else ""))
    return pools


def boot(build: Path, base: Path, overlay: Path, dtb: Path, args) -> int:
    initrd = build / "initrd.img"
    with open(initrd, "wb") as out:
        for part in (base / "base.cpio", overlay):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", args.cpu, "-smp", str(args.smp),
           "-m", args.memory, "-nographic", "-nic", "none", "-no-reboot",
           "-kernel", str(base / "vmlinuz"), "-initrd", str(initrd), "-dtb", str(dtb),
           "-append", " ".join(["console=ttyAMA0 panic=-1 quiet loglevel=4 rdinit=/init",
                                os.environ.get("QEMU_APPEND", "")]).strip()]
    log_path = build / "console.log"
    log(f"booting {args.cpu} -smp {args.smp} -m {args.memory} (timeout {args.timeout} s; "
        f"console in {log_path.relative_to(REPO) if log_path.is_relative_to(REPO) else log_path})")
    t0 = time.monotonic()
    results: dict[str, list[str]] = {"PASS": [], "FAIL": [], "SKIP": []}
    marks: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    seed_out: list[str] = []
    in_seed = False
    panic = False
    timed_out = False
    with open(log_path, "w", errors="replace") as console:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout
        os.set_blocking(proc.stdout.fileno(), False)
        buf = b""
        deadline = t0 + args.timeout
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        eof = False
        while not eof:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for _ in sel.select(min(left, 1.0)):
                chunk = proc.stdout.read(65536)
                if chunk is None:
                    continue
                if not chunk:
                    eof = True
                    break
                buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                console.write(line + "\n")
                if args.verbose:
                    print(f"  | {line}", flush=True)
                if "Kernel panic" in line:
                    panic = True
                m = re.match(r"^(PASS|FAIL|SKIP): (.*)$", line)
                if m:
                    results[m.group(1)].append(m.group(2))
                    if not args.verbose and m.group(1) == "FAIL":
                        print(f"  {line}", flush=True)
                    continue
                if line.startswith(MARK):
                    word, _, rest = line[len(MARK):].strip().partition(" ")
                    marks[word] = rest
                    notes.setdefault(word, []).append(rest)
                    if word == "seed-begin":
                        in_seed = True
                    elif word == "seed-end":
                        in_seed = False
                    elif word == "warn" and not args.verbose:
                        print(f"  guest: {rest}", flush=True)
                    continue
                if in_seed:
                    seed_out.append(line)
                    if not args.verbose:
                        print(f"  seed> {line}", flush=True)
        if buf:
            console.write(buf.decode(errors="replace") + "\n")
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    elapsed = time.monotonic() - t0
    # The report.
    n_pass, n_fail, n_skip = (len(results[k]) for k in ("PASS", "FAIL", "SKIP"))
    problems = []
    if timed_out:
        problems.append(f"the guest did not finish within {args.timeout} s")
    if panic:
        problems.append("kernel panic")
    if "done" not in marks and not timed_out:
        problems.append("the guest stopped before its end marker")
    if "suite-end" not in marks:
        problems.append("the target suite did not run to its end")
    elif marks["suite-end"].split()[0] not in ("rc=0", "rc=1"):  # 1: tests failed (counted)
        problems.append(f"pytest could not run the suite ({marks['suite-end'].split()[0]})")
    elif not (n_pass or n_skip) or n_fail:
        problems.append(f"target suite: {n_fail} failed")
    if args.mode == "run":
        rc = marks.get("seed-end", "rc=?").split()[0]
        if rc != "rc=0":
            problems.append(f"seed example failed ({rc})")
    print()
    print(f"pynq-alloc on qemu-system-aarch64 ({elapsed:.1f} s boot to power-off)")
    print(f"  kernel    {(base / 'abi').read_text()}, driver: {marks.get('driver', '?')}")
    times = {k: re.search(r"t=([\d.]+)", marks.get(k, "")) for k in
             ("init-start", "seed-begin", "suite-begin", "suite-end")}
    t = {k: float(m.group(1)) for k, m in times.items() if m}
    if len(t) >= 3:
        phases = [f"kernel+init {t['init-start']:.1f} s"]
        if "seed-begin" in t:
            phases.append(f"seed example {t['suite-begin'] - t['seed-begin']:.1f} s")
        if "suite-end" in t:
            phases.append(f"target suite {t['suite-end'] - t['suite-begin']:.1f} s")
        print(f"  guest     {', '.join(phases)}")
    for pool in reserved_pools(notes):
        print(f"  reserved  {pool}")
    if "region" in marks or "regions" in marks:
        print(f"  regions   {marks.get('regions', '')}")
    if args.mode == "run":
        backend = re.search(r"backend=(\w+)", marks.get("seed-begin", ""))
        print(f"  seed      {' | '.join(seed_out[-3:]) or '(no output)'}  "
              f"[{marks.get('seed-end', 'rc=?').split()[0]}, "
              f"{backend.group(1) if backend else '?'} backend]")
    reasons: dict[str, int] = {}
    for skipped in results["SKIP"]:
        m = re.search(r" \((.*)\)$", skipped)
        why = m.group(1) if m else "?"
        reasons[why] = reasons.get(why, 0) + 1
    for why, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  SKIP x{count}: {why}")
    for f in results["FAIL"]:
        print(f"  FAIL: {f}")
    if problems:
        saved = build / f"console-failed-{time.strftime('%Y%m%d-%H%M%S')}.log"
        shutil.copy(log_path, saved)
        for old in sorted(build.glob("console-failed-*.log"))[:-5]:  # keep the last five
            old.unlink()
        print(f"  FAILED: {'; '.join(problems)}")
        print(f"  console log: {saved}")
    # A boot that went wrong (timeout, panic, no end marker) counts as one failure.
    boot_failed = bool(problems) and not n_fail
    print(f"qemu-target: {n_pass} passed, {n_fail + boot_failed} failed, {n_skip} skipped")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["run", "test", "image", "udmabuf-ko"],
                    help="run: seed example + target suite; test: target suite only; "
                         "image: build (or reuse) the image and the DTB, no boot; "
                         "udmabuf-ko: build u-dma-buf.ko from --src for the guest's kernel")
    ap.add_argument("--src", help="u-dma-buf source directory (udmabuf-ko)")
    ap.add_argument("--build-dir",
                    default=os.environ.get("QEMU_BUILD_DIR", str(REPO / "build/qemu")))
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("QEMU_TIMEOUT", "300")))
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--cpu", default="cortex-a53")
    ap.add_argument("-v", "--verbose", action="store_true", default=bool(os.environ.get("V")),
                    help="show the whole guest console")
    args = ap.parse_args()
    t0 = time.monotonic()
    build = Path(args.build_dir).resolve()
    build.mkdir(parents=True, exist_ok=True)
    if args.mode == "udmabuf-ko":
        if not args.src:
            die("udmabuf-ko needs --src <u-dma-buf source directory>")
        build_udmabuf(build, Path(args.src).resolve())
        return 0
    base = build_base(build, refresh=bool(os.environ.get("QEMU_REFRESH")))
    dtb = build_dtb(build, args.memory, args.smp, args.cpu)
    overlay = build_overlay(build, base, os.environ.get("UDMABUF_KO") or None,
                            "test" if args.mode == "image" else args.mode)
    log(f"image ready in {time.monotonic() - t0:.1f} s")
    if args.mode == "image":
        return 0
    rc = boot(build, base, overlay, dtb, args)
    print(f"qemu: total {time.monotonic() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
