# QEMU arm64 harness (tests/qemu/): Debian's arm64 kernel + an initramfs built from
# Debian packages, our device tree, the layer's own files (udev rule, tmpfiles.d,
# module autoload/options, the dma group, run-ptest), the package from this checkout.
#   make run                       seed example, CLI, ptest, on-target figures; a report
#   make test-qemu                 one boot: CLI + ptest
#   make test-qemu-breaks          the harness's self-tests: a broken copy of each shipped
#                                  file must fail the run
#   UDMABUF_SRC=<u-dma-buf git checkout or mirror> make run
#                                  builds the layer's pinned driver (SRC_URI/SRCREV of
#                                  meta-pynq-alloc/recipes-kernel/u-dma-buf) once; later
#                                  runs use the cached module without being told
#   make qemu-udmabuf              only build (or find) that module
# Cache: build/qemu/ (rebuilt when its inputs change); V=1 shows the guest console.
# qemu-system-aarch64 is in qemu-system-arm on bookworm; the guest has no NIC (-nic none),
# so ipxe-qemu's option ROMs are not needed; build-dtb needs dtc/fdtoverlay (device-tree-compiler)
# and cpp; kmod: depmod for the guest's modules; git: the driver's pinned commit.
# gcc-aarch64-linux-gnu is installed by the harness only when it builds the driver.
APT_PACKAGES += qemu-system-arm device-tree-compiler cpp python3 kmod git
TEST_TARGETS += test-qemu test-qemu-breaks
RUN_TARGET := run-qemu

QEMU_HARNESS := $(PYTHON) tests/qemu/harness.py
QEMU_BUILD ?= $(BUILD)/qemu

.PHONY: run-qemu test-qemu test-qemu-breaks qemu-image qemu-udmabuf qemu-clean
run-qemu: deps
	@$(QEMU_HARNESS) run --build-dir $(QEMU_BUILD)

test-qemu: deps
	@$(QEMU_HARNESS) test --build-dir $(QEMU_BUILD)

test-qemu-breaks: deps
	@$(PYTHON) tests/qemu/breaks.py --build-dir $(QEMU_BUILD)

qemu-image: deps
	@$(QEMU_HARNESS) image --build-dir $(QEMU_BUILD)

qemu-udmabuf: deps
	@$(QEMU_HARNESS) driver --build-dir $(QEMU_BUILD)

qemu-clean:
	rm -rf $(QEMU_BUILD)
