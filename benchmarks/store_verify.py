"""What the prepared stores' checksum costs: writing a store with its CRC-32, and `verify` (the
streaming check every run does when it opens a store), on a store of a given size.

    python benchmarks/store_verify.py                 # a 2 GB store (1 G uint16 ids) in a temporary folder
    python benchmarks/store_verify.py --gb 0.5 --repeats 5 --json out.json

The verify times are from the page cache (the store was just written, as when a run opens what
`prepare` wrote); a store read from disk for the first time costs what the disk needs to read it,
which the run's memory mapping would pay on its first epoch anyway.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from seqmodel.data import store

BLOCK = 1 << 24  # ids appended at a time


def write(folder: Path, tokens: int, vocab: int) -> float:
    """Write a store of `tokens` random ids; returns the seconds it took."""
    rng = np.random.default_rng(0)
    writer = store.StoreWriter(folder, store.id_dtype(vocab), {"what": "benchmark"})
    t0 = time.perf_counter()
    writer.start_document()
    for start in range(0, tokens, BLOCK):
        writer.append(rng.integers(0, vocab, min(BLOCK, tokens - start), dtype=np.uint16))
    writer.commit()
    return time.perf_counter() - t0


def crc_rate(nbytes: int = 1 << 28) -> float:
    """GB/s of zlib.crc32 on this machine (what the writer adds per byte)."""
    data = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    zlib.crc32(data)
    return nbytes / (time.perf_counter() - t0) / 1e9


def cpu_name() -> str:
    """The CPU's model name (what `lscpu | grep 'Model name'` shows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0, help="size of ids.bin in GB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    vocab = 50257
    tokens = int(args.gb * 1e9) // 2
    with tempfile.TemporaryDirectory(prefix="seqmodel-verify-") as tmp:
        folder = Path(tmp) / "store"
        written = write(folder, tokens, vocab)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            store.verify(folder, vocab)
            times.append(time.perf_counter() - t0)
    rate = crc_rate()
    result = {"cpu": cpu_name(), "ids_bytes": tokens * 2, "write_s": round(written, 2),
              "crc_gb_s": round(rate, 2), "crc_share_of_write_s": round(tokens * 2 / rate / 1e9, 2),
              "verify_s": [round(t, 3) for t in times], "verify_median_s": round(statistics.median(times), 3),
              "verify_gb_s": round(tokens * 2 / statistics.median(times) / 1e9, 2)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
