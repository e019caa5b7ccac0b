# Yocto layer (meta-pynq-alloc/) and kas files (kas/).
#   make test-layer           (in make test) oelint-adv with zero findings, kas files
#                             against kas's own schema, the udev rule, tmpfiles.d and
#                             volatiles entries (real systemd-tmpfiles), the board DTBs
#                             the device-tree append makes (real cpp/dtc), the DTB of
#                             every board kas file built by pynq-alloc-board-dtb's own
#                             commands from the kernel's dts (Debian's linux-source,
#                             fetched once into build/layer/kernel-dts), layout rules,
#                             the contract with the other areas
#   make test-layer-bitbake   (not in make test: needs the OpenEmbedded git servers, or
#                             mirrors in LAYER_GIT_PREMIRRORS) real bitbake on wrynose and
#                             scarthgap: OE-Core + bitbake checked out at the kas lock
#                             commits, bitbake -p, bitbake -g of both images, and what
#                             bitbake expands checked against the oeqa guards and docs;
#                             then every kas/<board>.yml on scarthgap + meta-arm +
#                             meta-xilinx (kas/zcu102.lock.yml): bitbake -p, -g, -e.
#                             As root, bitbake runs as BITBAKE_USER (default pynq-bitbake,
#                             created if missing). About 10 minutes on 2 cores, and
#                             3 to 9 more a board.
APT_PACKAGES += python3 python3-venv systemd cpp device-tree-compiler gcc python3-dev xz-utils
TEST_TARGETS += test-layer

LAYER_VENV := $(VENV)/layer
LAYER_YOCTO_SRC := $(BUILD)/layer/src
# The kernel's dts for the board DTB check: Debian's linux-source package.
LAYER_KERNEL_PKG ?= linux-source-6.12
LAYER_KERNEL_DTS := $(BUILD)/layer/kernel-dts
# OE-Core's host tools for parsing (its documented Debian list, less the compilers
# and what a build needs but a parse does not), and the locale bitbake needs.
LAYER_BITBAKE_APT := chrpath cpio diffstat file gawk git locales lz4 patch socat \
                     texinfo unzip wget xz-utils zstd python3-jinja2 python3-pexpect

.PHONY: test-layer test-layer-bitbake

# Remade when the pinned tool list changes.
$(LAYER_VENV)/.stamp: tests/layer/requirements.txt | deps
	$(call tool-venv,$(LAYER_VENV),$<)

# pytest exits 5 when it collected no test: make fails on it like on any other failure.
test-layer: deps $(LAYER_VENV)/.stamp
	tests/layer/kernel-dts $(LAYER_KERNEL_DTS) $(LAYER_KERNEL_PKG)
	LAYER_KERNEL_DTS=$(abspath $(LAYER_KERNEL_DTS))/linux \
	    $(LAYER_VENV)/bin/python -m pytest -q -rs -p no:cacheprovider tests/layer \
	    --ignore=tests/layer/test_bitbake.py --ignore=tests/layer/test_bitbake_boards.py

test-layer-bitbake: deps $(LAYER_VENV)/.stamp
	@scripts/apt-install $(LAYER_BITBAKE_APT)
	@user=$$(tests/layer/host-setup) && \
	for machine in qemuarm64 qemuarm64-scarthgap; do \
	    $(LAYER_VENV)/bin/python tests/layer/checkout-yocto kas/$$machine.yml \
	        $(LAYER_YOCTO_SRC)/$$machine || exit 1; \
	done && \
	$(LAYER_VENV)/bin/python tests/layer/checkout-yocto kas/zcu102.yml \
	    $(LAYER_YOCTO_SRC)/xilinx && \
	BITBAKE_USER=$$user LAYER_YOCTO_SRC=$(abspath $(LAYER_YOCTO_SRC)) \
	    $(LAYER_VENV)/bin/python -m pytest -q -rs -s -p no:cacheprovider tests/layer/test_bitbake.py \
	    tests/layer/test_bitbake_boards.py
