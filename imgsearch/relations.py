"""Relations among a collection's images: similarity graphs, clusters, near-duplicates, sets.

Pure functions over vectors; rows are images and every result names them by row index.
Nothing here builds an N x N matrix: pairs come from FAISS range or k-NN searches over
blocks of rows, so memory follows the number of edges found, not the square of the
collection. Scores are inner products: between mean caption vectors that is the paper's
average N x N caption cosine, between unit image vectors it is their cosine.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from xml.sax.saxutils import escape

import faiss
import numpy as np

# Rows per FAISS call: a block of queries against a block of the database, so one call's
# results are bounded by 8192 x 8192 pairs whatever the collection's size.
BLOCK = 8192

# Mean rows at or above tau per row up to which a k-NN graph is cut from the range search's
# pairs (each pair computed once; that many fit in memory easily), and the rows sampled to
# estimate it. Above it a k-NN search, which holds only k per row, is used.
KNN_FROM_RANGE_DEGREE = 64
DEGREE_SAMPLE = 1000

# Most clusters seeded by k-means++; see kmeans_clusters.
KMEANS_PP_MAX = 256

SET_METHODS = ("ordered", "greedy", "hungarian")

# Above this many rows, pairs come from an IVF index (about 4 sqrt(n) lists, IVF_NPROBE of
# them searched per row) instead of an exact scan: the cost grows as n^1.5, not n^2, and
# nearly every close pair is still found (benchmarks/relations_speed.py reports the recall).
APPROXIMATE_ABOVE = 50_000
IVF_NPROBE = 16

# Edges as parallel arrays: sources, targets, scores.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(slots=True)
class Edge:
    """An undirected edge between rows ``source < target`` with their inner product."""

    source: int
    target: int
    score: float


@dataclass
class NamedGroup:
    """A group's rows, its most shared captions (full texts) and a short name from them."""

    members: list[int]
    captions: list[str]
    name: str


@dataclass
class SetMatch:
    """How two sets of images match: (row, column, score) pairs that count, and their mean."""

    pairs: list[tuple[int, int, float]]
    score: float


# --- graph ------------------------------------------------------------------------------


def _rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D array of row vectors, got shape {vectors.shape}")
    return vectors


def _flat_index(vectors: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def _ivf_index(vectors: np.ndarray) -> faiss.IndexIVFFlat:
    """An inverted-file index over the rows: each search scans a few lists, not every row."""
    n, dim = vectors.shape
    lists = max(1, int(4 * np.sqrt(n)))
    rng = np.random.default_rng(0)
    sample = vectors[np.sort(rng.choice(n, min(n, 40 * lists), replace=False))]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample))
    index.add(vectors)
    index.nprobe = IVF_NPROBE
    return index


def _approximate_range_pairs(vectors: np.ndarray, tau: float, block: int) -> Arrays:
    """Pairs at or above tau found through an IVF index: close pairs share or neighbour
    a list, so this finds nearly all of them at a small fraction of the exact cost. A pair
    found from either end counts, once."""
    n = len(vectors)
    index = _ivf_index(vectors)
    radius = float(np.nextafter(np.float32(tau), np.float32(-np.inf)))
    sources, targets, scores = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        lims, dist, labels = index.range_search(vectors[start:stop], radius)
        query = start + np.repeat(np.arange(stop - start), np.diff(lims.astype(np.int64)))
        keep = (labels >= 0) & (labels != query) & (dist >= tau)
        sources.append(np.minimum(query, labels)[keep])
        targets.append(np.maximum(query, labels)[keep])
        scores.append(dist[keep])
    source, target, score = _concat(sources, targets, scores)
    _, first = np.unique(source * n + target, return_index=True)
    return source[first], target[first], score[first]


