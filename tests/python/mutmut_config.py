"""mutmut's hook for `make mutate`: which mutants of the package are tried, and in which
order the host tests run on each. MUTATE_SHARD=k/n tries only the mutants on the lines
whose 0-based index is k modulo n (0/2: lines 1, 3, 5, ... of each file; 1/2: lines 2,
4, 6, ...), so that n runs in n checkouts share the work (`make mutate MUTATE_SHARD=0/2`).

Only the code that decides addresses, sync ranges and commands, pool placement and ledger
ownership is mutated (SCOPE below). Error-message text (raise statements, warnings), the
invariant checkers the tests call (Pool.check, Ledger.check) and everything else is
skipped: a mutant there says nothing about those decisions. Each mutant runs the host
test files that exercise its module (TESTS below).
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Any, Dict, List, Set, Tuple

SRC = "python-pynq-alloc/src/pynq_alloc/"

#: file -> (names of module-level assignments, qualified function names); "*" = all
SCOPE: Dict[str, Any] = {
    SRC + "buffer.py": ((), ("Block.__init__", "Block.__del__", "Buffer.__array_finalize__",
                              "Buffer._data_address", "Buffer._byte_span",
                              "Buffer.device_address", "Buffer.physical_address",
                              "Buffer._sync", "Buffer.flush", "Buffer.invalidate",
                              "Buffer.sync_to_device", "Buffer.sync_from_device")),
    SRC + "backends/udmabuf.py": (("U_DMA_BUF_IOCTL_SET_SYNC_FOR_CPU",
                                   "U_DMA_BUF_IOCTL_SET_SYNC_FOR_DEVICE", "TO_DEVICE",
                                   "FROM_DEVICE", "_MAX_SYNC_CHUNK", "_MAX_SYNC_OFFSET"),
                                  ("encode_sync", "sync_commands", "RegionHandle.__init__",
                                   "RegionHandle.sync", "RegionHandle._sync_ioctl",
                                   "RegionHandle._sync_sysfs")),
    SRC + "pool.py": ("*", "*"),
    SRC + "ledger.py": ("*", "*"),
    SRC + "allocate.py": ((), ("_check_align",)),
}
NOT_MUTATED = {"Pool.check", "Ledger.check", "Pool.out_of_memory", "Ledger._recover"}

#: the tests each module's mutants run (pytest -x: the first failure kills the mutant).
#: The stateful test and the eight-process soak are left out: too slow to run hundreds
#: of times, so a mutant only they would kill counts as a survivor here.
TESTS = {
    "buffer.py": ["test_sync.py", "test_ioctl.py", "test_views.py", "test_lifetime.py",
                  "test_allocate.py", "test_share.py", "test_dmabuf.py", "test_pynq_compat.py",
                  "test_bad_inputs.py"],
    "udmabuf.py": ["test_ioctl.py", "test_sync.py", "test_backend.py", "test_bad_inputs.py",
                   "test_allocate.py"],
    "pool.py": ["test_pool.py", "test_allocate.py", "test_ledger.py", "test_dmabuf.py",
                "test_bad_inputs.py"],
    "ledger.py": ["test_allocate.py", "test_ledger.py", "test_share.py", "test_dmabuf.py",
                  "test_lifetime.py", "test_backend.py", "test_bad_inputs.py"],
    "allocate.py": ["test_allocate.py", "test_bad_inputs.py"],
}

_lines: Dict[str, Set[int]] = {}


def test_files(path: str) -> List[str]:
    """The host test files that the mutants of the file ``path`` run, in order."""
    return [f"tests/python/{name}" for name in TESTS[os.path.basename(path)]]


def _span(node: Any) -> Set[int]:
    return set(range(node.lineno, (node.end_lineno or node.lineno) + 1))


def _is_message(node: ast.AST) -> bool:
    """A raise statement or a warnings.warn() call: error-message text."""
    return isinstance(node, ast.Raise) or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "warn")


def _mutable_lines(path: str) -> Set[int]:
    """1-based line numbers of ``path`` inside SCOPE, less messages and checkers."""
    names, functions = SCOPE[path]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    keep: Set[int] = set()
    drop: Set[int] = set()
    defs = [(node.name, node) for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for name, node in list(defs):
        if isinstance(node, ast.ClassDef):
            defs += [(f"{name}.{inner.name}", inner) for inner in node.body
                     if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for qualified, node in defs:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if qualified in NOT_MUTATED:
                drop |= _span(node)
            elif functions == "*" or qualified in functions:
                keep |= _span(node)
    for statement in tree.body:
        if isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = (statement.targets if isinstance(statement, ast.Assign)
                       else [statement.target])
            if names == "*" or any(isinstance(t, ast.Name) and t.id in names for t in targets):
                keep |= _span(statement)
    for any_node in ast.walk(tree):
        if _is_message(any_node):
            drop |= _span(any_node)
    return keep - drop


def pre_mutation(context: Any) -> None:
    path = os.path.relpath(context.filename)
    if path not in SCOPE:
        context.skip = True
        return
    shard = os.environ.get("MUTATE_SHARD")  # "k/n": only lines whose 0-based index % n == k
    if shard:
        k, n = map(int, shard.split("/"))
        if context.current_line_index % n != k:
            context.skip = True
            return
    if path not in _lines:
        _lines[path] = _mutable_lines(path)
    if context.current_line_index + 1 not in _lines[path]:
        context.skip = True
        return
    tests = " ".join(test_files(path))
    # the runner's own test list (`make mutate` gives a short one: mutmut times it once
    # and gives each mutant ten times as long before it counts as a timeout)
    prefix = context.config._default_test_command.split(" tests/python/test_", 1)[0]
    context.config.test_command = f"{prefix} {tests}"


def run(command: List[str]) -> int:
    """The runner `make mutate` gives mutmut: ``command`` (pytest) in a child, exit
    status 0 when it passed and 1 otherwise. mutmut 2 counts only status 1 as a failed
    suite, so a mutant that crashes the interpreter (a NULL address handed to
    ctypes.memset: SIGSEGV) or breaks collection (status 2) would count as a survivor
    although CI would go red. The child dies with this process (PR_SET_PDEATHSIG), so
    mutmut's timeout, which kills this process, stops the tests too."""
    import ctypes
    import signal
    import subprocess

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def die_with_this_process() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    # this process runs no other thread: preexec_fn is safe here
    child = subprocess.Popen(command, preexec_fn=die_with_this_process)  # noqa: PLW1509
    return 0 if child.wait() == 0 else 1


