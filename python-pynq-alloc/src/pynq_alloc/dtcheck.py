"""Rules that a DTB's DMA pools and u-dma-buf nodes must hold to boot and probe.

`check(dtb)` reads a flattened device tree (with :mod:`pynq_alloc.fdt`, no C
binding needed) and returns every broken rule as a `Problem` naming the node and
the fix; `pynq-alloc check-dtb board.dtb` prints them. Kernel facts behind the
rules:

- /reserved-memory needs #address-cells/#size-cells equal to the root's and an
  empty `ranges` (of_reserved_mem reads child reg with the root's cells).
- A static region outside RAM or overlapping another is dropped or breaks
  early boot; regions are reserved in whole pages.
- A CMA (`reusable`) region must start and end on CMA_MIN_ALIGNMENT_BYTES:
  PAGE_SIZE << max(MAX_ORDER - 1, pageblock_order) = 4 MiB on arm64 and arm
  with 4 KiB pages (Debian's arm64 kernel: ARM64_4K_PAGES, MAX_ORDER 11).
- u-dma-buf takes its buffer from the first memory-region entry with
  dma_alloc_coherent(): from a no-map pool in power-of-two blocks
  (bitmap_find_free_region with get_order(size)), from a CMA pool in pages.
- u-dma-buf probe fails on a repeated minor number or device name.
"""

from __future__ import annotations

import dataclasses

from .fdt import Fdt

PAGE_SIZE = 4096
CMA_ALIGNMENT = 4 << 20
U_DMA_BUF = "ikwzm,u-dma-buf"
MAX_MINOR = 255

