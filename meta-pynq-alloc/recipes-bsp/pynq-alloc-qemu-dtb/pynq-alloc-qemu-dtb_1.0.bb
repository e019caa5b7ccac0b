# nooelint: oelint.var.bbclassextend,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT
# (above: a DTB for one target machine, never native; part of pynq-alloc,
# which has no public bug tracker yet and is no CVE product of its own)
SUMMARY = "QEMU virt device tree with the pynq-alloc DMA pools"
DESCRIPTION = "QEMU's virt machine builds its device tree at run time, so \
               there is no source to patch: device-tree/qemu-virt/build-dtb \
               of pynq-alloc dumps the DTB of the exact machine runqemu starts \
               (QB_MACHINE, QB_CPU, QB_SMP and PYNQ_ALLOC_QEMU_MEMORY) and \
               applies the reserved-memory + u-dma-buf overlay; \
               pynq-alloc-image boots the result through QB_DTB."
HOMEPAGE = "https://github.com/ikwzm/udmabuf"
SECTION = "bsp"
LICENSE = "GPL-2.0-only | MIT"
LIC_FILES_CHKSUM = "file://qemu-virt/pynq-alloc-virt.dtso;beginline=1;endline=1;md5=ff274dff54b2141c2f26ec70953dd7c2"

DEPENDS = "dtc-native qemu-system-native"

# device-tree/ of the repository that holds this layer (sources and script).
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${PYNQ_ALLOC_REPO_DIR}:"
SRC_URI = "file://device-tree/"

# Unpacked into UNPACKDIR on newer series, into WORKDIR on scarthgap.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/device-tree"

inherit deploy

COMPATIBLE_MACHINE = "^qemuarm64$"

PYNQ_ALLOC_QEMU_DTB ?= "pynq-alloc-${MACHINE}.dtb"
# "-smp 4" -> 4 (QEMU's default is 1 CPU when QB_SMP is empty)
PYNQ_ALLOC_QEMU_SMP = "${@(d.getVar('QB_SMP') or '-smp 1').split()[-1]}"

do_configure[noexec] = "1"

do_compile() {
    bash ${S}/qemu-virt/build-dtb \
        --qemu qemu-system-aarch64 \
        --machine ${@d.getVar('QB_MACHINE').split()[-1]} \
        --cpu ${@d.getVar('QB_CPU').split()[-1]} \
        --smp ${PYNQ_ALLOC_QEMU_SMP} \
        --memory ${PYNQ_ALLOC_QEMU_MEMORY} \
        --out ${B}/${PYNQ_ALLOC_QEMU_DTB}
}

do_install[noexec] = "1"

do_deploy() {
    install -m 0644 ${B}/${PYNQ_ALLOC_QEMU_DTB} ${DEPLOYDIR}/
}
addtask deploy after do_compile before do_build

PACKAGE_ARCH = "${MACHINE_ARCH}"
