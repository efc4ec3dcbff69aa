"""Shared driver of the fuzz targets in this folder.

Each target defines ``test_one_input(data: bytes)``, which must return normally for every input:
expected rejections (the documented exception types) are caught inside the target, so anything
that escapes -- another exception, a crash, a hang, runaway memory -- is a bug.

``run(test_one_input, name)`` fuzzes the target for ``LENET_FAST_FUZZ_SECONDS`` (default 20)
starting from the committed seed corpus ``corpus/<name>/``:

* with atheris (libFuzzer, coverage-guided over the instrumented ``lenet_fast`` Python code) when
  it is installed and ``LENET_FAST_FUZZ_ENGINE`` is not ``builtin``; new inputs go to a temporary
  directory, never into the committed corpus; crash inputs go to ``LENET_FAST_FUZZ_ARTIFACTS``
  (default: the current directory);
* otherwise with a small built-in mutational fuzzer (random byte flips, inserts, deletions,
  interesting integers and splices of corpus files; not coverage-guided), which writes a failing
  input to the same artifacts directory and re-raises.

``python fuzz_x.py some/file`` runs the target once on that file (to reproduce a crash).
Exit status 0 means no failure was found.
"""

import os
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RSS_LIMIT_MB = 2048


def seconds():
    return float(os.environ.get("LENET_FAST_FUZZ_SECONDS", "20"))


def corpus_files(name):
    return sorted(path for path in (HERE / "corpus" / name).glob("*") if path.is_file())


def use_atheris():
    if os.environ.get("LENET_FAST_FUZZ_ENGINE", "") == "builtin":
        return None
    try:
        import atheris
    except ImportError:
        return None
    return atheris


def instrumented_imports():
    """A context manager instrumenting lenet_fast for coverage when atheris runs the target."""
    atheris = use_atheris()
    if atheris is None:
        import contextlib

        return contextlib.nullcontext()
    return atheris.instrument_imports(include=["lenet_fast"])


class ByteReader:
    """Structured choices decoded from fuzz bytes (deterministic; zeros once the bytes run out)."""

    def __init__(self, data):
        self.data, self.position = data, 0

    def byte(self):
        if self.position >= len(self.data):
            return 0
        self.position += 1
        return self.data[self.position - 1]

    def integer(self, low, high):
        """An integer in [low, high]."""
        span = high - low + 1
        value = 0
        for _ in range((span.bit_length() + 7) // 8):
            value = value * 256 + self.byte()
        return low + value % span

    def choice(self, options):
        return options[self.integer(0, len(options) - 1)]

    def flag(self):
        return self.byte() & 1 == 1

    def take(self, count):
        chunk = self.data[self.position : self.position + count]
        self.position += len(chunk)
        return chunk

    def rest(self):
        return self.take(len(self.data))


_INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate(data, corpus, rng):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        action = rng.randrange(7)
        if action == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif action == 1 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif action == 2:
            data[rng.randrange(len(data) + 1) : 0] = bytes(
                rng.randrange(256) for _ in range(rng.randint(1, 8))
            )
        elif action == 3 and data:
            start = rng.randrange(len(data))
            del data[start : start + rng.randint(1, 64)]
        elif action == 4 and len(data) >= 4:
            size = rng.choice([1, 2, 4])
            start = rng.randrange(len(data) - size + 1)
            value = rng.choice(_INTERESTING) & ((1 << 8 * size) - 1)
            data[start : start + size] = value.to_bytes(size, rng.choice(["little", "big"]))
        elif action == 5 and corpus:
            other = rng.choice(corpus)
            start = rng.randrange(len(data) + 1)
            data[start:] = other[rng.randrange(len(other) + 1) :]
        elif action == 6 and data:
            del data[rng.randrange(len(data)) :]
    return bytes(data)


def _builtin_fuzz(test_one_input, name, budget, artifacts):
    corpus = [path.read_bytes() for path in corpus_files(name)] or [b""]
    rng = random.Random(int(os.environ.get("LENET_FAST_FUZZ_SEED", time.time_ns() & 0xFFFFFFFF)))
    deadline, runs = time.monotonic() + budget, 0
    for data in corpus:  # every seed first
        _run_one(test_one_input, data, artifacts)
        runs += 1
    pool = list(corpus)
    while time.monotonic() < deadline:
        data = mutate(rng.choice(pool), corpus, rng)
        _run_one(test_one_input, data, artifacts)
        runs += 1
        if rng.random() < 0.01 and len(pool) < 512:
            pool.append(data)  # keep some mutants as new starting points
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"builtin fuzzer: {name}: {runs} runs in {budget:.0f} s, peak RSS {peak_mb:.0f} MB, no failure"
    )
    if peak_mb > RSS_LIMIT_MB:
        print(f"peak RSS {peak_mb:.0f} MB exceeds {RSS_LIMIT_MB} MB")
        sys.exit(1)


def _run_one(test_one_input, data, artifacts):
    try:
        test_one_input(data)
    except BaseException:
        path = Path(artifacts) / f"crash-{name_of(data)}"
        path.write_bytes(data)
        traceback.print_exc()
        print(f"failing input written to {path}")
        raise


def name_of(data):
    import hashlib

    return hashlib.sha1(data).hexdigest()


def run(test_one_input, name):
    artifacts = os.environ.get("LENET_FAST_FUZZ_ARTIFACTS", os.getcwd())
    if len(sys.argv) > 1:  # reproduce: run the given files once each
        for path in sys.argv[1:]:
            test_one_input(Path(path).read_bytes())
        print(f"{len(sys.argv) - 1} input(s) ran without failure")
        return
    atheris = use_atheris()
    if atheris is None:
        _builtin_fuzz(test_one_input, name, seconds(), artifacts)
        return
    with tempfile.TemporaryDirectory() as work:
        new_inputs = Path(work) / "new"
        seeds = Path(work) / "seeds"
        shutil.copytree(HERE / "corpus" / name, seeds)
        new_inputs.mkdir()
        atheris.Setup(
            [
                sys.argv[0],
                f"-max_total_time={max(1, int(seconds()))}",
                "-timeout=20",
                f"-rss_limit_mb={RSS_LIMIT_MB}",
                "-print_final_stats=1",
                f"-artifact_prefix={Path(artifacts).resolve()}/",
                str(new_inputs),
                str(seeds),
            ],
            test_one_input,
        )
        atheris.Fuzz()
