"""How fast ``VectorIndex`` answers one query at a time, and how much it misses, at scale.

One command, re-runnable::

    python benchmarks/query_speed.py --sizes 100000,1000000 --dim 384 --queries 1000
    python benchmarks/query_speed.py --sizes 100000 --json --sweep

Two synthetic collections of unit vectors per size, in the model's real dimension:

* ``clustered``: rows drawn around ``--centres`` random unit centres of lognormal popularity,
  each with its own spread (within-theme cosines about 0.5 to 0.9), as real embeddings of
  photos of many subjects are.
* ``uniform``: uniform random unit rows. Nothing near anything: the documented worst case for
  any approximate index, which can only win by skipping what it does not scan.

Queries are held-out rows drawn the same way. For each collection: build seconds, the index
kind ``auto`` picks, p50/p99 latency of ``search(q, 10)`` one query at a time (as
``imgsearch query`` runs), recall@10 against exact search on ``--recall-queries`` of them,
the saved index's size (about its memory) and how long ``save`` and ``load`` take.
``--sweep`` adds recall and p50 at other ``nprobe`` values: the trade-off behind the choice.

Rows are generated in chunks so the only full-size arrays are the rows and the index.
With ``--json`` the table goes to stderr and one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from imgsearch.search import VectorIndex

K = 10
CHUNK = 100_000
SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def log(message: str) -> None:
    print(f"[query_speed] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    """CPU, cores and load: single-query latency on a shared machine needs all three."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} cores, faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads), load avg {load:.1f} at start"
    )


