# nooelint: oelint.var.bbclassextend,oelint.var.suggestedvar.CVE_PRODUCT
# (above: a udev rule is data for the target's udev: no native variant; no
# CVE product of its own, the driver recipe u-dma-buf carries CVE_PRODUCT)
SUMMARY = "udev rule giving the u-dma-buf devices to group dma"
DESCRIPTION = "Without this rule /dev/udmabufN is 0600 root and the sysfs \
               sync files are root-only. The rule hands /dev/udmabuf* and the \
               writable sync_* files of /sys/class/u-dma-buf/* to group dma \
               with mode 0660, and makes /run/pynq-alloc (the allocator ledger \
               directory, setgid dma), so that members of dma can allocate and sync \
               buffers without root."
HOMEPAGE = "https://github.com/ikwzm/udmabuf"
BUGTRACKER = "https://github.com/ikwzm/udmabuf/issues"
SECTION = "kernel/modules"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://60-u-dma-buf.rules;beginline=1;endline=1;md5=b2dccaa94b3629a08bfb4f983cad6f89"

SRC_URI = "file://60-u-dma-buf.rules"

# Unpacked into UNPACKDIR on newer series, into WORKDIR on scarthgap.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch useradd

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system dma"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${nonarch_base_libdir}/udev/rules.d
    install -m 0644 ${S}/60-u-dma-buf.rules ${D}${nonarch_base_libdir}/udev/rules.d/
}

FILES:${PN} += "${nonarch_base_libdir}/udev/rules.d/60-u-dma-buf.rules"
