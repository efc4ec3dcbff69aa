"""Benchmarks of lenet_fast against its peers: `peers` builds the engines, `test_bench` times them
under pytest-benchmark, `report` prints the side-by-side methodology table."""
