# QEMU arm64 harness (tests/qemu/): Debian's arm64 kernel + an initramfs built from
# Debian packages, our device tree, the package from this checkout, tests/target/.
#   make run                       seed example + target suite in the guest, short report
#   make test-qemu                 one boot running the target suite
#   UDMABUF_KO=/path/u-dma-buf.ko make run     ... with the real u-dma-buf driver
#   make qemu-udmabuf UDMABUF_SRC=<u-dma-buf checkout>   builds that module for the guest's kernel
# Cache: build/qemu/ (rebuilt when its inputs change); V=1 shows the guest console.
# qemu-system-aarch64 is in qemu-system-arm on bookworm; the guest has no NIC (-nic none),
# so ipxe-qemu's option ROMs are not needed; build-dtb needs dtc/fdtoverlay (device-tree-compiler)
# and cpp.
APT_PACKAGES += qemu-system-arm device-tree-compiler cpp python3
TEST_TARGETS += test-qemu
RUN_TARGET := run-qemu

QEMU_HARNESS := $(PYTHON) tests/qemu/harness.py
QEMU_BUILD ?= $(BUILD)/qemu

.PHONY: run-qemu test-qemu qemu-image qemu-udmabuf qemu-clean
run-qemu: deps
	@$(QEMU_HARNESS) run --build-dir $(QEMU_BUILD)

test-qemu: deps
	@$(QEMU_HARNESS) test --build-dir $(QEMU_BUILD)

qemu-image: deps
	@$(QEMU_HARNESS) image --build-dir $(QEMU_BUILD)

# Cross-builds u-dma-buf.ko against Debian's headers for the guest's kernel ABI.
qemu-udmabuf:
	@scripts/apt-install gcc-aarch64-linux-gnu make
	@test -n "$(UDMABUF_SRC)" || { echo "usage: make qemu-udmabuf UDMABUF_SRC=<u-dma-buf source dir>" >&2; exit 2; }
	@$(QEMU_HARNESS) udmabuf-ko --build-dir $(QEMU_BUILD) --src $(UDMABUF_SRC)

qemu-clean:
	rm -rf $(QEMU_BUILD)