def _range_pairs(vectors: np.ndarray, tau: float, block: int) -> Arrays:
    """All pairs i < j with inner product >= tau, each computed once.

    The database is cut into blocks and each block is searched only by the rows up to its
    end, so the upper triangle alone is computed: half the work of a full range search.
    FAISS keeps scores strictly above its radius; it is set just under tau and the exact
    test is made here.
    """
    n = len(vectors)
    if n > APPROXIMATE_ABOVE:
        return _approximate_range_pairs(vectors, tau, block)
    radius = float(np.nextafter(np.float32(tau), np.float32(-np.inf)))
    sources, targets, scores = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        index = _flat_index(vectors[start:stop])
        for q_start in range(0, stop, block):
            q_stop = min(q_start + block, stop)
            lims, dist, labels = index.range_search(vectors[q_start:q_stop], radius)
            query = q_start + np.repeat(np.arange(q_stop - q_start), np.diff(lims.astype(np.int64)))
            target = start + labels
            keep = (query < target) & (dist >= tau)
            sources.append(query[keep])
            targets.append(target[keep])
            scores.append(dist[keep])
    return _concat(sources, targets, scores)


def _mean_degree(vectors: np.ndarray, tau: float, block: int) -> float:
    """Rows at or above tau per row, estimated from a fixed sample of rows against all."""
    n = len(vectors)
    rows = np.sort(np.random.default_rng(0).choice(n, min(n, DEGREE_SAMPLE), replace=False))
    queries = np.ascontiguousarray(vectors[rows])
    radius = float(np.nextafter(np.float32(tau), np.float32(-np.inf)))
    hits = 0
    for start in range(0, n, block):
        index = _flat_index(vectors[start : start + block])
        lims, dist, labels = index.range_search(queries, radius)
        query = rows[np.repeat(np.arange(len(rows)), np.diff(lims.astype(np.int64)))]
        hits += int(np.count_nonzero((dist >= tau) & (start + labels != query)))
    return hits / len(rows)


def _knn_from_pairs(pairs: Arrays, k: int, mutual: bool) -> Arrays:
    """The k-NN graph cut at tau, from every pair at or above tau.

    Whatever ranks above a neighbour at or above tau is at or above tau too, so a row's
    first k pairs by score are its true k nearest as far as any edge can tell.
    """
    source, target, score = pairs
    m = len(source)
    node = np.concatenate([source, target])
    other = np.concatenate([target, source])
    order = np.lexsort((other, -np.concatenate([score, score]), node))  # ties: lower row
    ranked = node[order]
    rank = np.arange(2 * m) - np.searchsorted(ranked, ranked, side="left")
    near = np.zeros(2 * m, dtype=bool)
    near[order[rank < k]] = True
    forward, backward = near[:m], near[m:]  # target among source's k, source among target's
    keep = forward & backward if mutual else forward | backward
    return source[keep], target[keep], score[keep]


