"""The compressed search index at 10^7 vectors: memory, build time, latency and recall.

One command, re-runnable::

    python benchmarks/large_index.py --n 10000000 --dim 512 --queries 1000 --json
    python benchmarks/large_index.py --n 1000000 --distribution uniform --json

Synthetic unit vectors of a real dimension (512: CLIP ViT-B/32; 384: the offline model),
drawn as ``query_speed.py`` draws them: ``clustered`` around ``--centres`` random centres of
lognormal popularity, each with its own spread, as real embeddings are; or ``uniform``, the
worst case. They are generated a chunk at a time and streamed straight into
``VectorIndex.from_chunks`` under a ``--memory`` budget they exceed (the product's default,
4 GB), which keeps them on disk as float16 in ``--workdir`` and holds only the codes; the
exact top-10 of a sample of queries is kept up to date from the same float32 chunks as they
pass (a chunked exact scan), so no full-size array ever exists in memory.

Reported: peak RSS of this process (``getrusage``: generation, ground truth and build
included), the index's own memory and its files on disk, build seconds per step (train + add
is the build; writing the vectors and calibrating come with it), the saved index's load
time, p50/p99 latency of ``search(q, 10)`` one query at a time (as ``imgsearch query`` runs,
on the loaded index), and recall@10 against the exact top-10 with and without re-ranking.
The machine's load average before and after says how shared the cores were.

FAISS's OpenMP threads are set to wait passively unless the environment says otherwise: on
a shared 2-core machine their default busy wait made k-means training 4-5x slower.
With ``--json`` the table goes to stderr and one JSON object to stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before FAISS loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from imgsearch import config  # noqa: E402
from imgsearch.search import VectorIndex, flat_bytes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_speed import generate, latencies, machine  # noqa: E402

K = 10
CHUNK = 65536
REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[large_index] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Stream:
    """The collection, generated a chunk at a time as the index reads it, each chunk also
    scanned for the exact top-10 of the recall queries; ``seconds`` is the time spent here,
    which is not the index's."""

    def __init__(self, args: argparse.Namespace, sample: np.ndarray):
        self.args = args
        self.sample = sample
        self.truth = faiss.ResultHeap(len(sample), K, keep_max=True)
        self.seconds = 0.0

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        a = self.args
        for number, start in enumerate(range(0, a.n, CHUNK)):
            clock = time.perf_counter()
            size = min(CHUNK, a.n - start)
            # Chunk seeds start far from the queries' (seed + 1): no query is in the data.
            seed = a.seed * 1_000_003 + 1000 + number
            rows = generate(size, a.dim, a.distribution, a.centres, seed)
            scores, found = faiss.knn(self.sample, rows, K, metric=faiss.METRIC_INNER_PRODUCT)
            self.truth.add_result(scores, found + start)
            ids = np.arange(start, start + size, dtype=np.int64) * 3 + 7  # not row numbers
            self.seconds += time.perf_counter() - clock
            yield ids, rows
            if number % 16 == 15:
                log(f"{start + size:,} vectors streamed")

    def exact_ids(self) -> np.ndarray:
        self.truth.finalize()
        return self.truth.I * 3 + 7


