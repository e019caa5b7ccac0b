#
# SPDX-License-Identifier: MIT
#
"""testimage cases for pynq-alloc: the driver is bound, the udev rule and the
ledger directory are in place, the tool works and the ptest passes.

The package guards name real package names of the image manifest (what
OEHasPackage compares with), not RPROVIDES: "u-dma-buf" is the driver recipe's
meta package (the module itself is kernel-module-u-dma-buf-<kernel version>).
OERequirePackage fails the case, instead of skipping it, on an image that
lacks the package: these cases run on pynq-alloc-image-ptest, which must have
them all. tests/layer/test_bitbake.py checks each name against the packages
bitbake gives the image."""

from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.runtime.decorator.package import OERequirePackage


class PynqAllocTest(OERuntimeTestCase):
    """Runs on pynq-alloc-image-ptest under `bitbake -c testimage`."""

    @OERequirePackage(['u-dma-buf'])
    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_udmabuf_regions_exist(self):
        # The module is autoloaded and binds the device tree's u-dma-buf nodes.
        status, output = self.target.run('ls /sys/class/u-dma-buf/')
        self.assertEqual(status, 0, msg='u-dma-buf not loaded or no region: %s' % output)
        self.assertTrue(output.split(), msg='/sys/class/u-dma-buf/ is empty: '
                        'no u-dma-buf node in the device tree and no module parameter')

    @OERequirePackage(['u-dma-buf-udev-rules'])
    @OETestDepends(['pynq_alloc.PynqAllocTest.test_udmabuf_regions_exist'])
    def test_udev_rule_and_ledger_directory_are_applied(self):
        # 60-u-dma-buf.rules: root:dma 0660 on each device and its writable
        # sync files, sync_mode 2 (or 3); tmpfiles.d/volatiles: /run/pynq-alloc.
        status, names = self.target.run('ls /sys/class/u-dma-buf/')
        self.assertEqual(status, 0, msg=names)
        for name in names.split():
            paths = ['/dev/%s' % name] + ['/sys/class/u-dma-buf/%s/sync_%s' % (name, f)
                                          for f in ('mode', 'offset', 'size', 'direction',
                                                    'for_cpu', 'for_device')]
            for path in paths:
                status, output = self.target.run('stat -L -c "%%U:%%G %%a" %s' % path)
                self.assertEqual(status, 0, msg=output)
                self.assertEqual(output.strip(), 'root:dma 660',
                                 msg='%s: the udev rule did not apply' % path)
            status, output = self.target.run('cat /sys/class/u-dma-buf/%s/sync_mode' % name)
            self.assertEqual(status, 0, msg=output)
            self.assertIn(output.strip(), ('2', '3'),
                          msg='%s: sync_mode %s, not write-combine' % (name, output))
        status, output = self.target.run('stat -c "%U:%G %a" /run/pynq-alloc')
        self.assertEqual(status, 0, msg='/run/pynq-alloc missing: %s' % output)
        self.assertEqual(output.strip(), 'root:dma 2770', msg='/run/pynq-alloc')

    @OERequirePackage(['python3-pynq-alloc'])
    @OETestDepends(['pynq_alloc.PynqAllocTest.test_udmabuf_regions_exist'])
    def test_pynq_alloc_info(self):
        status, output = self.target.run('pynq-alloc info --json')
        self.assertEqual(status, 0, msg=output)

    @OERequirePackage(['python3-pynq-alloc-ptest'])
    @OETestDepends(['pynq_alloc.PynqAllocTest.test_udmabuf_regions_exist'])
    def test_ptest_passes(self):
        status, output = self.target.run('ptest-runner -t 900 python3-pynq-alloc', timeout=1200)
        failed = [line for line in output.splitlines() if line.startswith('FAIL:')]
        self.assertEqual(failed, [], msg=output)
        self.assertIn('PASS:', output, msg='ptest ran no test:\n%s' % output)
        self.assertEqual(status, 0, msg=output)