def _knn_pairs(vectors: np.ndarray, tau: float, k: int, mutual: bool, block: int) -> Arrays:
    """Pairs i < j where j is among i's k nearest (or, mutual, each among the other's)."""
    n = len(vectors)
    index = _ivf_index(vectors) if n > APPROXIMATE_ABOVE else _flat_index(vectors)
    sources, targets, scores = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        dist, labels = index.search(vectors[start:stop], k + 1)
        rows = np.arange(start, stop)[:, None]
        keep = (labels != rows) & (labels >= 0)
        # With exact copies in the collection a row may not find itself first, or at all;
        # then the (k+1)-th neighbour is one too many.
        keep[keep.sum(axis=1) > k, -1] = False
        sources.append(np.broadcast_to(rows, labels.shape)[keep])
        targets.append(labels[keep])
        scores.append(dist[keep])
    source, target, score = _concat(sources, targets, scores)
    low, high = np.minimum(source, target), np.maximum(source, target)
    key = low * n + high
    if mutual:
        # A pair is mutual when it was found from both ends; keep the lower row's finding.
        found_twice = np.isin(source * n + target, target * n + source)
        take = found_twice & (source < target)
    else:
        # Each pair once: sorted by pair, the finding from the lower row first.
        order = np.lexsort((source > target, key))
        first = np.ones(len(order), dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
        take = np.zeros(len(key), dtype=bool)
        take[order[first]] = True
    take &= score >= tau
    return low[take], high[take], score[take]


def _concat(sources: list, targets: list, scores: list) -> Arrays:
    if not sources:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return (
        np.concatenate(sources).astype(np.int64),
        np.concatenate(targets).astype(np.int64),
        np.concatenate(scores).astype(np.float32),
    )


def edge_arrays(
    vectors: np.ndarray,
    tau: float,
    k: int | None = None,
    mutual: bool = False,
    block: int = BLOCK,
) -> Arrays:
    """``graph_edges`` as arrays (sources, targets, scores), sorted by pair; for big graphs."""
    vectors = _rows(vectors)
    if k is not None and k < 0:
        raise ValueError(f"k must be at least 0, got {k}")
    if mutual and k is None:
        raise ValueError("mutual nearest neighbours need k")
    if len(vectors) < 2:
        return _concat([], [], [])
    k = None if k is None else min(k, len(vectors) - 1)
    if k is None:
        source, target, score = _range_pairs(vectors, tau, block)
    elif k == 0:
        return _concat([], [], [])
    elif _mean_degree(vectors, tau, block) <= KNN_FROM_RANGE_DEGREE:
        source, target, score = _knn_from_pairs(_range_pairs(vectors, tau, block), k, mutual)
    else:
        source, target, score = _knn_pairs(vectors, tau, k, mutual, block)
    order = np.lexsort((target, source))
    return source[order], target[order], score[order]


def graph_edges(
    vectors: np.ndarray,
    tau: float,
    k: int | None = None,
    mutual: bool = False,
    block: int = BLOCK,
) -> list[Edge]:
    """Edges between rows whose inner product is at least ``tau``, each once, sorted.

    With ``k`` only pairs where one is among the other's k nearest count (the k-NN graph
    cut at tau); with ``mutual`` as well, only pairs that are in each other's k nearest.
    Ties at the k-th place go either way.

    A k-NN graph cut at tau only needs the pairs at or above tau, so while those are few
    (``KNN_FROM_RANGE_DEGREE`` per row, estimated on a sample) it is cut from the range
    search, which computes each pair once; otherwise a k-NN search computes each twice.
    """
    source, target, score = edge_arrays(vectors, tau, k, mutual, block)
    return [Edge(s, t, c) for s, t, c in zip(source.tolist(), target.tolist(), score.tolist())]


def _groups(n: int, source: np.ndarray, target: np.ndarray) -> list[list[int]]:
    if n == 0:
        return []
    from scipy import sparse  # scipy loads in a third of a second: only when needed
    from scipy.sparse.csgraph import connected_components

    adjacency = sparse.coo_matrix(
        (np.ones(len(source), dtype=np.int8), (source, target)), shape=(n, n)
    )
    count, labels = connected_components(adjacency, directed=False)
    members = np.argsort(labels, kind="stable")  # rows of each label, in row order
    sizes = np.bincount(labels, minlength=count)
    groups = np.split(members, np.cumsum(sizes)[:-1])
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return [g.tolist() for g in groups]


def linked_groups(n: int, source: np.ndarray, target: np.ndarray) -> list[list[int]]:
    """Connected components of n rows joined by the pairs (source[i], target[i]): each
    sorted, largest first; lone rows are their own."""
    return _groups(n, np.asarray(source, np.int64), np.asarray(target, np.int64))


def components(n: int, edges: Sequence[Edge]) -> list[list[int]]:
    """Connected components of n rows: each sorted, largest first; lone rows are their own."""
    source = np.fromiter((e.source for e in edges), dtype=np.int64, count=len(edges))
    target = np.fromiter((e.target for e in edges), dtype=np.int64, count=len(edges))
    return _groups(n, source, target)


# --- graph output -----------------------------------------------------------------------

# Characters XML 1.0 cannot carry (controls, lone surrogates from undecodable file names).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", text))


@contextmanager
def _text_out(target: str | os.PathLike[str] | IO[Any]) -> Iterator[IO[str]]:
    """A text stream for a path (written as UTF-8) or for an open text or binary file."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "w", encoding="utf-8", newline="") as stream:
            yield stream
    elif isinstance(target, (io.RawIOBase, io.BufferedIOBase)) or "b" in getattr(
        target, "mode", ""
    ):
        stream = io.TextIOWrapper(target, encoding="utf-8", newline="")  # type: ignore[arg-type]
        try:
            yield stream
        finally:
            stream.flush()
            stream.detach()
    else:
        yield target  # type: ignore[misc]


def _score(value: float) -> str:
    return f"{value:.6f}"


def write_graphml(
    path_or_file: str | os.PathLike[str] | IO[Any],
    nodes: list[str],
    edges: Sequence[Edge],
    groups: list[list[int]] | None = None,
) -> None:
    """An undirected GraphML graph: nodes "n0".. with their ``path`` (and ``group``, the
    index into ``groups``, when given), edges with their ``score``. Written as a stream,
    so a large graph never sits in memory as a tree."""
    group_of: dict[int, int] = {}
    for number, members in enumerate(groups or []):
        for row in members:
            group_of[row] = number
    with _text_out(path_or_file) as out:
        out.write(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<graphml xmlns="http://graphml.graphdrawing.org/xmlns"'
            ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
            ' xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns'
            ' http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">\n'
            '  <key id="path" for="node" attr.name="path" attr.type="string"/>\n'
        )
        if groups is not None:
            out.write('  <key id="group" for="node" attr.name="group" attr.type="int"/>\n')
        out.write(
            '  <key id="score" for="edge" attr.name="score" attr.type="double"/>\n'
            '  <graph id="G" edgedefault="undirected">\n'
        )
        for row, path in enumerate(nodes):
            group = group_of.get(row)
            extra = f'<data key="group">{group}</data>' if group is not None else ""
            out.write(f'    <node id="n{row}"><data key="path">{_xml(path)}</data>{extra}</node>\n')
        for edge in edges:
            out.write(
                f'    <edge source="n{edge.source}" target="n{edge.target}">'
                f'<data key="score">{_score(edge.score)}</data></edge>\n'
            )
        out.write("  </graph>\n</graphml>\n")


def write_csv(
    file: str | os.PathLike[str] | IO[Any], nodes: list[str], edges: Sequence[Edge]
) -> None:
    """One edge a line: ``source,target,score`` with the two images' paths."""
    with _text_out(file) as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["source", "target", "score"])
        for edge in edges:
            writer.writerow([nodes[edge.source], nodes[edge.target], _score(edge.score)])


