"""Facts about the CPU and the kernel that the allocator depends on."""

from __future__ import annotations

import mmap

#: Page size of the running kernel: arm64 kernels may use 4, 16 or 64 KiB pages,
#: so it is read at run time, never assumed. mmap offsets must be multiples of it.
PAGE_SIZE: int = mmap.PAGESIZE

#: Cache maintenance granule. Cortex-A53/A72 (ZynqMP, QEMU virt) have 64-byte
#: lines and Cortex-A9 (Zynq-7000) 32-byte lines: 64 is a multiple of both, so
#: ranges rounded out to 64 bytes cover whole lines on every supported CPU.
CACHE_LINE: int = 64
