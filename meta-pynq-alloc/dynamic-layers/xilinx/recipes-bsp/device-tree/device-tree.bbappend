# meta-xilinx-core's device-tree recipe (CONFIG_DTFILE/SYSTEM_DTFILE flows):
# pynq-alloc's DMA pools and u-dma-buf nodes in the board DTB of ZynqMP and
# Zynq-7000 machines (classes-recipe/pynq_alloc_board_dtsi.bbclass).
# Defaults: ZCU102 for ZynqMP, ZC702 for Zynq-7000; local.conf chooses
# another board file of device-tree/, e.g.
#   PYNQ_ALLOC_DTSI:zynqmp = "zynqmp/zcu104-pynq-alloc.dtsi"
PYNQ_ALLOC_DTSI:zynqmp ??= "zynqmp/zcu102-pynq-alloc.dtsi"
PYNQ_ALLOC_DTSI:zynq ??= "zynq7000/zc702-pynq-alloc.dtsi"

# Only ZynqMP and Zynq-7000 machines (their SoC overrides) get the class: the
# DTB and the tasks of every other machine stay as meta-xilinx makes them.
inherit_defer ${@'pynq_alloc_board_dtsi' if {'zynq', 'zynqmp'} & set(d.getVar('MACHINEOVERRIDES').split(':')) else ''}
