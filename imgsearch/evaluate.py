"""Retrieval quality on a labeled folder: leave-one-out ranking, same label = relevant."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgsearch.errors import ImgsearchError

# Which stored vector each scoring method ranks by (inner product of stored vectors).
METHOD_COLUMNS = {"caption": "caption_vector", "image": "image_vector"}
DEFAULT_METHOD = "caption"


@dataclass
class Evaluation:
    images: int
    labels: int
    default: str = DEFAULT_METHOD
    methods: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "labels": self.labels,
            "default": self.default,
            "methods": self.methods,
        }


def read_labels(folder: Path) -> dict[str, str]:
    """``labels.csv`` (columns path,label; paths relative to the folder)."""
    path = folder / "labels.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise ImgsearchError(f"{path} needs the columns path,label")
            labels = {Path(row["path"]).as_posix(): row["label"] for row in reader if row["path"]}
    except FileNotFoundError:
        raise ImgsearchError(f"no labels.csv in {folder} (columns: path,label)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImgsearchError(f"cannot read {path}: {exc}") from None
    if not labels:
        raise ImgsearchError(f"{path} lists no images")
    return labels


def retrieval_metrics(
    vectors: np.ndarray, labels: list[str], ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """mAP and P@k of ranking every image against all the others by inner product."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(codes)
    ap_sum = 0.0
    hits_at = {k: 0.0 for k in ks}
    queries = 0
    for start in range(0, n, 512):
        block = vectors[start : start + 512] @ vectors.T
        for row, i in enumerate(range(start, min(start + 512, n))):
            scores = block[row].copy()
            scores[i] = -np.inf
            order = np.argsort(-scores, kind="stable")[: n - 1]
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
