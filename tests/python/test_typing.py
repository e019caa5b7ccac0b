"""The package's types as a user's `mypy --strict` sees them (the package ships
py.typed): views of a Buffer are Buffers, so typed code may flush a reshaped or
transposed view; copies are plain ndarrays, so flushing one is a type error."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ACCEPTED = textwrap.dedent("""
    import numpy as np
    from pynq_alloc import allocate

    buf = allocate(shape=(16,), dtype="u4")
    address: int = buf[4:8].device_address
    buf.reshape(4, 4).flush()
    buf.reshape(4, 4).T.invalidate()
    buf.reshape(4, 4).transpose().flush()
    buf.reshape(4, 4).swapaxes(0, 1).sync_to_device()
    buf.reshape(1, 16).squeeze().sync_from_device()
    buf.ravel().flush()
    buf.view("u1").flush()
    buf.view(np.uint16)[2:].invalidate()
    with buf.reshape(4, 4) as matrix:
        matrix[0, 0] = 1
""")

# each line here must be reported: a copy or a plain view has no DMA methods
REFUSED = textwrap.dedent("""
    import numpy as np
    from pynq_alloc import allocate

    buf = allocate(shape=(16,), dtype="u4")
    buf.copy().flush()
    buf.astype("f4").device_address
    buf.flatten().invalidate()
    buf.view(np.ndarray).flush()
""")


def test_user_code_type_checks_as_numpy_and_pynq_users_expect(tmp_path: Path) -> None:
    (tmp_path / "accepted.py").write_text(ACCEPTED)
    (tmp_path / "refused.py").write_text(REFUSED)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", "accepted.py", "refused.py"],
        cwd=tmp_path, capture_output=True, text=True, check=False)
    errors = re.findall(r"^(\w+)\.py:(\d+): error: (.*)$", proc.stdout, re.M)
    assert not [e for e in errors if e[0] == "accepted"], proc.stdout
    refused_lines = {int(line) for name, line, _ in errors if name == "refused"}
    expected = {n for n, text in enumerate(REFUSED.splitlines(), 1)
                if text.startswith("buf.") and "allocate" not in text}
    assert refused_lines == expected, proc.stdout
