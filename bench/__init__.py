"""Benchmarks of lenet_fast that need a source checkout: `test_bench` (pytest-benchmark),
`scaling` (threads against a Dask cluster) and `report` (``lenet-fast bench`` as a script).
The peers and the report itself live in `lenet_fast.benchmark`.  This file makes ``bench`` a
package, so ``pytest bench/`` puts the repository root on ``sys.path`` and ``python -m
bench.scaling`` works."""