def recall(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, rerank: bool) -> float:
    found = [
        len({i for i, _ in index.search(q, K, rerank=rerank)} & set(t.tolist()))
        for q, t in zip(queries, truth)
    ]
    return sum(found) / truth.size


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    queries = generate(args.queries, args.dim, args.distribution, args.centres, args.seed + 1)
    sample = queries[: args.recall_queries]
    stream = Stream(args, sample)
    log(f"n={args.n:,} dim {args.dim} {args.distribution}: streaming and building")
    clock = time.perf_counter()
    index = VectorIndex.from_chunks(stream.chunks(), memory=args.memory, workdir=workdir)
    total_s = time.perf_counter() - clock
    truth = stream.exact_ids()
    steps = {name: round(seconds, 1) for name, seconds in index.timings.items()}
    steps["write"] = round(index.timings["write"] - stream.seconds, 1)  # the index's share
    build_rss = peak_rss_mb()
    memory_mb = index.memory_bytes() / 2**20
    log(f"built in {total_s - stream.seconds:.0f} s: {steps}; saving and loading")

    path = workdir / f"large-{args.distribution}-{args.n}.vix"
    index.save(path)
    del index
    clock = time.perf_counter()
    index = VectorIndex.load(path)
    load_s = time.perf_counter() - clock
    files = {p.suffix: p.stat().st_size / 2**20 for p in workdir.glob(f"{path.name}*")}

    log(f"kind {index.kind} nlist {index.nlist} nprobe {index.nprobe} depth {index.depth}: timing")
    times = latencies(index, queries)
    log("timing without re-ranking")
    plain = np.empty(len(queries))
    for n, query in enumerate(queries):
        start = time.perf_counter()
        index.search(query, K, rerank=False)
        plain[n] = (time.perf_counter() - start) * 1e3
    result: dict[str, Any] = {
        "n": args.n,
        "dim": args.dim,
        "distribution": args.distribution,
        "budget_mb": round(args.memory / 2**20, 1),
        "flat_mb": round(flat_bytes(args.n, args.dim) / 2**20, 1),
        "kind": index.kind,
        "nlist": index.nlist,
        "nprobe": index.nprobe,
        "code_bytes": index.code_bytes,
        "depth": index.depth,
        "build_s": round(steps["train"] + steps["add"], 1),
        "steps_s": steps,
        "generate_and_truth_s": round(stream.seconds, 1),
        "peak_rss_mb": round(build_rss, 1),
        "index_memory_mb": round(memory_mb, 1),
        "vix_mb": round(files.get(".vix", 0.0), 1),
        "vectors_file_mb": round(files.get(".rows", 0.0), 1),
        "load_s": round(load_s, 2),
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "recall@10": round(recall(index, sample, truth, rerank=True), 4),
        "p50_ms_no_rerank": round(float(np.percentile(plain, 50)), 3),
        "p99_ms_no_rerank": round(float(np.percentile(plain, 99)), 3),
        "recall@10_no_rerank": round(recall(index, sample, truth, rerank=False), 4),
        "peak_rss_mb_end": round(peak_rss_mb(), 1),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if not args.keep:
        for p in workdir.glob(f"{path.name}*"):
            p.unlink()
    log(json.dumps(result))
    return result


def table(result: dict, out: Any) -> None:
    print(f"machine: {result['machine']}", file=out)
    r = result["results"][0]
    print(
        f"n {r['n']:,}, dim {r['dim']}, {r['distribution']}, budget {r['budget_mb']:.0f} MB "
        f"(flat vectors {r['flat_mb']:.0f} MB); k={K}, single-query latency",
        file=out,
    )
    print(
        f"index: {r['kind']}, nlist {r['nlist']}, nprobe {r['nprobe']}, "
        f"{r['code_bytes']}-byte codes, re-rank depth {r['depth']} per 10",
        file=out,
    )
    s = r["steps_s"]
    print(
        f"build {r['build_s']:.0f} s (train {s['train']:.0f} + add {s['add']:.0f}; "
        f"vectors written {s['write']:.0f} s, calibrated {s['calibrate']:.0f} s), load "
        f"{r['load_s']:.1f} s",
        file=out,
    )
    print(
        f"memory: index {r['index_memory_mb']:.0f} MB, peak RSS {r['peak_rss_mb']:.0f} MB "
        f"(after queries {r['peak_rss_mb_end']:.0f} MB); disk: index {r['vix_mb']:.0f} MB + "
        f"vectors {r['vectors_file_mb']:.0f} MB",
        file=out,
    )
    print(f"{'':<14} {'p50_ms':>8} {'p99_ms':>8} {'recall@10':>9}", file=out)
    print(
        f"{'re-ranked':<14} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['recall@10']:>9.4f}",
        file=out,
    )
    print(
        f"{'codes only':<14} {r['p50_ms_no_rerank']:>8.3f} {r['p99_ms_no_rerank']:>8.3f} "
        f"{r['recall@10_no_rerank']:>9.4f}",
        file=out,
    )
    print(f"load average before {r['load_avg_before']}, after {r['load_avg_after']}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=lambda v: int(float(v)), default=10_000_000)
    parser.add_argument("--dim", type=int, default=512, help="512 CLIP ViT-B/32, 384 offline")
    parser.add_argument("--queries", type=int, default=1000, help="timed single queries")
    parser.add_argument(
        "--recall-queries", type=int, default=500, help="of those, checked against exact"
    )
    parser.add_argument("--distribution", default="clustered", choices=["clustered", "uniform"])
    parser.add_argument("--centres", type=int, default=3000, help="themes, clustered rows")
    parser.add_argument(
        "--memory", type=int, default=config.INDEX_MEMORY, help="budget in bytes (4 GB)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", default=str(REPO / "bench-out" / "large"), help="where the files go"
    )
    parser.add_argument("--keep", action="store_true", help="keep the saved index files")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    args = parser.parse_args(argv)
    result = {"machine": machine(), "results": [run(args)]}
    table(result, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
