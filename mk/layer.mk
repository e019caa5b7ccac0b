# Yocto layer (meta-pynq-alloc/) and kas files (kas/): oelint-adv with zero findings,
# kas files against kas's own schema, layout and cross-area contract checks.
#   make test-layer
# With a Yocto checkout it also runs bitbake -p and bitbake -g pynq-alloc-image(-ptest):
#   OE_CORE_DIR=<openembedded-core> BITBAKE_DIR=<bitbake> make test-layer   (or POKY_DIR=<poky>)
# (as root add BITBAKE_USER=<normal user>: bitbake refuses root). No network needed.
APT_PACKAGES += python3 python3-venv
TEST_TARGETS += test-layer

LAYER_VENV := $(VENV)/layer

.PHONY: test-layer

# Remade when the pinned tool list changes.
$(LAYER_VENV)/.stamp: tests/layer/requirements.txt | deps
	$(call tool-venv,$(LAYER_VENV),$<)

# pytest exits 5 when it collected no test: make fails on it like on any other failure.
test-layer: deps $(LAYER_VENV)/.stamp
	$(LAYER_VENV)/bin/python -m pytest -q -rs -p no:cacheprovider tests/layer
