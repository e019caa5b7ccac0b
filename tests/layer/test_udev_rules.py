"""The files of u-dma-buf-udev-rules: what the udev rule does to a u-dma-buf device,
the tmpfiles.d entry applied by the real systemd-tmpfiles (Debian's), and the
sysvinit volatiles entry.

udev itself needs a real u-dma-buf device in sysfs, which this host has not: the rule
is evaluated here by a small interpreter of udev's rule syntax as udev(7) documents
it (match keys ==/!= with shell globs and "|" alternatives, assignments =/+=/:=,
ATTR{file}= writes the sysfs attribute at once, RUN+= runs after all rules, %S and %p
substitutions). The QEMU harness (tests/qemu/) applies the same installed file under
Debian's real udev on a booted guest with the real driver."""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE_DIR = REPO / "meta-pynq-alloc/recipes-kernel/u-dma-buf-udev-rules"
FILES = RECIPE_DIR / "files"
RULES = FILES / "60-u-dma-buf.rules"
TMPFILES = FILES / "pynq-alloc.conf"
VOLATILES = FILES / "volatiles.99_pynq-alloc"

# u-dma-buf v5.5.0's sysfs attributes that are writable (0664) and that a non-root
# member of dma needs: the sync controls. The others (phys_addr, size, dma_coherent,
# driver_version, sync_owner, ...) are 0444 and refuse writes even from root.
WRITABLE_SYNC_FILES = ("sync_mode", "sync_offset", "sync_size", "sync_direction",
                       "sync_for_cpu", "sync_for_device")
# What OE-Core's busybox defconfig builds (CONFIG_CHGRP=y, CONFIG_CHMOD=y; CONFIG_INSTALL
# is not set) on both series: the only programs a RUN key may rely on.
BUSYBOX_TOOLS = {"/bin/chgrp", "/bin/chmod"}
DEVPATH = "/devices/platform/dma-buffer-0/u-dma-buf/udmabuf0"

