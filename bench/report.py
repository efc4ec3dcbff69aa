"""``python bench/report.py [options]``: the benchmark table (see `bench.peers`).

The peers, the methodology and the options live in `bench.peers`; this script only makes the
repository importable (``bench`` and ``tests.factories``) when run as a file.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peers import main

if __name__ == "__main__":
    sys.exit(main())
