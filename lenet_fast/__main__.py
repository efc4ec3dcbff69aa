"""``python -m lenet_fast``: the ``lenet-fast`` command line (see `lenet_fast.cli`)."""

import sys

from .cli import main

sys.exit(main())
