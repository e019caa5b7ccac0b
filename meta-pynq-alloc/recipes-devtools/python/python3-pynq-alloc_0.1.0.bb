SUMMARY = "PYNQ-style allocate(): physically contiguous DMA buffers as numpy arrays"
DESCRIPTION = "pynq_alloc hands Python numpy arrays backed by device-tree \
reserved, physically contiguous memory through the u-dma-buf driver, with \
device addresses, exact-range cache flush/invalidate and a pynq-alloc \
command line tool (info, selftest, bench)."
HOMEPAGE = "https://github.com/pynq-alloc/pynq-alloc"
SECTION = "devel/python"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# The package and its on-target tests come from the repository that holds
# this layer (python-pynq-alloc/ and tests/target/), never from a copy.
FILESEXTRAPATHS:prepend := "${PYNQ_ALLOC_REPO_DIR}:"
SRC_URI = " \
    file://python-pynq-alloc/ \
    file://tests/target/ \
    file://run-ptest \
"

S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/python-pynq-alloc"

inherit python_setuptools_build_meta ptest

do_install_ptest() {
    install -d ${D}${PTEST_PATH}/tests
    cp -R --no-dereference --preserve=mode,links ${S}/../tests/target ${D}${PTEST_PATH}/tests/
    find ${D}${PTEST_PATH}/tests -name __pycache__ -prune -exec rm -rf {} \;
}

RDEPENDS:${PN} += " \
    python3-core \
    python3-numpy \
    python3-mmap \
    python3-fcntl \
    python3-json \
    python3-io \
    python3-threading \
    python3-datetime \
"
RDEPENDS:${PN}-ptest += " \
    ${PN} \
    python3-pytest \
    python3-unittest-automake-output \
"
