# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.bbclassextend,oelint.var.suggestedvar.CVE_PRODUCT
# (above: these files are pynq-alloc's own, which has no public home page or
# bug tracker yet; data for the target's udev and init only, no native
# variant; the driver recipe u-dma-buf carries CVE_PRODUCT)
SUMMARY = "udev rule and /run/pynq-alloc for the u-dma-buf devices"
DESCRIPTION = "Without this rule /dev/udmabufN is 0600 root and the sysfs \
               sync files are root-only. The rule hands /dev/udmabuf* and the \
               writable sync_* files of /sys/class/u-dma-buf/* to group dma \
               with mode 0660 and sets sync_mode 2 (O_SYNC mappings are \
               write-combine); a tmpfiles.d entry (systemd) or a volatiles \
               entry (sysvinit) makes /run/pynq-alloc, the allocator's ledger \
               directory, setgid dma at boot. Members of dma can then \
               allocate and sync buffers without root."
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://60-u-dma-buf.rules;beginline=1;endline=1;md5=b2dccaa94b3629a08bfb4f983cad6f89"

SRC_URI = "file://60-u-dma-buf.rules \
           file://pynq-alloc.conf \
           file://volatiles.99_pynq-alloc \
           "

# Unpacked into UNPACKDIR on newer series, into WORKDIR on scarthgap.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch useradd

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system dma"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

# Each init system reads only its own file and ignores the other's: the
# tmpfiles.d entry is applied by systemd-tmpfiles at boot (systemd), the
# volatiles entry by populate-volatile.sh (sysvinit initscripts).
do_install() {
    install -D -m 0644 ${S}/60-u-dma-buf.rules ${D}${nonarch_base_libdir}/udev/rules.d/60-u-dma-buf.rules
    install -D -m 0644 ${S}/pynq-alloc.conf ${D}${nonarch_libdir}/tmpfiles.d/pynq-alloc.conf
    install -D -m 0644 ${S}/volatiles.99_pynq-alloc ${D}${sysconfdir}/default/volatiles/99_pynq-alloc
}

# (the udev rule and the volatiles file are in the default FILES already)
FILES:${PN} += "${nonarch_libdir}/tmpfiles.d/pynq-alloc.conf"
