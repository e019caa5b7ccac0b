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
help:
	@echo "make run    the seed example and the on-target suite (see README.md)"
	@echo "make test   every test: package, device tree, layer, QEMU target suite"
	@echo "make bench  the benchmarks (ratios measured side by side)"
	@echo "make lint   ruff + mypy --strict on the package"
	@echo "per area:   $(TEST_TARGETS) run-sim qemu-udmabuf qemu-virt-dtb test-layer-bitbake"

# Debian packages every target needs; installed once, only the missing ones.
deps:
	@scripts/apt-install $(sort $(APT_PACKAGES))

test: $(TEST_TARGETS)
	@echo "make test: all of [$(TEST_TARGETS)] passed"

run: $(RUN_TARGET)
