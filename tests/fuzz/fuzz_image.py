"""Fuzz target: bytes -> lenet_fast.cli.read_image (the command line's image reader).

Every input must give a 28 x 28 or 32 x 32 uint8 array or raise cli.CommandError naming the
file; anything else (another exception, a crash, a hang, runaway memory -- e.g. a header that
declares a huge image) is a bug.  The first byte picks the file name's suffix (Pillow detects the
format from the content; the suffix only decides whether the command line reads the file).
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness

with _harness.instrumented_imports():
    from lenet_fast import cli

from PIL import Image

_DIRECTORY = tempfile.mkdtemp(
    prefix="fuzz-image-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
)


def test_one_input(data):
    suffix = cli.IMAGE_SUFFIXES[data[0] % len(cli.IMAGE_SUFFIXES)] if data else ".png"
    path = os.path.join(_DIRECTORY, f"image{suffix}")
    with open(path, "wb") as file:
        file.write(data[1:])
    try:
        array = cli.read_image(path, Image)
    except cli.CommandError:
        return
    assert array.dtype == "uint8" and array.shape in cli.IMAGE_SIZES, (array.dtype, array.shape)


if __name__ == "__main__":
    _harness.run(test_one_input, "image")
