"""Facts about the CPU and the kernel that the allocator depends on."""

from __future__ import annotations

import mmap
import os

#: Page size of the running kernel: arm64 kernels may use 4, 16 or 64 KiB pages,
#: so it is read at run time, never assumed. mmap offsets must be multiples of it.
PAGE_SIZE: int = mmap.PAGESIZE

#: Cache maintenance granule. Cortex-A53/A72 (ZynqMP, QEMU virt) have 64-byte
#: lines and Cortex-A9 (Zynq-7000) 32-byte lines: 64 is a multiple of both, so
#: ranges rounded out to 64 bytes cover whole lines on every supported CPU.
CACHE_LINE: int = 64


class _Pid:
    """This process's PID, kept current across fork() without a system call per use."""

    value: int = os.getpid()

    @classmethod
    def _after_fork(cls) -> None:
        cls.value = os.getpid()


os.register_at_fork(after_in_child=_Pid._after_fork)


def current_pid() -> int:
    """os.getpid(), cached (ownership checks run several times per allocation)."""
    return _Pid.value
