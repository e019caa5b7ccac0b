# meta-xilinx-core's device-tree recipe (CONFIG_DTFILE/SYSTEM_DTFILE flows):
# add pynq-alloc's reserved-memory + u-dma-buf nodes to the board DTB of
# ZynqMP and Zynq-7000 machines (and change nothing for any other machine).
# The .dtsi files come from device-tree/ of the repository that holds this
# layer and are #included (through cpp, so their macros expand) at the end
# of the board's top-level .dts.
#
# Which board file of device-tree/ to include, e.g. in local.conf
#   PYNQ_ALLOC_DTSI:zynqmp = "zynqmp/kv260-pynq-alloc.dtsi"
# (empty: add nothing). Defaults: ZCU102 for ZynqMP, ZC702 for Zynq-7000.
PYNQ_ALLOC_DTSI:zynqmp ??= "zynqmp/zcu102-pynq-alloc.dtsi"
PYNQ_ALLOC_DTSI:zynq ??= "zynq7000/zc702-pynq-alloc.dtsi"

# Unpacked into UNPACKDIR on newer series, into WORKDIR on scarthgap.
PYNQ_ALLOC_DT_DIR:zynqmp = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/device-tree"
PYNQ_ALLOC_DT_DIR:zynq = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/device-tree"

FILESEXTRAPATHS:prepend:zynqmp := "${PYNQ_ALLOC_REPO_DIR}:"
FILESEXTRAPATHS:prepend:zynq := "${PYNQ_ALLOC_REPO_DIR}:"
SRC_URI:append:zynqmp = " file://device-tree/"
SRC_URI:append:zynq = " file://device-tree/"
DT_INCLUDE:append:zynqmp = " ${PYNQ_ALLOC_DT_DIR} ${PYNQ_ALLOC_DT_DIR}/include"
DT_INCLUDE:append:zynq = " ${PYNQ_ALLOC_DT_DIR} ${PYNQ_ALLOC_DT_DIR}/include"

do_configure:append:zynqmp() {
    for f in ${PYNQ_ALLOC_DTSI}; do
        [ -e "${PYNQ_ALLOC_DT_DIR}/$f" ] || bbfatal "PYNQ_ALLOC_DTSI: ${PYNQ_ALLOC_DT_DIR}/$f does not exist"
        echo "#include \"$f\"" >> ${DT_FILES_PATH}/${BASE_DTS}.dts
    done
}
do_configure:append:zynq() {
    for f in ${PYNQ_ALLOC_DTSI}; do
        [ -e "${PYNQ_ALLOC_DT_DIR}/$f" ] || bbfatal "PYNQ_ALLOC_DTSI: ${PYNQ_ALLOC_DT_DIR}/$f does not exist"
        echo "#include \"$f\"" >> ${DT_FILES_PATH}/${BASE_DTS}.dts
    done
}
