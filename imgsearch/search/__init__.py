"""Scoring and ranking: the FAISS search that ranks a collection by a method's vectors.

For unit caption vectors the average of all N x N pairwise cosines between two
images' captions equals the dot product of their mean caption vectors, so the
collection is ranked with one inner-product search over stored means.

That search is exact up to ``EXACT_MAX`` images and IVF above, tuned at build time to keep
recall@10 >= 0.95; a built index can be saved next to the database and loaded back. Where
the vectors themselves would not fit a memory budget, a compressed index (IVF lists of PQ
codes) finds candidates and the exact vectors, read from a file on disk, rank them.
"""

from imgsearch.search.common import (
    CODE_DIMS,
    EXACT_MAX,
    IndexFileError,
    code_bytes,
    flat_bytes,
    needs_compression,
    parse_size,
)
from imgsearch.search.index import Kind, VectorIndex

__all__ = [
    "CODE_DIMS",
    "EXACT_MAX",
    "IndexFileError",
    "Kind",
    "VectorIndex",
    "code_bytes",
    "flat_bytes",
    "needs_compression",
    "parse_size",
]
