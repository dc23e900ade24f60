"""Quality on a labeled folder, from arrays: leave-one-out retrieval and pair decisions.

Below the API: it needs each method's vectors (or pair scores), not an index. The CSV
readers for ``labels.csv`` and ``pairs.csv`` live here too.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from imgsearch import config
from imgsearch.errors import ImgsearchError
from imgsearch.results import Evaluation


class Labels(dict):
    """path -> label, as read from labels.csv; ``lines`` says on which line each was."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, int] = {}


def read_labels(folder: Path) -> Labels:
    """``labels.csv`` (columns path,label; paths relative to the folder). A row without a
    label is one error naming its line."""
    path = folder / "labels.csv"
    labels = Labels()
    for line, row in _read_csv(path, {"path", "label"}, required=True):
        if not row["path"]:
            continue
        label = row["label"]
        if label is None or not label.strip():
            raise ImgsearchError(f"{path} line {line}: no label for {row['path']}")
        name = Path(row["path"]).as_posix()
        labels[name] = label
        labels.lines[name] = line
    if not labels:
        raise ImgsearchError(f"{path} lists no images")
    return labels


_SAME = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def read_pairs(folder: Path) -> list[tuple[str, str, bool]] | None:
    """``pairs.csv`` (columns path_a,path_b,same; same is 1/0, true/false or yes/no), or
    None when the folder has none. A row short of a field is one error naming its line."""
    path = folder / "pairs.csv"
    rows = _read_csv(path, {"path_a", "path_b", "same"}, required=False)
    if rows is None:
        return None
    pairs = []
    for line, row in rows:
        a, b, same = row["path_a"], row["path_b"], row["same"]
        if not a or not b:
            raise ImgsearchError(f"{path} line {line}: needs two paths (path_a,path_b,same)")
        if same is None or not same.strip():
            raise ImgsearchError(f"{path} line {line}: no value for same (1 or 0)")
        value = _SAME.get(same.strip().lower())
        if value is None:
            raise ImgsearchError(f"{path} line {line}: same must be 1 or 0, not {same!r}")
        pairs.append((Path(a).as_posix(), Path(b).as_posix(), value))
    return pairs


