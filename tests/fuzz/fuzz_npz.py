"""Fuzz target: bytes -> lenet_fast._weights.load_npz.

Every input must load or raise WeightFileError; anything else (another exception, a crash, a
hang, runaway memory) is a bug.  The first byte picks how the rest is used, so that mutations
also reach past the zip layer (whose CRCs random bytes rarely satisfy):

* 0: the whole file, as is;
* 1: the contents of the ten canonical members (and the metadata member) of a valid zip;
* 2: .npy members whose header dictionary text is fuzzed, with plausible data after it.
"""

import io
import os
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness

with _harness.instrumented_imports():
    from lenet_fast._weights import CANONICAL_KEYS, METADATA_KEY, WeightFileError, load_npz

MEMBER_NAMES = [f"{key}.npy" for key in CANONICAL_KEYS] + [
    f"{METADATA_KEY}.npy",
    "extra.npy",
    "x.txt",
]
_DIRECTORY = tempfile.mkdtemp(
    prefix="fuzz-npz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
)
PATH = os.path.join(_DIRECTORY, "input.npz")


def _zip_of(members, compressed):
    buffer = io.BytesIO()
    with zipfile.ZipFile(
        buffer, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    ) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return buffer.getvalue()


def build_file(data):
    reader = _harness.ByteReader(data)
    mode = reader.byte() % 3
    if mode == 0:
        return reader.rest()
    compressed = reader.flag()
    members = []
    for _ in range(reader.integer(0, 12)):
        name = reader.choice(MEMBER_NAMES)
        if mode == 1:
            content = reader.take(reader.integer(0, 4096))
        else:
            header = reader.take(reader.integer(0, 200))
            padding = (-(10 + len(header) + 1)) % 64
            content = (
                b"\x93NUMPY"
                + bytes([reader.choice([1, 2, 3]), 0])
                + (len(header) + padding + 1).to_bytes(2, "little")
                + header
                + b" " * padding
                + b"\n"
                + reader.take(reader.integer(0, 2048))
            )
        members.append((name, content))
    return _zip_of(members, compressed)


def test_one_input(data):
    with open(PATH, "wb") as file:
        file.write(build_file(data))
    try:
        load_npz(PATH, strict=bool(data[-1] & 1) if data else True)
    except WeightFileError:
        pass


if __name__ == "__main__":
    _harness.run(test_one_input, "npz")
