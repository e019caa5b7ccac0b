"""Byte counts as people read them (exact numbers stay in messages and JSON beside them)."""

from __future__ import annotations


def human_size(n: int) -> str:
    """Bytes in the largest binary unit that keeps a number >= 1: 16 MiB, 4 KiB, 1.5 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if n % (1 << shift) == 0 else f"{value:.1f} {unit}"
    return f"{n} B"