def _read_csv(
    path: Path, columns: set[str], required: bool
) -> list[tuple[int, dict[str, str | None]]] | None:
    """The rows of a CSV file with the columns needed, each with the line it ends on."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not columns <= set(reader.fieldnames):
                raise ImgsearchError(f"{path} needs the columns {','.join(sorted(columns))}")
            return [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        if required:
            raise ImgsearchError(f"no {path.name} in {path.parent} (columns: path,label)") from None
        return None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImgsearchError(f"cannot read {path}: {exc}") from None


def read_text_queries(path: Path) -> list[tuple[str, str]]:
    """A text-query file (columns path,caption): each caption describes one photo, whose
    path is relative to the evaluated folder."""
    rows = _read_csv(path, {"path", "caption"}, required=True)
    queries = [
        (Path(r["path"] or "").as_posix(), (r["caption"] or "").strip()) for _, r in rows or []
    ]
    queries = [(p, c) for p, c in queries if p not in ("", ".") and c]
    if not queries:
        raise ImgsearchError(f"{path} lists no text queries")
    return queries


def recall_at(ranks: list[int | None], ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """The share of queries whose photo is ranked within the first k (None: not found)."""
    n = len(ranks)
    return {f"r@{k}": round(sum(1 for r in ranks if r is not None and r <= k) / n, 4) for k in ks}


Pairs = list[tuple[str, str, bool]]


def sample_pairs(labels: dict[str, str], count: int = 1000, seed: int = 0) -> Pairs:
    """Up to ``count`` same-label and ``count`` different-label pairs, reproducibly."""
    rng = random.Random(seed)
    paths = sorted(labels)
    by_label: dict[str, list[str]] = {}
    for path in paths:
        by_label.setdefault(labels[path], []).append(path)
    groups = [g for g in by_label.values() if len(g) > 1]
    same: set[tuple[str, str]] = set()
    different: set[tuple[str, str]] = set()
    for _ in range(count * 20):
        if len(same) >= count and len(different) >= count:
            break
        if groups and len(same) < count:
            a, b = rng.sample(rng.choice(groups), 2)
            same.add((min(a, b), max(a, b)))
        a, b = rng.sample(paths, 2)
        if labels[a] != labels[b] and len(different) < count:
            different.add((min(a, b), max(a, b)))
    return [(a, b, True) for a, b in sorted(same)] + [(a, b, False) for a, b in sorted(different)]


def retrieval_metrics(
    vectors: np.ndarray, labels: list[str], ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """mAP and P@k of ranking every image against all the others by inner product.

    Equal scores are common (the paper's method gives many images the very same captions),
    so ties are broken in one fixed random order rather than by position in the folder.
    """
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(codes)
    tiebreak = np.random.default_rng(0).permutation(n)
    ap_sum = 0.0
    hits_at = {k: 0.0 for k in ks}
    queries = 0
    for start in range(0, n, 512):
        block = vectors[start : start + 512] @ vectors.T
        for row, i in enumerate(range(start, min(start + 512, n))):
            scores = block[row].copy()
            scores[i] = -np.inf
            order = np.lexsort((tiebreak, -scores))[: n - 1]
            relevant = codes[order] == codes[i]
            total = relevant.sum()
            if total == 0:
                continue
            queries += 1
            ranks = np.flatnonzero(relevant) + 1
            ap_sum += float(np.mean(np.arange(1, total + 1) / ranks))
            for k in ks:
                hits_at[k] += relevant[:k].mean()
    if queries == 0:
        raise ImgsearchError("no image shares its label with another: nothing to evaluate")
    out = {"map": ap_sum / queries}
    out.update({f"p@{k}": hits_at[k] / queries for k in ks})
    return {key: round(value, 4) for key, value in out.items()}


def pair_metrics(scores: np.ndarray, same: np.ndarray, tau: float) -> dict[str, float]:
    """Accuracy at ``tau`` (fixed in advance), at the best threshold for this set, and ROC AUC."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    accuracy = float(np.mean((scores >= tau) == same))
    best_accuracy, best_threshold = _best_threshold(scores, same)
    return {
        "threshold": round(float(tau), 4),
        "pair_accuracy": round(accuracy, 4),
        "best_threshold": round(best_threshold, 4),
        "pair_accuracy_best": round(best_accuracy, 4),
        "auc": round(roc_auc(scores, same), 4),
    }


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    # Predict "same" for the first i pairs: correct = positives among them + negatives after.
    tp = np.concatenate([[0], np.cumsum(y)])
    fp = np.concatenate([[0], np.cumsum(~y)])
    correct = tp + (len(y) - y.sum() - fp)
    ends = np.r_[np.flatnonzero(np.diff(s)) + 1, len(s)]  # only cut between distinct scores
    cuts = np.r_[0, ends]
    best = cuts[np.argmax(correct[cuts])]
    if best == 0:
        threshold = s[0] + 1e-6
    elif best == len(s):
        threshold = s[-1]
    else:
        threshold = (s[best - 1] + s[best]) / 2
    return float(correct[best] / len(y)), float(threshold)


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Probability that a same-label pair outscores a different-label one (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    positives = int(same.sum())
    negatives = len(same) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[same].sum() - positives * (positives + 1) / 2) / (positives * negatives))


# A method to measure: its threshold, and either a function giving one vector per image
# (rows in the order of the paths given to ``evaluate_methods``) or one scoring pairs.
MethodInput = tuple[
    float,
    Callable[[], np.ndarray] | None,
    Callable[[list[tuple[str, str]]], np.ndarray] | None,
]


def evaluate_methods(
    paths: list[str],
    labels: dict[str, str],
    pairs: list[tuple[str, str, bool]] | None,
    methods: Mapping[str, MethodInput],
) -> Evaluation:
    """Every method side by side on the labeled images among ``paths`` (the indexed ones,
    in the order their vectors come); pairs are sampled from the labels when none given."""
    row_of = {p: i for i, p in enumerate(paths) if p in labels}
    missing = [p for p in labels if p not in row_of]
    if len(row_of) < 2:
        raise ImgsearchError("fewer than two labeled images are indexed")
    if pairs is None:
        pairs = sample_pairs({p: labels[p] for p in row_of})
    pairs = [(a, b, s) for a, b, s in pairs if a in row_of and b in row_of]
    if not pairs:
        raise ImgsearchError("none of the pairs lists two indexed images")
    names = [labels[p] for p in row_of]
    rows = list(row_of.values())
    report = Evaluation(
        images=len(rows),
        labels=len(set(names)),
        pairs=len(pairs),
        default=config.DEFAULT_METHOD,
        missing=missing,
    )
    same = np.array([s for _, _, s in pairs])
    for method, (threshold, vectors_of, pair_scores) in methods.items():
        if vectors_of is None:
            assert pair_scores is not None
            scores = pair_scores([(a, b) for a, b, _ in pairs])
            report.methods[method] = pair_metrics(scores, same, threshold)
            continue
        vectors = vectors_of()
        values = retrieval_metrics(vectors[rows], names)
        a = np.array([row_of[x] for x, _, _ in pairs])
        b = np.array([row_of[y] for _, y, _ in pairs])
        scores = np.einsum("ij,ij->i", vectors[a], vectors[b])
        values.update(pair_metrics(scores, same, threshold))
        report.methods[method] = values
    return report
