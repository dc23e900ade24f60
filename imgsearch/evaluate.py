"""Quality on a labeled folder: leave-one-out retrieval and pair decisions, per scoring method."""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch import config
from imgsearch.errors import ImgsearchError

if TYPE_CHECKING:
    from imgsearch.api import Index

RETRIEVAL = ("map", "p@1", "p@5", "p@10")


@dataclass
class Evaluation:
    images: int
    labels: int
    pairs: int = 0
    default: str = config.DEFAULT_METHOD
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # labeled files not in the index

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "labels": self.labels,
            "pairs": self.pairs,
            "missing": len(self.missing),
            "default": self.default,
            "methods": self.methods,
        }

    def table(self) -> str:
        """A readable report, laid out like the paper's table (metric, threshold, accuracy)."""
        head = f"{'method':<12}" + "".join(f"{k:>8}" for k in RETRIEVAL)
        head += f"{'tau':>8}{'acc@tau':>9}{'best tau':>9}{'acc@best':>9}{'auc':>8}"
        lines = [
            f"{self.images} images, {self.labels} labels, {self.pairs} pairs "
            f"(default method: {self.default})",
            head,
        ]
        if self.missing:
            lines.insert(
                1,
                f"{len(self.missing)} labeled files are not in the index (missing, outside the "
                f"folder or skipped), e.g. {self.missing[0]}",
            )
        for method, values in self.methods.items():
            row = f"{method:<12}"
            row += "".join(f"{values[k]:>8.4f}" if k in values else f"{'-':>8}" for k in RETRIEVAL)
            row += f"{values['threshold']:>8.3f}{values['pair_accuracy']:>9.4f}"
            row += f"{values['best_threshold']:>9.3f}{values['pair_accuracy_best']:>9.4f}"
            row += f"{values['auc']:>8.4f}"
            lines.append(row)
        return "\n".join(lines)


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


def evaluate_index(
    index: Index,
    labels: dict[str, str],
    pairs: list[tuple[str, str, bool]] | None,
    methods: Sequence[str] = config.METHODS,
    tau: float | None = None,
) -> Evaluation:
    """Every method side by side on the indexed, labeled images."""
    # Rows in id order, as every method's vectors come (paths only: no vectors read here).
    states = index.store.file_states()
    paths = sorted(states, key=lambda p: states[p].id)
    row_of = {p: i for i, p in enumerate(paths) if p in labels}
    missing = [p for p in labels if p not in states]
    if len(row_of) < 2:
        raise ImgsearchError("fewer than two labeled images are indexed")
    if pairs is None:
        pairs = sample_pairs({p: labels[p] for p in row_of})
    pairs = [(a, b, s) for a, b, s in pairs if a in row_of and b in row_of]
    if not pairs:
        raise ImgsearchError("none of the pairs lists two indexed images")
    names = [labels[p] for p in row_of]
    rows = list(row_of.values())
    report = Evaluation(images=len(rows), labels=len(set(names)), pairs=len(pairs), missing=missing)
    same = np.array([s for _, _, s in pairs])
    for method in methods:
        overridden = tau is not None and method == config.DEFAULT_METHOD
        threshold = tau if overridden else index.tau(method)
        if method in config.PIXEL_METHODS:
            scores = pixel_scores(method, [(index.root / a, index.root / b) for a, b, _ in pairs])
            report.methods[method] = pair_metrics(scores, same, threshold)
            continue
        _, _, vectors = index.method_vectors(method)
        values = retrieval_metrics(vectors[rows], names)
        a = np.array([row_of[x] for x, _, _ in pairs])
        b = np.array([row_of[y] for _, y, _ in pairs])
        scores = np.einsum("ij,ij->i", vectors[a], vectors[b])
        values.update(pair_metrics(scores, same, threshold))
        report.methods[method] = values
    return report


def pixel_scores(method: str, pairs: list[tuple[Path, Path]]) -> np.ndarray:
    """SSIM or FSIM of each pair, spread over the cores (they are plain CPU work)."""
    workers = max(1, min(len(pairs) // 50, os.cpu_count() or 1))
    chunks = [pairs[i::workers] for i in range(workers)]
    if workers == 1:
        parts = [_pixel_chunk(method, chunks[0])]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_pixel_chunk, [method] * workers, chunks))
    scores = np.empty(len(pairs))
    for i, part in enumerate(parts):
        scores[i::workers] = part
    return scores


def _pixel_chunk(method: str, pairs: list[tuple[Path, Path]]) -> list[float]:
    from imgsearch import baselines

    measure = getattr(baselines, method)
    return [measure(_small(a), _small(b)) for a, b in pairs]


@lru_cache(maxsize=4096)
def _small(path: Path):  # noqa: ANN202 - PIL image
    """Decoded near the baselines' working size (256 px): a fraction of a full decode."""
    from imgsearch.files import decode

    return decode(path, min_side=256).image
