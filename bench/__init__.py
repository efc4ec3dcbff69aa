"""Benchmarks of lenet_fast; they need a source checkout and are not part of the installed package.

* `peers`: lenet_fast against ONNX Runtime, OpenVINO, PyTorch and NumPy, measured fairly in one
  process (the table in README.md and docs/PERFORMANCE.md); `report` runs it as a script
  (``python bench/report.py --help``); `test_peers` tests it in seconds (part of ``pytest``).
* `test_bench`: the same comparisons under pytest-benchmark (``pytest bench/``).
* `threads`: thread scaling beside a quiet and a busy neighbour (``python -m bench.threads``).
* `scaling`: one thread, two threads and a Dask cluster (``python -m bench.scaling``).

Random weights and images come from ``tests/factories.py``, the one factory the tests use too.
This file makes ``bench`` a package, so ``pytest bench/`` puts the repository root on
``sys.path`` and ``python -m bench.scaling`` works.
"""
