# pynq-alloc: the two commands users need are `make run` and `make test`.
# Each area of the repository adds its own targets in mk/<area>.mk:
#   APT_PACKAGES  += Debian packages its targets need (installed by `make deps`)
#   TEST_TARGETS  += targets that `make test` runs
#   RUN_TARGET    := the target behind `make run` (the last file to set it wins)
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
BUILD ?= build
VENV ?= .venv
APT_PACKAGES :=
TEST_TARGETS :=
RUN_TARGET := run-sim

# $(call tool-venv,DIR,REQUIREMENTS): recipe of DIR/.stamp, a venv holding an area's
# pinned tools (the rule depends on REQUIREMENTS, so it is remade when they change).
define tool-venv
rm -rf $(1)
$(PYTHON) -m venv $(1)
$(1)/bin/pip install -q -r $(2)
touch $(1)/.stamp
endef

include $(sort $(wildcard mk/*.mk))

.PHONY: help deps test run
# Every .PHONY target of the Makefile and mk/*.mk is listed here (tests/packaging checks).
help:
	@echo "The two commands (README.md):"
	@echo "  make run              the seed example and the on-target suite in QEMU arm64, short report"
	@echo "  make test             every test: [$(TEST_TARGETS)]"
	@echo "Package (python-pynq-alloc/, mk/python.mk):"
	@echo "  make test-python      host tests under numpy 1.26 and 2.x (= test-python-np1 test-python-np2)"
	@echo "  make test-python-np1  host tests under numpy 1.26 (venv .venv/np1)"
	@echo "  make test-python-np2  host tests under numpy 2.x (venv .venv/np2)"
	@echo "  make test-packaging   wheel + sdist with the newest and the Yocto series' backends; docs links"
	@echo "  make lint             ruff + mypy --strict on the package (against numpy 1.26 and 2.x stubs)"
	@echo "  make bench            the benchmarks (ratios measured side by side)"
	@echo "  make mutate           mutation testing (mutmut) of the address, sync, pool and ledger code; slow, not in make test"
	@echo "  make run-sim          the seed example on the simulator (no QEMU)"
	@echo "Device tree (device-tree/, mk/devicetree.mk):"
	@echo "  make test-devicetree  dtc, dt-schema, the QEMU overlay, the rule checks of pynq-alloc check-dtb"
	@echo "  make qemu-virt-dtb    $(BUILD)/devicetree/virt.dtb, the DTB the QEMU harness boots"
	@echo "Yocto layer (meta-pynq-alloc/, kas/, mk/layer.mk):"
	@echo "  make test-layer       oelint-adv, kas schema, layer checks; bitbake -p/-g with POKY_DIR=..."
	@echo "                        (its venv .venv/layer/ holds kas: .venv/layer/bin/kas build kas/qemuarm64.yml)"
	@echo "  make test-layer-bitbake   bitbake -p/-g and the oeqa guards on both series, -p/-g/-e of every kas/<board>.yml (upstream checkouts; not in make test)"
	@echo "QEMU arm64 harness (tests/qemu/, mk/qemu.mk):"
	@echo "  make run-qemu         what make run runs: boot, seed example, target suite, report"
	@echo "  make test-qemu        one boot running the target suite (tests/target/)"
	@echo "  make test-qemu-breaks boots broken copies of the shipped files (udev rule, run-ptest, module): each must fail"
	@echo "  make qemu-image       build or reuse the kernel + initramfs cache ($(BUILD)/qemu/), no boot"
	@echo "  make qemu-udmabuf     build (or find in the cache) the layer's pinned u-dma-buf.ko for the guest"
	@echo "  make qemu-clean       remove the QEMU cache ($(BUILD)/qemu/)"
	@echo "Debian packages (packaging/debian/, mk/debian.mk):"
	@echo "  make debs             u-dma-buf-dkms, pynq-alloc-board, python3-pynq-alloc into $(BUILD)/debian/"
	@echo "  make test-debian      install/upgrade/remove/purge them in a bookworm root"
	@echo "  make test-debian-dkms DKMS builds u-dma-buf against Debian's headers (needs the driver source)"
	@echo "  make test-debian-guest   the three packages in the QEMU arm64 guest: apt, DKMS, udev, suite, purge; DT pools and module options (~25 min; not in make test)"
	@echo "  make test-debian-guest-dkms   the same, device-tree boot only (~12 min)"
	@echo "Other:"
	@echo "  make deps             install the Debian packages every target needs (only the missing ones)"
	@echo "  make help             this list"
	@echo "Variables: UDMABUF_SRC=<u-dma-buf checkout or git mirror> (once: later runs reuse the module), V=1 (guest console),"
	@echo "  POKY_DIR / OE_CORE_DIR + BITBAKE_DIR (test-layer's bitbake checks); tests/qemu/README.md has more."
	@echo "  MUTATE_PATHS=<files, comma-separated> MUTATE_SHARD=k/n MUTATE_KEEP=1 MUTATE_EXAMPLES=50 (for make mutate:"
	@echo "  python-pynq-alloc/README.md, Mutation testing)."

# Debian packages every target needs; installed once, only the missing ones.
deps:
	@scripts/apt-install $(sort $(APT_PACKAGES))

test: $(TEST_TARGETS)
	@echo "make test: all of [$(TEST_TARGETS)] passed"

run: $(RUN_TARGET)
