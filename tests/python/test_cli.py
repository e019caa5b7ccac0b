"""`pynq-alloc`, the command line: on the simulator, and on fake /proc, /sys, /dev trees
for the diagnosis `info` gives when the driver is missing.

The fake trees hold what the kernel shows (u_dma_buf in /proc/modules, a
/proc/device-tree directory per node with a file per property, the driver's sysfs
files laid out by the simulator), so the real checks run on them; permission
findings are checked as an unprivileged user (nobody) where the tests run as root.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pynq_alloc
import pytest
from pynq_alloc import cli
from pynq_alloc.backends.sim import SimRegion, Simulator
from pynq_alloc.diagnose import Roots, diagnose

RELEASE = "6.1.0-test-arm64"
REGION = SimRegion("udmabuf0", 16 << 20, 0x7E000000)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str,
            roots: Optional[Roots] = None) -> tuple[int, str, str]:
    status = cli.main(list(args), roots=roots)
    out, err = capsys.readouterr()
    return status, out, err


def json_of(capsys: pytest.CaptureFixture[str], *args: str,
            roots: Optional[Roots] = None) -> tuple[int, Dict[str, Any]]:
    status, out, _ = run_cli(capsys, *args, roots=roots)
    return status, json.loads(out)


def checks_by_name(report: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {c["check"]: c for c in report["checks"]}


# --- the simulator says so, everywhere ------------------------------------------------

def test_info_text_on_the_simulator_says_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--backend", "sim", "info")
    assert status == 0, out
    first = out.splitlines()[0]
    assert "SIMULATOR" in first and "--backend sim" in first and "no hardware" in first


def test_info_json_on_the_simulator_names_backend_sim(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, report = json_of(capsys, "--backend", "sim", "info", "--json")
    assert status == 0
    assert report["backend"] == "sim" and report["simulated"] is True
    assert report["ok"] is True


def test_simulator_chosen_by_the_environment_says_how(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNQ_ALLOC_BACKEND", "sim")
    _, out, _ = run_cli(capsys, "info")
    assert "SIMULATOR" in out and "PYNQ_ALLOC_BACKEND=sim" in out.splitlines()[0]
    _, report = json_of(capsys, "info", "--json")
    assert report["backend"] == "sim" and report["simulated"] is True


def test_selftest_on_the_simulator_says_so_in_text_and_json(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "selftest", "--backend", "sim")
    assert status == 0, out
    lines = out.splitlines()
    assert "SIMULATOR" in lines[0]
    assert all("(simulated)" in line for line in lines[1:] if line.startswith("PASS"))
    status, report = json_of(capsys, "selftest", "--backend", "sim", "--json")
    assert status == 0 and report["ok"] is True
    assert report["backend"] == "sim" and report["simulated"] is True


def test_bench_on_the_simulator_says_so(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The banner comes before the benchmarks (which are not the subject here)."""
    ran: List[bool] = []
    monkeypatch.setattr(cli, "cmd_bench",
                        lambda backend, quick, strict, simulated: ran.append(simulated) or 0)
    status, out, _ = run_cli(capsys, "bench", "--quick", "--backend", "sim")
    assert status == 0 and ran == [True]
    assert "SIMULATOR" in out.splitlines()[0]  # on stdout: `bench > file` keeps it


