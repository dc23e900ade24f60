"""Scoring and ranking: the paper's caption similarity, and the FAISS search that ranks by it.

For unit caption vectors the average of all N x N pairwise cosines between two
images' captions equals the dot product of their mean caption vectors, so the
collection is ranked with one inner-product search over stored means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np


@dataclass
class Caption:
    """A caption from the bank and how well it matches an image."""

    text: str
    score: float


@dataclass
class Hit:
    """A ranked result. ``path`` is absolute; ``shared`` explains the match when asked for."""

    path: str
    score: float
    shared: list[str] = field(default_factory=list)


def caption_avg(a: np.ndarray, b: np.ndarray) -> float:
    """The paper's score, literally: the mean cosine over all pairs of the two caption sets."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a @ b.T).mean())


class VectorIndex:
    """Inner-product search over one stored vector per image, keyed by database id."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.dim = vectors.shape[1] if vectors.size else 0
        self.index = faiss.IndexIDMap(faiss.IndexFlatIP(max(self.dim, 1)))
        if len(self.ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self,
        query: np.ndarray,
        k: int,
        allowed: list[int] | None = None,
        exclude: set[int] | None = None,
    ) -> list[tuple[int, float]]:
        """Best ``k`` (id, score), best first, among ``allowed`` ids and never ``exclude``d ones."""
        exclude = exclude or set()
        want = min(k + len(exclude), len(self.ids))
        if want <= 0 or (allowed is not None and not allowed):
            return []
        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            params = faiss.SearchParameters(sel=selector)
        query = np.ascontiguousarray(np.atleast_2d(query), dtype=np.float32)
        scores, ids = self.index.search(query, want, params=params)
        hits = [
            (int(i), float(s))
            for i, s in zip(ids[0], scores[0])
            if i >= 0 and int(i) not in exclude
        ]
        return hits[:k]
