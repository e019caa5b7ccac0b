# Adds pynq-alloc's reserved-memory + u-dma-buf nodes to a board DTB built by
# meta-xilinx-core's device-tree recipe (inherited by
# dynamic-layers/xilinx/recipes-bsp/device-tree/device-tree.bbappend only on
# ZynqMP and Zynq-7000 machines, so that no other machine's DTB changes).
#
# PYNQ_ALLOC_DTSI: the board files of pynq-alloc's device-tree/ to #include
# (through cpp, so their macros expand) at the end of the board's top-level
# .dts, e.g. in local.conf PYNQ_ALLOC_DTSI:zynqmp = "zynqmp/kv260-pynq-alloc.dtsi"
# (empty: add nothing). They come from pynq-alloc's git repository at
# PYNQ_ALLOC_SRCREV (conf/layer.conf); PYNQ_ALLOC_DT_DIR may point at a
# working tree's device-tree/ instead.

# Unpacked into UNPACKDIR on newer series, into WORKDIR on scarthgap.
PYNQ_ALLOC_DT_DIR ?= "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/pynq-alloc/device-tree"

PYNQ_ALLOC_DTSI ??= ""

SRC_URI += "${PYNQ_ALLOC_GIT_URI};branch=${PYNQ_ALLOC_GIT_BRANCH};name=pynq-alloc;destsuffix=pynq-alloc"
SRCREV_pynq-alloc = "${PYNQ_ALLOC_SRCREV}"
DT_INCLUDE:append = " ${PYNQ_ALLOC_DT_DIR} ${PYNQ_ALLOC_DT_DIR}/include"

# Appends one #include per PYNQ_ALLOC_DTSI file after a marker line; a
# re-run of do_configure on the same unpacked tree first drops what the
# previous run added, so the .dts never gets the same nodes twice. A .dtb in
# CONFIG_DTFILE cannot take them: that is an error naming the fix, not a
# stray .dts next to it.
do_configure:append() {
    dts="${DT_FILES_PATH}/${BASE_DTS}.dts"
    if [ -e "$dts" ]; then
        sed -i '\|^/\* pynq-alloc: PYNQ_ALLOC_DTSI \*/$|,$d' "$dts"
    fi
    if [ -n "${PYNQ_ALLOC_DTSI}" ] && [ ! -e "$dts" ]; then
        bbfatal "pynq-alloc: no $dts to add PYNQ_ALLOC_DTSI (${PYNQ_ALLOC_DTSI}) to: CONFIG_DTFILE must name the board's top-level .dts, not a .dtb; or set PYNQ_ALLOC_DTSI = \"\" to add nothing"
    fi
    if [ -n "${PYNQ_ALLOC_DTSI}" ]; then
        echo "/* pynq-alloc: PYNQ_ALLOC_DTSI */" >> "$dts"
    fi
    for f in ${PYNQ_ALLOC_DTSI}; do
        if [ ! -e "${PYNQ_ALLOC_DT_DIR}/$f" ]; then
            bbfatal "PYNQ_ALLOC_DTSI: ${PYNQ_ALLOC_DT_DIR}/$f does not exist: name a file of pynq-alloc's device-tree/, e.g. zynqmp/kv260-pynq-alloc.dtsi"
        fi
        echo "#include \"$f\"" >> "$dts"
    done
}