@pytest.mark.parametrize("args", [["--json", "bench"], ["bench", "--json"]])
def test_bench_refuses_json_saying_it_prints_text(
        capsys: pytest.CaptureFixture[str], args: List[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--quick", "--backend", "sim"])
    assert exit_.value.code == 2
    assert "bench prints text only" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["sim", "udmabuf"])
def test_check_dtb_refuses_a_backend_it_would_not_use(
        capsys: pytest.CaptureFixture[str], backend: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--backend", backend, "check-dtb", "board.dtb"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "check-dtb reads DTB files only" in err and f"drop --backend {backend}" in err, err


@pytest.mark.parametrize("option", ["--page-size", "--cma-alignment"])
@pytest.mark.parametrize("value", ["3000", "0", "2048", "-4096"])
def test_check_dtb_alignments_must_be_powers_of_two(
        capsys: pytest.CaptureFixture[str], option: str, value: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check-dtb", option, value, "board.dtb"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{value!r} is not a power of two" in err, err


def test_a_bad_backend_in_the_environment_is_named_as_such(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNQ_ALLOC_BACKEND", "bogus")
    status, _, err = run_cli(capsys, "info")
    assert status == 2 and "PYNQ_ALLOC_BACKEND='bogus'" in err and "udmabuf, sim" in err, err


def test_bench_headline_names_the_simulated_files_not_the_driver(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The line under the SIMULATOR banner says what it runs on, in binary units."""
    import pynq_alloc.bench

    monkeypatch.setattr(pynq_alloc.bench, "run_all", lambda *a, **k: [])
    status, out, _ = run_cli(capsys, "bench", "--quick", "--backend", "sim")
    assert status == 0
    (headline,) = [line for line in out.splitlines()
                   if line.startswith("pynq-alloc bench --quick on")]
    assert "simulated u-dma-buf files, backend sim" in headline, headline
    assert "udmabuf backend" not in headline and "MiB" in headline, headline


def test_info_on_the_driver_does_not_claim_the_simulator(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with Board(tmp_path) as roots:
        _, out, _ = run_cli(capsys, "info", roots=roots)
        _, report = json_of(capsys, "info", "--json", roots=roots)
    assert "SIMULATOR" not in out and "u-dma-buf driver" in out.splitlines()[0]
    assert report["backend"] == "udmabuf" and report["simulated"] is False


def test_check_dtb_without_a_booted_tree_asks_for_a_file_not_sudo(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A PC or an ACPI board has no /sys/firmware/fdt: sudo would not help."""
    monkeypatch.setattr(cli, "DEFAULT_DTB", str(tmp_path / "fdt"))
    status, _, err = run_cli(capsys, "check-dtb")
    assert status == 2
    assert "did not boot with a device tree" in err and "check-dtb board.dtb" in err, err
    assert "sudo" not in err, err


@pytest.mark.parametrize("euid, sudo", [(1000, True), (0, False)])
def test_check_dtb_suggests_sudo_only_to_a_user_who_is_not_root(
        monkeypatch: pytest.MonkeyPatch, euid: int, sudo: bool) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    hint = cli._unreadable_dtb_hint(cli.DEFAULT_DTB, errno.EACCES)
    assert ("sudo pynq-alloc check-dtb" in hint) is sudo, hint
    assert sudo or "check-dtb board.dtb" in hint, hint


def test_info_without_a_driver_offers_the_simulator(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, out, _ = run_cli(capsys, "info", roots=fake_roots(tmp_path))
    assert "PYNQ_ALLOC_BACKEND=sim" in out.splitlines()[-1], out
    _, sim_out, _ = run_cli(capsys, "--backend", "sim", "info")
    assert "PYNQ_ALLOC_BACKEND=sim (or" not in sim_out


# --- options, help, pipes ----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--backend", "sim", "--json", "info"],
    ["info", "--backend", "sim", "--json"],
    ["--json", "info", "--backend", "sim"],
    ["--backend", "udmabuf", "info", "--backend", "sim", "--json"],
])
def test_options_are_accepted_before_and_after_the_command(
        capsys: pytest.CaptureFixture[str], args: List[str]) -> None:
    status, report = json_of(capsys, *args)
    assert status == 0 and report["backend"] == "sim"


def test_an_option_after_the_command_overrides_the_environment(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("PYNQ_ALLOC_BACKEND", "sim")
    _, report = json_of(capsys, "info", "--json", "--backend", "udmabuf",
                        roots=fake_roots(tmp_path))
    assert report["backend"] == "udmabuf" and report["simulated"] is False


@pytest.mark.parametrize("command", [[], ["info"], ["selftest"], ["bench"], ["check-dtb"]])
def test_help_is_plain_text(capsys: pytest.CaptureFixture[str], command: List[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pynq-alloc")
    for markup in ("``", ":mod:", ":func:", ":class:", ".. "):
        assert markup not in out, f"reStructuredText {markup!r} in:\n{out}"
    assert max(len(line) for line in out.splitlines()) <= 90


def module_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "pynq_alloc", *args]


@pytest.mark.parametrize("args", [
    ["info", "--backend", "sim", "--json"],
    ["info", "--backend", "sim"],
    ["selftest", "--backend", "sim", "--json"],
    ["--help"],
])
def test_a_closed_pipe_ends_the_command_quietly(args: List[str]) -> None:
    """The reader is gone before the first write: EPIPE on every write, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(module_command(*args), stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert result.stderr == "", result.stderr
    # 128 + SIGPIPE, as a shell reports a process the signal ended (argparse's --help
    # drops the write error itself and exits 0)
    assert result.returncode == (0 if args == ["--help"] else 141)


def test_json_into_head_prints_its_first_line_and_nothing_on_stderr() -> None:
    command = " ".join(module_command("info", "--backend", "sim", "--json"))
    result = subprocess.run(["sh", "-c", f"{command} | head -n 1"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.stdout == "{\n" and result.stderr == ""


# --- sizes and addresses ---------------------------------------------------------------

@pytest.mark.parametrize("size,text", [
    (0, "0 B"), (1023, "1023 B"), (4096, "4 KiB"), (64 << 20, "64 MiB"),
    (3 << 19, "1.5 MiB"), (3 << 30, "3 GiB"), ((1 << 20) + 1, "1.0 MiB"),
])
def test_sizes_are_printed_in_binary_units(size: int, text: str) -> None:
    assert cli.human_size(size) == text


def test_text_shows_mib_and_hex_and_json_keeps_exact_numbers(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with Board(tmp_path) as roots:
        status, out, _ = run_cli(capsys, "info", roots=roots)
        _, report = json_of(capsys, "info", "--json", roots=roots)
    assert status == 0, out
    assert "udmabuf0: 16 MiB at 0x7e000000-0x7effffff" in out
    assert "free 16 MiB (largest block 16 MiB), 0 buffer(s)" in out
    (region,) = report["regions"]
    assert region["phys_addr"] == 0x7E000000 and region["size"] == 16 << 20
    assert region["free"] == 16 << 20 and region["used"] == 0


def test_json_regions_agree_with_the_library_on_the_simulator(
        capsys: pytest.CaptureFixture[str]) -> None:
    _, report = json_of(capsys, "info", "--json", "--backend", "sim")
    expected = {r.name: r for r in pynq_alloc.regions(backend="sim")}
    assert [r["name"] for r in report["regions"]] == list(expected)
    for r in report["regions"]:
        assert (r["phys_addr"], r["size"], r["coherent"]) == (
            expected[r["name"]].phys_addr, expected[r["name"]].size,
            expected[r["name"]].coherent)


# --- the diagnosis, on fake kernel trees --------------------------------------------------

def fake_roots(tmp_path: Path, sim: Optional[Simulator] = None) -> Roots:
    """Empty /proc, /sys/module, /lib/modules and device-tree roots under tmp_path; the
    driver's sysfs/dev/run paths from ``sim`` (its files are the driver's layout)."""
    for sub in ("proc", "sys/module", "lib/modules", "sys/class"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc" / "modules").write_text("ext4 1 2 - Live 0x0\n")
    if sim is None:
        return Roots(proc=str(tmp_path / "proc"), device_tree=(str(tmp_path / "dt"),),
                     sys_module=str(tmp_path / "sys/module"),
                     lib_modules=str(tmp_path / "lib/modules"), kernel_release=RELEASE,
                     sysfs_class=str(tmp_path / "sys/class/u-dma-buf"),
                     dev=str(tmp_path / "dev"), run_dir=str(tmp_path / "run/pynq-alloc"))
    return Roots(proc=str(tmp_path / "proc"), device_tree=(str(tmp_path / "dt"),),
                 sys_module=str(tmp_path / "sys/module"),
                 lib_modules=str(tmp_path / "lib/modules"), kernel_release=RELEASE,
                 sysfs_class=sim.sysfs_root, dev=sim.dev_root, run_dir=sim.run_dir)


def load_module(roots: Roots) -> None:
    with open(os.path.join(roots.proc, "modules"), "a") as f:
        f.write("u_dma_buf 40960 0 - Live 0xffff800008c10000 (O)\n")


def install_module(roots: Roots) -> None:
    directory = Path(roots.lib_modules) / RELEASE
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko\nupdates/u-dma-buf.ko:\n")


def dt_node(roots: Roots, path: str, **props: bytes) -> None:
    """A node of the /proc/device-tree form: a directory, one file per property."""
    directory = Path(roots.device_tree[0]) / path.strip("/")
    directory.mkdir(parents=True, exist_ok=True)
    name = path.rsplit("/", 1)[-1].partition("@")[0]
    (directory / "name").write_bytes(name.encode() + b"\0")
    for name, value in props.items():
        (directory / name.replace("_", "-")).write_bytes(value)


def udmabuf_node(roots: Roots, status: bytes = b"okay\0") -> None:
    dt_node(roots, "/", compatible=b"linux,dummy-virt\0")
    dt_node(roots, "/reserved-memory/dma-pool@7e000000", compatible=b"shared-dma-pool\0",
            reusable=b"", reg=bytes.fromhex("000000007e0000000000000001000000"))
    dt_node(roots, "/dma-buffer-0", compatible=b"ikwzm,u-dma-buf\0", device_name=b"udmabuf0\0",
            size=(16 << 20).to_bytes(4, "big"), memory_region=b"\0\0\0\1", status=status)


class Board:
    """A fake board whose driver works: module loaded, the node in the device tree,
    the driver's sysfs files, and /dev/udmabuf0 a character device (a link to
    /dev/null: a char device anyone may open, enough for info, which maps nothing)."""

    def __init__(self, tmp_path: Path) -> None:
        self.sim = Simulator([REGION], root=str(tmp_path / "drv"))
        self.roots = fake_roots(tmp_path, self.sim)
        load_module(self.roots)
        udmabuf_node(self.roots)
        device = self.sim.device_path(REGION.name)
        os.unlink(device)
        os.symlink(os.devnull, device)

    def __enter__(self) -> Roots:
        return self.roots

    def __exit__(self, *exc: object) -> None:
        self.sim.close()


def test_a_working_board_passes_every_check(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    with Board(tmp_path) as roots:
        status, report = json_of(capsys, "info", "--json", roots=roots)
    assert status == 0 and report["ok"] is True, report["checks"]
    checks = checks_by_name(report)
    assert "u_dma_buf is loaded" in checks["kernel module"]["detail"]
    assert "/dma-buffer-0 -> udmabuf0" in checks["device tree"]["detail"]
    assert all(c["ok"] and not c["fix"] for c in report["checks"])


def test_nothing_at_all_names_each_missing_step_and_its_fix(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    roots = fake_roots(tmp_path)
    status, out, err = run_cli(capsys, "info", roots=roots)
    assert status == 1 and err == ""
    assert "no usable region" in out
    _, report = json_of(capsys, "info", "--json", roots=roots)
    assert report["ok"] is False and report["regions"] == []
    checks = checks_by_name(report)
    module = checks["kernel module"]
    assert not module["ok"] and RELEASE in module["detail"]
    assert "meta-pynq-alloc" in module["fix"] and "insmod" in module["fix"]
    assert "u-dma-buf-dkms" in module["fix"] and "pynq-alloc-board" in module["fix"]
    tree = checks["device tree"]
    assert not tree["ok"] and "no device tree" in tree["detail"]
    assert "udmabuf0=" in tree["fix"]
    assert not checks["regions"]["ok"]
    for line in [line for line in out.splitlines() if line.lstrip().startswith("PROBLEM")]:
        following = out.splitlines()[out.splitlines().index(line) + 1]
        assert following.strip().startswith("fix: "), out


def _no_node_board(roots: Roots) -> None:
    dt_node(roots, "/", compatible=b"xlnx,zynqmp-zcu102\0xlnx,zynqmp\0")


def _disabled_node(roots: Roots) -> None:
    udmabuf_node(roots, status=b"disabled\0")


# (what the fake system has, the check that fails, words its detail and its fix must
# have); every other check named in `also_ok` must pass.
HALF_SET_UP: Dict[str, tuple[List[Callable[[Roots], None]], str, List[str], List[str],
                              List[str]]] = {
    "installed-not-loaded": ([install_module, udmabuf_node], "kernel module",
                             ["not loaded"], ["sudo modprobe u-dma-buf"], ["device tree"]),
    "loaded-no-node": ([load_module, _no_node_board], "device tree",
                       ['compatible = "ikwzm,u-dma-buf"'], ["check-dtb", "udmabuf0="],
                       ["kernel module"]),
    "probe-failed": ([load_module, udmabuf_node], "device tree",
                     ["probe failed", "/dma-buffer-0 -> udmabuf0"], ["dmesg"],
                     ["kernel module"]),
    "node-disabled": ([load_module, _disabled_node],
                      "device tree", ["disabled"], [], ["kernel module"]),
}


@pytest.mark.parametrize("case", HALF_SET_UP)
def test_a_half_set_up_system_names_the_missing_step(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    """An installed module that is not loaded says modprobe; a node that waits for the
    module is no problem; a module without a node points at the device tree; a node and
    a module but no region mean the probe failed; a disabled node is named."""
    setup, failing, detail_words, fix_words, also_ok = HALF_SET_UP[case]
    roots = fake_roots(tmp_path)
    for step in setup:
        step(roots)
    status, report = json_of(capsys, "info", "--json", roots=roots)
    checks = checks_by_name(report)
    assert status == 1 and not checks[failing]["ok"], checks
    for word in detail_words:
        assert word in checks[failing]["detail"], checks[failing]
    for word in fix_words:
        assert word in checks[failing]["fix"], checks[failing]
    for name in also_ok:
        assert checks[name]["ok"], checks[name]


def test_regions_from_module_parameters_need_no_device_tree(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with Board(tmp_path) as roots:
        shutil.rmtree(roots.device_tree[0])
        status, report = json_of(capsys, "info", "--json", roots=roots)
    assert status == 0, report["checks"]
    assert "module parameter" in checks_by_name(report)["device tree"]["detail"]


def test_a_missing_device_file_says_how_to_make_it(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with Board(tmp_path) as roots:
        os.unlink(os.path.join(roots.dev, "udmabuf0"))
        status, report = json_of(capsys, "info", "--json", roots=roots)
    device = checks_by_name(report)[f"device {roots.dev}/udmabuf0"]
    assert status == 1 and not device["ok"]
    assert "udevadm trigger" in device["fix"] and "mknod" in device["fix"]
    assert "c 238 0" in device["fix"]  # the driver's dev attribute


def test_a_plain_file_in_place_of_the_device_is_refused(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with Board(tmp_path) as roots:
        path = os.path.join(roots.dev, "udmabuf0")
        os.unlink(path)
        Path(path).write_bytes(b"")
        _, report = json_of(capsys, "info", "--json", roots=roots)
    device = checks_by_name(report)[f"device {path}"]
    assert not device["ok"] and "not a character device" in device["detail"]


def test_the_simulator_skips_the_kernel_checks(capsys: pytest.CaptureFixture[str]) -> None:
    _, report = json_of(capsys, "info", "--json", "--backend", "sim")
    names = set(checks_by_name(report))
    assert "kernel module" not in names and "device tree" not in names
    assert "regions" in names and any(n.startswith("ledger directory") for n in names)


def test_selftest_without_a_driver_points_at_info(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run_cli(capsys, "selftest", roots=fake_roots(tmp_path))
    assert status == 2 and "`pynq-alloc info` diagnoses" in err


# --- who may open what: checked as an unprivileged user ---------------------------------

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"

AS_USER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("diagnose", sys.argv[1])
diagnose = sys.modules["diagnose"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diagnose)
roots = diagnose.Roots(**json.loads(sys.argv[2]))
print(json.dumps([c.as_dict() for c in diagnose.diagnose(roots).checks]))
"""


def diagnose_as_nobody(roots: Roots, workdir: Path) -> Dict[str, Dict[str, Any]]:
    """The checks as user nobody. The test venv's interpreter may sit where nobody cannot
    reach it (/root), so Debian's python3 runs the package's diagnose.py, copied
    into the world-readable work dir: the module needs nothing but the standard library."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the checks as another user")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (Debian's python3) is needed to run as nobody")
    module = workdir / "diagnose.py"
    shutil.copy(cli.__file__.replace("cli.py", "diagnose.py"), module)
    os.chmod(module, 0o644)
    fields = {**vars(roots), "device_tree": list(roots.device_tree)}
    result = subprocess.run([SYSTEM_PYTHON, "-c", AS_USER, str(module), json.dumps(fields)],
                            user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True,
                            text=True, timeout=60, check=False, cwd="/")
    assert result.returncode == 0, result.stderr
    return {c["check"]: c for c in json.loads(result.stdout)}


def char_device(path: str, mode: int) -> None:
    """Replace the simulator's file with a character device (/dev/null's numbers: os.access
    judges only the mode bits; nothing opens it here)."""
    os.unlink(path)
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(1, 3))
    os.chmod(path, mode)


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A work dir every user may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pynq-alloc-cli-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_device_only_root_may_open_needs_a_udev_rule(world_readable: Path) -> None:
    sim = Simulator([REGION], root=str(world_readable / "drv"))
    try:
        roots = fake_roots(world_readable, sim)
        char_device(sim.device_path("udmabuf0"), 0o600)
        device = diagnose_as_nobody(roots, world_readable)[f"device {roots.dev}/udmabuf0"]
    finally:
        sim.close()
    assert not device["ok"] and "may not open it" in device["detail"]
    assert "udev rule" in device["fix"] and 'GROUP="dma"' in device["fix"]


def test_a_device_of_another_group_says_usermod(world_readable: Path) -> None:
    sim = Simulator([REGION], root=str(world_readable / "drv"))
    try:
        roots = fake_roots(world_readable, sim)
        char_device(sim.device_path("udmabuf0"), 0o660)
        os.chown(sim.device_path("udmabuf0"), 0, 6)  # group 6: 'disk' on Debian
        group = grp.getgrgid(6).gr_name
        device = diagnose_as_nobody(roots, world_readable)[f"device {roots.dev}/udmabuf0"]
    finally:
        sim.close()
    assert not device["ok"]
    assert f"sudo usermod -aG {group} nobody" in device["fix"]


def test_a_ledger_directory_the_user_may_not_write_is_named(world_readable: Path) -> None:
    sim = Simulator([REGION], root=str(world_readable / "drv"))
    try:
        roots = fake_roots(world_readable, sim)
        os.makedirs(roots.run_dir, mode=0o755, exist_ok=True)
        os.chmod(roots.run_dir, 0o755)
        ledger = diagnose_as_nobody(roots, world_readable)[f"ledger directory {roots.run_dir}"]
    finally:
        sim.close()
    assert not ledger["ok"] and "may not write it" in ledger["detail"]
    assert "install -d -m 2770 -g dma" in ledger["fix"]


def test_diagnose_takes_every_root_as_a_parameter(tmp_path: Path) -> None:
    """Nothing of the real system leaks into a diagnosis of a fake tree."""
    roots = fake_roots(tmp_path)
    found = diagnose(roots)
    text = json.dumps([c.as_dict() for c in found.checks])
    for real in ("/proc/modules", "/sys/class/u-dma-buf", "/run/pynq-alloc", "/lib/modules/"):
        assert f'"{real}' not in text and f" {real}" not in text, text
