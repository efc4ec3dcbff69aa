"""``python bench/report.py [options]``: the benchmark table, same as ``lenet-fast bench``.

The peers, the methodology and the options live in `lenet_fast.benchmark`; this script only
makes the repository importable when run from a source checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lenet_fast.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