# --- clusters ---------------------------------------------------------------------------


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds on unit rows. FAISS seeds at random, which on well-separated themes
    often puts two seeds in one theme and none in another, and Lloyd steps rarely undo it."""
    n = len(points)
    chosen = [int(rng.integers(n))]
    nearest = np.maximum(2.0 - 2.0 * (points @ points[chosen[0]]).astype(np.float64), 0.0)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total > 0:
            pick = int(rng.choice(n, p=nearest / total))
        else:  # every row sits on a seed already: any unused row will do
            pick = int(rng.choice(np.setdiff1d(np.arange(n), chosen)))
        chosen.append(pick)
        distance = 2.0 - 2.0 * (points @ points[pick]).astype(np.float64)
        nearest = np.minimum(nearest, np.maximum(distance, 0.0))
    return np.ascontiguousarray(points[chosen])


def kmeans_clusters(vectors: np.ndarray, k: int, seed: int = 0) -> list[list[int]]:
    """Every row in exactly one of at most ``k`` clusters; each sorted, largest first.

    Spherical k-means on the directions of the mean caption vectors. A mean's length only
    says how much its N captions agree with each other, not what they are about; plain
    k-means would gather the vague, short means near the origin into a cluster of their own.
    Assigning a row to the unit centroid with the largest inner product is also exactly the
    paper's score between the row and the centroid's theme, whatever the row's length.
    Up to ``KMEANS_PP_MAX`` clusters are seeded with k-means++ on the training sample (a
    sequential pass per seed, too slow beyond), more at random as FAISS does. ``k`` above
    the row count is cut to it.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    vectors = _rows(vectors)
    n, dim = vectors.shape
    if n == 0:
        return []
    k = min(k, n)
    points = np.ascontiguousarray(_unit(vectors), dtype=np.float32)
    rng = np.random.default_rng(seed)
    kmeans = faiss.Kmeans(
        dim, k, niter=20, seed=seed, spherical=True, min_points_per_centroid=1, verbose=False
    )
    sample = points
    limit = k * kmeans.cp.max_points_per_centroid
    if n > limit:  # what FAISS would train on anyway, drawn here so the seeds come from it
        sample = np.ascontiguousarray(points[np.sort(rng.choice(n, limit, replace=False))])
    seeds = _kmeans_pp(sample, k, rng) if k <= KMEANS_PP_MAX else None
    kmeans.train(sample, init_centroids=seeds)
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, BLOCK):
        _, nearest = kmeans.index.search(points[start : start + BLOCK], 1)
        labels[start : start + BLOCK] = nearest[:, 0]
    members = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=k)
    groups = [g for g in np.split(members, np.cumsum(sizes)[:-1]) if len(g)]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return [g.tolist() for g in groups]


