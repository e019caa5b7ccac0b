# nooelint: oelint.var.bbclassextend
# (above: a kernel module is built for the target's kernel only, never native)
SUMMARY = "u-dma-buf: user space mappable DMA buffers for Linux"
DESCRIPTION = "Out-of-tree kernel module that exposes physically contiguous \
               DMA buffers (reserved in the device tree or given as module \
               parameters) as /dev/udmabufN character devices with cache-sync \
               controls in /sys/class/u-dma-buf/. It is the driver behind \
               pynq-alloc's allocate()."
HOMEPAGE = "https://github.com/ikwzm/udmabuf"
BUGTRACKER = "https://github.com/ikwzm/udmabuf/issues"
SECTION = "kernel/modules"
LICENSE = "BSD-2-Clause"
LIC_FILES_CHKSUM = "file://LICENSE;md5=bebf0492502927bef0741aa04d1f35f5"

# Tag v5.5.0 (tag object 288f2f2281ebc95a7c8da9ca31d5be08e9aa0705)
# destsuffix=${BP}: the default S (${WORKDIR}/${BP} on scarthgap,
# ${UNPACKDIR}/${BP} on wrynose) on both series.
SRC_URI = "git://github.com/ikwzm/udmabuf.git;protocol=https;branch=master;destsuffix=${BP}"
SRCREV = "15bcde3cb960321e99983e227aeacc5807888333"

inherit module

# Nothing to add to EXTRA_OEMAKE: the upstream Makefile defaults
# CONFIG_U_DMA_BUF to m, takes the kernel tree from KERNEL_SRC (module.bbclass
# passes it), ARCH from the environment (kernel-arch.bbclass exports it) and
# only guesses CROSS_COMPILE when it is unset (module-base.bbclass exports it).

CVE_PRODUCT = "u-dma-buf"

# Load the module at boot: it then binds every "ikwzm,u-dma-buf" node of the
# device tree and creates /dev/udmabufN for each.
KERNEL_MODULE_AUTOLOAD += "u-dma-buf"

# Machines without a u-dma-buf node in their device tree can still get
# buffers from module parameters, written to ${modprobedir}/u-dma-buf.conf
# (/usr/lib/modprobe.d with systemd, /etc/modprobe.d without), e.g. in
# local.conf: UDMABUF_MODULE_OPTIONS = "udmabuf0=0x1000000".
# Sizes are stored as 32 bit by the driver: keep each one below 4 GiB.
UDMABUF_MODULE_OPTIONS ??= ""
KERNEL_MODULE_PROBECONF += "u-dma-buf"
module_conf_u-dma-buf = "${@'options u-dma-buf ' + d.getVar('UDMABUF_MODULE_OPTIONS') if d.getVar('UDMABUF_MODULE_OPTIONS') else ''}"

# Group dma and mode 0660 on /dev/udmabuf* and the sync files in sysfs.
RRECOMMENDS:${PN} += "u-dma-buf-udev-rules"
