"""pytest plugin of the QEMU harness: one ptest-style line per test
(`PASS: name`, `FAIL: name`, `SKIP: name (reason)`), as ptest-runner prints them,
then the summary line the host reads."""
from __future__ import annotations

from typing import Any

_counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}


def _emit(word: str, nodeid: str, extra: str = "") -> None:
    _counts[word] += 1
    print(f"\n{word}: {nodeid}{extra}", flush=True)


def _reason(report: Any) -> str:
    if hasattr(report, "wasxfail"):
        return f" (xfail: {report.wasxfail})"
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
    return f" ({reason.removeprefix('Skipped: ')})"


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call":
        if report.passed:
            _emit("PASS", report.nodeid)
        elif report.failed:
            _emit("FAIL", report.nodeid)
        elif report.skipped:
            _emit("SKIP", report.nodeid, _reason(report))
    elif report.when == "setup":
        if report.skipped:
            _emit("SKIP", report.nodeid, _reason(report))
        elif report.failed:
            _emit("FAIL", report.nodeid, " (setup)")
    elif report.when == "teardown" and report.failed:
        _emit("FAIL", report.nodeid, " (teardown)")


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _emit("FAIL", report.nodeid or "collection", " (collection error)")


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    print(f"\nptest summary: {_counts['PASS']} passed, {_counts['FAIL']} failed, "
          f"{_counts['SKIP']} skipped", flush=True)
