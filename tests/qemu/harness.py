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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import (Recipe, RecipeError, git_pin, groupadd_params, install_recipe,
                    module_files)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEBIAN_RELEASE = "bookworm"
GUEST_PYTHON = "3.11"  # bookworm's python3; .pyc files are compiled on the host for it
# Userland of the guest. The kernel comes from the linux-image-arm64 metapackage.
# coreutils: see UNPACK_ONLY. udev: the real systemd-udevd/udevadm that applies the layer's rule;
# systemd-standalone-tmpfiles: Debian's systemd-tmpfiles without the rest of systemd,
# for the layer's tmpfiles.d entries; kmod: modprobe (modprobe.d options);
# base-passwd: /etc/passwd and /etc/group as a Debian system starts with them.
GUEST_PACKAGES = ["busybox-static", "python3", "python3-numpy", "python3-pytest", "udev",
                  "systemd-standalone-tmpfiles", "kmod", "base-passwd", "coreutils"]
# Bump when the base stage's recipe changes in a way its inputs do not show.
BASE_RECIPE = "5"
MARK = "@@PYNQ-QEMU"
GUEST_SITE = "/usr/lib/python3/dist-packages"
# The packages of the layer's ptest image (IMAGE_INSTALL) that the guest installs
# from the layer's own recipes; the rest (packagegroup-core-boot, ptest-runner)
# are Debian's packages and guest/init here.
IMAGE_RECIPE = "recipes-core/images/pynq-alloc-image-ptest.bb"

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
    # udev's hardware database sources (9 MiB; no hwdb.bin is built, nothing here needs it)
    "lib/udev/hwdb.d", "usr/share/bash-completion", "usr/share/zsh",
    "usr/share/initramfs-tools",
]
# Pulled in by python3-minimal's dependency on dpkg; nothing in the guest runs them.
UNPACK_SKIP = ("dpkg", "tar")
# Packages of which the guest gets only some files. coreutils: only `install`,
# which the image has (Yocto's busybox provides /usr/bin/install) and Debian's
# busybox-static lacks; the layer's udev rule runs it. The rest stays busybox.
UNPACK_ONLY = {"coreutils": ["usr/bin/install"]}


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
                     json.dumps(UNPACK_SKIP), json.dumps(UNPACK_ONLY))
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
        pkg = deb.name.split("_")[0]
        if pkg in UNPACK_SKIP:
            continue
        if pkg in UNPACK_ONLY:
            part = base / f"unpack-{pkg}"
            run(["dpkg-deb", "-x", str(deb), str(part)])
            for rel in UNPACK_ONLY[pkg]:
                (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(part / rel, rootfs / rel)
            shutil.rmtree(part)
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
    # base-passwd's postinst: the master files become /etc/passwd and /etc/group;
    # the overlay stage adds the layer's groups to copies of them.
    for name in ("passwd", "group"):
        master = rootfs / f"usr/share/base-passwd/{name}.master"
        if not master.exists():
            die(f"base-passwd brought no {master.name}")
        shutil.copy(master, rootfs / "etc" / name)
        shutil.copy(master, base / name)
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
    if not (moddir / "modules.dep").exists():  # made by the kernel package's postinst
        run(["depmod", "-b", str(moddir.parent.parent.parent), moddir.name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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


def image_recipes() -> list[tuple[Recipe, bool]]:
    """(recipe, with its -ptest package) for every package of the layer's ptest
    image that one of the layer's recipes makes."""
    image = layer_recipe(IMAGE_RECIPE)
    wanted = (image.getVar("IMAGE_INSTALL") or "").split()
    out: dict[str, tuple[Recipe, bool]] = {}
    for pkg in wanted:
        pn = pkg[:-len("-ptest")] if pkg.endswith("-ptest") else pkg
        found = sorted(layer_dir().glob(f"recipes-*/*/{pn}_*.bb"))
        if not found:
            continue  # not the layer's (packagegroup-core-boot, ptest-runner)
        recipe, ptest = out.get(pn, (layer_recipe(str(found[0].relative_to(layer_dir()))), False))
        out[pn] = (recipe, ptest or pkg.endswith("-ptest"))
    return list(out.values())


def make_accounts(root: Path, base: Path, recipes: list[Recipe]) -> list[str]:
    """/etc/passwd and /etc/group as the image makes them: Debian's base-passwd
    files, then each recipe's useradd.bbclass GROUPADD_PARAM run by groupadd
    --prefix on the host (what useradd_preinst does at do_rootfs); then the two
    test users of the on-target suite: dmauser in group dma, nodma outside it."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    for name in ("passwd", "group"):
        shutil.copy(base / name, etc / name)
    done = []
    for recipe in recipes:
        if "useradd" not in recipe.inherits:
            continue
        for params in groupadd_params(recipe):
            run(["groupadd", "--prefix", str(root), *params.split()], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
            done.append(f"groupadd {params} ({recipe.getVar('PN')})")
    have_dma = any(line.startswith("dma:") for line in (etc / "group").read_text().splitlines())
    users = [["-u", "1000", "-U", "dmauser"] + (["-G", "dma"] if have_dma else []),
             ["-u", "1001", "-U", "nodma"]]
    for args in users:
        run(["useradd", "--prefix", str(root), "-M", "-d", "/tmp", "-s", "/bin/sh", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for leftover in etc.glob("*-"):  # shadow's backup copies
        leftover.unlink()
    return done


def build_overlay(build: Path, base: Path, driver: Driver, mode: str) -> Path:
    pkg_src = REPO / "python-pynq-alloc/src/pynq_alloc"
    if not (pkg_src / "__init__.py").exists():
        die("python-pynq-alloc/src/pynq_alloc is not there yet: nothing to install in the guest")
    ko = driver.ko
    key = sha(tree_digest(pkg_src, REPO / "python-pynq-alloc/pyproject.toml",
                          REPO / "tests/target", HERE / "guest", layer_dir(),
                          HERE / "harness.py", HERE / "recipe.py"),
              tree_digest(ko) if ko else "no-ko", (base / "key").read_text(), mode)
    out = build / f"overlay-{key}.cpio"
    if out.exists():
        return out
    for old in build.glob("overlay-*.cpio"):
        old.unlink()
    abi = (base / "abi").read_text()
    with tempfile.TemporaryDirectory(dir=build) as tmp:
        root = Path(tmp) / "root"
        work = Path(tmp) / "work"
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
        # pytest's --automake (run-ptest uses it), as a pytest11 entry point.
        shutil.copy(HERE / "guest/pytest_automake.py", site / "pytest_automake.py")
        am = site / "pytest_automake_standin-0.dist-info"
        am.mkdir()
        (am / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-automake-standin\n"
                                     "Version: 0\n")
        (am / "entry_points.txt").write_text("[pytest11]\nautomake = pytest_automake\n")
        (am / "RECORD").write_text("")
        guest = root / "usr/lib/pynq-alloc-qemu"
        guest.mkdir(parents=True)
        shutil.copy(HERE / "guest/figures.py", guest / "figures.py")
        (guest / "mode").write_text(mode + "\n")
        (guest / "driver").write_text(("yes" if ko else "no") + "\n")
        shutil.copy(HERE / "guest/init", root / "init")
        (root / "init").chmod(0o755)
        # The layer's packages, installed by their own recipes' tasks.
        recipes = image_recipes()
        installed = []
        for recipe, ptest in recipes:
            if "module" in recipe.inherits:
                if not ko:
                    continue  # no module: the driver's package is left out
                extra = root / f"lib/modules/{abi}/extra"
                extra.mkdir(parents=True)
                shutil.copy(ko, extra / "u-dma-buf.ko")
                moddir = base / f"kernel/lib/modules/{abi}"
                needed = module_closure(moddir, modinfo_depends(ko)) if modinfo_depends(ko) \
                    else []
                for rel in needed:
                    dst = root / f"lib/modules/{abi}" / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(moddir / rel, dst)
                for path, text in module_files(recipe).items():
                    f = root / path.lstrip("/")
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_text(text)
                # The image's rootfs step runs depmod (OE's depmodwrapper) on the build host.
                run(["depmod", "-b", str(root), abi], stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
            else:
                try:
                    install_recipe(recipe, root, work, ptest=ptest)
                except RecipeError as exc:
                    die(str(exc))
            installed.append(recipe.getVar("PN") + ("+ptest" if ptest else ""))
        accounts = make_accounts(root, base, [r for r, _ in recipes])
        (guest / "layer").write_text(f"{layer_dir()}\n" + "\n".join(installed + accounts) + "\n")
        compile_pyc(root, [GUEST_SITE.lstrip("/"), "usr/lib/pynq-alloc-qemu",
                           *[str(p.relative_to(root)) for p in root.glob("usr/lib/*/ptest")]])
        tmp_out = out.with_suffix(".tmp")
        with open(tmp_out, "wb") as f:
            c = Cpio(f)
            c.tree(root)
            c.close()
        tmp_out.rename(out)
    log(f"overlay: {', '.join(installed)} from {layer_dir()}")
    return out


# ---------------------------------------------------------------- u-dma-buf.ko

DRIVER_RECIPE_GLOB = "recipes-kernel/u-dma-buf/u-dma-buf_*.bb"
GIT_TIMEOUT = int(os.environ.get("QEMU_GIT_TIMEOUT", "20"))  # seconds for a network clone


def layer_dir() -> Path:
    """The layer whose files the guest runs: meta-pynq-alloc, or QEMU_LAYER (the
    harness's self-tests point it at a deliberately broken copy)."""
    return Path(os.environ.get("QEMU_LAYER") or REPO / "meta-pynq-alloc").resolve()


def layer_recipe(pattern: str) -> Recipe:
    found = sorted(layer_dir().glob(pattern))
    if len(found) != 1:
        die(f"expected one recipe {pattern} in {layer_dir()}, found {[str(p) for p in found]}")
    try:
        return Recipe(found[0], {"PYNQ_ALLOC_REPO_DIR": str(REPO)})
    except RecipeError as exc:
        die(str(exc))


def git(*args: str, cwd: Path | None = None, timeout: float | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """git that reads repositories owned by another user (a read-only mirror)
    and never prompts."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", LC_ALL="C")
    proc = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        die(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def driver_cache(build: Path, abi: str, rev: str) -> Path:
    return build / "udmabuf" / abi / rev


def export_source(repo: Path, rev: str, tag: str, dest: Path) -> None:
    """The tree of commit `rev` of git repository `repo` (a checkout or a bare
    mirror) into dest, by `git archive`: nothing is written into repo."""
    if git("rev-parse", "--git-dir", cwd=repo, check=False).returncode != 0:
        die(f"UDMABUF_SRC={repo} is not a git checkout or mirror: the harness must check that "
            f"it holds commit {rev[:12]}, the SRCREV the layer pins{tag}",
            "give a clone of the driver's repository (git clone <the recipe's SRC_URI URL>)")
    kind = "bare mirror" if git("rev-parse", "--is-bare-repository", cwd=repo,
                                check=False).stdout.strip() == "true" else "checkout"
    if git("cat-file", "-e", f"{rev}^{{commit}}", cwd=repo, check=False).returncode != 0:
        die(f"UDMABUF_SRC={repo} ({kind}) does not contain commit {rev}, the SRCREV "
            f"the layer pins{tag}",
            f"fetch it (`git -C {repo} fetch --tags origin`) or point UDMABUF_SRC at a clone "
            "of the driver's repository that has it")
    if kind == "checkout":
        head = git("rev-parse", "HEAD", cwd=repo).stdout.strip()
        if head != rev:
            die(f"UDMABUF_SRC={repo} is checked out at {head[:12]}, but the layer pins "
                f"SRCREV {rev[:12]}{tag}",
                f"`git -C {repo} checkout {rev[:12]}`, or change SRCREV in the layer's recipe")
        dirty = git("status", "--porcelain", "--untracked-files=no", cwd=repo,
                    check=False).stdout.strip()
        if dirty:
            die(f"UDMABUF_SRC={repo} has local changes to tracked files ({dirty.splitlines()[0]} "
                "...): the module would not be the driver the layer pins",
                f"`git -C {repo} stash` them, or use a clean clone")
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-c", "safe.directory=*", "archive", "--format=tar", rev],
                               cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert archive.stdout
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout,
                         capture_output=True)
    archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        die(f"git archive {rev} of {repo} failed: "
            f"{(archive.stderr.read() if archive.stderr else b'').decode()[-500:]}"
            f"{tar.stderr.decode()[-500:]}")


def clone_from_network(build: Path, url: str, rev: str) -> Path | None:
    """A bare clone of the recipe's git URL under build/, or None when the network
    does not allow it (quickly: one attempt bounded by QEMU_GIT_TIMEOUT, and a
    failure is remembered for an hour)."""
    mirror = build / "udmabuf/git"
    failed = build / "udmabuf/network-failed"
    if (mirror / "HEAD").exists():
        if git("cat-file", "-e", f"{rev}^{{commit}}", cwd=mirror, check=False).returncode == 0:
            return mirror
    if failed.exists() and time.time() - failed.stat().st_mtime < 3600:
        return None
    log(f"u-dma-buf: cloning {url} (timeout {GIT_TIMEOUT} s)")
    shutil.rmtree(mirror, ignore_errors=True)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = git("-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=10", "clone",
                   "--bare", "--quiet", url, str(mirror), timeout=GIT_TIMEOUT, check=False)
        ok = proc.returncode == 0
        lines = proc.stderr.strip().splitlines()
        why = lines[-1] if lines else f"rc {proc.returncode}"
    except subprocess.TimeoutExpired:
        ok, why = False, f"no answer within {GIT_TIMEOUT} s"
    if not ok:
        shutil.rmtree(mirror, ignore_errors=True)
        failed.touch()
        log(f"u-dma-buf: cannot clone {url}: {why}")
        return None
    failed.unlink(missing_ok=True)
    return mirror


def cross_headers(build: Path) -> tuple[str, Path]:
    """(ABI, kbuild tree) of Debian's linux-headers-<abi>-arm64 for the guest's
    kernel, with the host's linux-kbuild tools, unpacked under build/ (cached)."""
    host_arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                               text=True).stdout.strip()
    apt = Apt(build / "apt-kbuild", extra_arch=host_arch if host_arch != "arm64" else None)
    apt.update()
    kpkg = apt.kernel_abi_package()
    abi = kpkg[len("linux-image-"):]  # 6.1.0-57-arm64
    root = build / f"headers-{abi}"
    kdir = root / f"usr/src/linux-headers-{abi}"
    if (root / "done").exists():
        return abi, kdir
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
    shutil.rmtree(root, ignore_errors=True)
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(root)])
    # The headers' Makefile includes the -common tree by an absolute /usr/src path.
    mk = kdir / "Makefile"
    mk.write_text(mk.read_text().replace("include /usr/src/", f"include {root}/usr/src/"))
    (root / "done").touch()
    return abi, kdir


def vermagic(ko: Path) -> str:
    m = re.search(rb"vermagic=([^\0]*)\0", ko.read_bytes())
    return m.group(1).decode(errors="replace") if m else "?"


def build_driver(build: Path, src_repo: Path, origin: str, abi_expected: str) -> Path:
    """Cross-build the layer's pinned u-dma-buf from src_repo (a git checkout or
    mirror) against Debian's headers, out of tree: the pinned commit is exported
    into build/udmabuf/, built there, and the module cached by kernel ABI and
    commit."""
    recipe = layer_recipe(DRIVER_RECIPE_GLOB)
    _, _, rev = git_pin(recipe)
    tag = f" ({recipe.getVar('PN')} {recipe.getVar('PV')}, {recipe.path.relative_to(REPO)})" \
        if recipe.path.is_relative_to(REPO) else f" ({recipe.path})"
    work = build / "udmabuf/work"
    shutil.rmtree(work, ignore_errors=True)
    export_source(src_repo, rev, tag, work)
    if not (work / "u-dma-buf.c").exists():
        die(f"commit {rev} of {src_repo} has no u-dma-buf.c: is it the u-dma-buf repository?")
    run(["scripts/apt-install", "gcc-aarch64-linux-gnu", "make"], cwd=REPO)
    abi, kdir = cross_headers(build)
    if abi != abi_expected:
        die(f"Debian's current kernel ABI {abi} differs from the guest image's {abi_expected}",
            "QEMU_REFRESH=1 make run (rebuilds the image on the current kernel)")
    host_arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                               text=True).stdout.strip()
    cross = [] if host_arch == "arm64" else ["CROSS_COMPILE=aarch64-linux-gnu-"]
    # The recipe's own make arguments (module.bbclass passes KERNEL_SRC), minus the
    # toolchain prefix bitbake would set; the driver's Makefile uses $(PWD): cd first.
    oemake = [a for a in (recipe.getVar("EXTRA_OEMAKE") or "").split()
              if not a.startswith("CROSS_COMPILE=")]
    log(f"u-dma-buf: building {rev[:12]} from {origin} against linux-headers-{abi} "
        f"(out of tree, {work.relative_to(REPO) if work.is_relative_to(REPO) else work})")
    run(["make", "ARCH=arm64", *cross, f"KERNEL_SRC={kdir}", *oemake], cwd=work,
        env=dict(os.environ, PWD=str(work)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ko = work / "u-dma-buf.ko"
    if not ko.exists():
        die(f"the driver's make produced no u-dma-buf.ko in {work}")
    magic = vermagic(ko)
    if not magic.startswith(abi + " "):
        die(f"built u-dma-buf.ko has vermagic {magic!r}, not the guest's kernel {abi}")
    cache = driver_cache(build, abi, rev)
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(ko, cache / "u-dma-buf.ko")
    (cache / "origin").write_text(f"{origin}\nvermagic {magic}\nbuilt {time.strftime('%F %T')}\n")
    shutil.rmtree(work, ignore_errors=True)
    log(f"u-dma-buf: cached {cache / 'u-dma-buf.ko'} (vermagic {magic})")
    return cache / "u-dma-buf.ko"


class Driver:
    """Which module the guest gets and why: ko None = none (simulator fallback)."""

    def __init__(self, ko: Path | None, label: str, why_none: str = ""):
        self.ko, self.label, self.why_none = ko, label, why_none


def find_driver(build: Path, abi: str) -> Driver:
    """UDMABUF_KO (a module given as is), else the layer's pinned u-dma-buf from
    UDMABUF_SRC, else the cache (any earlier build for this kernel ABI and the
    pinned commit), else a network clone of the recipe's SRC_URI, else none."""
    given = os.environ.get("UDMABUF_KO")
    if given:
        ko = Path(given).resolve()
        if not ko.is_file():
            die(f"UDMABUF_KO={given}: no such file", "unset it: the harness builds the layer's "
                "pinned driver itself (UDMABUF_SRC=<u-dma-buf git checkout or mirror>)")
        return Driver(ko, f"UDMABUF_KO={given} (vermagic {vermagic(ko)})")
    recipe = layer_recipe(DRIVER_RECIPE_GLOB)
    url, _, rev = git_pin(recipe)
    cached = driver_cache(build, abi, rev) / "u-dma-buf.ko"
    src = os.environ.get("UDMABUF_SRC")
    built_now = False
    if src:
        src_path = Path(src).resolve()
        if not src_path.exists():
            die(f"UDMABUF_SRC={src}: no such directory",
                f"clone the driver ({url}) and give its path, or unset UDMABUF_SRC")
        if cached.exists():
            # Same commit, same kernel ABI: the module is the same; still check the
            # source really holds the pinned commit, so a wrong source is never hidden.
            work = build / "udmabuf/check"
            shutil.rmtree(work, ignore_errors=True)
            export_source(src_path, rev, "", work)
            shutil.rmtree(work, ignore_errors=True)
        else:
            cached = build_driver(build, src_path, f"UDMABUF_SRC={src}", abi)
            built_now = True
    elif not cached.exists():
        mirror = clone_from_network(build, url, rev)
        if mirror is None:
            return Driver(None, "none", f"no driver source: UDMABUF_SRC is unset, {url} is "
                          "unreachable and no module is cached for kernel "
                          f"{abi} + commit {rev[:12]}")
        cached = build_driver(build, mirror, url, abi)
        built_now = True
    origin = (cached.parent / "origin").read_text().splitlines()[0] \
        if (cached.parent / "origin").exists() else "?"
    shown = cached.parent.relative_to(REPO) if cached.is_relative_to(REPO) else cached.parent
    how = (f"built by this run from {origin}, cached in {shown}" if built_now
           else f"the module cached in {shown} (built by an earlier run from {origin})")
    return Driver(cached, f"u-dma-buf {recipe.getVar('PV')} at {rev[:12]} (the layer's SRCREV), "
                  f"{how}")


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
                         + (f"; inside /proc/iomem {min(hit)[1]}" if hit else ""))
    return pools


class Console:
    """What the guest printed, sorted by the markers and by ptest-runner's lines."""

    def __init__(self) -> None:
        self.marks: dict[str, str] = {}
        self.notes: dict[str, list[str]] = {}
        self.seed: list[str] = []
        self.ptest: dict[str, dict] = {}  # dir -> {PASS: [...], FAIL, SKIP, error, expected}
        self.cli: list[dict] = []  # {cmd, lines, rc}
        self.panic = False
        self._section: str | None = None
        self._ptest_dir: str | None = None

    def feed(self, line: str, echo) -> None:
        if "Kernel panic" in line:
            self.panic = True
        if line.startswith(MARK):
            word, _, rest = line[len(MARK):].strip().partition(" ")
            self.marks[word] = rest
            self.notes.setdefault(word, []).append(rest)
            if word == "seed-begin":
                self._section = "seed"
            elif word == "cli-begin":
                self._section = "cli"
                self.cli.append({"cmd": re.sub(r"^t=\S+ ", "", rest), "lines": [], "rc": None})
            elif word == "cli-end":
                self._section = None
                self.cli[-1]["rc"] = rest.split()[0]
            elif word in ("seed-end", "suite-end"):
                self._section = None
            elif word == "ptest-expected":
                d, _, n = rest.rpartition(" ")
                self.ptest.setdefault(d, self._new())["expected"] = int(n)
            elif word in ("warn", "driver-failed"):
                echo(f"  guest: {word}: {rest}")
            return
        m = re.match(r"^(BEGIN|END): (/\S+)$", line)
        if m:
            self._ptest_dir = m.group(2) if m.group(1) == "BEGIN" else None
            if self._ptest_dir:
                self.ptest.setdefault(self._ptest_dir, self._new())["begun"] = True
            return
        if self._ptest_dir:
            entry = self.ptest[self._ptest_dir]
            m = re.match(r"^(PASS|FAIL|SKIP): (.*)$", line)
            if m:
                entry[m.group(1)].append(m.group(2))
                if m.group(1) == "FAIL":
                    echo(f"  {line}")
            m = re.match(r"^ERROR: Exit status is (\d+)$", line)
            if m:
                entry["error"] = int(m.group(1))
            return
        if self._section == "seed":
            self.seed.append(line)
        elif self._section == "cli":
            self.cli[-1]["lines"].append(line)

    @staticmethod
    def _new() -> dict:
        return {"PASS": [], "FAIL": [], "SKIP": [], "error": 0, "expected": None,
                "begun": False}


def guest_time(marks: dict[str, str], word: str) -> float | None:
    m = re.search(r"t=([\d.]+)", marks.get(word, ""))
    return float(m.group(1)) if m else None


def boot(build: Path, base: Path, overlay: Path, dtb: Path, driver: Driver, args) -> int:
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
    log(f"booting {args.cpu} -smp {args.smp} -m {args.memory}, initrd "
        f"{initrd.stat().st_size >> 20} MiB (timeout {args.timeout} s; console in "
        f"{log_path.relative_to(REPO) if log_path.is_relative_to(REPO) else log_path})")
    t0 = time.monotonic()
    con = Console()
    timed_out = False
    import selectors

    def echo(text: str) -> None:
        if not args.verbose:
            print(text, flush=True)

    with open(log_path, "w", errors="replace") as console:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout
        os.set_blocking(proc.stdout.fileno(), False)
        buf = b""
        deadline = t0 + args.timeout
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
                con.feed(line, echo)
        if buf:
            console.write(buf.decode(errors="replace") + "\n")
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    elapsed = time.monotonic() - t0
    return report(build, base, con, driver, args, elapsed, timed_out, log_path)


def report(build: Path, base: Path, con: Console, driver: Driver, args, elapsed: float,
           timed_out: bool, log_path: Path) -> int:
    marks = con.marks
    problems: list[str] = []
    if timed_out:
        problems.append(f"the guest did not finish within {args.timeout} s")
    if con.panic:
        problems.append("kernel panic")
    if "done" not in marks and not timed_out:
        problems.append("the guest stopped before its end marker")
    real = bool(driver.ko) and "driver-failed" not in marks and "regions" in marks
    if driver.ko and "driver-failed" in marks:
        loader = [m for m in con.notes.get("modprobe", []) if " rc=0 " not in m + " "]
        problems.append("the u-dma-buf module did not load: "
                        + " ".join(f"modprobe {m}" for m in loader)
                        + f" kernel: {marks['driver-failed'].strip() or '(nothing in dmesg)'}")
    elif driver.ko and "regions" not in marks and "done" in marks:
        problems.append("u-dma-buf loaded but created no /dev/udmabuf* device (no "
                        "ikwzm,u-dma-buf node in the device tree?)")
    # ptest-runner's results.
    n_pass = n_fail = n_skip = 0
    reasons: dict[str, int] = {}
    if "suite-end" not in marks:
        problems.append("ptest-runner did not run to its end")
    elif not con.ptest:
        problems.append("no ptest package in the image (no /usr/lib/*/ptest/run-ptest)")
    for d, r in con.ptest.items():
        n_pass += len(r["PASS"])
        n_fail += len(r["FAIL"])
        n_skip += len(r["SKIP"])
        got = len(r["PASS"]) + len(r["FAIL"]) + len(r["SKIP"])
        if not r["begun"]:
            problems.append(f"{d}: run-ptest was not run")
        if r["FAIL"]:
            problems.append(f"{d}: {len(r['FAIL'])} failed")
        if r["error"] and not r["FAIL"]:
            problems.append(f"{d}: run-ptest exited with status {r['error']} and no FAIL line")
        if r["expected"] is not None and got < r["expected"]:
            problems.append(f"{d}: run-ptest reported {got} results for the "
                            f"{r['expected']} tests its package ships (it stopped early?)")
        for skipped in r["SKIP"]:
            m = re.search(r" \((.*)\)$", skipped)
            why = m.group(1) if m else "?"
            reasons[why] = reasons.get(why, 0) + 1
    # The command-line tool.
    cli_pass = cli_fail = cli_skip = 0
    if real:
        for run_ in con.cli:
            ok = run_["rc"] == "rc=0"
            if ok and run_["cmd"].startswith("bench"):
                lines = [x for x in run_["lines"] if re.search(r"\b(meets|MISSES)$", x)]
                ok = len(lines) >= 4
                if not ok:
                    problems.append(f"pynq-alloc {run_['cmd']}: {len(lines)} result lines, not 4")
            elif not ok:
                problems.append(f"pynq-alloc {run_['cmd']} failed ({run_['rc']}): "
                                + " | ".join(run_["lines"][-3:]))
            cli_pass += ok
            cli_fail += not ok
        if len(con.cli) < 3 and "done" in marks:
            problems.append(f"only {len(con.cli)} of the 3 pynq-alloc commands ran")
            cli_fail += 3 - len(con.cli)
    else:
        cli_skip = 3
    if args.mode == "run":
        rc = marks.get("seed-end", "rc=?").split()[0]
        if rc != "rc=0":
            problems.append(f"seed example failed ({rc})")
        if real and marks.get("figures-end", "rc=?").split()[0] != "rc=0":
            problems.append(f"the on-target figures failed ({marks.get('figures-end', 'not run')})")
    # The report.
    print()
    print(f"pynq-alloc on qemu-system-aarch64 ({elapsed:.1f} s boot to power-off)")
    print(f"  kernel    {(base / 'abi').read_text()}")
    if real:
        print(f"  driver    {marks.get('driver', '?')}: {driver.label}")
    elif driver.ko:
        print(f"  driver    FAILED to load: {driver.label}")
    else:
        print(f"  driver    NONE: {driver.why_none}.")
        print("            Every driver test below is SKIPPED and the seed example is "
              "SIMULATED. Give the source once:")
        print("            UDMABUF_SRC=<git checkout or mirror of the u-dma-buf driver> make run")
    t = {k: guest_time(marks, k) for k in ("init-start", "seed-begin", "cli-begin",
                                          "suite-begin", "suite-end", "figures-begin",
                                          "figures-end")}
    udev = re.search(r"took=([\d.]+)", marks.get("udev", ""))
    phases = []
    if t["init-start"] is not None:
        phases.append(f"kernel {t['init-start']:.1f} s")
    if udev:
        phases.append(f"udev trigger+settle {float(udev.group(1)):.1f} s")
    cli_t = [guest_time({"x": n}, "x") for n in con.notes.get("cli-begin", [])[:1]
             + con.notes.get("cli-end", [])[-1:]]
    if len(cli_t) == 2 and None not in cli_t:
        phases.append(f"pynq-alloc commands {cli_t[1] - cli_t[0]:.1f} s")  # type: ignore[operator]
    if t["suite-begin"] is not None and t["suite-end"] is not None:
        phases.append(f"ptest {t['suite-end'] - t['suite-begin']:.1f} s")
    if t["figures-begin"] is not None and t["figures-end"] is not None:
        phases.append(f"figures {t['figures-end'] - t['figures-begin']:.1f} s")
    if phases:
        print(f"  guest     {', '.join(phases)}")
    for pool in reserved_pools(con.notes):
        print(f"  reserved  {pool}")
    if "regions" in marks:
        print(f"  regions   {marks['regions'].strip()}")
    for line in con.notes.get("info", []):
        if re.match(r"(/dev/|crw|/sys/class/u-dma-buf/\S+/sync_mode =|/run/pynq-alloc)", line):
            print(f"  files     {line}")
    print(f"  layer     {layer_dir()}")
    if args.mode == "run":
        backend = re.search(r"backend=(\w+)", marks.get("seed-begin", ""))
        simulated = not backend or backend.group(1) != "udmabuf"
        tag = "SIMULATED (simulator backend, not device memory)" if simulated \
            else "u-dma-buf driver"
        for line in con.seed[-3:] or ["(no output)"]:
            print(f"  seed      {line}  [{tag}; {marks.get('seed-end', 'rc=?').split()[0]}]")
    for run_ in con.cli:
        print(f"  cli       $ pynq-alloc {run_['cmd']}  [{run_['rc']}]")
        for line in run_["lines"]:
            print(f"  cli       | {line}")
    figures = con.notes.get("figure", [])
    if not real:
        print("  figures   skipped: they time the driver's own calls (no u-dma-buf device)")
    if figures:
        print("  figures   (ratios measured side by side in this guest; TCG, not hardware "
              "timings)")
        rows = [[x.strip() for x in fig.split("|")] for fig in figures]
        width = max(len(row[0]) for row in rows)
        for name, ours, ref, unit, ratio in rows:
            print(f"  figure    {name:<{width}} {ours:>10} vs {ref:>10} {unit:<5} ratio {ratio}")
    for why, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  SKIP x{count}: {why}")
    where = "on the real u-dma-buf driver" if real else \
        "WITHOUT the driver (simulator fallback)"
    print(f"  on-target {n_pass + n_fail + n_skip} tests {where}: {n_pass} passed, "
          f"{n_fail} failed, {n_skip} skipped"
          + (f"; pynq-alloc info/selftest/bench: {cli_pass} passed, {cli_fail} failed"
             if real else "; pynq-alloc info/selftest/bench: skipped (no u-dma-buf device)"))
    if problems:
        saved = build / f"console-failed-{time.strftime('%Y%m%d-%H%M%S')}.log"
        shutil.copy(log_path, saved)
        for old in sorted(build.glob("console-failed-*.log"))[:-5]:  # keep the last five
            old.unlink()
        for p in problems:
            print(f"  FAILED: {p}")
        print(f"  console log: {saved}")
    # A run that went wrong without a FAIL line (timeout, no driver, early exit)
    # counts as one failure.
    extra_fail = 1 if problems and not (n_fail or cli_fail) else 0
    # One line to grep: tests and the three commands counted apart, so that neither
    # total can be read as the other.
    print(f"qemu-target: tests {n_pass} passed, {n_fail + extra_fail} failed, {n_skip} "
          f"skipped; commands {cli_pass} passed, {cli_fail} failed, {cli_skip} skipped "
          f"({'real driver' if real else 'NO driver'})")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["run", "test", "image", "driver"],
                    help="run: seed example, CLI, ptest, figures; test: CLI and ptest; "
                         "image: build (or reuse) the image and the DTB, no boot; "
                         "driver: build (or reuse) the layer's pinned u-dma-buf module")
    ap.add_argument("--build-dir",
                    default=os.environ.get("QEMU_BUILD_DIR", str(REPO / "build/qemu")))
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("QEMU_TIMEOUT", "600")))
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--cpu", default="cortex-a53")
    ap.add_argument("-v", "--verbose", action="store_true", default=bool(os.environ.get("V")),
                    help="show the whole guest console")
    args = ap.parse_args()
    t0 = time.monotonic()
    build = Path(args.build_dir).resolve()
    build.mkdir(parents=True, exist_ok=True)
    base = build_base(build, refresh=bool(os.environ.get("QEMU_REFRESH")))
    driver = find_driver(build, (base / "abi").read_text())
    if driver.ko:
        log(f"driver: {driver.label}")
    else:
        log("=" * 72)
        log(f"WARNING: NO u-dma-buf DRIVER. {driver.why_none}.")
        log("The driver tests will SKIP and the seed example runs SIMULATED.")
        log("Give the source once: UDMABUF_SRC=<u-dma-buf git checkout or mirror> make run")
        log("=" * 72)
    if args.mode == "driver":
        return 0 if driver.ko else 1
    dtb = build_dtb(build, args.memory, args.smp, args.cpu)
    overlay = build_overlay(build, base, driver, "test" if args.mode == "image" else args.mode)
    log(f"image ready in {time.monotonic() - t0:.1f} s: base "
        f"{(base / 'base.cpio').stat().st_size >> 20} MiB + overlay "
        f"{overlay.stat().st_size >> 20} MiB")
    if args.mode == "image":
        return 0
    rc = boot(build, base, overlay, dtb, driver, args)
    print(f"qemu: total {time.monotonic() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
