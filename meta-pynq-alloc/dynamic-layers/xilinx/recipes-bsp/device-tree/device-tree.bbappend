# meta-xilinx-core's device-tree recipe (CONFIG_DTFILE/SYSTEM_DTFILE flows):
# add pynq-alloc's reserved-memory + u-dma-buf nodes to the board DTB.
# The .dtsi files come from device-tree/ of the repository that holds this
# layer, and are #included (through cpp, so their macros expand) at the end
# of the board's top-level .dts.
FILESEXTRAPATHS:prepend := "${PYNQ_ALLOC_REPO_DIR}:"

PYNQ_ALLOC_DTSI ??= ""
PYNQ_ALLOC_DTSI:zynqmp ??= "zynqmp/pynq-alloc.dtsi"
PYNQ_ALLOC_DTSI:zynq ??= "zynq7000/pynq-alloc.dtsi"

SRC_URI:append = " file://device-tree/"
DT_INCLUDE:append = " ${PYNQ_ALLOC_DT_DIR} ${PYNQ_ALLOC_DT_DIR}/include"

PYNQ_ALLOC_DT_DIR = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/device-tree"

do_configure:append() {
    for f in ${PYNQ_ALLOC_DTSI}; do
        [ -e "${PYNQ_ALLOC_DT_DIR}/$f" ] || bbfatal "PYNQ_ALLOC_DTSI: ${PYNQ_ALLOC_DT_DIR}/$f does not exist"
        echo "#include \"$f\"" >> ${DT_FILES_PATH}/${BASE_DTS}.dts
    done
}
do_configure[vardeps] += "PYNQ_ALLOC_DTSI"
