"""How right are clusters and the relationship graph? Measured against a folder's labels.

Indexes a labeled folder (default ../shared/data/clothing-small; into bench-out/ since
../shared is read-only), then reports
- k-means clusters (k = number of labels) and components of the tau graph: purity and
  adjusted Rand index against the labels;
- the relationship graph for several settings: edge precision (both ends share a label)
  and the share of images with at least one edge. In a collection most pairs are
  unrelated, so a graph must be precise before it is complete.

    python benchmarks/relations_quality.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from imgsearch import Index
from imgsearch.metrics import read_labels

ROOT = Path(__file__).resolve().parents[1]


def cluster_scores(groups: list[list[str]], labels: dict[str, str]) -> dict[str, float]:
    truth, found = [], []
    right = 0
    for number, members in enumerate(groups):
        names = [labels[m] for m in members if m in labels]
        right += Counter(names).most_common(1)[0][1] if names else 0
        truth += names
        found += [number] * len(names)
    return {
        "clusters": len(groups),
        "purity": round(right / len(truth), 4),
        "ari": round(adjusted_rand_score(truth, found), 4),
    }


def graph_scores(index: Index, labels: dict[str, str], **settings) -> dict:
    graph = index.graph(**settings)
    rel = [str(Path(n).relative_to(index.root)) for n in graph.nodes]
    same = [labels.get(rel[e.source]) == labels.get(rel[e.target]) for e in graph.edges]
    linked = {e.source for e in graph.edges} | {e.target for e in graph.edges}
    return {
        **{k: v for k, v in settings.items()},
        "tau": graph.tau,
        "edges": len(graph.edges),
        "precision": round(float(np.mean(same)), 4) if same else 0.0,
        "linked": round(len(linked) / len(graph.nodes), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/clothing-small")
    parser.add_argument("--db", type=Path, default=ROOT / "bench-out/clothing.db")
    parser.add_argument("--model", default="offline")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.data / "labels.csv").is_file():
        sys.exit(
            f"no labeled photos at {args.data} (the benchmark needs ../shared beside the repo)"
        )
    labels = read_labels(args.data)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    with Index.create(args.data, db=args.db, model=args.model) as index:
        index.add()
        k = len(set(labels.values()))
        relative = {str(index.root / p): p for p in labels}
        clusters = {}
        for method in ("caption", "hybrid", "image"):
            found = index.clusters(k=k, method=method)
            groups = [[relative[m] for m in c.members if m in relative] for c in found]
            clusters[f"kmeans k={k} {method}"] = cluster_scores(groups, labels)
        tau = index.graph_tau()
        tau_groups = index.clusters(tau=tau, method="hybrid")
        groups = [[relative[m] for m in c.members if m in relative] for c in tau_groups]
        clusters[f"graph components (tau {tau:g})"] = cluster_scores(groups, labels)
        graphs = [graph_scores(index, labels, method="caption", k=None, mutual=False)]
        for method in ("caption", "hybrid", "image"):
            for k_nn in (1, 3, 5, 10):
                graphs.append(graph_scores(index, labels, method=method, k=k_nn, mutual=True))
        default = graph_scores(index, labels)
    report = {"images": len(labels), "clusters": clusters, "graphs": graphs, "default": default}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'clusters':<34}{'n':>5}{'purity':>8}{'ARI':>8}")
    for name, r in clusters.items():
        print(f"{name:<34}{r['clusters']:>5}{r['purity']:>8.4f}{r['ari']:>8.4f}")
    print(f"\n{'graph':<34}{'edges':>7}{'precision':>10}{'linked':>8}")
    for r in [*graphs, default]:
        name = f"{r.get('method', 'default')} k={r.get('k', 5)} tau={r['tau']:g}"
        name += " mutual" if r.get("mutual", True) else ""
        print(f"{name:<34}{r['edges']:>7}{r['precision']:>10.4f}{r['linked']:>8.4f}")


if __name__ == "__main__":
    main()
