"""Scoring and ranking: the paper's caption similarity, and the FAISS search that ranks by it.

For unit caption vectors the average of all N x N pairwise cosines between two
images' captions equals the dot product of their mean caption vectors, so the
collection is ranked with one inner-product search over stored means.

That search is exact up to ``EXACT_MAX`` images and IVF above, tuned at build time to keep
recall@10 >= 0.95; a built index can be saved next to the database and loaded back. Where
the vectors themselves would not fit a memory budget, a compressed index (IVF lists of PQ
codes) finds candidates and the exact vectors, read from a file on disk, rank them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import stat
import struct
import tempfile
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import faiss
import numpy as np


@dataclass
class Caption:
    """A caption from the bank and how well it matches an image."""

    text: str
    score: float


@dataclass
class Hit:
    """A ranked result. ``path`` is absolute; ``shared`` explains the match when asked for;
    ``id`` is the image's id in the index (how the web UI addresses its thumbnail)."""

    path: str
    score: float
    shared: list[str] = field(default_factory=list)
    id: int | None = None


def caption_avg(a: np.ndarray, b: np.ndarray) -> float:
    """The paper's score, literally: the mean cosine over all pairs of the two caption sets."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a @ b.T).mean())


class IndexFileError(ValueError):
    """A saved index that cannot be used (truncated, corrupt, foreign): rebuild it instead."""


Kind = Literal["auto", "exact", "ivf", "compressed"]

# Measured on a busy 2-core Xeon, dim 384, one query on one thread (benchmarks/query_speed.py):
# an exact scan takes 1.2 ms at 2*10^4, 3.3 ms at 5*10^4 and 11.5 ms at 10^5. Up to here
# queries stay within a few milliseconds, exact, with nothing to build or go stale.
EXACT_MAX = 50_000
# IVF lists: ~4 sqrt(n) keeps both the centroid scan and each list short; k-means trains on
# 40 points per list (FAISS warns below 39): 10^6 vectors build in 30-50 s on 2 cores, where
# HNSW (M=32) took 390 s and still found less at the same latency.
LISTS_PER_SQRT_N = 4
TRAIN_PER_LIST = 40
# nprobe is chosen at build time, from the index's own data, as the least that finds this
# share of the exact top-10 of sampled stored vectors kept out of k-means training; the
# margin over the promised 0.95 covers sampling error (held-out queries measured 0.958-0.98).
RECALL_TARGET = 0.97
CALIBRATION_QUERIES = 512
CALIBRATION_K = 10
# Never fewer lists than this: they cost well under a millisecond and guard against
# queries less typical than the calibration sample (text queries, averaged images).
MIN_NPROBE = 16
# IVF scans a vector at about the cost of an exact scan, so where the calibration needs more
# than this share of the lists (uniform 10^6 vectors: 83%, 115 ms either way) ``auto`` keeps
# the exact index instead: as fast, and no misses.
IVF_MAX_SCAN = 0.75
SEED = 1234

# --- the compressed kind: for collections whose vectors exceed the memory budget ---------
# The budget is compared with the flat vectors (4 bytes a dimension: 10^7 CLIP vectors take
# 20 GB). Above it each vector is kept in IVF lists as a product-quantisation code of one
# byte per CODE_DIMS dimensions (128 bytes for CLIP's 512, 96 for the offline model's 384);
# its float16 copy stays on disk beside the index and re-scores the candidates the codes
# find. Measured on 10^6 clustered 512-d vectors, 16 lists probed: re-scoring 400
# candidates per 10 results reached recall@10 0.92 with 64-byte codes, 0.98 with 128-byte
# ones; 256-byte ones scanned 5x slower and trained 12x longer; an OPQ rotation added 0.013
# of recall and trained 20x longer than the rest (on 20k x 64), so there is none.
CODE_DIMS = 4
# Memory per vector besides its code: FAISS's id in its list (8 bytes), ours (8), its list
# number (4) and the id lookup table (4).
ROW_BYTES = 24
# Fewer lists than IVF-Flat: adding 10^7 vectors scores each against every centroid, and
# codes are cheap to scan.
COMPRESSED_LISTS_PER_SQRT_N = 1
# PQ learns 256 centroids per byte of code, and FAISS asks for 39 points each; it trains on
# at least this many vectors, more where the lists need more.
PQ_TRAIN = 39 * 256
COMPRESSED_TRAIN = 4 * PQ_TRAIN
# How many candidates are re-scored per 10 results is calibrated at build time like
# nprobe: the least number that holds this share of the exact top-10 of held-out vectors.
RERANK_TARGET = 0.95
MIN_DEPTH = 50
MAX_DEPTH = 1000
_ROWS_CHUNK = 1 << 16  # vectors read at a time when building from the vectors file

_MAGIC = b"IMGSVIX1"
_END = b"IXND"
_FORMAT = 1
_HEADER_MAX = 1 << 20
_CHUNK = 1 << 24


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
            self._build_compressed(
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
        index._build_compressed(chunks, memory, workdir)
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

    def _build_compressed(
        self,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        memory: int | None,
        workdir: str | os.PathLike | None,
    ) -> None:
        """IVF + PQ over the vectors streamed to disk, then nprobe and the re-ranking
        depth calibrated on held-out vectors against an exact scan of that file."""
        folder = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
        clock = time.perf_counter()
        self._file, ids = _VectorFile.write(folder, chunks)
        self.timings["write"] = time.perf_counter() - clock
        self._set_ids(ids)
        n, self.dim = len(ids), self._file.dim
        self.kind = "compressed"
        self.code_bytes = code_bytes(n, self.dim, memory)
        self.nlist = max(
            1, min(round(COMPRESSED_LISTS_PER_SQRT_N * np.sqrt(n)), n // TRAIN_PER_LIST)
        )
        order = np.random.default_rng(SEED).permutation(n)
        held_out = np.sort(order[: min(CALIBRATION_QUERIES, n // 10)])
        wanted = max(TRAIN_PER_LIST * self.nlist, COMPRESSED_TRAIN)
        sample = self._file.take(np.sort(order[len(held_out) :][:wanted]))
        # Small collections train fewer centroids per byte (FAISS needs a point each).
        bits = 8 if len(sample) >= PQ_TRAIN else max(1, int(np.log2(max(len(sample), 2) / 39)))
        index = faiss.IndexIVFPQ(
            faiss.IndexFlatIP(self.dim),
            self.dim,
            self.nlist,
            self.code_bytes,
            bits,
            faiss.METRIC_INNER_PRODUCT,
        )
        index.do_polysemous_training = False  # Hamming-distance codes: slow, and unused
        for clustering in (index.cp, index.pq.cp):
            clustering.seed = SEED
            clustering.min_points_per_centroid = 1  # small forced indexes train on what there is
        if len(sample) < 1 << bits:  # k-means needs a point per centroid: repeat a few
            sample = np.resize(sample, (1 << bits, self.dim))
        clock = time.perf_counter()
        index.train(sample)
        del sample
        self.timings["train"] = time.perf_counter() - clock
        for _, block in self._file.blocks():
            index.add(block)  # FAISS numbers them in order: its ids are our rows
        self.timings["add"] = time.perf_counter() - clock - self.timings["train"]
        self.index = index
        self._lists = _list_of_rows(index, "the new index")
        clock = time.perf_counter()
        self.nprobe, self.depth = self._calibrate_compressed(held_out)
        self.timings["calibrate"] = time.perf_counter() - clock

    def _calibrate_compressed(self, rows: np.ndarray) -> tuple[int, int]:
        """nprobe as for IVF-Flat, then the re-ranking depth: each true neighbour is found
        if the codes rank it within the candidates, since the exact scores then put it in
        the top 10; so its rank among the candidates gives the recall at every depth."""
        n = len(self.ids)
        k = min(CALIBRATION_K, n - 1)
        if k < 1 or not len(rows):
            return self.nlist, MAX_DEPTH
        assert self._file is not None
        queries = self._file.take(rows)
        neighbours = _others(self._file.top(queries, k + 1), rows, k)
        nprobe = self.nlist
        if self.nlist > 1:
            nprobe = self._least_nprobe(self.index, queries, self._lists[neighbours])
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        width = min(n, MAX_DEPTH + 1)
        _, found = self.index.search(queries, width, params=params)
        # A candidate's place once the query's own row (no answer) is taken out.
        place = np.arange(width)[None, :] - np.cumsum(found == rows[:, None], axis=1)
        match = found[:, :, None] == neighbours[:, None, :]
        first = match.argmax(axis=1)
        depth = np.where(match.any(axis=1), np.take_along_axis(place, first, axis=1) + 1, MAX_DEPTH)
        needed = np.sort(depth.reshape(-1))
        depth = int(needed[int(np.ceil(RERANK_TARGET * len(needed))) - 1])
        return nprobe, min(MAX_DEPTH, max(depth, MIN_DEPTH))

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
                scores, found = self._search_compressed(query, want, rows, params, rerank)
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

    def _search_compressed(
        self,
        query: np.ndarray,
        want: int,
        rows: np.ndarray | None,
        params: faiss.SearchParametersIVF,
        rerank: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from the codes, as many per result as calibrated, re-scored exactly."""
        if not rerank:
            return self._search_ivf(query, want, rows, params)
        assert self._file is not None
        held = len(rows) if rows is not None else len(self.ids)
        candidates = min(held, max(want, int(np.ceil(self.depth * want / CALIBRATION_K))))
        _, found = self._search_ivf(query, candidates, rows, params, results=want)
        found = found[0][found[0] >= 0]
        scores = self._file.take(found) @ query[0]
        best = np.argsort(-scores, kind="stable")[:want]
        return scores[best][None], found[best][None]

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

    def save(self, path: str | os.PathLike) -> None:
        """Write the index (with ids and stamp) atomically: readers see the old file or the new."""
        path = Path(path)
        if not isinstance(self.stamp, str):
            raise TypeError(f"stamp must be a str, not {type(self.stamp).__name__}")
        fields = {
            "format": _FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self.ids),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "exact_max": self.exact_max,
            "stamp": self.stamp,
        }
        if self._file is not None:  # the vectors file goes first: the header names it
            fields.update(depth=self.depth, rows=self._file.place_beside(path))
        header = json.dumps(fields).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            # mkstemp makes the file private; keep the mode of the file being replaced.
            with contextlib.suppress(OSError):
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o644)
            with os.fdopen(fd, "wb") as f:
                crc = 0

                def write(data: bytes) -> int:
                    nonlocal crc
                    crc = zlib.crc32(data, crc)
                    return f.write(data)

                write(_MAGIC + struct.pack("<I", len(header)) + header)
                write(self.ids.astype("<i8").tobytes())
                faiss.write_index(self.index, faiss.PyCallbackIOWriter(write))
                f.write(struct.pack("<I", crc) + _END)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable where possible
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        _drop_vector_files(path, keep=self._file.path.name if self._file is not None else None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VectorIndex:
        """Read a saved index; IndexFileError if it is damaged (FileNotFoundError if absent)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(_MAGIC) + 4)
            if len(head) < len(_MAGIC) + 4 or head[: len(_MAGIC)] != _MAGIC:
                raise IndexFileError(f"{path} is not a saved vector index")
            (header_len,) = struct.unpack("<I", head[len(_MAGIC) :])
            if header_len > min(_HEADER_MAX, size):
                raise IndexFileError(f"{path} is damaged: bad header length")
            meta = _parse_header(f.read(header_len), path)
            start = len(head) + header_len
            body = size - start - 8 * meta["count"] - 8
            if body <= 0:
                raise IndexFileError(f"{path} is truncated")
            # Checksum everything first: FAISS trusts the sizes it reads, so damaged bytes
            # could make it allocate wildly or crash rather than fail cleanly.
            f.seek(0)
            crc, left = 0, size - 8
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise IndexFileError(f"{path} is truncated")
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            trailer = f.read(8)
            if trailer[4:] != _END or struct.unpack("<I", trailer[:4])[0] != crc:
                raise IndexFileError(f"{path} is damaged or truncated (checksum mismatch)")
            f.seek(start)
            ids = np.frombuffer(f.read(8 * meta["count"]), dtype="<i8").astype(np.int64)
            left = body

            def read(want: int) -> bytes:
                nonlocal left
                data = f.read(min(want, left))
                left -= len(data)
                return data

            try:
                index = faiss.read_index(faiss.PyCallbackIOReader(read))
            except RuntimeError as exc:
                raise IndexFileError(f"{path} holds no readable FAISS index: {exc}") from None
            if left:
                raise IndexFileError(f"{path} is damaged: {left} bytes after the index")
        expected = {
            "ivf": faiss.IndexIVFFlat,
            "compressed": faiss.IndexIVFPQ,
            "exact": faiss.IndexFlatIP,
        }[meta["kind"]]
        if (
            not isinstance(index, expected)
            or index.ntotal != meta["count"]
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
            or (meta["count"] and index.d != meta["dim"])
            or (meta["kind"] != "exact" and index.nlist != meta["nlist"])
        ):
            raise IndexFileError(f"{path} does not match its own header")
        loaded = cls.__new__(cls)
        loaded._reset(meta["dim"], meta["exact_max"], meta["stamp"])
        try:
            loaded._set_ids(ids)
        except ValueError as exc:
            raise IndexFileError(f"{path} is damaged: {exc}") from None
        loaded.kind = meta["kind"]
        loaded.nlist = meta["nlist"]
        loaded.nprobe = meta["nprobe"]
        loaded.index = index
        if loaded.kind != "exact":
            loaded._lists = _list_of_rows(index, path)
        if loaded.kind == "compressed":
            loaded.depth, loaded.code_bytes = meta["depth"], index.pq.M
            loaded._file = _VectorFile.open(
                Path(path).with_name(meta["rows"]), meta["count"], meta["dim"]
            )
        return loaded


def flat_bytes(n: int, dim: int) -> int:
    """What ``n`` float32 vectors of ``dim`` take: what the memory budget is compared with."""
    return 4 * n * dim


def needs_compression(n: int, dim: int, memory: int | None) -> bool:
    """Whether ``auto`` builds the compressed kind: the flat vectors exceed the budget."""
    return memory is not None and flat_bytes(n, dim) > memory


def code_bytes(n: int, dim: int, memory: int | None) -> int:
    """Bytes of code per vector: one per CODE_DIMS dimensions (a divisor of ``dim``, as PQ
    needs), fewer where ``n`` codes would not fit the budget, the fewest if none does."""
    sizes = [m for m in range(1, max(1, dim // CODE_DIMS) + 1) if dim % m == 0]
    for size in reversed(sizes):
        if memory is None or n * (size + ROW_BYTES) <= memory:
            return size
    return sizes[0]


def _others(exact: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The top-(k+1) rows of stored vectors, each row's own entry taken out: it is its own
    best match and says nothing (among exact duplicates that push it out, the last goes)."""
    is_self = exact == rows[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(exact, dtype=bool)
    keep[np.arange(len(rows)), drop] = False
    return exact[keep].reshape(len(rows), k)


class _VectorFile:
    """The exact vectors of a compressed index, float16 row after row in a file of their
    own beside it: streamed through to build, read a few rows at a time to re-rank.

    Reads are plain ``pread`` calls, not a memory map: what they read stays in the page
    cache, shared and reclaimable, rather than in the process.
    """

    def __init__(self, path: Path, n: int, dim: int, temporary: bool, fd: int | None = None):
        self.path, self.n, self.dim = path, n, dim
        self.row_bytes = 2 * dim
        self.temporary = temporary
        self._fd = os.open(path, os.O_RDONLY) if fd is None else fd
        # A temporary file (an index not saved yet) is deleted with its index.
        self._closer = weakref.finalize(self, _close_file, self._fd, path if temporary else None)

    @classmethod
    def write(
        cls, folder: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[_VectorFile, np.ndarray]:
        """Write (ids, vectors) chunks to a new temporary file; the ids come back joined.

        The file stays locked while its index lives, so a build that was killed (its file
        then unlocked) is told from one under way, and its file removed here."""
        _remove_abandoned(folder)
        fd, name = tempfile.mkstemp(prefix=_TEMPORARY, suffix=".tmp", dir=folder)
        _lock(fd)
        ids: list[np.ndarray] = []
        dim = -1
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                for chunk_ids, vectors in chunks:
                    chunk_ids = np.array(chunk_ids, dtype=np.int64).reshape(-1)
                    vectors = np.asarray(vectors)
                    if vectors.ndim != 2 or len(vectors) != len(chunk_ids):
                        raise ValueError(f"{len(chunk_ids)} ids for {len(vectors)} vectors")
                    if dim not in (-1, vectors.shape[1]):
                        raise ValueError(f"vectors of {vectors.shape[1]} dimensions after {dim}")
                    dim = vectors.shape[1]
                    f.write(np.ascontiguousarray(vectors, dtype="<f2").tobytes())
                    ids.append(chunk_ids)
            if not ids or not dim or not sum(len(i) for i in ids):
                raise ValueError("no vectors to index")
        except BaseException:
            os.close(fd)
            os.unlink(name)
            raise
        joined = np.concatenate(ids)
        return cls(Path(name), len(joined), dim, temporary=True, fd=fd), joined

    @classmethod
    def open(cls, path: Path, n: int, dim: int) -> _VectorFile:
        """A saved index's vectors file; IndexFileError if it is missing or the wrong size."""
        name = path.name
        try:
            opened = cls(path, n, dim, temporary=False)
        except OSError as exc:
            raise IndexFileError(f"cannot read {name}, the index's vectors: {exc}") from None
        if os.fstat(opened._fd).st_size != n * opened.row_bytes:
            raise IndexFileError(f"{name}, the index's vectors, is damaged or truncated")
        return opened

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows``, as float32."""
        size = self.row_bytes
        data = b"".join(os.pread(self._fd, size, int(row) * size) for row in rows)
        if len(data) != len(rows) * size:
            raise IndexFileError(f"{self.path} is truncated")
        return np.frombuffer(data, "<f2").reshape(len(rows), self.dim).astype(np.float32)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 vectors) for every _ROWS_CHUNK rows, in order."""
        for start in range(0, self.n, _ROWS_CHUNK):
            size = (min(self.n, start + _ROWS_CHUNK) - start) * self.row_bytes
            data = os.pread(self._fd, size, start * self.row_bytes)
            if len(data) != size:
                raise IndexFileError(f"{self.path} is truncated")
            yield start, np.frombuffer(data, "<f2").reshape(-1, self.dim).astype(np.float32)

    def top(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Each query's exact top-``k`` rows by inner product: one pass over the file."""
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        for start, block in self.blocks():
            scores, rows = faiss.knn(
                queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT
            )
            heap.add_result(scores, np.where(rows >= 0, rows + start, -1))
        heap.finalize()
        return heap.I

    def place_beside(self, index_path: Path) -> str:
        """Put the file beside ``index_path`` under a name of its own (index name, a token,
        ``.rows``) and return that name. A new name for every build: a reader holding the
        old index keeps reading its own vectors until it reloads."""
        prefix = f"{index_path.name}."
        if self.path.parent == index_path.parent and self.path.name.startswith(prefix):
            return self.path.name
        target = index_path.with_name(f"{prefix}{secrets.token_hex(8)}.rows")
        if self.temporary:
            try:
                os.replace(self.path, target)  # from the build's folder, usually this one
            except OSError:
                shutil.copyfile(self.path, target)
                os.unlink(self.path)
        else:
            shutil.copyfile(self.path, target)  # a loaded index saved somewhere else
        with contextlib.suppress(OSError):
            os.chmod(target, 0o644)  # mkstemp made it private; the index file is not
        self._closer.detach()
        self.path, self.temporary = target, False
        self._closer = weakref.finalize(self, _close_file, self._fd, None)
        return target.name


_TEMPORARY = ".vix-vectors-"


def _lock(fd: int) -> bool:
    """Take the file's exclusive lock without waiting: False if another process holds it
    (where there is no flock, as on Windows, always True: nothing is ever swept)."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _remove_abandoned(folder: Path) -> None:
    """Delete vectors files of builds that were killed: temporary, and locked by no one."""
    if os.name != "posix":
        return
    for stale in folder.glob(f"{_TEMPORARY}*.tmp"):
        with contextlib.suppress(OSError):
            fd = os.open(stale, os.O_RDONLY)
            try:
                if _lock(fd):
                    stale.unlink()
            finally:
                os.close(fd)


def _close_file(fd: int, remove: Path | None) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    if remove is not None:
        with contextlib.suppress(OSError):
            os.unlink(remove)


def _drop_vector_files(index_path: Path, keep: str | None) -> None:
    """Remove vectors files of earlier builds of ``index_path`` (readers that still have
    one open keep reading it: the data goes when they close it)."""
    for other in index_path.parent.glob(f"{glob.escape(index_path.name)}.*.rows"):
        if other.name != keep:
            with contextlib.suppress(OSError):
                other.unlink()


def _list_of_rows(index: faiss.IndexIVF, path: str | os.PathLike) -> np.ndarray:
    """Each row's IVF list, read back from the lists (a loaded index has no other record)."""
    lists = np.full(index.ntotal, -1, dtype=np.int32)
    invlists = index.invlists
    for number in range(index.nlist):
        size = invlists.list_size(number)
        if size:
            rows = faiss.rev_swig_ptr(invlists.get_ids(number), size)
            if rows.min() < 0 or rows.max() >= index.ntotal:
                raise IndexFileError(f"{path} is damaged: a list names rows it does not have")
            lists[rows] = number
    if np.any(lists < 0):
        raise IndexFileError(f"{path} is damaged: rows missing from every list")
    return lists


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run FAISS on one thread for a single query: too little work to share, and on a busy
    machine OpenMP's wait for a descheduled second thread cost 15 ms where the scan took 1.

    OpenMP keeps the thread count per calling thread, so other threads are unaffected.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _parse_header(raw: bytes, path: str | os.PathLike) -> dict:
    """The saved header, checked field by field so a bad file fails here and not later."""
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IndexFileError(f"{path} is damaged: unreadable header") from None
    fields = {
        "format": int,
        "kind": str,
        "dim": int,
        "count": int,
        "nlist": int,
        "nprobe": int,
        "exact_max": int,
        "stamp": str,
    }
    if not isinstance(meta, dict) or any(
        not isinstance(meta.get(name), kind) for name, kind in fields.items()
    ):
        raise IndexFileError(f"{path} is damaged: incomplete header")
    if meta["format"] != _FORMAT:
        raise IndexFileError(f"{path} has format {meta['format']}, this version reads {_FORMAT}")
    if meta["kind"] not in ("exact", "ivf", "compressed") or min(meta["dim"], meta["count"]) < 0:
        raise IndexFileError(f"{path} is damaged: bad header values")
    if meta["kind"] == "compressed" and not (
        isinstance(meta.get("depth"), int)
        and isinstance(meta.get("rows"), str)
        and meta["rows"].startswith(f"{Path(path).name}.")  # beside the index, nowhere else
        and "/" not in meta["rows"]
        and os.sep not in meta["rows"]
    ):
        raise IndexFileError(f"{path} is damaged: bad header values")
    return meta
