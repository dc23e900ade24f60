"""The collection's vectors under each scoring method, and the search indexes that rank by them.

A method's vectors are made from the stored rows (``scoring``); a search index over them is
kept beside the database (``derived``), built exact, IVF or compressed to the index's
memory budget. Ranking a query vector returns hits explained by the captions they share
with the query.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imgsearch import config, scoring
from imgsearch.derived import Derived
from imgsearch.errors import ImgsearchError
from imgsearch.results import Hit
from imgsearch.search import VectorIndex, needs_compression, parse_size
from imgsearch.storage import Store


class Vectors:
    """Per-method vectors and search indexes of one index's collection."""

    def __init__(
        self,
        store: Store,
        derived: Derived,
        context: scoring.Context,
        meta: dict[str, str],
    ):
        self.store = store
        self.derived = derived
        self.context = context
        self.meta = meta

    def of(self, method: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Every image's (id, path, vector) for a vector method: inner products are its scores."""
        scorer = scoring.get(method, ranking=True)
        ids, paths, first = self.store.vectors(scorer.columns[0])
        if not len(ids):
            raise ImgsearchError(f"the index at {self.store.name} has no images yet")
        rows = scoring.Rows(self.store, ids, {scorer.columns[0]: first})
        return ids, paths, scorer.vectors(self.context, rows)

    def chunks(self, method: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``of`` a page of images at a time, ids and vectors without paths: for a search
        index over a collection too large to hold in memory."""
        scorer = scoring.get(method, ranking=True)
        for ids, stored in self.store.vector_chunks(list(scorer.columns)):
            rows = scoring.Rows(self.store, ids, dict(zip(scorer.columns, stored)))
            yield ids, scorer.vectors(self.context, rows)

    def calibrated_tau(self, method: str) -> float | None:
        """The method's tau from this collection's own scores (``Method.calibrate``) over
        random pairs of a random sample of its images; None below ``config.CALIBRATE_MIN``
        images, too few pairs to tell the unrelated ones' spread."""
        return self.calibrated_taus([method]).get(method)

    def calibrated_taus(self, methods: list[str]) -> dict[str, float]:
        """``calibrated_tau`` of each of ``methods`` (none below ``config.CALIBRATE_MIN``
        images), from one sample read once: the stored columns and caption lists the
        methods share are read for all of them together (an ``add()`` calibrates four
        methods, and reading the sample four times cost most of its time)."""
        scorers = [scoring.get(m, ranking=True) for m in methods]
        ids = np.array(sorted(self.store.ids_under("")), dtype=np.int64)
        if len(ids) < config.CALIBRATE_MIN:
            return {}
        rng = np.random.default_rng(0)
        chosen = np.sort(
            rng.choice(ids, size=min(config.CALIBRATE_SAMPLE, len(ids)), replace=False)
        )
        a = rng.integers(0, len(chosen), config.CALIBRATE_PAIRS)
        b = rng.integers(0, len(chosen), config.CALIBRATE_PAIRS)
        a, b = a[a != b], b[a != b]
        names = list(dict.fromkeys(c for s in scorers for c in s.columns))
        rows = scoring.Rows(self.store, chosen, self.store.vectors_for(names, chosen))
        taus = {}
        for scorer in scorers:
            vectors = scorer.vectors(self.context, rows)
            # Every pair's score from one product of the sample with itself (at most 2000
            # x 2000), not from gathering two rows per pair: 100,000 pairs of 7,000-d
            # concept vectors would copy 5 GB, a minute on a busy small machine.
            scores = vectors @ vectors.T
            taus[scorer.name] = round(scorer.calibrate(scores[a, b]), 4)
        return taus

    # --- the search index ---------------------------------------------------

    @property
    def memory(self) -> int:
        """The memory budget of the search index, in bytes: where the flat vectors would
        exceed it, the compressed kind is built."""
        return int(self.meta.get("index_memory", config.INDEX_MEMORY))

    def set_memory(self, size: int | str) -> int:
        """Record a new memory budget ("4GB", "512MB" or bytes); returns it in bytes."""
        value = parse_size(size) if isinstance(size, str) else int(size)
        if value < 1:
            raise ImgsearchError(f"the index memory must be positive, not {size!r}")
        if value != self.memory:
            self.store.set_meta({"index_memory": str(value)})
            self.meta["index_memory"] = str(value)
            self.derived.clear()
        return value

    def index(self, method: str) -> VectorIndex:
        """The method's search index: loaded from beside the database when it is current,
        else built (exact, or IVF for large collections) and saved for the next process."""
        memory = self.memory
        tags = [method, self.meta["caption_settings"], self.context.alpha]

        def build(stamp: str, folder: Path) -> VectorIndex:
            count = self.store.count()
            dim = scoring.get(method).dim
            large = count and needs_compression(count, dim(self.context, self._image_dim), memory)
            if not large:
                ids, _, vectors = self.of(method)
                return VectorIndex(ids, vectors, stamp=stamp, memory=memory)
            workdir = folder if os.access(folder, os.W_OK) else None
            chunks = self.chunks(method)
            return VectorIndex.from_chunks(chunks, memory=memory, stamp=stamp, workdir=workdir)

        return self.derived.search_index(method, tags, memory, build)

    def _image_dim(self) -> int:
        _, (image,) = next(self.store.vector_chunks(["image_vector"], size=1))
        return int(image.shape[1])

    def rank(
        self,
        vector: np.ndarray,
        method: str,
        k: int,
        allowed: list[int] | None,
        exclude: set[int],
        root: Path,
        explain_with: list[int] | None,
    ) -> list[Hit]:
        """The best ``k`` images by ``method`` for a query vector, as hits with absolute
        paths; each explained by the captions it shares with ``explain_with`` (caption ids,
        in the query's order) when given."""
        ranked = self.index(method).search(vector, k, allowed, exclude)
        paths = self.store.paths(i for i, _ in ranked)
        # An image a writer (a watcher, say) removed since the search index was read.
        ranked = [(i, score) for i, score in ranked if i in paths]
        hits = [Hit(str(root / paths[i]), score, id=int(i)) for i, score in ranked]
        if explain_with is not None and ranked:
            order = {c: n for n, c in enumerate(dict.fromkeys(explain_with))}
            texts = self.context.bank.texts
            hit_captions = self.store.captions_of(i for i, _ in ranked)
            for hit, (image_id, _) in zip(hits, ranked):
                shared = {c for c, _ in hit_captions[image_id]} & order.keys()
                hit.shared = [texts[c] for c in sorted(shared, key=order.__getitem__)]
        return hits