# "a photo of", "a close-up photo of", "a view of", "an image of", "a photo with ... in it":
# the wrappers the caption bank puts around a concept, dropped from cluster names.
_WRAPPER = re.compile(
    r"^(?:an?\s+)?(?:[\w-]+\s+)?(?:photo|picture|image|view|shot)\s+(of|from|with)\s+(.+)$",
    re.IGNORECASE,
)
_ARTICLE = re.compile(r"^(?:an?|the)\s+", re.IGNORECASE)


def short_caption(text: str) -> str:
    """The concept a caption names: "a close-up photo of a tench" -> "tench"."""
    short = text.strip()
    match = _WRAPPER.match(short)
    if match:
        short = match.group(2)
        if match.group(1).lower() == "with" and short.lower().endswith(" in it"):
            short = short[: -len(" in it")]
    short = _ARTICLE.sub("", short).strip()
    return short or text.strip()


def name_clusters(
    groups: list[list[int]],
    member_captions: list[list[int]],
    caption_texts: list[str],
    top: int = 3,
    member_scores: list[list[float]] | None = None,
) -> list[NamedGroup]:
    """Name each group by the captions most of its members have, largest group first.

    ``member_captions[row]`` is the row's top-N caption ids (``member_scores[row]`` their
    match scores, if given). A caption's weight is how many members have it; ties go to
    the larger sum of match scores, then to the lower id. ``captions`` keeps the ``top``
    full texts; ``name`` joins their distinct concepts (``short_caption``) with " / ".
    """
    clusters = []
    for members in groups:
        counts: Counter[int] = Counter()
        sums: defaultdict[int, float] = defaultdict(float)
        for row in members:
            ids = [int(c) for c in member_captions[row]]
            counts.update(set(ids))
            if member_scores is not None:
                for caption_id, score in zip(ids, member_scores[row]):
                    sums[caption_id] += float(score)
        ranked = sorted(counts, key=lambda c: (-counts[c], -sums[c], c))[:top]
        captions = [caption_texts[c] for c in ranked]
        names: list[str] = []
        for caption in captions:
            short = short_caption(caption)
            if short.casefold() not in (name.casefold() for name in names):
                names.append(short)
        clusters.append(NamedGroup(sorted(members), captions, " / ".join(names)))
    clusters.sort(key=lambda c: (-len(c.members), c.members[0] if c.members else -1))
    return clusters


