# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.bbclassextend
# (above: pynq-alloc has no public home page or bug tracker yet; no native or
# nativesdk recipe needs the package: it drives a device of the target)
SUMMARY = "PYNQ-style allocate(): physically contiguous DMA buffers as numpy arrays"
DESCRIPTION = "pynq_alloc hands Python numpy arrays backed by device-tree \
               reserved, physically contiguous memory through the u-dma-buf \
               driver, with device addresses, exact-range cache \
               flush/invalidate and a pynq-alloc command line tool (info, \
               selftest, bench)."
SECTION = "devel/python"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=8d5adbffc2c3d0e44028388ed24ffdbd"

SRC_URI = "file://run-ptest"

# The package (python-pynq-alloc/) and the on-target suite (tests/target/)
# from pynq-alloc's git repository at PYNQ_ALLOC_SRCREV (the class adds it to
# SRC_URI). The suite is found next to S, so that externalsrc of the working
# tree's python-pynq-alloc/ (kas/working-tree.yml) takes it from there too.
S = "${PYNQ_ALLOC_SRC}/python-pynq-alloc"

inherit pynq_alloc_source python_hatchling ptest

CVE_PRODUCT = "pynq-alloc"

do_install_ptest() {
    install -d ${D}${PTEST_PATH}/tests
    cp -R --no-dereference --preserve=mode,links ${S}/../tests/target ${D}${PTEST_PATH}/tests/
    find ${D}${PTEST_PATH}/tests -name __pycache__ -prune -exec rm -rf {} \;
}

# Exactly what the package imports: numpy and, from the standard library,
# fcntl, json, mmap, numbers, tempfile (python3-io); the rest (os, struct,
# argparse, threading, zlib, ...) is in python3-core.
RDEPENDS:${PN} += "python3-core \
                   python3-fcntl \
                   python3-io \
                   python3-json \
                   python3-mmap \
                   python3-numbers \
                   python3-numpy \
                   "
RDEPENDS:${PN}-ptest += "python3-pytest \
                         python3-unittest-automake-output \
                         "
