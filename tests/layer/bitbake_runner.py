"""Running tests/layer/run-bitbake on upstream checkouts, for test_bitbake.py and
test_bitbake_boards.py: the checks before it (checkouts there, not root) and its
environment."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_bitbake(checkout: Path, repos: Sequence[str], lock: str, builddir: Path,
                machine: str, extra_conf: str, layers: Sequence[str],
                command: Sequence[str]) -> subprocess.CompletedProcess:
    """``command`` in ``builddir`` with OE-Core and bitbake of ``checkout`` (which must
    hold ``repos``, checked out from kas/``lock`` by `make test-layer-bitbake`), the
    ``layers`` added, and ``extra_conf`` appended to local.conf."""
    for repo in repos:
        if not (checkout / repo / ".git").is_dir():
            pytest.fail(f"no {checkout / repo}: run `make test-layer-bitbake` (it checks out "
                        f"the commits of kas/{lock} there)")
    if os.geteuid() == 0 and not os.environ.get("BITBAKE_USER"):
        pytest.fail("bitbake refuses to run as root: set BITBAKE_USER to a normal user "
                    "(make test-layer-bitbake does)")
    env = dict(os.environ, OE_CORE_DIR=str(checkout / "openembedded-core"),
               BITBAKE_DIR=str(checkout / "bitbake"), BB_EXTRA_CONF=extra_conf)
    env.pop("POKY_DIR", None)
    return subprocess.run([str(HERE / "run-bitbake"), str(builddir), machine, *layers, "--",
                           *command], capture_output=True, text=True, env=env, timeout=3600)