def module_tests(paths: str) -> List[str]:
    """The test files the mutants of ``paths`` (MUTATE_PATHS: comma-separated files)
    run, in order, each once; a file outside SCOPE is refused, since none of its
    mutants would be tried and the run would report 0 of 0."""
    chosen = paths.split(",")
    if not paths or any(p != p.strip() or not p for p in chosen):
        raise SystemExit(
            f"make mutate: MUTATE_PATHS={paths!r} has an empty entry or spaces (mutmut "
            f"takes the list as it is): write the files separated by commas only, e.g. "
            f"MUTATE_PATHS={SRC}pool.py,{SRC}ledger.py")
    outside = [p for p in chosen if os.path.relpath(p) not in SCOPE]
    if outside:
        raise SystemExit(
            f"make mutate: MUTATE_PATHS={paths!r} names {', '.join(outside)}, which "
            f"mutmut_config.py's SCOPE "
            f"does not cover: give a comma-separated list of "
            f"{', '.join(sorted(SCOPE))} (or add the file to SCOPE and TESTS)")
    tests: List[str] = []
    for path in chosen:
        tests += [t for t in test_files(path) if t not in tests]
    return tests


def baseline(paths: str, command: List[str]) -> int:
    """Run every test file the mutants of ``paths`` will run, once, on the unmutated
    package: a red test would kill every mutant of its module and score 100%, so the
    run stops here instead (status 1), naming the command to rerun."""
    import subprocess

    tests = module_tests(paths)
    # and the file(s) mutmut itself times first (MUTATE_BASELINE), which a red run
    # would stop with mutmut's own traceback
    tests += [t for t in os.environ.get("MUTATE_BASELINE", "").split() if t not in tests]
    full = command + tests
    print(f"make mutate: baseline, the unmutated package against {len(tests)} test files",
          flush=True)
    if subprocess.run(full, check=False).returncode != 0:
        print("make mutate: the baseline fails on the unmutated package, so every mutant "
              "would count as killed. Fix the failing test first (rerun: "
              f"{' '.join(full)})", file=sys.stderr)
        return 1
    return 0


