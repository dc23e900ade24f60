"""A collection in two dimensions, for the map: t-SNE for local groups, PCA for size."""

from __future__ import annotations

import numpy as np

from imgsearch import config
from imgsearch.errors import ImgsearchError

PROJECTIONS = ("auto", "tsne", "pca")


def project(vectors: np.ndarray, projection: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Rows in two dimensions, scaled into [0, 1] with one scale for both axes (so distances
    keep their proportions), and the projection used. ``auto`` is t-SNE, which shows local
    groups best, up to ``config.TSNE_MAX_IMAGES`` rows, and PCA above, where t-SNE is slow."""
    if projection not in PROJECTIONS:
        raise ImgsearchError(f"unknown projection {projection!r}: use {', '.join(PROJECTIONS)}")
    n = len(vectors)
    if projection == "auto":
        projection = "tsne" if n <= config.TSNE_MAX_IMAGES else "pca"
    vectors = np.asarray(vectors, dtype=np.float32)
    if n < 3:  # nothing to project: t-SNE needs more rows than its perplexity, PCA two
        xy = np.stack([np.arange(n, dtype=np.float64), np.zeros(n)], axis=1)
    elif projection == "tsne":
        from sklearn.manifold import TSNE

        # Scores are cosines, so t-SNE's neighbourhoods are too; perplexity must stay below n.
        tsne = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", metric="cosine",
                    random_state=seed)  # fmt: skip
        xy = tsne.fit_transform(vectors).astype(np.float64)
    else:
        from sklearn.decomposition import PCA

        xy = PCA(2, random_state=seed).fit_transform(vectors).astype(np.float64)
    xy = xy - xy.min(axis=0) if n else xy.reshape(0, 2)
    scale = float(xy.max()) if n else 0.0
    xy = xy / scale if scale > 0 else xy
    xy += (1 - xy.max(axis=0)) / 2 if n else 0  # centre the shorter axis
    return xy, projection
