"""pynq_alloc.dtcheck's rules (`pynq-alloc check-dtb`) hold on every tree we ship, and each one catches its breakage.

Positive: the QEMU DTB (overlay on QEMU's own DTB) and every board tree break
no rule. Negative: each file in broken/ breaks one rule on purpose; its
`// expect: <rule> <node>` line says which, and the check must report that
rule for that node, naming the node in the message, and no other rule than
the consequences the file lists (`// also: <rule>`).
"""

from __future__ import annotations

import re

import dttools
import pytest
from conftest import BOARD_STUBS, GENERIC_CONFIGS
from pynq_alloc import dtcheck

BROKEN = sorted(dttools.BROKEN.glob("*.dts"))


def expectation(source) -> tuple[str, str]:
    match = re.search(r"^// expect: (\S+) (\S+)$", source.read_text(), re.M)
    assert match, f"{source.name} lacks an '// expect: <rule> <node>' line"
    return match.group(1), match.group(2)


def consequences(source) -> set[str]:
    """Rules a file says break as a consequence of its one break (// also: <rule>)."""
    return set(re.findall(r"^// also: (\S+)", source.read_text(), re.M))


def problems_of(dtb, rule=None) -> list[dtcheck.Problem]:
    return [p for p in dtcheck.check(dtb.read_bytes()) if rule is None or p.rule == rule]


@pytest.mark.parametrize("rule", dtcheck.RULES)
def test_qemu_tree_holds_rule(virt_dtb, rule):
    assert problems_of(virt_dtb, rule) == []


@pytest.mark.parametrize("name", [stub.stem for stub in BOARD_STUBS] + list(GENERIC_CONFIGS))
def test_board_tree_holds_every_rule(compiled_sources, name):
    dtb, _ = compiled_sources[name]
    assert [str(p) for p in problems_of(dtb)] == []


@pytest.mark.parametrize("source", BROKEN, ids=[s.stem for s in BROKEN])
def test_broken_tree_is_rejected_naming_the_node(source, tmp_path):
    rule, node = expectation(source)
    dtb, _ = dttools.compile_dts(source, tmp_path)  # dtc may warn here: that is the point
    problems = problems_of(dtb)
    hits = [p for p in problems if p.rule == rule and p.node == node]
    assert hits, f"{source.name}: expected [{rule}] at {node}, got: {[str(p) for p in problems]}"
    assert all(node in str(p) for p in hits)
    others = {p.rule for p in problems} - {rule} - consequences(source)
    assert not others, f"{source.name} breaks more than [{rule}]: {[str(p) for p in problems]}"


def test_every_rule_has_a_broken_tree():
    covered = {expectation(source)[0] for source in BROKEN}
    assert set(dtcheck.RULES) <= covered, (
        f"rules no broken/ file exercises: {set(dtcheck.RULES) - covered}"
    )


def test_no_map_pool_allocates_in_power_of_two_blocks():
    """The arithmetic fits-region relies on (kernel get_order)."""
    assert dtcheck.get_order_bytes(1) == 4096
    assert dtcheck.get_order_bytes(12 << 20) == 16 << 20
    assert dtcheck.get_order_bytes(16 << 20) == 16 << 20
