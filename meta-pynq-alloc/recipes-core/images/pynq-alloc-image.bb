# nooelint: oelint.var.suggestedvar.SECTION,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT
# (above: an image is not a package: no section, bug tracker or CVE product)
SUMMARY = "Minimal image in which pynq_alloc.allocate() works"
DESCRIPTION = "core-image-minimal plus the u-dma-buf driver (autoloaded), \
               the udev rule that gives its devices to group dma, and the \
               python3-pynq-alloc package. On qemuarm64 it boots a device \
               tree with two 16 MiB DMA pools."
LICENSE = "MIT"

require pynq-alloc-image.inc
