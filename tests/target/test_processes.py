"""Several processes and users on one board: blocks of different processes never
overlap; a user in group dma may allocate, one outside it gets the package's
DevicePermissionError (which says to join the group)."""
from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from typing import Any, List, Tuple

import pynq_alloc
import pytest
from helpers import DEV_ROOT, last_json, run_python

HOLDER = """
import json, sys
import pynq_alloc
name, mark = sys.argv[1], int(sys.argv[2])
buf = pynq_alloc.allocate(1 << 20, "u1", target=name)
buf[:] = mark
buf.flush()
print(json.dumps({"address": buf.device_address, "nbytes": buf.nbytes}), flush=True)
sys.stdin.readline()  # hold the block until the parent has seen everybody's
buf.invalidate()
print(json.dumps({"intact": bool((buf == mark).all())}), flush=True)
"""


def test_two_processes_get_disjoint_blocks(all_regions: List[Any]) -> None:
    """A fresh process holds a block while this one allocates: no overlap, and
    neither writes into the other's block."""
    region = all_regions[0]
    children = [subprocess.Popen([sys.executable, "-c", HOLDER, region.name, str(mark)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for mark in (0x11,)]
    try:
        spans: List[Tuple[int, int]] = []
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, f"child failed: {child.stderr.read() if child.stderr else ''}"
            got = json.loads(line)
            spans.append((got["address"], got["address"] + got["nbytes"]))
        with pynq_alloc.allocate(1 << 20, "u1", target=region.name) as mine:
            mine[:] = 0x33
            mine.flush()
            spans.append((mine.device_address, mine.device_address + mine.nbytes))
            spans.sort()
            for (_, a_end), (b_start, _) in zip(spans, spans[1:]):
                assert a_end <= b_start, f"overlapping: {[(hex(s), hex(e)) for s, e in spans]}"
            for start, end in spans:
                assert region.phys_addr <= start and end <= region.phys_addr + region.size
            for child in children:
                out, err = child.communicate("go\n", timeout=120)
                assert child.returncode == 0, err
                assert last_json(out)["intact"] is True, "another process wrote into the block"
            assert bool((mine == 0x33).all())
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def dma_group() -> grp.struct_group:
    try:
        return grp.getgrnam("dma")
    except KeyError:
        pytest.skip("no group 'dma' on this system (the image's udev rule gives the "
                    "u-dma-buf devices to it)")


def run_dir_modes() -> dict:
    """Owner, group and mode of the package's shared files (for failure messages)."""
    run_dir = os.environ.get("PYNQ_ALLOC_RUN_DIR", "/run/pynq-alloc")
    if not os.path.isdir(run_dir):
        return {run_dir: "missing"}
    found = {}
    for path in [run_dir, *sorted(os.path.join(run_dir, n) for n in os.listdir(run_dir))]:
        st = os.stat(path)
        found[path] = f"{st.st_uid}:{st.st_gid} {oct(st.st_mode & 0o7777)}"
    return found


def user_not_root(candidates: List[str], fallback: int) -> int:
    for name in candidates:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        if uid != 0:
            return uid
    return fallback


ALLOCATOR = """
import json, sys
import numpy as np
import pynq_alloc
name = sys.argv[1]
try:
    with pynq_alloc.allocate(4096, "u4", target=name) as buf:
        buf[:] = np.arange(4096, dtype="u4")
        buf.flush()
        buf.invalidate()
        print(json.dumps({"ok": bool((buf == np.arange(4096)).all()),
                          "address": buf.device_address}))
except pynq_alloc.PynqAllocError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                      "is_permission_error": isinstance(exc, PermissionError)}))
"""


def run_as(uid: int, gid: int, groups: List[int], region: Any) -> dict:
    proc = subprocess.run([sys.executable, "-c", ALLOCATOR, region.name], capture_output=True,
                          text=True, timeout=120, user=uid, group=gid, extra_groups=groups,
                          cwd="/")
    assert proc.returncode == 0, f"child (uid {uid}) died:\n{proc.stderr}"
    return last_json(proc.stdout)


def test_a_user_in_group_dma_may_allocate(all_regions: List[Any], as_root: None) -> None:
    region = all_regions[0]
    dma = dma_group()
    node = os.stat(DEV_ROOT / region.name)
    assert node.st_gid == dma.gr_gid and node.st_mode & 0o060 == 0o060, (
        f"{DEV_ROOT / region.name} is not rw for group dma: the udev rule was not applied")
    uid = user_not_root(list(dma.gr_mem), 61000)
    # Root allocates first (so root may have created the shared ledger) and holds
    # its block while the member allocates.
    with pynq_alloc.allocate(4096, "u1", target=region.name) as mine:
        got = run_as(uid, uid, [dma.gr_gid], region)
        assert got.get("ok") is True, (
            f"uid {uid} in group dma could not allocate: {got}; run dir: {run_dir_modes()}")
        assert region.phys_addr <= got["address"] < region.phys_addr + region.size
        assert not mine.device_address <= got["address"] < mine.device_address + mine.nbytes


def test_a_user_outside_group_dma_gets_device_permission_error(all_regions: List[Any],
                                                               as_root: None) -> None:
    region = all_regions[0]
    dma = dma_group()
    uid = user_not_root(["nodma", "nobody"], 65534)
    gid = pwd.getpwuid(uid).pw_gid if _has_passwd(uid) else uid
    assert gid != dma.gr_gid
    got = run_as(uid, gid, [], region)
    assert got.get("error") == "DevicePermissionError", got
    assert got["is_permission_error"] is True
    assert "dma" in got["message"], f"the message does not say to join group dma: {got}"


def _has_passwd(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_no_driver_means_driver_not_found_error(tmp_path: Any) -> None:
    """Pointed at a sysfs tree with no u-dma-buf device, allocate says what is missing."""
    code = ("import json, pynq_alloc\n"
            "try:\n"
            "    pynq_alloc.allocate(shape=(5,), dtype='u4')\n"
            "except pynq_alloc.DriverNotFoundError as exc:\n"
            "    print(json.dumps({'error': 'DriverNotFoundError', 'message': str(exc),\n"
            "                      'base': isinstance(exc, pynq_alloc.PynqAllocError)}))\n"
            "else:\n"
            "    print(json.dumps({'error': None}))\n")
    empty = tmp_path / "sys-class-u-dma-buf"
    empty.mkdir()
    proc = run_python(code, env={"PYNQ_ALLOC_SYSFS_ROOT": str(empty), "PYNQ_ALLOC_BACKEND": "",
                                 "PYNQ_ALLOC_RUN_DIR": str(tmp_path / "run")})
    assert proc.returncode == 0, proc.stderr
    got = last_json(proc.stdout)
    assert got["error"] == "DriverNotFoundError" and got["base"] is True
    assert "not loaded" in got["message"] and "device tree" in got["message"]


def test_allocate_without_the_driver_raises_driver_not_found_error() -> None:
    sysfs_root = os.environ.get("PYNQ_ALLOC_SYSFS_ROOT", "/sys/class/u-dma-buf")
    if os.path.isdir(sysfs_root) and os.listdir(sysfs_root):
        pytest.skip("the u-dma-buf driver is loaded here (the case without it is covered by "
                    "test_no_driver_means_driver_not_found_error)")
    with pytest.raises(pynq_alloc.DriverNotFoundError) as err:
        pynq_alloc.allocate(shape=(5,), dtype="u4", backend="udmabuf")
    assert "not loaded" in str(err.value)
