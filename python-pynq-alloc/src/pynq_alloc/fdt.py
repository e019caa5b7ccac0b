"""A reader of flattened device trees (DTB files), in Python alone.

The format (the Devicetree Specification, "Flattened Devicetree (DTB) Format"):
a big-endian header (magic 0xd00dfeed, total size, offsets of the structure
block and the strings block, version), a structure block of 32-bit tokens
(BEGIN_NODE + NUL-terminated name, PROP + length + name offset + value, NOP,
END_NODE, END), each item padded to 4 bytes, and a strings block of property
names. Read-only: the checks need no more, and a board needs no C binding for it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from .errors import InvalidArgumentError

FDT_MAGIC = 0xD00DFEED
_BEGIN_NODE, _END_NODE, _PROP, _NOP, _END = 1, 2, 3, 4, 9
_HEADER = struct.Struct(">10I")


@dataclass
class _Node:
    name: str
    parent: int
    path: str
    props: Dict[str, bytes] = field(default_factory=dict)
    children: List[int] = field(default_factory=list)


class Fdt:
    """A parsed DTB; nodes are numbered depth first (the root is 0)."""

    def __init__(self, blob: bytes, source: str = "the DTB") -> None:
        self.source = source
        self._nodes: List[_Node] = []
        self._by_path: Dict[str, int] = {}
        self._by_phandle: Dict[int, int] = {}
        self._parse(bytes(blob))

    def _bad(self, why: str) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"{self.source} is not a valid flattened device tree: {why}. Give a .dtb file "
            f"(compile a source with `dtc -I dts -O dtb -o board.dtb board.dts`, through `cpp "
            f"-nostdinc -undef -D__DTS__ -x assembler-with-cpp -I <include dirs>` first if it "
            f"has #include lines; or dump the "
            f"running tree with `dtc -I fs -O dtb -o live.dtb /proc/device-tree`)")

    def _parse(self, blob: bytes) -> None:
        off_struct, end, strings = self._blocks(blob)
        pos = off_struct
        stack: List[int] = []  # the open nodes
        while True:
            if pos + 4 > end:
                raise self._bad("the structure block ends without an END token")
            (token,) = struct.unpack_from(">I", blob, pos)
            pos += 4
            if token == _BEGIN_NODE:
                stop = blob.find(b"\0", pos, end)
                if stop < 0:
                    raise self._bad(f"a node name at offset {pos} is not terminated")
                stack.append(self._begin_node(blob[pos:stop].decode("ascii", "replace"),
                                              stack[-1] if stack else -1))
                pos = (stop + 4) & ~3
            elif token == _END_NODE:
                if not stack:
                    raise self._bad(f"an END_NODE at offset {pos - 4} closes no node")
                stack.pop()
            elif token == _PROP:
                if not stack or pos + 8 > end:
                    raise self._bad(f"a property at offset {pos - 4} is outside any node")
                length, name_offset = struct.unpack_from(">II", blob, pos)
                pos += 8
                if pos + length > end or name_offset >= len(strings):
                    raise self._bad(f"a property at offset {pos - 12} runs past its block")
                stop = strings.find(b"\0", name_offset)
                name = strings[name_offset: stop if stop >= 0 else None].decode("ascii", "replace")
                self._nodes[stack[-1]].props[name] = blob[pos: pos + length]
                pos = (pos + length + 3) & ~3
            elif token == _END:
                break
            elif token != _NOP:
                raise self._bad(f"unknown token {token:#x} at offset {pos - 4}")
        if stack:
            raise self._bad(f"{len(stack)} node(s) are not closed")
        if not self._nodes:
            raise self._bad("it has no root node")
        for index, node in enumerate(self._nodes):
            for key in ("phandle", "linux,phandle"):
                value = node.props.get(key)
                if value is not None and len(value) == 4:
                    self._by_phandle.setdefault(int.from_bytes(value, "big"), index)

    def _blocks(self, blob: bytes) -> Tuple[int, int, bytes]:
        """(start, end) of the structure block and the strings block, from the header."""
        if len(blob) < _HEADER.size:
            raise self._bad(f"{len(blob)} bytes is shorter than the 40-byte header")
        (magic, total, off_struct, off_strings, _rsvmap, version, _last_compat,
         _cpu, size_strings, size_struct) = _HEADER.unpack_from(blob)
        if magic != FDT_MAGIC:
            looks = " (it looks like a .dts source)" if blob.lstrip()[:8] == b"/dts-v1/" else ""
            raise self._bad(f"magic {magic:#010x} is not 0xd00dfeed{looks}")
        if total > len(blob):
            raise self._bad(f"the header says {total} bytes, the file has {len(blob)}")
        if version < 17:
            size_struct = total - off_struct  # older headers lack the struct size
        if off_struct + size_struct > total or off_strings + size_strings > total:
            raise self._bad("a block lies past the end of the tree")
        return off_struct, off_struct + size_struct, blob[off_strings: off_strings + size_strings]

    def _begin_node(self, name: str, parent: int) -> int:
        path = "/" if parent < 0 else f"{self._nodes[parent].path.rstrip('/')}/{name}"
        index = len(self._nodes)
        self._nodes.append(_Node(name, parent, path))
        self._by_path.setdefault(path, index)
        if parent >= 0:
            self._nodes[parent].children.append(index)
        return index

    # -- queries -------------------------------------------------------------------
    def nodes(self, offset: int = 0) -> Iterator[Tuple[int, str]]:
        """Every node below ``offset`` (inclusive), depth first, with its path."""
        yield offset, self._nodes[offset].path
        for child in self._nodes[offset].children:
            yield from self.nodes(child)

    def children(self, offset: int) -> List[int]:
        return list(self._nodes[offset].children)

    def path(self, offset: int) -> str:
        return self._nodes[offset].path

    def name(self, offset: int) -> str:
        return self._nodes[offset].name

    def path_offset(self, path: str) -> Optional[int]:
        return self._by_path.get(path.rstrip("/") or "/")

    def node_by_phandle(self, phandle: int) -> Optional[int]:
        return self._by_phandle.get(phandle)

    def props(self, offset: int) -> Dict[str, bytes]:
        return dict(self._nodes[offset].props)

    def prop(self, offset: int, name: str) -> Optional[bytes]:
        return self._nodes[offset].props.get(name)

    def has(self, offset: int, name: str) -> bool:
        return name in self._nodes[offset].props

    def cells(self, offset: int, name: str) -> Optional[List[int]]:
        """A property as big-endian 32-bit cells (a trailing partial cell is dropped)."""
        raw = self.prop(offset, name)
        if raw is None:
            return None
        return [int.from_bytes(raw[i: i + 4], "big") for i in range(0, len(raw) - len(raw) % 4, 4)]

    def string_list(self, offset: int, name: str) -> List[str]:
        raw = self.prop(offset, name)
        if not raw:
            return []
        return [s.decode("ascii", "replace") for s in raw.rstrip(b"\0").split(b"\0")]