# --- sets of images ---------------------------------------------------------------------


def _greedy(sim: np.ndarray) -> list[tuple[int, int, float]]:
    rows, cols = sim.shape
    order = np.argsort(-sim, axis=None, kind="stable")  # ties: the earlier row, then column
    used_rows = np.zeros(rows, dtype=bool)
    used_cols = np.zeros(cols, dtype=bool)
    pairs = []
    for flat in order.tolist():
        i, j = divmod(flat, cols)
        if used_rows[i] or used_cols[j]:
            continue
        used_rows[i] = used_cols[j] = True
        pairs.append((i, j, float(sim[i, j])))
        if len(pairs) == min(rows, cols):
            break
    return pairs


def set_similarity(
    sim: np.ndarray,
    method: str = "hungarian",
    min_pair: float | None = None,
    top_m: int | None = None,
) -> SetMatch:
    """Match the images of set A (rows of ``sim``) to those of set B (columns) one to one.

    ``ordered`` pairs the i-th with the i-th; ``greedy`` takes the best remaining pair until
    one side runs out; ``hungarian`` maximises the total. The score is the mean of the pairs
    that count: those at least ``min_pair``, then only the ``top_m`` best; 0 when none do.
    ``pairs`` holds exactly those, in the order chosen (greedy) or by row.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"sim must be a 2-D (a x b) matrix, got shape {sim.shape}")
    if top_m is not None and top_m < 1:
        raise ValueError(f"top_m must be at least 1, got {top_m}")
    if method == "ordered":
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(
                f"'ordered' pairs the i-th image of one set with the i-th of the other, "
                f"so the sets must be the same size; got {sim.shape[0]} and {sim.shape[1]}"
            )
        pairs = [(i, i, float(sim[i, i])) for i in range(sim.shape[0])]
    elif method == "greedy":
        pairs = _greedy(sim)
    elif method == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(sim, maximize=True)
        pairs = [(int(i), int(j), float(sim[i, j])) for i, j in zip(rows, cols)]
    elif method == "mean":
        raise ValueError("'mean' needs the two sets' vectors, not sim: use mean_set_similarity")
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(SET_METHODS)}")
    if min_pair is not None:
        pairs = [p for p in pairs if p[2] >= min_pair]
    if top_m is not None and len(pairs) > top_m:
        best = sorted(range(len(pairs)), key=lambda i: -pairs[i][2])[:top_m]
        pairs = [pairs[i] for i in sorted(best)]
    score = float(np.mean([p[2] for p in pairs])) if pairs else 0.0
    return SetMatch(pairs, score)


def mean_set_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of the two sets' mean vectors: the mean over all a x b pairs' scores."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("both sets need at least one image")
    return float(a.mean(axis=0, dtype=np.float64) @ b.mean(axis=0, dtype=np.float64))


def rank_items(
    vectors: np.ndarray,
    paths: Sequence[str],
    item: str,
    method: str = "hungarian",
    min_pair: float | None = None,
    top_m: int | None = None,
) -> list[tuple[str, float]]:
    """The other items (top-level folders of ``paths``, one item each) ranked by set
    similarity to ``item``'s images, best first. LookupError when ``item`` has no images;
    ValueError (naming the item) when a set cannot be matched as asked."""
    items: dict[str, list[int]] = {}
    for row, path in enumerate(paths):
        if "/" in path:
            items.setdefault(path.split("/", 1)[0], []).append(row)
    if item not in items:
        raise LookupError(item)
    mine = vectors[items.pop(item)]
    ranked = []
    for name, rows in items.items():
        theirs = vectors[rows]
        try:
            if method == "mean":
                value = mean_set_similarity(mine, theirs)
            else:
                value = set_similarity(mine @ theirs.T, method, min_pair, top_m).score
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        ranked.append((name, float(value)))
    ranked.sort(key=lambda hit: -hit[1])
    return ranked
