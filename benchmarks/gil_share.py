"""Who held the interpreter lock while ``add()`` ran its pipeline: per thread, from the raw
output of ``py-spy record --gil --threads -f raw`` (docs/performance.md).

The main thread counts only while it runs the pipeline (``local_runner``), without imports;
the model-loading thread not at all. A process pool's result thread (its
``_ExecutorManagerThread``) is marked as such, under its ``Thread-N`` name.

    py-spy record --gil --threads -r 200 -f raw -o gil.txt -- \\
        python3 benchmarks/add_variants.py --device cuda --variants default,default,default
    python benchmarks/gil_share.py gil.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

THREAD = re.compile(r"thread \((\d+)\): ([^;]*);")


def shares(lines: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, samples = line.rstrip().rpartition(" ")
        match = THREAD.match(stack)
        if match is None or not samples.isdigit() or match.group(2) == "imgsearch-load":
            continue
        name = match.group(2)
        if name == "MainThread" and (
            "local_runner.<locals>.run" not in stack or "_find_and_load" in stack
        ):
            continue
        if "_ExecutorManagerThread" in stack:
            name += " (pool results)"
        counts[name] += int(samples)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", help="py-spy's raw output (-f raw)")
    args = parser.parse_args()
    with open(args.raw) as file:
        counts = shares(file.readlines())
    total = sum(counts.values())
    if not total:
        print("no samples of add()'s pipeline in this file", file=sys.stderr)
        return 1
    for name, samples in counts.most_common():
        print(f"{name:40s} {samples:6d} {100 * samples / total:5.1f}%")
    print(f"{'total':40s} {total:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
