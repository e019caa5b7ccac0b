# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.bbclassextend,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT
# (above: a DTB for one target machine, never native; part of pynq-alloc,
# which has no public home page or bug tracker yet and is no CVE product)
SUMMARY = "Board DTB: the kernel's board device tree plus the pynq-alloc DMA pools"
DESCRIPTION = "The device tree of a Zynq-7000 or ZynqMP board, built from the \
               board's dts in the kernel source the image builds \
               (PYNQ_ALLOC_BOARD_DTS, overlays PYNQ_ALLOC_BOARD_DTSO) with \
               pynq-alloc's reserved-memory + u-dma-buf board file \
               (PYNQ_ALLOC_DTSI) included at its end. Provides virtual/dtb \
               and deploys system.dtb, the file meta-xilinx's boot.scr loads."
SECTION = "bsp"
# The kernel's board dts are GPL-2.0-only (some dual-licensed), pynq-alloc's
# files GPL-2.0-only OR MIT, the board files of this folder MIT.
LICENSE = "GPL-2.0-only & MIT"
LIC_FILES_CHKSUM = "file://include/pynq-alloc.dtsi;beginline=1;endline=1;md5=ff274dff54b2141c2f26ec70953dd7c2 \
                    file://${COMMON_LICENSE_DIR}/GPL-2.0-only;md5=801f80980d171dd6425610833a22dbe6 \
                    file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# Boards the kernel tree does not describe (see the files' headers).
SRC_URI = "file://pynq-z1.dts \
           file://pynq-z2.dts \
           file://rfsoc4x2.dts \
           "

inherit devicetree pynq_alloc_source

# device-tree/ of pynq-alloc's git repository at PYNQ_ALLOC_SRCREV (the class
# adds it to SRC_URI): the PYNQ_ALLOC_DTSI files and include/pynq-alloc.dtsi.
S = "${PYNQ_ALLOC_SRC}/device-tree"

COMPATIBLE_MACHINE = "^$"
COMPATIBLE_MACHINE:zynq = ".*"
COMPATIBLE_MACHINE:zynqmp = ".*"

# The board, set in local.conf (the kas/<board>.yml files do), e.g. ZCU102:
#   PYNQ_ALLOC_BOARD_DTS = "xilinx/zynqmp-zcu102-rev1.0.dts"
#   PYNQ_ALLOC_DTSI = "zynqmp/zcu102-pynq-alloc.dtsi"
# PYNQ_ALLOC_BOARD_DTS: the board's top-level dts, relative to the kernel's
#   arch/${ARCH}/boot/dts (devicetree.bbclass's KERNEL_INCLUDE), or one of
#   this recipe's files (pynq-z1.dts, pynq-z2.dts, rfsoc4x2.dts).
# PYNQ_ALLOC_BOARD_DTSO: overlays of the kernel tree applied after it, in
#   order, as the kernel's Makefile does for a SOM + carrier card (KV260:
#   "xilinx/zynqmp-sck-kv-g-revB.dtso").
# PYNQ_ALLOC_DTSI: pynq-alloc's board files (paths in device-tree/).
PYNQ_ALLOC_BOARD_DTS ??= ""
PYNQ_ALLOC_BOARD_DTSO ??= ""
PYNQ_ALLOC_DTSI ??= ""
# The DTB's name: zynqmp-zcu102-rev1.0-pynq-alloc.dtb for the ZCU102.
PYNQ_ALLOC_BOARD_DTB ?= "${@os.path.splitext(os.path.basename(d.getVar('PYNQ_ALLOC_BOARD_DTS')))[0]}-pynq-alloc"

# Only the top-level files do_configure writes are compiled; the board dts,
# pynq-alloc's files and the kernel's are found through the include path.
DT_FILES_PATH = "${WORKDIR}/pynq-alloc-board"
PYNQ_ALLOC_LOCAL_DIR = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
DT_INCLUDE = "${DT_FILES_PATH} ${S} ${S}/include ${PYNQ_ALLOC_LOCAL_DIR} ${KERNEL_INCLUDE}"

