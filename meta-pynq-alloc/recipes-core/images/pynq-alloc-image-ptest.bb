SUMMARY = "pynq-alloc-image with the on-target test suite (ptest)"
DESCRIPTION = "pynq-alloc-image plus ptest-runner, python3-pynq-alloc-ptest \
and an SSH server, so that testimage can run the pynq_alloc oeqa case \
(ptest-runner python3-pynq-alloc) on the booted image."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

require pynq-alloc-image.bb

inherit features_check
REQUIRED_DISTRO_FEATURES = "ptest"

IMAGE_FEATURES += "ssh-server-dropbear"
IMAGE_INSTALL += " \
    ptest-runner \
    python3-pynq-alloc-ptest \
"

# testimage (IMAGE_CLASSES += "testimage", see kas/ptest.yml): boot, log in
# over ssh, then lib/oeqa/runtime/cases/pynq_alloc.py.
TEST_SUITES = "ping ssh pynq_alloc"
