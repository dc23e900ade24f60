"""How long the collection-wide relations take at scale, on synthetic vectors.

One command, re-runnable::

    python benchmarks/relations_speed.py --n 100000 --dim 384
    python benchmarks/relations_speed.py --n 100000 --dim 384 --json

The vectors are unit rows drawn around ``--centres`` random unit centres, each centre with
its own spread (within-theme cosines from about 0.5 to 0.9, like the mean caption vectors of
photos of one subject), and ``--copies`` of the rows replaced by near-copies of others (cosine
about 0.999, like re-encoded photos). Timed, each on the whole collection:

* ``graph``: ``graph_edges`` at ``--tau`` (all pairs at or above it: a range search).
* ``graph_mutual``: ``graph_edges`` with ``k`` nearest, mutual only (a k-NN search).
* ``components``: connected components of the first graph.
* ``kmeans``: ``kmeans_clusters`` into ``--clusters``.
* ``duplicates``: the duplicate finder's candidate pairs from the vectors (each pair is
  then verified on the pixels, which needs photos: benchmarks/duplicates_speed.py) at
  ``--dup-threshold``.

With ``--json`` the table goes to stderr and one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import faiss
import numpy as np

from imgsearch.duplicates import vector_candidates
from imgsearch.relations import components, graph_edges, kmeans_clusters

T = TypeVar("T")


def synthetic(n: int, dim: int, centres: int, copies: float, seed: int) -> np.ndarray:
    """Unit rows around random centres, a fraction of them near-copies of other rows."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim), dtype=np.float32)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    spread = rng.uniform(0.3, 1.0, centres).astype(np.float32)  # cosine 1 / (1 + spread^2)
    label = rng.integers(0, centres, n)
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    rows *= spread[label, None] / np.sqrt(dim)
    rows += centre[label]
    copy = rng.choice(n, int(n * copies), replace=False)
    source = rng.integers(0, n, len(copy))
    noise = rng.standard_normal((len(copy), dim), dtype=np.float32) * (0.03 / np.sqrt(dim))
    rows[copy] = rows[source] + noise
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows, dtype=np.float32)


def timed(seconds: dict[str, float], cpu: dict[str, float], name: str, work: Callable[[], T]) -> T:
    """Wall seconds, and the process's CPU seconds: the fairer figure on a shared machine."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = work()
    seconds[name] = round(time.perf_counter() - start, 2)
    cpu[name] = round(time.process_time() - start_cpu, 2)
    print(f"[relations_speed] {name}: {seconds[name]:.2f} s", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors (default 100000)")
    parser.add_argument("--dim", type=int, default=384, help="dimension (default 384)")
    parser.add_argument("--centres", type=int, default=2000, help="themes (default 2000)")
    parser.add_argument("--copies", type=float, default=0.01, help="near-copy fraction")
    parser.add_argument("--tau", type=float, default=0.85, help="graph threshold")
    parser.add_argument("--k", type=int, default=10, help="neighbours, mutual graph")
    parser.add_argument("--clusters", type=int, default=100, help="k-means clusters")
    parser.add_argument("--dup-threshold", type=float, default=0.95, help="duplicate cosine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    args = parser.parse_args(argv)

    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    vectors = timed(
        seconds,
        cpu,
        "generate",
        lambda: synthetic(args.n, args.dim, args.centres, args.copies, args.seed),
    )
    edges = timed(seconds, cpu, "graph", lambda: graph_edges(vectors, args.tau))
    mutual = timed(
        seconds, cpu, "graph_mutual", lambda: graph_edges(vectors, args.tau, k=args.k, mutual=True)
    )
    groups = timed(seconds, cpu, "components", lambda: components(len(vectors), edges))
    clusters = timed(seconds, cpu, "kmeans", lambda: kmeans_clusters(vectors, args.clusters))
    duplicates = timed(
        seconds,
        cpu,
        "duplicates",
        lambda: vector_candidates(
            lambda: iter([(np.arange(len(vectors)), vectors)]), len(vectors), args.dup_threshold
        ),
    )

    # Recall of the graph's edges: exact pairs of 1000 sampled rows, by a flat scan.
    rows = np.random.default_rng(args.seed).choice(len(vectors), 1000, replace=False)
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    radius = float(np.nextafter(np.float32(args.tau), np.float32(-np.inf)))
    lims, dist, labels = flat.range_search(vectors[rows], radius)
    query = rows[np.repeat(np.arange(len(rows)), np.diff(lims.astype(np.int64)))]
    keep = (labels != query) & (dist >= args.tau)
    truth = {(min(a, b), max(a, b)) for a, b in zip(query[keep].tolist(), labels[keep].tolist())}
    sampled = set(rows.tolist())
    found = {(e.source, e.target) for e in edges if e.source in sampled or e.target in sampled}
    recall = len(found & truth) / max(len(truth), 1)

    result: dict[str, Any] = {
        "edge_recall": round(recall, 4),
        "n": args.n,
        "dim": args.dim,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "edges": len(edges),
        "tau": args.tau,
        "mean_degree": round(2 * len(edges) / max(args.n, 1), 2),
        "mutual_edges": len(mutual),
        "k": args.k,
        "components": len(groups),
        "largest_component": len(groups[0]) if groups else 0,
        "clusters": len(clusters),
        "duplicate_candidates": len(duplicates),
        "threads": faiss.omp_get_max_threads(),
        "cpus": os.cpu_count(),
        "faiss": faiss.__version__,
        "python": platform.python_version(),
    }
    out = sys.stderr if args.json else sys.stdout
    print(f"relations on {args.n} x {args.dim} vectors, {result['threads']} threads", file=out)
    print(f"{'step':<14}{'seconds':>9}{'cpu s':>9}  result", file=out)
    notes = {
        "generate": f"{args.centres} centres, {args.copies:.0%} near-copies",
        "graph": f"{len(edges)} edges at tau {args.tau} (mean degree {result['mean_degree']}),"
        f" recall {recall:.4f}",
        "graph_mutual": f"{len(mutual)} edges, k={args.k} mutual, tau {args.tau}",
        "components": f"{len(groups)} components, largest {result['largest_component']}",
        "kmeans": f"{len(clusters)} clusters",
        "duplicates": f"{len(duplicates)} candidate pairs",
    }
    for name, value in seconds.items():
        print(f"{name:<14}{value:>9.2f}{cpu[name]:>9.2f}  {notes[name]}", file=out)
    print(f"{'total':<14}{sum(seconds.values()):>9.2f}{sum(cpu.values()):>9.2f}", file=out)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
