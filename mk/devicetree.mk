# Device tree (device-tree/): real dtc compiles, dt-schema validation against our
# u-dma-buf binding and the core schemas, the QEMU virt overlay applied onto a DTB
# freshly dumped from the installed QEMU, the rule checks of `pynq-alloc check-dtb`
# (pynq_alloc.dtcheck, read by its own DTB reader and cross-checked with pylibfdt), broken trees.
#   make test-devicetree      the checks (tests/devicetree/)
#   make qemu-virt-dtb        build/devicetree/virt.dtb, as the QEMU harness makes it
# qemu-system-aarch64 is in qemu-system-arm; gcc + python3-dev build pylibfdt.
APT_PACKAGES += device-tree-compiler qemu-system-arm cpp gcc python3-dev python3-venv
TEST_TARGETS += test-devicetree

DT_VENV := $(VENV)/devicetree
DT_BUILD := $(BUILD)/devicetree

.PHONY: test-devicetree qemu-virt-dtb

# Remade when the pinned tool list or the package metadata changes. The rule checks are
# the package's own (`pynq-alloc check-dtb`): the venv holds the package, editable.
$(DT_VENV)/.stamp: tests/devicetree/requirements.txt python-pynq-alloc/pyproject.toml | deps
	$(call tool-venv,$(DT_VENV),$<)
	$(DT_VENV)/bin/pip install -q -e python-pynq-alloc || { rm -f $@; exit 1; }

# pytest exits 5 when it collected no test: make fails on it like on any other failure.
test-devicetree: deps $(DT_VENV)/.stamp
	$(DT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/devicetree

qemu-virt-dtb: deps
	device-tree/qemu-virt/build-dtb --memory 1G --smp 1 --cpu cortex-a53 --out $(DT_BUILD)/virt.dtb