def score(*caches: str) -> Tuple[str, int]:
    """The score of finished runs, from mutmut's caches (SQLite files; with shards, one
    per checkout: each mutant counts once, with the status of the run that tried it),
    overall and per module, and how many mutants were tried."""
    import sqlite3

    # (file, line number, line, index on the line) -> (status, mutmut's id of the
    # mutant, the checkout whose cache holds it)
    status: Dict[Tuple[str, int, str, int], Tuple[str, int, str]] = {}
    for cache in caches:
        with sqlite3.connect(cache) as db:
            for name, number, text, index, state, ident in db.execute(
                    "SELECT SourceFile.filename, Line.line_number + 1, Line.line, "
                    "Mutant.\"index\", Mutant.status, Mutant.id FROM Mutant "
                    "JOIN Line ON Mutant.line = Line.id "
                    "JOIN SourceFile ON Line.sourcefile = SourceFile.id"):
                key = (os.path.relpath(name), number, text, index)
                if status.get(key, ("untested",))[0] in ("untested", "skipped"):
                    status[key] = (state, ident, os.path.dirname(os.path.abspath(cache)))
    per_file: Dict[str, Dict[str, int]] = {}
    for (name, _, _, _), (state, _, _) in status.items():
        for counts in (per_file.setdefault("", {}), per_file.setdefault(name, {})):
            counts[state] = counts.get(state, 0) + 1

    def summary(counts: Dict[str, int]) -> Tuple[int, str]:
        # a timeout is a mutant that loops or deadlocks: CI would hang and fail, so it
        # is killed
        timeouts = counts.get("bad_timeout", 0)
        killed = counts.get("ok_killed", 0) + counts.get("ok_suspicious", 0) + timeouts
        tried = killed + counts.get("bad_survived", 0)
        return tried, (
            f"{killed} of {tried} mutants killed ({100 * killed / max(tried, 1):.1f}%; "
            f"{timeouts} of them by a timeout); {counts.get('skipped', 0)} out of scope, "
            f"{counts.get('untested', 0)} not tried")

    tried, overall = summary(per_file.get("", {}))
    lines = [f"mutation score: {overall}"]
    lines += [f"  {name}: {summary(counts)[1]}"
              for name, counts in sorted(per_file.items()) if name]
    # `mutmut show <id>` in the checkout whose cache tried the mutant prints its diff
    for (name, number, text, _), (state, ident, checkout) in sorted(status.items()):
        if state == "bad_survived":
            where = f" in {checkout}" if len(caches) > 1 else ""
            lines.append(f"  survived: {name}:{number}: {text.strip()}  "
                         f"[mutmut show {ident}{where}]")
    if not tried:
        lines.append("make mutate: no mutant was tried (an empty or interrupted run, or a "
                     "shard with nothing in scope): this is no score")
    return "\n".join(lines), tried


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:  # python mutmut_config.py run <pytest command...>
        sys.exit(run(sys.argv[2:]))
    if sys.argv[1:2] == ["baseline"]:  # ... baseline <MUTATE_PATHS> <pytest command...>
        sys.exit(baseline(sys.argv[2], sys.argv[3:]))
    report, tried = score(*sys.argv[1:])
    print(report)
    sys.exit(0 if tried else 1)
