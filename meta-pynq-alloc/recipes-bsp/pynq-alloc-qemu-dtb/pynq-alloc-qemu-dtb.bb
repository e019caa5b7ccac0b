SUMMARY = "QEMU virt device tree with the pynq-alloc DMA pools"
DESCRIPTION = "QEMU's virt machine builds its device tree at run time, so there \
is no source to patch: this recipe dumps the DTB of the exact machine runqemu \
starts (QB_MACHINE, QB_CPU, QB_SMP, PYNQ_ALLOC_QEMU_MEM), applies the \
reserved-memory + u-dma-buf overlays of pynq-alloc's device-tree/qemu-virt/ \
and deploys the result, which pynq-alloc-image boots through QB_DTB."
HOMEPAGE = "https://github.com/pynq-alloc/pynq-alloc"
SECTION = "bsp"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

DEPENDS = "qemu-system-native dtc-native"

# The overlays come from the repository that holds this layer (device-tree/).
FILESEXTRAPATHS:prepend := "${PYNQ_ALLOC_REPO_DIR}:"
SRC_URI = "file://device-tree/"

S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/device-tree"

inherit deploy

COMPATIBLE_MACHINE = "^qemuarm64$"

PYNQ_ALLOC_QEMU_DTB ?= "pynq-alloc-${MACHINE}.dtb"

do_configure[noexec] = "1"

do_compile() {
    # -machine virt,dumpdtb=FILE writes the DTB QEMU would hand the guest and exits.
    qemu-system-aarch64 ${QB_MACHINE},dumpdtb=${B}/qemu-virt.dtb ${QB_CPU} ${QB_SMP} \
        ${PYNQ_ALLOC_QEMU_MEM} -nographic -nodefaults
    overlays=""
    for dtso in ${S}/qemu-virt/*.dtso; do
        [ -e "$dtso" ] || bbfatal "no overlay in device-tree/qemu-virt/ of ${PYNQ_ALLOC_REPO_DIR}"
        name=$(basename "$dtso" .dtso)
        ${BUILD_CPP} -nostdinc -undef -D__DTS__ -x assembler-with-cpp -P \
            -I ${S}/include -I ${S} -o ${B}/$name.pp.dtso "$dtso"
        dtc -@ -W error -I dts -O dtb -o ${B}/$name.dtbo ${B}/$name.pp.dtso
        overlays="$overlays ${B}/$name.dtbo"
    done
    fdtoverlay -i ${B}/qemu-virt.dtb -o ${B}/${PYNQ_ALLOC_QEMU_DTB} $overlays
}

do_install[noexec] = "1"

do_deploy() {
    install -m 0644 ${B}/${PYNQ_ALLOC_QEMU_DTB} ${DEPLOYDIR}/
}
addtask deploy after do_compile before do_build

PACKAGE_ARCH = "${MACHINE_ARCH}"
