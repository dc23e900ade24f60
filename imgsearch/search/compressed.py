"""The compressed kind of search index: for collections whose vectors exceed the memory
budget. IVF lists of product-quantisation codes find candidates; the exact vectors, float16
in a file of their own beside the index, re-score them."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from imgsearch.search.common import (
    _ROWS_CHUNK,
    CALIBRATION_K,
    CALIBRATION_QUERIES,
    COMPRESSED_LISTS_PER_SQRT_N,
    COMPRESSED_TRAIN,
    MAX_DEPTH,
    MIN_DEPTH,
    PQ_TRAIN,
    RERANK_TARGET,
    SEED,
    TRAIN_PER_LIST,
    IndexFileError,
    _list_of_rows,
    _others,
    code_bytes,
)

if TYPE_CHECKING:
    from imgsearch.search.index import VectorIndex


def build(
    vix: VectorIndex,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    memory: int | None,
    workdir: str | os.PathLike | None,
) -> None:
    """IVF + PQ over the vectors streamed to disk, then nprobe and the re-ranking
    depth calibrated on held-out vectors against an exact scan of that file."""
    folder = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    clock = time.perf_counter()
    vix._file, ids = _VectorFile.write(folder, chunks)
    vix.timings["write"] = time.perf_counter() - clock
    vix._set_ids(ids)
    n, vix.dim = len(ids), vix._file.dim
    vix.kind = "compressed"
    vix.code_bytes = code_bytes(n, vix.dim, memory)
    vix.nlist = max(1, min(round(COMPRESSED_LISTS_PER_SQRT_N * np.sqrt(n)), n // TRAIN_PER_LIST))
    order = np.random.default_rng(SEED).permutation(n)
    held_out = np.sort(order[: min(CALIBRATION_QUERIES, n // 10)])
    wanted = max(TRAIN_PER_LIST * vix.nlist, COMPRESSED_TRAIN)
    sample = vix._file.take(np.sort(order[len(held_out) :][:wanted]))
    # Small collections train fewer centroids per byte (FAISS needs a point each).
    bits = 8 if len(sample) >= PQ_TRAIN else max(1, int(np.log2(max(len(sample), 2) / 39)))
    index = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(vix.dim),
        vix.dim,
        vix.nlist,
        vix.code_bytes,
        bits,
        faiss.METRIC_INNER_PRODUCT,
    )
    index.do_polysemous_training = False  # Hamming-distance codes: slow, and unused
    for clustering in (index.cp, index.pq.cp):
        clustering.seed = SEED
        clustering.min_points_per_centroid = 1  # small forced indexes train on what there is
    if len(sample) < 1 << bits:  # k-means needs a point per centroid: repeat a few
        sample = np.resize(sample, (1 << bits, vix.dim))
    clock = time.perf_counter()
    index.train(sample)
    del sample
    vix.timings["train"] = time.perf_counter() - clock
    for _, block in vix._file.blocks():
        index.add(block)  # FAISS numbers them in order: its ids are our rows
    vix.timings["add"] = time.perf_counter() - clock - vix.timings["train"]
    vix.index = index
    vix._lists = _list_of_rows(index, "the new index")
    clock = time.perf_counter()
    vix.nprobe, vix.depth = calibrate(vix, held_out)
    vix.timings["calibrate"] = time.perf_counter() - clock


def calibrate(vix: VectorIndex, rows: np.ndarray) -> tuple[int, int]:
    """nprobe as for IVF-Flat, then the re-ranking depth: each true neighbour is found
    if the codes rank it within the candidates, since the exact scores then put it in
    the top 10; so its rank among the candidates gives the recall at every depth."""
    n = len(vix.ids)
    k = min(CALIBRATION_K, n - 1)
    if k < 1 or not len(rows):
        return vix.nlist, MAX_DEPTH
    assert vix._file is not None
    queries = vix._file.take(rows)
    neighbours = _others(vix._file.top(queries, k + 1), rows, k)
    nprobe = vix.nlist
    if vix.nlist > 1:
        nprobe = vix._least_nprobe(vix.index, queries, vix._lists[neighbours])
    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    width = min(n, MAX_DEPTH + 1)
    _, found = vix.index.search(queries, width, params=params)
    # A candidate's place once the query's own row (no answer) is taken out.
    place = np.arange(width)[None, :] - np.cumsum(found == rows[:, None], axis=1)
    match = found[:, :, None] == neighbours[:, None, :]
    first = match.argmax(axis=1)
    depth = np.where(match.any(axis=1), np.take_along_axis(place, first, axis=1) + 1, MAX_DEPTH)
    needed = np.sort(depth.reshape(-1))
    depth = int(needed[int(np.ceil(RERANK_TARGET * len(needed))) - 1])
    return nprobe, min(MAX_DEPTH, max(depth, MIN_DEPTH))


def search(
    vix: VectorIndex,
    query: np.ndarray,
    want: int,
    rows: np.ndarray | None,
    params: faiss.SearchParametersIVF,
    rerank: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from the codes, as many per result as calibrated, re-scored exactly."""
    if not rerank:
        return vix._search_ivf(query, want, rows, params)
    assert vix._file is not None
    held = len(rows) if rows is not None else len(vix.ids)
    candidates = min(held, max(want, int(np.ceil(vix.depth * want / CALIBRATION_K))))
    _, found = vix._search_ivf(query, candidates, rows, params, results=want)
    found = found[0][found[0] >= 0]
    scores = vix._file.take(found) @ query[0]
    best = np.argsort(-scores, kind="stable")[:want]
    return scores[best][None], found[best][None]


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
