"""The no-region error says what state the driver is in and gives a fix for each kind of image."""

from __future__ import annotations

from pathlib import Path

from pynq_alloc.backends.udmabuf import DEFAULT_SYSFS_ROOT, no_region_message


def test_a_missing_module_is_named_with_the_fixes_for_every_kind_of_image(
        tmp_path: Path) -> None:
    message = no_region_message(DEFAULT_SYSFS_ROOT, module_dir=str(tmp_path / "absent"))
    assert "module is not loaded" in message
    assert "meta-pynq-alloc" in message and "modprobe u-dma-buf" in message  # our images
    assert "u-dma-buf-dkms" in message and "pynq-alloc-board" in message  # Debian, Ubuntu
    assert "https://github.com/ikwzm/udmabuf" in message  # any other image
    assert "udmabuf0=16777216" in message and "cma=" in message  # no device-tree change
    assert "PYNQ_ALLOC_BACKEND=sim" in message
    assert "device-tree/" not in message  # a folder only this repository has


def test_a_loaded_module_without_devices_points_at_the_device_tree(tmp_path: Path) -> None:
    message = no_region_message(DEFAULT_SYSFS_ROOT, module_dir=str(tmp_path))
    assert "loaded but created no device" in message and "dmesg" in message
    assert "not loaded" not in message


def test_another_root_does_not_guess_from_this_machines_modules(tmp_path: Path) -> None:
    message = no_region_message(str(tmp_path), module_dir=str(tmp_path))
    assert "not loaded, or it created no device" in message
