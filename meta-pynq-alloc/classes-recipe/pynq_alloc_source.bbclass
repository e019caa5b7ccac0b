# pynq-alloc's own sources (python-pynq-alloc/, tests/target/, device-tree/)
# for the recipes of this layer: the pynq-alloc git repository
# (PYNQ_ALLOC_GIT_URI) at the pinned commit PYNQ_ALLOC_SRCREV, both set in
# conf/layer.conf, unpacked to ${PYNQ_ALLOC_SRC}. Only the files committed in
# that commit reach the build. To build a working tree instead, use
# externalsrc from local.conf (kas/working-tree.yml) or `devtool modify`.

# Unpacked into UNPACKDIR on newer series, into WORKDIR on scarthgap.
PYNQ_ALLOC_SRC = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/pynq-alloc"

SRC_URI += "${PYNQ_ALLOC_GIT_URI};branch=${PYNQ_ALLOC_GIT_BRANCH};name=pynq-alloc;destsuffix=pynq-alloc"
SRCREV_pynq-alloc = "${PYNQ_ALLOC_SRCREV}"