KEY = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_rules(text: str) -> List[List[Tuple[str, str, str, str]]]:
    """Lines of (key, attribute, operator, value), per udev(7)."""
    rules = []
    for line in re.sub(r"\\\n", "", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pos, keys = 0, []
        while pos < len(line):
            m = KEY.match(line, pos)
            assert m, f"udev rule syntax error at column {pos}: {line!r}"
            keys.append((m.group(1), m.group(2) or "", m.group(3), m.group(4)))
            pos = m.end()
        rules.append(keys)
    return rules


def glob_match(value: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in pattern.split("|"))


def apply_rules(rules, event: Dict[str, str], attrs: Dict[str, str]) -> Dict[str, object]:
    """What udev does for EVENT on a device whose sysfs attributes are ATTRS."""
    result: Dict[str, object] = {"GROUP": None, "MODE": None, "OWNER": None,
                                 "writes": {}, "RUN": []}
    attrs = dict(attrs)
    for keys in rules:
        matched = True
        for key, attr, op, value in keys:
            if op not in ("==", "!="):
                continue
            actual = attrs.get(attr, "").rstrip() if key == "ATTR" else event.get(key, "")
            if glob_match(actual, value) != (op == "=="):
                matched = False
                break
        if not matched:
            continue
        for key, attr, op, value in keys:
            if op in ("==", "!="):
                continue
            value = value.replace("%S", "/sys").replace("%p", event["DEVPATH"])
            if key in ("GROUP", "MODE", "OWNER"):
                result[key] = value
            elif key == "ATTR":
                attrs[attr] = value
                result["writes"][attr] = value
            elif key == "RUN":
                result["RUN"] = (result["RUN"] if op == "+=" else []) + [value]
            else:
                pytest.fail(f"assignment to {key} not modelled: extend apply_rules()")
    return result


def rules():
    return parse_rules(RULES.read_text())


def add_event(**kw) -> Dict[str, str]:
    return dict({"ACTION": "add", "SUBSYSTEM": "u-dma-buf", "KERNEL": "udmabuf0",
                 "DEVPATH": DEVPATH}, **kw)


def test_every_rule_matches_only_u_dma_buf_devices():
    for keys in rules():
        assert ("SUBSYSTEM", "", "==", "u-dma-buf") in keys, keys


def test_device_node_is_root_dma_0660_on_every_event():
    for action in ("add", "change", "bind"):
        result = apply_rules(rules(), add_event(ACTION=action), {"sync_mode": "1"})
        assert (result["GROUP"], result["MODE"]) == ("dma", "0660"), (action, result)
        assert result["OWNER"] in (None, "root")


def test_sync_files_get_group_dma_and_mode_0660_when_the_device_appears():
    result = apply_rules(rules(), add_event(), {"sync_mode": "1"})
    sysdir = f"/sys{DEVPATH}"
    want = [f"{sysdir}/{name}" for name in WRITABLE_SYNC_FILES]
    runs = [cmd.split() for cmd in result["RUN"]]
    assert [r[:2] for r in runs] == [["/bin/chgrp", "dma"], ["/bin/chmod", "0660"]], runs
    for r in runs:
        assert sorted(r[2:]) == sorted(want), r


def test_sync_mode_becomes_write_combine_unless_the_device_tree_chose_2_or_3():
    for before, written in (("0", "2"), ("1", "2"), ("2", None), ("3", None), ("4", "2")):
        result = apply_rules(rules(), add_event(), {"sync_mode": before + "\n"})
        assert result["writes"].get("sync_mode") == written, (before, result["writes"])
        assert set(result["writes"]) <= {"sync_mode"}, result["writes"]


def test_nothing_but_the_device_node_changes_on_other_events():
    result = apply_rules(rules(), add_event(ACTION="change"), {"sync_mode": "1"})
    assert result["RUN"] == [] and result["writes"] == {}, result


def test_rule_runs_only_busybox_tools_and_sets_no_setuid_or_setgid_mode():
    """systemd-udevd.service has RestrictSUIDSGID=yes (a setgid mode is refused) and
    OE-Core's busybox has no `install`: the ledger directory is tmpfiles.d's job."""
    for keys in rules():
        for key, _, _, value in keys:
            if key == "RUN":
                assert value.split()[0] in BUSYBOX_TOOLS, value
            if key == "MODE":
                assert int(value, 8) & 0o7000 == 0, value
    assert "/run/pynq-alloc" not in "".join(v for k in rules() for _, _, _, v in k)


def test_rule_interpreter_rejects_a_weakened_rule():
    """The checks above fail on the mutation issue 16 names (GROUP root, MODE 0600)."""
    weak = parse_rules(RULES.read_text().replace('GROUP="dma", MODE="0660"',
                                                 'GROUP="root", MODE="0600"'))
    result = apply_rules(weak, add_event(), {"sync_mode": "1"})
    assert (result["GROUP"], result["MODE"]) == ("root", "0600")
    with pytest.raises(AssertionError):
        parse_rules('SUBSYSTEM=="u-dma-buf" GROUP="dma"')  # missing comma


def tmpfiles_entry() -> List[str]:
    (line,) = [ln for ln in TMPFILES.read_text().splitlines() if ln and not ln.startswith("#")]
    return line.split()


def test_tmpfiles_entry_makes_the_ledger_directory_setgid_dma():
    assert tmpfiles_entry() == ["d", "/run/pynq-alloc", "2770", "root", "dma", "-"]


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles can chown to root:dma only as root")
def test_real_systemd_tmpfiles_creates_the_ledger_directory(tmp_path):
    tool = shutil.which("systemd-tmpfiles")
    assert tool, "systemd-tmpfiles not found: install Debian's systemd (make deps does)"
    (tmp_path / "etc").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\ndma:x:971:\n")
    proc = subprocess.run([tool, f"--root={tmp_path}", "--create", str(TMPFILES)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    st = (tmp_path / "run/pynq-alloc").stat()
    assert stat.S_ISDIR(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o2770, 0, 971)


def test_volatiles_entry_says_what_the_tmpfiles_entry_says():
    """populate-volatile.sh (OE-Core initscripts) reads
    <type> <owner> <group> <mode> <path> <linksource> per line."""
    (line,) = [ln for ln in VOLATILES.read_text().splitlines() if ln and not ln.startswith("#")]
    kind, owner, group, mode, path, link = line.split()
    t_kind, t_path, t_mode, t_owner, t_group, _ = tmpfiles_entry()
    assert (kind, owner, group, mode, path, link) == (t_kind, t_owner, t_group, t_mode,
                                                      t_path, "none")


def test_recipe_installs_each_of_its_files_with_one_plain_install_line():
    """One `install -D -m 0644 ${S}/<file> ${D}<dir>/<file>` per SRC_URI file: the
    QEMU harness reads the files and their places from the recipe itself."""
    text = (RECIPE_DIR / "u-dma-buf-udev-rules_1.0.bb").read_text()
    src_uri = re.search(r'^SRC_URI = "([^"]*)"', text, re.M).group(1)
    sources = re.findall(r"file://([\w.\-]+)", src_uri)
    assert sorted(sources) == sorted(p.name for p in FILES.iterdir())
    installs = dict(re.findall(r"^\s+install -D -m 0644 \$\{S\}/([\w.\-]+) "
                               r"\$\{D\}(\$\{\w+\}/[\w.\-/]+)$", text, re.M))
    assert set(installs) == set(sources), installs
    assert installs == {
        "60-u-dma-buf.rules": "${nonarch_base_libdir}/udev/rules.d/60-u-dma-buf.rules",
        "pynq-alloc.conf": "${nonarch_libdir}/tmpfiles.d/pynq-alloc.conf",
        "volatiles.99_pynq-alloc": "${sysconfdir}/default/volatiles/99_pynq-alloc",
    }
