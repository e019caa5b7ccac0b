"""pytest's ``--automake`` option in the QEMU guest: one Automake-style line per
test (``PASS: name``, ``FAIL: name``, ``SKIP: name (reason)``), what ptest-runner
and the host count.

The layer's run-ptest runs ``pytest --automake``; on an image that option comes
from OE-core's python3-unittest-automake-output, which is in neither Debian nor
PyPI, so the guest gets this stand-in, installed the same way (a pytest11 entry
point named ``automake``). It implements that plugin's documented interface:
``--automake`` turns the lines on; without it the plugin prints nothing.
"""
from __future__ import annotations

from typing import Any

_counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}


def pytest_addoption(parser: Any) -> None:
    parser.getgroup("automake").addoption(
        "--automake", action="store_true", default=False,
        help="print Automake-style PASS:/FAIL:/SKIP: lines (for ptest-runner)")


class AutomakeLines:
    def _emit(self, word: str, nodeid: str, extra: str = "") -> None:
        _counts[word] += 1
        print(f"\n{word}: {nodeid}{extra}", flush=True)

    @staticmethod
    def _reason(report: Any) -> str:
        if hasattr(report, "wasxfail"):
            return f" (xfail: {report.wasxfail})"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        return f" ({reason.removeprefix('Skipped: ')})"

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call":
            if report.passed:
                self._emit("PASS", report.nodeid)
            elif report.failed:
                self._emit("FAIL", report.nodeid)
            elif report.skipped:
                self._emit("SKIP", report.nodeid, self._reason(report))
        elif report.when == "setup":
            if report.skipped:
                self._emit("SKIP", report.nodeid, self._reason(report))
            elif report.failed:
                self._emit("FAIL", report.nodeid, " (setup)")
        elif report.when == "teardown" and report.failed:
            self._emit("FAIL", report.nodeid, " (teardown)")

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self._emit("FAIL", report.nodeid or "collection", " (collection error)")

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        print(f"\nautomake summary: {_counts['PASS']} passed, {_counts['FAIL']} failed, "
              f"{_counts['SKIP']} skipped", flush=True)


def pytest_configure(config: Any) -> None:
    if config.getoption("automake"):
        config.pluginmanager.register(AutomakeLines(), "automake-lines")
