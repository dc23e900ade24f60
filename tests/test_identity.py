"""The paper's N x N caption average equals the dot product of mean caption vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgsearch import Index
from imgsearch.captions import caption_avg


def test_identity_on_random_unit_vectors() -> None:
    rng = np.random.default_rng(0)
    for n, m, dim in [(10, 10, 384), (3, 7, 512), (1, 1, 16)]:
        a = rng.normal(size=(n, dim))
        b = rng.normal(size=(m, dim))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        literal = np.mean([[x @ y for y in b] for x in a])  # every pair, one by one
        assert abs(caption_avg(a, b) - literal) < 1e-9
        assert abs(a.mean(axis=0) @ b.mean(axis=0) - literal) < 1e-9


def test_query_scores_equal_the_literal_pairwise_average(photos: Path, small_bank: Path) -> None:
    """The paper's score as `query --method caption_avg` ranks by it, from stored captions."""
    index = Index.create(photos, model="offline", captions=small_bank)
    index.add()
    query = index.store.get(path="chelsea.jpg")
    hits = index.query(photos / "chelsea.jpg", k=7, method="caption_avg")
    assert len(hits) == 7
    for hit in hits:
        other = index.store.get(path=Path(hit.path).relative_to(index.root).as_posix())
        literal = caption_avg(
            index.bank.vectors[query.caption_ids[:10]], index.bank.vectors[other.caption_ids[:10]]
        )
        assert abs(hit.score - literal) < 1e-5