# Without a board the recipe is skipped with the reason (as meta-xilinx's
# device-tree recipe does without CONFIG_DTFILE), so that bitbake names the
# variable to set when an image asks for virtual/dtb:
# nooelint: oelint.task.noanonpython
python () {
    if not d.getVar('PYNQ_ALLOC_BOARD_DTS'):
        raise bb.parse.SkipRecipe("PYNQ_ALLOC_BOARD_DTS is not set: set it in local.conf to the board's dts "
                                  "(e.g. \"xilinx/zynqmp-zcu102-rev1.0.dts\"), or build with kas/<board>.yml")
    if not d.getVar('PYNQ_ALLOC_DTSI'):
        raise bb.parse.SkipRecipe("PYNQ_ALLOC_DTSI is not set: set it in local.conf to pynq-alloc's board "
                                  "file (e.g. \"zynqmp/zcu102-pynq-alloc.dtsi\"), or build with kas/<board>.yml")
}

# One top-level .dts: the board's dts, then pynq-alloc's board files (their
# nodes merge into the board's / and /reserved-memory). One wrapper per
# overlay, compiled to .dtbo by devicetree.bbclass.
do_configure[cleandirs] = "${DT_FILES_PATH}"
do_configure() {
    for f in ${PYNQ_ALLOC_DTSI}; do
        if [ ! -e "${S}/$f" ]; then
            bbfatal "PYNQ_ALLOC_DTSI: $f is not a file of pynq-alloc's device-tree/ (${S}): name one, e.g. zynqmp/zcu102-pynq-alloc.dtsi"
        fi
    done
    dts="${DT_FILES_PATH}/${PYNQ_ALLOC_BOARD_DTB}.dts"
    echo "/* ${PYNQ_ALLOC_BOARD_DTS} with pynq-alloc's DMA pools (pynq-alloc-board-dtb) */" > "$dts"
    echo "#include \"${PYNQ_ALLOC_BOARD_DTS}\"" >> "$dts"
    for f in ${PYNQ_ALLOC_DTSI}; do
        echo "#include \"$f\"" >> "$dts"
    done
    n=0
    for o in ${PYNQ_ALLOC_BOARD_DTSO}; do
        echo "#include \"$o\"" > "${DT_FILES_PATH}/${PYNQ_ALLOC_BOARD_DTB}.overlay$n.dts"
        n=$(expr $n + 1)
    done
}

# A board dts or overlay that is in no include directory is named before cpp
# fails on it.
python do_compile:prepend() {
    includes = expand_includes("DT_INCLUDE", d)
    for name in [d.getVar("PYNQ_ALLOC_BOARD_DTS")] + (d.getVar("PYNQ_ALLOC_BOARD_DTSO") or "").split():
        if not any(os.path.isfile(os.path.join(i, name)) for i in includes):
            bb.fatal("%s (PYNQ_ALLOC_BOARD_DTS/PYNQ_ALLOC_BOARD_DTSO) is in none of %s: name a dts of the "
                     "kernel's arch/${ARCH}/boot/dts (e.g. xilinx/zynqmp-zcu102-rev1.0.dts) or a file of "
                     "this recipe" % (name, " ".join(sorted(includes))))
}

# The overlays go into the board DTB in order (fdtoverlay, from dtc-native),
# which is then the only file installed and deployed.
do_compile[cleandirs] = "${B}"
do_compile[postfuncs] += "pynq_alloc_apply_overlays"
pynq_alloc_apply_overlays[doc] = "Applies the PYNQ_ALLOC_BOARD_DTSO overlays to the board DTB (after do_compile)"
pynq_alloc_apply_overlays() {
    cd ${B}
    n=0
    for o in ${PYNQ_ALLOC_BOARD_DTSO}; do
        fdtoverlay -i ${PYNQ_ALLOC_BOARD_DTB}.dtb -o ${PYNQ_ALLOC_BOARD_DTB}.dtb ${PYNQ_ALLOC_BOARD_DTB}.overlay$n.dtbo
        rm ${PYNQ_ALLOC_BOARD_DTB}.overlay$n.dtbo
        n=$(expr $n + 1)
    done
}

# As meta-xilinx's device-tree recipe: system.dtb (what boot.scr loads from
# the boot partition, IMAGE_BOOT_FILES) and ${MACHINE}-system.dtb.
do_deploy:append() {
    ln -sf devicetree/${PYNQ_ALLOC_BOARD_DTB}.dtb ${DEPLOYDIR}/system.dtb
    ln -sf devicetree/${PYNQ_ALLOC_BOARD_DTB}.dtb ${DEPLOYDIR}/${MACHINE}-system.dtb
}