# Rule ids, as they appear in Problem.rule.
RULES = (
    "root-cells",  # root has #address-cells and #size-cells
    "memory",  # the tree describes some RAM
    "memory-reg",  # /memory reg is whole <address size> pairs
    "reserved-memory-cells",  # /reserved-memory cells present and equal to the root's
    "reserved-memory-ranges",  # /reserved-memory has an empty ranges
    "reg-format",  # a region has one reg entry (or a dynamic size)
    "unit-address",  # a static region's unit address is its reg base
    "no-map-xor-reusable",  # a pool is a carve-out or CMA, not both
    "inside-ram",  # a region lies inside one RAM range
    "overlap",  # static regions are disjoint
    "alignment",  # regions are whole pages
    "cma-alignment",  # CMA regions are pageblock (4 MiB) aligned
    "udmabuf-size",  # a u-dma-buf size is 1 or 2 cells, non-zero
    "udmabuf-properties",  # sync-mode, sync-direction, dma-mask in the driver's ranges
    "unique-device",  # u-dma-buf names and minors are unique, minors <= 255
    "memory-region",  # memory-region is one phandle to a shared-dma-pool region
    "fits-region",  # the buffers on a region fit in it as the kernel allocates them
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One broken rule: the node it is about, a rule id, and what to fix."""

    node: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node}: {self.message} [{self.rule}]"


@dataclasses.dataclass(frozen=True)
class Region:
    """A child of /reserved-memory: static (base set) or dynamic (base None)."""

    path: str
    base: int | None
    size: int
    no_map: bool
    reusable: bool


def join_cells(cells: list[int]) -> int:
    value = 0
    for cell in cells:
        value = (value << 32) | cell
    return value


def split_entries(cells: list[int], address_cells: int, size_cells: int) -> list[tuple[int, int]]:
    """<address size> pairs of a reg-like property."""
    step = address_cells + size_cells
    return [
        (join_cells(cells[i : i + address_cells]), join_cells(cells[i + address_cells : i + step]))
        for i in range(0, len(cells) - len(cells) % step, step)
    ]


def get_order_bytes(size: int, page_size: int = PAGE_SIZE) -> int:
    """Bytes a power-of-two page allocation of `size` takes (kernel get_order)."""
    pages = max(1, -(-size // page_size))
    return page_size << (pages - 1).bit_length()


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) ranges sorted and joined where they touch."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def hexsize(value: int) -> str:
    if value and value % (1 << 20) == 0:
        return f"{value >> 20} MiB"
    return f"{value:#x} bytes"


def check(
    dtb: bytes,
    *,
    page_size: int = PAGE_SIZE,
    cma_alignment: int = CMA_ALIGNMENT,
    source: str = "the DTB",
) -> list[Problem]:
    """Every rule the tree breaks, in a stable order (empty list: all hold).

    Raises InvalidArgumentError (naming ``source``) when ``dtb`` is no valid DTB."""
    return inspect(dtb, page_size=page_size, cma_alignment=cma_alignment, source=source)[0]


def inspect(
    dtb: bytes,
    *,
    page_size: int = PAGE_SIZE,
    cma_alignment: int = CMA_ALIGNMENT,
    source: str = "the DTB",
) -> tuple[list[Problem], list[str]]:
    """What check() finds, and the paths of the nodes the driver probes (compatible
    "ikwzm,u-dma-buf"), from the same one pass."""
    checker = _Checker(Fdt(dtb, source), page_size, cma_alignment)
    checker.run()
    return checker.problems, checker.u_dma_buf_nodes


class _Checker:
    """One pass over one tree; collects Problems."""

    def __init__(self, tree: Fdt, page_size: int, cma_alignment: int) -> None:
        self.tree = tree
        self.page_size = page_size
        self.cma_alignment = cma_alignment
        self.problems: list[Problem] = []
        self.u_dma_buf_nodes: list[str] = []  # filled by check_u_dma_buf
        self.address_cells = 2
        self.size_cells = 1
        self.ram: list[tuple[int, int]] = []
        self.regions: dict[int, Region] = {}
        self.malformed: set[int] = set()  # regions already reported as unreadable

    def fail(self, node: str, rule: str, message: str) -> None:
        self.problems.append(Problem(node, rule, message))

    def run(self) -> None:
        root_ac = self.tree.cells(0, "#address-cells")
        root_sc = self.tree.cells(0, "#size-cells")
        if root_ac is None or root_sc is None:
            self.fail(
                "/",
                "root-cells",
                "root node lacks #address-cells or #size-cells: "
                "add both (2 on arm64, 1 on Zynq-7000)",
            )
        self.address_cells = root_ac[0] if root_ac else 2
        self.size_cells = root_sc[0] if root_sc else 1
        self.check_memory()
        self.check_reserved_memory()
        self.check_u_dma_buf()

    def check_memory(self) -> None:
        """RAM as merged (start, end) ranges from the root's device_type = "memory" nodes."""
        tree, ac, sc = self.tree, self.address_cells, self.size_cells
        ranges: list[tuple[int, int]] = []
        for child in tree.children(0):
            if tree.string_list(child, "device_type") != ["memory"]:
                continue
            path = tree.path(child)
            cells = tree.cells(child, "reg") or []
            if not cells or len(cells) % (ac + sc):
                self.fail(
                    path,
                    "memory-reg",
                    f"reg is not a list of <{ac}-cell address, {sc}-cell size> pairs",
                )
                continue
            ranges += [(base, base + size) for base, size in split_entries(cells, ac, sc)]
        if not ranges:
            self.fail(
                "/",
                "memory",
                'no device_type = "memory" node with a reg: the tree describes no RAM',
            )
        self.ram = merged(ranges)

    def check_reserved_memory(self) -> None:
        """/reserved-memory and its children; fills self.regions by node offset."""
        tree = self.tree
        parent = tree.path_offset("/reserved-memory")
        if parent is None:
            return
        rm_ac = tree.cells(parent, "#address-cells")
        rm_sc = tree.cells(parent, "#size-cells")
        for name, cells, root_value in (
            ("#address-cells", rm_ac, self.address_cells),
            ("#size-cells", rm_sc, self.size_cells),
        ):
            if cells is None:
                self.fail(
                    "/reserved-memory",
                    "reserved-memory-cells",
                    f"missing {name}: add {name} = <{root_value}> "
                    "(the root's value; the kernel reads regions with it)",
                )
            elif cells != [root_value]:
                self.fail(
                    "/reserved-memory",
                    "reserved-memory-cells",
                    f"{name} = <{cells[0] if cells else ''}> differs from "
                    f"the root's <{root_value}>: "
                    "with an empty ranges they must be equal",
                )
        if tree.prop(parent, "ranges") != b"":
            self.fail(
                "/reserved-memory",
                "reserved-memory-ranges",
                "needs an empty `ranges;` (regions are addressed in the root's address space)",
            )
        ac = rm_ac[0] if rm_ac else 2
        sc = rm_sc[0] if rm_sc else 1
        for child in tree.children(parent):
            region = self.read_region(child, ac, sc)
            if region is None:
                self.malformed.add(child)
            else:
                self.regions[child] = region
        self.check_overlaps()

    def read_region(self, offset: int, ac: int, sc: int) -> Region | None:
        tree = self.tree
        path = tree.path(offset)
        no_map, reusable = tree.has(offset, "no-map"), tree.has(offset, "reusable")
        if no_map and reusable:
            self.fail(
                path,
                "no-map-xor-reusable",
                "has both no-map and reusable: a pool is either a carve-out or CMA",
            )
        reg = tree.cells(offset, "reg")
        if reg is not None:
            if len(reg) != ac + sc:
                self.fail(
                    path,
                    "reg-format",
                    f"reg must be one <{ac}-cell address, {sc}-cell size> entry, "
                    f"has {len(reg)} cells",
                )
                return None
            base, size = split_entries(reg, ac, sc)[0]
            region = Region(path, base, size, no_map, reusable)
            self.check_static_region(offset, region)
            return region
        size_value = tree.cells(offset, "size")
        if not size_value or len(size_value) != sc:
            self.fail(path, "reg-format", f"has neither reg nor a {sc}-cell size")
            return None
        region = Region(path, None, join_cells(size_value), no_map, reusable)
        self.check_dynamic_region(offset, region, ac, sc)
        return region

    def check_static_region(self, offset: int, region: Region) -> None:
        path, base, size = region.path, region.base, region.size
        assert base is not None
        unit = self.tree.name(offset).partition("@")[2]
        if unit != f"{base:x}":
            self.fail(
                path,
                "unit-address",
                f"unit address '@{unit}' does not match reg base {base:#x}: name it @{base:x}",
            )
        if not any(start <= base and base + size <= end for start, end in self.ram):
            ram_text = ", ".join(f"[{s:#x}, {e:#x})" for s, e in self.ram) or "none"
            self.fail(
                path,
                "inside-ram",
                f"[{base:#x}, {base + size:#x}) is not inside RAM ({ram_text}): "
                "move it into a memory range",
            )
        if size == 0 or base % self.page_size or size % self.page_size:
            self.fail(
                path,
                "alignment",
                f"base {base:#x} and size {size:#x} must be multiples "
                f"of the {self.page_size >> 10} KiB page (size non-zero)",
            )
        if region.reusable and (base % self.cma_alignment or size % self.cma_alignment):
            self.fail(
                path,
                "cma-alignment",
                f"CMA region base {base:#x} / size {size:#x} not aligned to "
                f"{hexsize(self.cma_alignment)} "
                "(the kernel's CMA pageblock): the kernel would refuse the pool",
            )

    def check_dynamic_region(self, offset: int, region: Region, ac: int, sc: int) -> None:
        path, size = region.path, region.size
        if size == 0 or size % self.page_size:
            self.fail(
                path,
                "alignment",
                f"size {size:#x} must be a non-zero multiple of the "
                f"{self.page_size >> 10} KiB page",
            )
        if region.reusable and size % self.cma_alignment:
            self.fail(
                path,
                "cma-alignment",
                f"CMA region size {size:#x} not a multiple of {hexsize(self.cma_alignment)}",
            )
        ranges = self.tree.cells(offset, "alloc-ranges")
        if ranges is not None:
            usable = 0
            for start, length in split_entries(ranges, ac, sc):
                for ram_start, ram_end in self.ram:
                    usable = max(usable, min(start + length, ram_end) - max(start, ram_start))
            if usable < size:
                self.fail(
                    path,
                    "inside-ram",
                    f"alloc-ranges leave no {hexsize(size)} stretch of RAM to place the pool in",
                )

    def check_overlaps(self) -> None:
        static = sorted(
            (r.base, r.base + r.size, r.path) for r in self.regions.values() if r.base is not None
        )
        for i, (first_start, first_end, first_path) in enumerate(static):
            for second_start, second_end, second_path in static[i + 1 :]:
                if second_start < first_end:
                    self.fail(
                        second_path,
                        "overlap",
                        f"[{second_start:#x}, {second_end:#x}) overlaps {first_path} "
                        f"[{first_start:#x}, {first_end:#x}): move one of them",
                    )

    def check_u_dma_buf(self) -> None:
        users: dict[int, list[tuple[str, int]]] = {}
        names: dict[str, str] = {}
        minors: dict[int, str] = {}
        for offset, path in self.tree.nodes():
            if U_DMA_BUF not in self.tree.string_list(offset, "compatible"):
                continue
            self.u_dma_buf_nodes.append(path)
            size = self.buffer_size(offset, path)
            if size is None:
                continue
            self.check_device_identity(offset, path, names, minors)
            self.check_driver_ranges(offset, path)
            target = self.buffer_region(offset, path)
            if target is not None:
                users.setdefault(target, []).append((path, size))
        for target, buffers in users.items():
            self.check_fits(self.regions[target], buffers)

    def buffer_size(self, offset: int, path: str) -> int | None:
        raw_size = self.tree.prop(offset, "size")
        if raw_size is None or len(raw_size) not in (4, 8):
            self.fail(path, "udmabuf-size", "size must be 1 cell, or 2 cells for 4 GiB or more")
            return None
        size = int.from_bytes(raw_size, "big")
        if size == 0:
            self.fail(path, "udmabuf-size", "size 0: the driver refuses to probe")
            return None
        return size

    # u-dma-buf v5.5.0's probe refuses a node whose value is outside these ranges
    # ("invalid sync-mode property value" and the like): property, lowest, highest, and
    # what each value means.
    DRIVER_RANGES = (
        ("sync-mode", 1, 3, "1 uncached, 2 write-combine, 3 dma-coherent mapping for O_SYNC"),
        ("sync-direction", 0, 2, "0 bidirectional, 1 to device, 2 from device"),
        ("dma-mask", 12, 64, "the number of address bits the device can drive"),
    )

    def check_driver_ranges(self, offset: int, path: str) -> None:
        for name, low, high, meaning in self.DRIVER_RANGES:
            cells = self.tree.cells(offset, name)
            if not cells:
                continue  # absent (or empty): of_property_read_u32 fails, the default holds
            # The driver reads the first cell (of_property_read_u32).
            if not low <= cells[0] <= high:
                self.fail(path, "udmabuf-properties",
                          f"{name} = <{cells[0]}>: the driver takes {low} to {high} "
                          f"({meaning}) and refuses to probe otherwise")

    def check_device_identity(
        self, offset: int, path: str, names: dict[str, str], minors: dict[int, str]
    ) -> None:
        """The driver's naming: device-name, else udmabuf<minor>, else the node name."""
        minor = self.tree.cells(offset, "minor-number")
        name = self.tree.string_list(offset, "device-name")
        device = name[0] if name else (f"udmabuf{minor[0]}" if minor else self.tree.name(offset))
        if device in names:
            self.fail(
                path,
                "unique-device",
                f"device name '{device}' is also {names[device]}'s: probe would fail",
            )
        names.setdefault(device, path)
        if minor:
            if minor[0] > MAX_MINOR:
                self.fail(path, "unique-device", f"minor-number {minor[0]} is above {MAX_MINOR}")
            elif minor[0] in minors:
                self.fail(
                    path,
                    "unique-device",
                    f"minor-number {minor[0]} is also {minors[minor[0]]}'s: probe would fail",
                )
            minors.setdefault(minor[0], path)

    def buffer_region(self, offset: int, path: str) -> int | None:
        """Offset of the region memory-region points at (None: none, or broken)."""
        tree = self.tree
        phandles = tree.cells(offset, "memory-region")
        if phandles is None:
            return None  # the kernel's default CMA area
        if len(phandles) != 1:
            self.fail(
                path,
                "memory-region",
                f"memory-region has {len(phandles)} cells: "
                "give exactly one phandle (the driver uses only the first)",
            )
            if not phandles:
                return None
        target = tree.node_by_phandle(phandles[0])
        if target is None:
            self.fail(
                path,
                "memory-region",
                f"memory-region phandle {phandles[0]:#x} resolves to no node: "
                "point it at a /reserved-memory pool",
            )
            return None
        if target in self.malformed:
            return None  # its own problem is reported already
        if target not in self.regions:
            self.fail(
                path,
                "memory-region",
                f"memory-region points at {tree.path(target)}, "
                "which is not a /reserved-memory region",
            )
            return None
        if "shared-dma-pool" not in tree.string_list(target, "compatible"):
            self.fail(
                path,
                "memory-region",
                f"memory-region {self.regions[target].path} is not a "
                '"shared-dma-pool": the kernel sets up no allocator on it',
            )
        return target

    def check_fits(self, region: Region, buffers: list[tuple[str, int]]) -> None:
        page = self.page_size
        if region.no_map:
            need = sum(get_order_bytes(size, page) for _, size in buffers)
            how = "power-of-two blocks from a no-map pool"
        else:
            need = sum(-(-size // page) * page for _, size in buffers)
            how = "whole pages"
        if need > region.size:
            who = ", ".join(f"{path} ({hexsize(size)})" for path, size in buffers)
            self.fail(
                buffers[-1][0],
                "fits-region",
                f"buffers {who} need {hexsize(need)} ({how}) but {region.path} holds "
                f"{hexsize(region.size)}: shrink the buffers or grow the region",
            )
