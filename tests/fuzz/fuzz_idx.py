"""Fuzz target: bytes -> lenet_fast.datasets.read_idx (raw, or gzip-compressed by the target).

Every input must be read or raise DataFileError; anything else is a bug.  The first byte picks
whether the rest is written as it is, gzip-compressed, or gzip-compressed and then mutated.
"""

import gzip
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness

with _harness.instrumented_imports():
    from lenet_fast.datasets import DataFileError, IdxReader

_DIRECTORY = tempfile.mkdtemp(
    prefix="fuzz-idx-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
)
PATH = os.path.join(_DIRECTORY, "input.idx")


def build_file(data):
    mode = data[0] % 3 if data else 0
    content = data[1:]
    if mode == 0:
        return content
    compressed = bytearray(gzip.compress(content, mtime=0))
    if mode == 2 and len(data) > 3:
        compressed[(data[1] * 256 + data[2]) % len(compressed)] ^= data[3] | 1
    return bytes(compressed)


def test_one_input(data):
    with open(PATH, "wb") as file:
        file.write(build_file(data))
    items = (data[-1] % 7) + 1 if data else None
    try:
        with IdxReader(PATH) as reader:
            total = 0
            for block in reader.chunks(items):
                assert block.shape[1:] == reader.shape[1:] and block.dtype == reader.dtype
                total += len(block)
            assert total == reader.shape[0]
    except DataFileError:
        pass


if __name__ == "__main__":
    _harness.run(test_one_input, "idx")
