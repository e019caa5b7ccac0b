# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.bbclassextend,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT
# (above: a DTB for one target machine, never native; part of pynq-alloc,
# which has no public home page or bug tracker yet and is no CVE product)
SUMMARY = "QEMU virt device tree with the pynq-alloc DMA pools"
DESCRIPTION = "QEMU's virt machine builds its device tree at run time, so \
               there is no source to patch: device-tree/qemu-virt/build-dtb \
               of pynq-alloc dumps the DTB of the exact machine runqemu starts \
               (QB_MACHINE, QB_CPU, QB_SMP and PYNQ_ALLOC_QEMU_MEMORY MiB) and \
               applies the reserved-memory + u-dma-buf overlay; \
               pynq-alloc-image boots the result through QB_DTB."
SECTION = "bsp"
LICENSE = "GPL-2.0-only | MIT"
LIC_FILES_CHKSUM = "file://qemu-virt/pynq-alloc-virt.dtso;beginline=1;endline=1;md5=ff274dff54b2141c2f26ec70953dd7c2"

DEPENDS = "dtc-native qemu-system-native"

# device-tree/ (sources and script) of pynq-alloc's git repository at
# PYNQ_ALLOC_SRCREV (the class adds it to SRC_URI).
S = "${PYNQ_ALLOC_SRC}/device-tree"

inherit pynq_alloc_source deploy

COMPATIBLE_MACHINE = "^qemuarm64$"

# "-smp 4" -> 4 (QEMU's default is 1 CPU when QB_SMP is empty)
PYNQ_ALLOC_QEMU_SMP = "${@(d.getVar('QB_SMP') or '-smp 1').split()[-1]}"

do_configure[noexec] = "1"

do_compile() {
    bash ${S}/qemu-virt/build-dtb \
        --qemu qemu-system-aarch64 \
        --machine ${@d.getVar('QB_MACHINE').split()[-1]} \
        --cpu ${@d.getVar('QB_CPU').split()[-1]} \
        --smp ${PYNQ_ALLOC_QEMU_SMP} \
        --memory ${PYNQ_ALLOC_QEMU_MEMORY}M \
        --out ${B}/${PYNQ_ALLOC_QEMU_DTB}
}

do_install[noexec] = "1"

do_deploy() {
    install -m 0644 ${B}/${PYNQ_ALLOC_QEMU_DTB} ${DEPLOYDIR}/
}
addtask deploy after do_compile before do_build

PACKAGE_ARCH = "${MACHINE_ARCH}"