def _unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def generate(n: int, dim: int, distribution: str, centres: int, seed: int) -> np.ndarray:
    """``n`` unit rows; ``seed`` picks the rows, the centres are fixed by ``centres`` alone."""
    out = np.empty((n, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            out[start:stop] = _unit(rng.standard_normal((stop - start, dim), dtype=np.float32))
        return out
    themes = np.random.default_rng(centres)
    centre = _unit(themes.standard_normal((centres, dim), dtype=np.float32))
    weight = themes.lognormal(0.0, 1.0, centres)
    weight /= weight.sum()
    spread = themes.uniform(0.3, 1.0, centres).astype(np.float32)  # cosine 1 / (1 + s^2)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        label = rng.choice(centres, stop - start, p=weight)
        rows = rng.standard_normal((stop - start, dim), dtype=np.float32)
        rows *= spread[label, None] / np.sqrt(dim)
        rows += centre[label]
        out[start:stop] = _unit(rows)
    return out


def latencies(index: VectorIndex, queries: np.ndarray) -> np.ndarray:
    """Milliseconds per ``search`` call, one query at a time, after a short warm-up."""
    for query in queries[:10]:
        index.search(query, K)
    out = np.empty(len(queries))
    for n, query in enumerate(queries):
        start = time.perf_counter()
        index.search(query, K)
        out[n] = (time.perf_counter() - start) * 1e3
    return out


def recall(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-10 ids that the index returns."""
    found = [
        len({i for i, _ in index.search(q, K)} & set(t.tolist())) for q, t in zip(queries, truth)
    ]
    return sum(found) / truth.size


def sweep(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> Iterator[dict]:
    """Recall and p50 at other nprobe values, the chosen one restored afterwards."""
    chosen = index.nprobe
    try:
        for nprobe in sorted({*(p for p in SWEEP if p < index.nlist), chosen, index.nlist}):
            index.nprobe = nprobe
            yield {
                "nprobe": nprobe,
                "recall@10": round(recall(index, queries, truth), 4),
                "p50_ms": round(float(np.percentile(latencies(index, queries), 50)), 3),
            }
    finally:
        index.nprobe = chosen


def run_one(args: argparse.Namespace, n: int, distribution: str, workdir: Path) -> dict:
    log(f"n={n} {distribution}: generating")
    rows = generate(n, args.dim, distribution, args.centres, args.seed)
    queries = generate(args.queries, args.dim, distribution, args.centres, args.seed + 1)
    ids = np.arange(n, dtype=np.int64) * 3 + 7  # database ids: not row numbers
    log(f"n={n} {distribution}: building")
    start = time.perf_counter()
    index = VectorIndex(ids, rows, kind=args.kind)
    build_s = time.perf_counter() - start

    sample = queries[: args.recall_queries]
    _, rows_found = faiss.knn(sample, rows, K, metric=faiss.METRIC_INNER_PRODUCT)
    truth = ids[rows_found]
    del rows
    log(f"n={n} {distribution}: {index.kind} nlist={index.nlist} nprobe={index.nprobe}, timing")
    times = latencies(index, queries)
    result: dict[str, Any] = {
        "n": n,
        "distribution": distribution,
        "kind": index.kind,
        "build_s": round(build_s, 2),
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "recall@10": round(recall(index, sample, truth), 4),
        "index_mb": 0.0,
        "nlist": index.nlist,
        "nprobe": index.nprobe,
    }
    if args.sweep and index.kind == "ivf":
        log(f"n={n} {distribution}: sweeping nprobe")
        sweep_sample = sample[: min(len(sample), 200)]
        result["sweep"] = list(sweep(index, sweep_sample, truth[: len(sweep_sample)]))

    path = workdir / f"{distribution}-{n}.vix"
    start = time.perf_counter()
    index.save(path)
    result["save_s"] = round(time.perf_counter() - start, 2)
    result["index_mb"] = round(path.stat().st_size / 2**20, 1)
    expected = index.search(queries[0], K)
    del index
    start = time.perf_counter()
    loaded = VectorIndex.load(path)
    result["load_s"] = round(time.perf_counter() - start, 2)
    if loaded.search(queries[0], K) != expected:
        raise RuntimeError("the loaded index answers differently from the one saved")
    path.unlink()
    log(f"n={n} {distribution}: {result}")
    return result


def table(result: dict, out: Any) -> None:
    print(f"machine: {result['machine']}", file=out)
    print(f"dim {result['dim']}, k={K}, single-query latency", file=out)
    head = (
        f"{'n':>9} {'distribution':<12} {'kind':<5} {'nlist':>6} {'nprobe':>6} {'build_s':>8} "
        f"{'p50_ms':>8} {'p99_ms':>8} {'recall@10':>9} {'index_mb':>9} {'save_s':>7} {'load_s':>7}"
    )
    print(head, file=out)
    for r in result["results"]:
        print(
            f"{r['n']:>9} {r['distribution']:<12} {r['kind']:<5} {r['nlist']:>6} "
            f"{r['nprobe']:>6} {r['build_s']:>8.2f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['recall@10']:>9.4f} {r['index_mb']:>9.1f} {r['save_s']:>7.2f} {r['load_s']:>7.2f}",
            file=out,
        )
    for r in result["results"]:
        if "sweep" in r:
            print(f"\nnprobe sweep, n={r['n']} {r['distribution']}:", file=out)
            print(f"{'nprobe':>8} {'recall@10':>9} {'p50_ms':>8}", file=out)
            for s in r["sweep"]:
                print(f"{s['nprobe']:>8} {s['recall@10']:>9.4f} {s['p50_ms']:>8.3f}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="100000,1000000", help="comma-separated collection sizes"
    )
    parser.add_argument("--dim", type=int, default=384, help="384 offline model, 512 CLIP")
    parser.add_argument("--queries", type=int, default=1000, help="timed single queries")
    parser.add_argument(
        "--recall-queries", type=int, default=500, help="of those, checked against exact"
    )
    parser.add_argument(
        "--distributions", default="clustered,uniform", help="clustered and/or uniform"
    )
    parser.add_argument("--centres", type=int, default=3000, help="themes, clustered rows")
    parser.add_argument("--kind", default="auto", choices=["auto", "exact", "ivf"])
    parser.add_argument("--sweep", action="store_true", help="recall/p50 at other nprobe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where saved indexes go for a moment (default tmp)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    distributions = [d.strip() for d in args.distributions.split(",") if d.strip()]
    for d in distributions:
        if d not in ("clustered", "uniform"):
            parser.error(f"unknown distribution {d!r}")

    result: dict[str, Any] = {"machine": machine(), "dim": args.dim, "results": []}
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for n in sizes:
            for distribution in distributions:
                result["results"].append(run_one(args, n, distribution, Path(workdir)))
    table(result, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
