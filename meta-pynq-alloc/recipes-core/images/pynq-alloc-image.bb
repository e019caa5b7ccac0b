SUMMARY = "Minimal image in which pynq_alloc.allocate() works"
DESCRIPTION = "core-image-minimal plus the u-dma-buf driver (autoloaded), \
the udev rule that gives its devices to group dma, and the python3-pynq-alloc \
package. On qemuarm64 it boots a device tree with two 16 MiB DMA pools."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

require recipes-core/images/core-image-minimal.bb

IMAGE_INSTALL += " \
    u-dma-buf \
    u-dma-buf-udev-rules \
    python3-pynq-alloc \
"

# qemuarm64: boot QEMU virt's own DTB plus our reserved-memory + u-dma-buf
# nodes (recipes-bsp/pynq-alloc-qemu-dtb), with the RAM it was dumped for.
EXTRA_IMAGEDEPENDS:append:qemuarm64 = " pynq-alloc-qemu-dtb"
QB_DTB:qemuarm64 = "pynq-alloc-${MACHINE}.dtb"
QB_MEM:qemuarm64 = "${PYNQ_ALLOC_QEMU_MEM}"
