# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER
# (above: pynq-alloc has no public home page or bug tracker yet)
SUMMARY = "PYNQ-style allocate(): physically contiguous DMA buffers as numpy arrays"
DESCRIPTION = "pynq_alloc hands Python numpy arrays backed by device-tree \
               reserved, physically contiguous memory through the u-dma-buf \
               driver, with device addresses, exact-range cache \
               flush/invalidate and a pynq-alloc command line tool (info, \
               selftest, bench)."
SECTION = "devel/python"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=8d5adbffc2c3d0e44028388ed24ffdbd"

# The package and its on-target tests come from the repository that holds
# this layer (python-pynq-alloc/ and tests/target/), never from a copy.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${PYNQ_ALLOC_REPO_DIR}:"
SRC_URI = "file://python-pynq-alloc/ \
           file://tests/target/ \
           file://run-ptest \
           "

# Unpacked into UNPACKDIR on newer series, into WORKDIR on scarthgap.
PYNQ_ALLOC_SRCDIR = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
S = "${PYNQ_ALLOC_SRCDIR}/python-pynq-alloc"

inherit python_hatchling ptest

CVE_PRODUCT = "pynq-alloc"

do_install_ptest() {
    install -d ${D}${PTEST_PATH}/tests
    cp -R --no-dereference --preserve=mode,links ${PYNQ_ALLOC_SRCDIR}/tests/target ${D}${PTEST_PATH}/tests/
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

BBCLASSEXTEND = "native nativesdk"
