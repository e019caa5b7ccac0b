#
# SPDX-License-Identifier: MIT
#
"""testimage cases for pynq-alloc: the driver is bound and the ptest passes."""

from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.runtime.decorator.package import OEHasPackage


class PynqAllocTest(OERuntimeTestCase):
    """Runs on pynq-alloc-image-ptest under `bitbake -c testimage`."""

    @OEHasPackage(['kernel-module-u-dma-buf'])
    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_udmabuf_regions_exist(self):
        # The module is autoloaded and binds the device tree's u-dma-buf nodes.
        status, output = self.target.run('ls /sys/class/u-dma-buf/')
        self.assertEqual(status, 0, msg='u-dma-buf not loaded or no region: %s' % output)
        self.assertTrue(output.split(), msg='/sys/class/u-dma-buf/ is empty: '
                        'no u-dma-buf node in the device tree and no module parameter')

    @OEHasPackage(['python3-pynq-alloc'])
    @OETestDepends(['pynq_alloc.PynqAllocTest.test_udmabuf_regions_exist'])
    def test_pynq_alloc_info(self):
        status, output = self.target.run('pynq-alloc info --json')
        self.assertEqual(status, 0, msg=output)

    @OEHasPackage(['python3-pynq-alloc-ptest'])
    @OETestDepends(['pynq_alloc.PynqAllocTest.test_udmabuf_regions_exist'])
    def test_ptest_passes(self):
        status, output = self.target.run('ptest-runner -t 900 python3-pynq-alloc', timeout=1200)
        failed = [line for line in output.splitlines() if line.startswith('FAIL:')]
        self.assertEqual(failed, [], msg=output)
        self.assertIn('PASS:', output, msg='ptest ran no test:\n%s' % output)
        self.assertEqual(status, 0, msg=output)
