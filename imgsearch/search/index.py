"""Inner-product search over one stored vector per image, keyed by database id: the exact
and IVF kinds here, the compressed kind in ``compressed``, the file format in ``saved``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Literal

import faiss
import numpy as np

from imgsearch.search import compressed, saved
from imgsearch.search.common import (
    _ROWS_CHUNK,
    CALIBRATION_K,
    CALIBRATION_QUERIES,
    EXACT_MAX,
    IVF_MAX_SCAN,
    LISTS_PER_SQRT_N,
    MIN_NPROBE,
    RECALL_TARGET,
    SEED,
    TRAIN_PER_LIST,
    _one_thread,
    _others,
    code_bytes,
    needs_compression,
)
from imgsearch.search.compressed import _VectorFile

Kind = Literal["auto", "exact", "ivf", "compressed"]


class VectorIndex:
    """Inner-product search over one stored vector per image, keyed by database id.

    ``kind="auto"`` scans exactly up to ``exact_max`` vectors and above that uses an
    IVF-Flat index whose ``nprobe`` is calibrated at build time to recall@10 >= 0.95, unless
    the data are so unclustered that this would scan most of it anyway: then exact again.
    With a ``memory`` budget (bytes) that the flat vectors exceed, ``auto`` builds the
    compressed kind instead (see ``from_chunks``), keeping its exact vectors in a file in
    ``workdir`` (default: the temporary folder) until ``save`` moves it beside the index.
    ``stamp`` is the caller's tag for the data the index was built from (say a database
    generation); it is saved and loaded with the index so a stale file can be told apart.

    FAISS holds row numbers, not database ids: an ``allowed`` subset then becomes a bitmap
    of n bits, far cheaper to build and test than a hash set of ids.
    """

    def __init__(
        self,
        ids: np.ndarray | Sequence[int],
        vectors: np.ndarray,
        kind: Kind = "auto",
        exact_max: int = EXACT_MAX,
        stamp: str = "",
        memory: int | None = None,
        workdir: str | os.PathLike | None = None,
    ):
        if kind not in ("auto", "exact", "ivf", "compressed"):
            raise ValueError(
                f"unknown index kind {kind!r}: use 'auto', 'exact', 'ivf' or 'compressed'"
            )
        vectors = np.asarray(vectors)
        ids = np.array(ids, dtype=np.int64).reshape(-1)  # a copy: the caller's may change
        if len(ids) != (len(vectors) if vectors.size else 0):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self._reset(int(vectors.shape[1]) if vectors.size else 0, exact_max, stamp)
        n = len(ids)
        compress = kind == "auto" and needs_compression(n, self.dim, memory)
        if n and (kind == "compressed" or compress):
            steps = range(0, n, _ROWS_CHUNK)
            compressed.build(
                self,
                ((ids[i : i + _ROWS_CHUNK], vectors[i : i + _ROWS_CHUNK]) for i in steps),
                memory,
                workdir,
            )
            return
        self._set_ids(ids)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if n and (kind == "ivf" or (kind == "auto" and n > exact_max)):
            index = self._build_ivf(x)
            if kind == "ivf" or self.nprobe <= IVF_MAX_SCAN * self.nlist:
                self.kind, self.index = "ivf", index
            else:  # too unclustered to pay: see IVF_MAX_SCAN
                del index
                self.nlist = self.nprobe = 0
                self._lists = self._lists[:0]
        if self.kind == "exact":
            self.index = faiss.IndexFlatIP(max(self.dim, 1))
            if n:
                self.index.add(x)

    @classmethod
    def from_chunks(
        cls,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        memory: int | None = None,
        stamp: str = "",
        workdir: str | os.PathLike | None = None,
    ) -> VectorIndex:
        """The compressed kind, from (ids, vectors) chunks read once, in order: the vectors
        go to a float16 file as they come, so a collection far larger than memory is built
        with no more than a chunk of it, the training sample and the codes in memory."""
        index = cls.__new__(cls)
        index._reset(0, EXACT_MAX, stamp)
        compressed.build(index, chunks, memory, workdir)
        return index

    def _reset(self, dim: int, exact_max: int, stamp: str) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self.stamp = stamp
        self.kind: str = "exact"
        self.index: faiss.Index
        self.nlist = 0
        self.nprobe = 0
        self._lists = np.empty(0, dtype=np.int32)  # each row's IVF list, for filtered search
        # The compressed kind: the exact vectors on disk, and how many candidates they
        # re-score per 10 results.
        self._file: _VectorFile | None = None
        self.code_bytes = 0
        self.depth = 0
        self.timings: dict[str, float] = {}  # seconds per step of a compressed build

    def _set_ids(self, ids: np.ndarray) -> None:
        """Keep the row -> id array and a fast id -> row lookup for ``allowed``."""
        self.ids = ids
        n = len(ids)
        order = np.argsort(ids, kind="stable")
        if n > 1 and np.any(ids[order[1:]] == ids[order[:-1]]):
            raise ValueError("ids must be distinct: each names one image")
        self._table: np.ndarray | None = None
        self._sorted_ids = ids[order]
        self._order = order
        # Database ids are nearly dense: a table of rows indexed by id (at most 32 bytes per
        # vector, which holds 1536) maps a 300k-id folder in milliseconds where a binary
        # search takes a tenth of a second.
        if n and ids.min() >= 0 and ids.max() < 8 * n + 1024:
            self._table = np.full(int(ids.max()) + 1, -1, dtype=np.int32)
            self._table[ids] = np.arange(n, dtype=np.int32)
            self._sorted_ids = self._order = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    # --- building -----------------------------------------------------------

    def _build_ivf(self, x: np.ndarray) -> faiss.IndexIVFFlat:
        """IVF-Flat: exact scores inside the probed lists, so only list choice can miss."""
        n = len(x)
        self.nlist = max(1, min(round(LISTS_PER_SQRT_N * np.sqrt(n)), n // TRAIN_PER_LIST))
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(self.dim), self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = SEED
        index.cp.min_points_per_centroid = 1  # small forced-IVF indexes train on what there is
        rng = np.random.default_rng(SEED)
        # Calibration queries stay out of training: k-means pulls each centroid towards its
        # training points, which would make them easier queries than new images.
        order = rng.permutation(n)
        held_out = np.sort(order[: min(CALIBRATION_QUERIES, n // 10)])
        train = order[len(held_out) :][: TRAIN_PER_LIST * self.nlist]
        index.train(x[np.sort(train)])
        _, assign = index.quantizer.search(x, 1)
        assign = np.ascontiguousarray(assign.reshape(-1))
        index.add_core(n, faiss.swig_ptr(x), None, faiss.swig_ptr(assign))  # ids = rows
        self._lists = assign.astype(np.int32)
        self.nprobe = self._calibrate(index, x, assign, held_out)
        index.nprobe = self.nprobe
        return index

    def _calibrate(
        self,
        index: faiss.IndexIVFFlat,
        x: np.ndarray,
        assign: np.ndarray,
        rows: np.ndarray,
    ) -> int:
        """The least nprobe that finds RECALL_TARGET of the exact top-10 of the ``rows``.

        IVF-Flat finds a true neighbour exactly when its list is probed, so the rank of each
        neighbour's list in the query's list order gives the whole recall curve at once.
        """
        k = min(CALIBRATION_K, len(x) - 1)
        if k < 1 or self.nlist == 1 or not len(rows):
            return self.nlist
        queries = x[rows]
        _, exact = faiss.knn(queries, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        return self._least_nprobe(index, queries, assign[_others(exact, rows, k)])

    def _least_nprobe(
        self, index: faiss.IndexIVF, queries: np.ndarray, neighbour_lists: np.ndarray
    ) -> int:
        """The least nprobe whose nearest lists hold RECALL_TARGET of the neighbours' lists."""
        _, order = index.quantizer.search(queries, self.nlist)
        rank = np.empty_like(order)
        rank[np.arange(len(queries))[:, None], order] = np.arange(self.nlist)
        needed = np.sort((np.take_along_axis(rank, neighbour_lists, axis=1) + 1).reshape(-1))
        nprobe = int(needed[int(np.ceil(RECALL_TARGET * len(needed))) - 1])
        return min(self.nlist, max(nprobe, MIN_NPROBE))

    def suits(self, memory: int | None) -> bool:
        """Whether this is the index a build under ``memory`` would make now: the same kind
        family (flat or compressed) and, compressed, the same code size."""
        n = len(self.ids)
        if self.kind == "compressed":
            return needs_compression(n, self.dim, memory) and self.code_bytes == code_bytes(
                n, self.dim, memory
            )
        return not needs_compression(n, self.dim, memory)

    def memory_bytes(self) -> int:
        """What the index holds in memory: FAISS's lists and centroids (and PQ's), and our
        id and list arrays (the compressed kind's exact vectors stay on disk)."""
        arrays = (self.ids, self._lists, self._table, self._sorted_ids, self._order)
        ours = sum(a.nbytes for a in arrays if a is not None)
        if self.kind == "exact":
            return ours + self.index.ntotal * self.dim * 4
        invlists = self.index.invlists
        held = sum(invlists.list_size(i) for i in range(self.nlist))
        fixed = self.nlist * self.index.d * 4  # the centroids
        if self.kind == "compressed":
            pq = self.index.pq
            fixed += pq.M * pq.ksub * pq.dsub * 4
        return ours + fixed + held * (self.index.code_size + 8)

    # --- searching ----------------------------------------------------------

    def search(
        self,
        query: np.ndarray,
        k: int,
        allowed: Sequence[int] | np.ndarray | None = None,
        exclude: set[int] | None = None,
        rerank: bool = True,
    ) -> list[tuple[int, float]]:
        """Best ``k`` (id, score), best first, among ``allowed`` ids and never ``exclude``d ones.

        Ids in ``allowed`` that the index does not hold are ignored. A numpy array is the
        fastest way to pass a large subset. ``rerank=False`` makes the compressed kind
        answer from its codes alone, approximate scores and all: what re-ranking adds.
        """
        query = np.ascontiguousarray(np.atleast_2d(query)[:1], dtype=np.float32)
        exclude = exclude or set()
        want = min(k + len(exclude), len(self.ids))
        if want <= 0 or (allowed is not None and not len(allowed)):
            return []
        ivf = self.kind in ("ivf", "compressed")
        params = faiss.SearchParametersIVF() if ivf else faiss.SearchParameters()
        rows = None
        if allowed is not None:
            mask = np.zeros(len(self.ids), dtype=bool)
            mask[self._rows(allowed)] = True
            rows = np.flatnonzero(mask)
            want = min(want, len(rows))
            if not want:
                return []
            bitmap = np.packbits(mask, bitorder="little")  # kept alive until the search ends
            params.sel = faiss.IDSelectorBitmap(len(self.ids), faiss.swig_ptr(bitmap))
        with _one_thread():
            if self.kind == "compressed":
                scores, found = compressed.search(self, query, want, rows, params, rerank)
            elif self.kind == "ivf":
                scores, found = self._search_ivf(query, want, rows, params)
            else:
                scores, found = self.index.search(query, want, params=params)
        hits = [(int(self.ids[r]), float(s)) for r, s in zip(found[0], scores[0]) if r >= 0]
        return [h for h in hits if h[0] not in exclude][:k]

    def _search_ivf(
        self,
        query: np.ndarray,
        want: int,
        rows: np.ndarray | None,
        params: faiss.SearchParametersIVF,
        results: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probe as many lists as the calibration says, scaled to the ``results`` wanted
        (default ``want``: fewer when ``want`` counts candidates to re-rank) and the filter."""
        # nprobe was calibrated for the top 10; a longer list reaches about want/10 further.
        scale = max(1.0, (results or want) / CALIBRATION_K)
        if rows is None:
            params.nprobe = min(self.nlist, int(np.ceil(self.nprobe * scale)))
        else:
            # Filtered, probe lists nearest first until they hold as many allowed vectors as
            # an unfiltered search scans. That follows the subset wherever it lies (a folder
            # is often one theme, far from the query), and a small subset is covered whole,
            # so it is searched exactly.
            cover = min(len(rows), self.nprobe * scale * len(self.ids) / self.nlist)
            _, nearest = self.index.quantizer.search(query, self.nlist)
            held = np.bincount(self._lists[rows], minlength=self.nlist)[nearest[0]]
            params.nprobe = int(np.searchsorted(np.cumsum(held), cover)) + 1
        while True:
            scores, found = self.index.search(query, want, params=params)
            # Too few results means the probed lists held too few vectors: probe more.
            if params.nprobe >= self.nlist or np.count_nonzero(found[0] >= 0) >= want:
                return scores, found
            params.nprobe = min(self.nlist, params.nprobe * 4)

    def _rows(self, allowed: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows of the ``allowed`` ids this index holds (a caller's list may be newer)."""
        if isinstance(allowed, np.ndarray):
            wanted = allowed.astype(np.int64, copy=False).reshape(-1)
        else:
            wanted = np.fromiter(allowed, dtype=np.int64, count=len(allowed))
        if self._table is not None:
            inside = (wanted >= 0) & (wanted < len(self._table))
            rows = self._table[np.where(inside, wanted, 0)]
            return rows[inside & (rows >= 0)]
        wanted = np.sort(wanted)  # sorted needles make the binary search cache-friendly
        at = np.minimum(np.searchsorted(self._sorted_ids, wanted), len(self.ids) - 1)
        return self._order[at[self._sorted_ids[at] == wanted]]

    # --- persistence --------------------------------------------------------

    # --- persistence --------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the index (with ids and stamp) atomically: readers see the old file or the new."""
        saved.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VectorIndex:
        """Read a saved index; IndexFileError if it is damaged (FileNotFoundError if absent)."""
        return saved.load(cls, path)
