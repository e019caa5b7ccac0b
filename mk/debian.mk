# Debian packages for images this repository does not build (packaging/debian/):
# u-dma-buf-dkms (the driver the layer's recipe pins, built by DKMS on the board),
# pynq-alloc-board (group dma, udev rule, autoload, module options, pynq-alloc-dtb),
# python3-pynq-alloc. Architecture all: the same .debs serve arm64 and armhf.
#   make debs               build/debian/*.deb, .dsc, lintian.txt (lintian: no error or warning)
#   make test-debian        contents, lintian, install/upgrade/remove/purge in a bookworm root
#   make test-debian-dkms   DKMS really builds u-dma-buf against Debian's kernel headers in a root
#   make test-debian-guest  the three packages in the QEMU arm64 guest (Debian's arm64 kernel):
#                           apt installs them, DKMS compiles u-dma-buf there, udev applies the
#                           rule, the on-target suite passes with a dma member, purge leaves
#                           nothing; once with pynq-alloc-dtb's pools, once with udmabuf0= from
#                           CMA (tests/debian/guest_packages.py; ~25 min: not in make test)
#   make test-debian-guest-dkms   the device-tree boot of it alone (~12 min)
# u-dma-buf-dkms needs the driver's source at the recipe's SRCREV (no package archive has it):
#   make debs UDMABUF_SRC=<u-dma-buf clone or mirror>     (without it: the other two only)
# The roots come from Debian's archive once (mmdebstrap, ~1.5 min; cached in build/debian/rootfs).
APT_PACKAGES += dpkg-dev debhelper dh-dkms dh-python pybuild-plugin-pyproject python3-all \
    python3-hatchling lintian mmdebstrap device-tree-compiler python3-venv
TEST_TARGETS += test-debian

DEB_VENV := $(VENV)/debian
DEB_BUILD := $(BUILD)/debian

.PHONY: debs test-debian test-debian-dkms test-debian-guest test-debian-guest-dkms

$(DEB_VENV)/.stamp: tests/debian/requirements.txt | deps
	$(call tool-venv,$(DEB_VENV),$<)

debs: deps
	packaging/debian/build-debs --out $(DEB_BUILD) $(if $(UDMABUF_SRC),--udmabuf-src $(UDMABUF_SRC))

# pytest exits 5 when it collected no test: make fails on it like on any other failure.
test-debian: debs $(DEB_VENV)/.stamp
	PYNQ_ALLOC_DEB_DIR=$(DEB_BUILD) $(DEB_VENV)/bin/python -m pytest -q -rs -p no:cacheprovider tests/debian/test_packages.py

test-debian-dkms: debs $(DEB_VENV)/.stamp
	@test -n "$(UDMABUF_SRC)" || { echo "usage: make test-debian-dkms UDMABUF_SRC=<u-dma-buf clone or mirror>" >&2; exit 2; }
	PYNQ_ALLOC_DEB_DIR=$(DEB_BUILD) UDMABUF_SRC=$(UDMABUF_SRC) $(DEB_VENV)/bin/python -m pytest -q -rs -s -p no:cacheprovider tests/debian/test_dkms.py

# The guest image (Debian arm64 packages) is cached by input hash in $(DEB_BUILD)/guest-packages;
# DKMS compiles in every boot (under TCG: 3-8 min each), which is what is tested.
test-debian-guest: debs
	@test -n "$(UDMABUF_SRC)" || { echo "usage: make test-debian-guest UDMABUF_SRC=<u-dma-buf clone or mirror>" >&2; exit 2; }
	$(PYTHON) tests/debian/guest_packages.py --debs $(DEB_BUILD) --build-dir $(DEB_BUILD)/guest-packages --mode both

test-debian-guest-dkms: debs
	@test -n "$(UDMABUF_SRC)" || { echo "usage: make test-debian-guest-dkms UDMABUF_SRC=<u-dma-buf clone or mirror>" >&2; exit 2; }
	$(PYTHON) tests/debian/guest_packages.py --debs $(DEB_BUILD) --build-dir $(DEB_BUILD)/guest-packages --mode dt
