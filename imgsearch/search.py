"""Scoring and ranking: the paper's caption similarity, and the FAISS search that ranks by it.

For unit caption vectors the average of all N x N pairwise cosines between two
images' captions equals the dot product of their mean caption vectors, so the
collection is ranked with one inner-product search over stored means.

That search is exact up to ``EXACT_MAX`` images and IVF above, tuned at build time to keep
recall@10 >= 0.95; a built index can be saved next to the database and loaded back.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
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


Kind = Literal["auto", "exact", "ivf"]

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
    ):
        if kind not in ("auto", "exact", "ivf"):
            raise ValueError(f"unknown index kind {kind!r}: use 'auto', 'exact' or 'ivf'")
        vectors = np.asarray(vectors)
        ids = np.array(ids, dtype=np.int64).reshape(-1)  # a copy: the caller's may change
        if len(ids) != (len(vectors) if vectors.size else 0):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self.dim = int(vectors.shape[1]) if vectors.size else 0
        self.exact_max = exact_max
        self.stamp = stamp
        self.kind: str = "exact"
        self.index: faiss.Index
        self.nlist = 0
        self.nprobe = 0
        self._lists = np.empty(0, dtype=np.int32)  # each row's IVF list, for filtered search
        self._set_ids(ids)
        n = len(ids)
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
        # The query's own row is its best match and says nothing: drop it (or, among exact
        # duplicates that push it out, the last neighbour).
        is_self = exact == rows[:, None]
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
        keep = np.ones_like(exact, dtype=bool)
        keep[np.arange(len(rows)), drop] = False
        neighbour_lists = assign[exact[keep].reshape(len(rows), k)]
        _, order = index.quantizer.search(queries, self.nlist)
        rank = np.empty_like(order)
        rank[np.arange(len(rows))[:, None], order] = np.arange(self.nlist)
        needed = np.sort((np.take_along_axis(rank, neighbour_lists, axis=1) + 1).reshape(-1))
        nprobe = int(needed[int(np.ceil(RECALL_TARGET * len(needed))) - 1])
        return min(self.nlist, max(nprobe, MIN_NPROBE))

    # --- searching ----------------------------------------------------------

    def search(
        self,
        query: np.ndarray,
        k: int,
        allowed: Sequence[int] | np.ndarray | None = None,
        exclude: set[int] | None = None,
    ) -> list[tuple[int, float]]:
        """Best ``k`` (id, score), best first, among ``allowed`` ids and never ``exclude``d ones.

        Ids in ``allowed`` that the index does not hold are ignored. A numpy array is the
        fastest way to pass a large subset.
        """
        query = np.ascontiguousarray(np.atleast_2d(query)[:1], dtype=np.float32)
        exclude = exclude or set()
        want = min(k + len(exclude), len(self.ids))
        if want <= 0 or (allowed is not None and not len(allowed)):
            return []
        params = faiss.SearchParametersIVF() if self.kind == "ivf" else faiss.SearchParameters()
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
            if self.kind == "ivf":
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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probe as many lists as the calibration says, scaled to ``want`` and the filter."""
        # nprobe was calibrated for the top 10; a longer list reaches about want/10 further.
        scale = max(1.0, want / CALIBRATION_K)
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

    def save(self, path: str | os.PathLike) -> None:
        """Write the index (with ids and stamp) atomically: readers see the old file or the new."""
        path = Path(path)
        if not isinstance(self.stamp, str):
            raise TypeError(f"stamp must be a str, not {type(self.stamp).__name__}")
        header = json.dumps(
            {
                "format": _FORMAT,
                "kind": self.kind,
                "dim": self.dim,
                "count": len(self.ids),
                "nlist": self.nlist,
                "nprobe": self.nprobe,
                "exact_max": self.exact_max,
                "stamp": self.stamp,
            }
        ).encode()
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
        expected = faiss.IndexIVFFlat if meta["kind"] == "ivf" else faiss.IndexFlatIP
        if (
            not isinstance(index, expected)
            or index.ntotal != meta["count"]
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
            or (meta["count"] and index.d != meta["dim"])
            or (meta["kind"] == "ivf" and index.nlist != meta["nlist"])
        ):
            raise IndexFileError(f"{path} does not match its own header")
        loaded = cls.__new__(cls)
        try:
            loaded._set_ids(ids)
        except ValueError as exc:
            raise IndexFileError(f"{path} is damaged: {exc}") from None
        loaded.dim = meta["dim"]
        loaded.kind = meta["kind"]
        loaded.nlist = meta["nlist"]
        loaded.nprobe = meta["nprobe"]
        loaded.exact_max = meta["exact_max"]
        loaded.stamp = meta["stamp"]
        loaded.index = index
        loaded._lists = (
            _list_of_rows(index, path) if loaded.kind == "ivf" else np.empty(0, np.int32)
        )
        return loaded


def _list_of_rows(index: faiss.IndexIVFFlat, path: str | os.PathLike) -> np.ndarray:
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
    if meta["kind"] not in ("exact", "ivf") or min(meta["dim"], meta["count"]) < 0:
        raise IndexFileError(f"{path} is damaged: bad header values")
    return meta
