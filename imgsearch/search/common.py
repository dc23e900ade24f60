"""What every kind of search index shares: the tuning constants, the memory arithmetic,
and small helpers over FAISS indexes."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import faiss
import numpy as np

from imgsearch.errors import ImgsearchError


class IndexFileError(ValueError):
    """A saved index that cannot be used (truncated, corrupt, foreign): rebuild it instead."""


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


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "4GB", "512MB", "1.5G", "64KiB" or a plain count. Units are binary
    (1 GB = 2^30 bytes), as memory is counted; a bad value is one clear error."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.I)
    value = float(match[1]) * _SIZE_UNITS[match[2].lower()] if match else 0
    if not match or value < 1 or (not match[2] and not value.is_integer()):
        raise ImgsearchError(f"bad memory size {text!r}: give a positive size such as 4GB or 512MB")
    return int(value)
