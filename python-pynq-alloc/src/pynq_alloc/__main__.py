"""``python3 -m pynq_alloc`` is the ``pynq-alloc`` command."""

import sys

from .cli import main

sys.exit(main())
