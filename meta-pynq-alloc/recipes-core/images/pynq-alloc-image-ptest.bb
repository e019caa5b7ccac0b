# nooelint: oelint.var.suggestedvar.SECTION,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT
# (above: an image is not a package: no section, bug tracker or CVE product)
SUMMARY = "pynq-alloc-image with the on-target test suite (ptest)"
DESCRIPTION = "pynq-alloc-image plus ptest-runner, python3-pynq-alloc-ptest \
               and an SSH server, so that testimage can run the pynq_alloc \
               oeqa case (ptest-runner python3-pynq-alloc) on the image."
LICENSE = "MIT"

require pynq-alloc-image.inc

inherit features_check

REQUIRED_DISTRO_FEATURES = "ptest"

IMAGE_FEATURES += "ssh-server-dropbear"
IMAGE_INSTALL += "ptest-runner \
                  python3-pynq-alloc-ptest \
                  "

# testimage (IMAGE_CLASSES += "testimage", see kas/ptest.yml): boot, log in
# over ssh, then lib/oeqa/runtime/cases/pynq_alloc.py.
TEST_SUITES = "ping ssh pynq_alloc"
