"""Duplicate groups in three tiers, each member with the evidence for it.

* ``exact``: the same bytes, or the same decoded pixels.
* ``copy``: the same photo edited (resized, re-encoded, cropped, mirrored, turned, lightly
  colour-adjusted), verified on the pixels by ``copies.verify``.
* ``similar``: another shot of the same scene: captured seconds apart (EXIF) and close in
  image vectors, or two crops of one photo that overlap by less than half.

Candidates come from three cheap signals, so verification only runs on a few pairs per
photo: the nearest image vectors above the candidate threshold, the perceptual hashes of the
eight orientations (CNN vectors do not put a mirrored or turned copy near its photo), and
capture times. Candidate generation keeps memory bounded for a million photos: above
``EXACT_CANDIDATES`` the vectors are searched through a reduced IVF index and rescored from
8-bit codes, not held whole as floats.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from imgsearch import config, copies, relations
from imgsearch.files import DEFAULT_LIMITS, BadImage, Limits, PhotoFacts
from imgsearch.results import Copy, Duplicates
from imgsearch.storage import Store

CANDIDATE_K = 5  # nearest image vectors per photo that are verified
HASH_RADIUS = 9  # perceptual-hash bits (of 64) a copy may differ by, in some orientation
EXACT_CANDIDATES = 50_000  # above this many photos: the reduced IVF search
REDUCED_DIM = 64
REFINE_FACTOR = 4  # reduced-space neighbours rescored on the full vectors, per one wanted
ALL_PAIRS = 8  # groups up to this size verify every pair (to see who derives from whom)
FEATURE_CACHE = 2048  # photos whose features are kept (about 0.2 MB each)
VERIFY_CHUNK = 256  # pairs judged together
TIERS = ("exact", "copy", "similar")

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


@dataclass
class Pair:
    """What is known of two photos (rows ``a`` < ``b``)."""

    a: int
    b: int
    tier: str | None = None
    score: float = 0.0
    evidence: dict = field(default_factory=dict)
    match: copies.Match | None = None


# --- candidates ------------------------------------------------------------------------------


def vector_candidates(
    chunks: Chunks, n: int, threshold: float, k: int = CANDIDATE_K
) -> set[tuple[int, int]]:
    """Row pairs (i < j) where one is among the other's ``k`` nearest with cosine at least
    ``threshold``. ``chunks()`` yields (rows, unit vectors) in row order and is called once
    (in memory) or three times (the reduced index, for more than ``EXACT_CANDIDATES``)."""
    if n < 2:
        return set()
    if n <= EXACT_CANDIDATES:
        vectors = np.concatenate([v for _, v in chunks()]).astype(np.float32, copy=False)
        source, target, _ = relations.edge_arrays(vectors, threshold, k)
        return {(int(min(s, t)), int(max(s, t))) for s, t in zip(source, target)}
    return _reduced_candidates(chunks, n, threshold, k)


def _reduced_candidates(chunks: Chunks, n: int, threshold: float, k: int) -> set[tuple[int, int]]:
    """PCA to REDUCED_DIM dimensions, L2-normalised, in IVF-Flat: each photo's nearest
    there are rescored on their full vectors kept at 8 bits a dimension (a scalar quantiser:
    within 0.002 of the cosines), and the cut, loosened by that much, is on those scores.
    The index holds 256 + dim bytes a photo (776 at CLIP's 512).

    The projection alone keeps only part of each vector (under half its norm for the
    clustered 512-dimensional vectors of benchmarks/duplicates_speed.py), so its inner
    products sat far below the cosines and the cut on them dropped nearly every copy;
    normalised, the projection still ranks a photo's copy among its nearest."""
    import faiss

    step = max(1, n // 100_000)
    sample = np.concatenate([v[(r % step) == 0] for r, v in chunks()]).astype(np.float32)
    dim = sample.shape[1]
    pca = faiss.PCAMatrix(dim, REDUCED_DIM)
    norm = faiss.NormalizationTransform(REDUCED_DIM)
    lists = int(min(65536, max(64, 4 * math.sqrt(n))))
    quantizer = faiss.IndexFlatIP(REDUCED_DIM)
    ivf = faiss.IndexIVFFlat(quantizer, REDUCED_DIM, lists, faiss.METRIC_INNER_PRODUCT)
    reduced = faiss.IndexPreTransform(ivf)
    reduced.prepend_transform(norm)
    reduced.prepend_transform(pca)
    full = faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index = faiss.IndexRefine(reduced, full)
    index.k_factor = REFINE_FACTOR
    index.train(sample)
    del sample
    for _, vectors in chunks():
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    ivf.nprobe = 8
    found: set[tuple[int, int]] = set()
    cut = threshold - 0.002
    for rows, vectors in chunks():
        scores, neighbours = index.search(np.ascontiguousarray(vectors, np.float32), k + 1)
        for row, near, score in zip(rows.tolist(), neighbours, scores):
            for other, value in zip(near.tolist(), score.tolist()):
                if other >= 0 and other != row and value >= cut:
                    found.add((min(row, other), max(row, other)))
    return found


def hash_candidates(hashes: np.ndarray, radius: int = HASH_RADIUS) -> set[tuple[int, int]]:
    """Row pairs whose perceptual hashes differ by fewer than ``radius`` bits in some
    orientation. ``hashes`` is (n, 8, 8) uint8: each photo's eight orientation hashes. A
    multi-index hash finds them without comparing all pairs."""
    import faiss

    n = len(hashes)
    if n < 2:
        return set()
    index = faiss.IndexBinaryMultiHash(64, 4, 16)
    index.nflip = 1
    index.add(np.ascontiguousarray(hashes[:, 0, :]))
    found: set[tuple[int, int]] = set()
    for start in range(0, n, 50_000):
        block = hashes[start : start + 50_000]
        queries = np.ascontiguousarray(block.reshape(-1, 8))
        limits, _, rows = index.range_search(queries, radius)
        for q in range(len(queries)):
            row = start + q // 8
            for other in rows[limits[q] : limits[q + 1]].tolist():
                if other != row:
                    found.add((min(row, other), max(row, other)))
    return found


def burst_candidates(
    taken: list[str | None], seconds: float, window: int = 20
) -> dict[tuple[int, int], float]:
    """Row pairs captured at most ``seconds`` apart (EXIF times), with the gap."""
    times = []
    for row, text in enumerate(taken):
        when = _when(text)
        if when is not None:
            times.append((when, row))
    times.sort()
    found: dict[tuple[int, int], float] = {}
    for i, (when, row) in enumerate(times):
        for later, other in times[i + 1 : i + 1 + window]:
            gap = later - when
            if gap > seconds:
                break
            found[(min(row, other), max(row, other))] = gap
    return found


def _when(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# --- verification and groups -----------------------------------------------------------------


class Finder:
    """One index's duplicate groups. ``threshold`` is the candidates' image cosine,
    ``similar`` the cosine a burst must reach to count as one scene."""

    def __init__(
        self,
        root: Path,
        store: Store,
        threshold: float,
        similar: float,
        burst_seconds: float = config.BURST_SECONDS,
        limits: Limits = DEFAULT_LIMITS,
        workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        scope: list[int] | None = None,
    ):
        self.root = root
        self.scope = scope
        self.store = store
        self.threshold = threshold
        self.similar = similar
        self.burst_seconds = burst_seconds
        self.limits = limits
        self.workers = workers or max(1, min(8, os.cpu_count() or 2))
        self.progress = progress
        self._features: OrderedDict[int, copies.Features | None] = OrderedDict()
        self._lock = threading.Lock()

    def groups(self) -> list[Duplicates]:
        ids, paths, vectors = self.store.vectors("image_vector")
        if self.scope is not None:
            keep = np.flatnonzero(np.isin(ids, np.asarray(self.scope, dtype=ids.dtype)))
            ids, paths, vectors = ids[keep], [paths[i] for i in keep], vectors[keep]
        self.ids, self.paths, self.vectors = ids, paths, vectors
        n = len(ids)
        if n < 2:
            return []
        self.sizes = self.store.dimensions(ids)
        facts = self.store.facts(ids.tolist())
        self.facts: list[PhotoFacts | None] = [facts.get(int(i)) for i in ids]
        self.hashes = self.store.file_hashes(ids)
        pairs = self._candidates(n)
        self._verify(pairs)
        known = {(p.a, p.b): p for p in pairs}
        copy_edges = [(p.a, p.b) for p in pairs if p.tier in ("exact", "copy")]
        out, members_of_copies = [], set()
        for group in self._split(n, copy_edges, known, copy_tier=True):
            out.append(group[0])
            members_of_copies.update(group[1][1:])
        similar_edges = [
            (p.a, p.b)
            for p in pairs
            if p.tier == "similar" and p.a not in members_of_copies and p.b not in members_of_copies
        ]
        out.extend(g for g, _ in self._split(n, similar_edges, known, copy_tier=False))
        order = {t: i for i, t in enumerate(TIERS)}
        out.sort(key=lambda g: (order[g.tier], -len(g.others), g.keep))
        return out

    def _candidates(self, n: int) -> list[Pair]:
        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, n, 32768):
                yield np.arange(start, min(n, start + 32768)), self.vectors[start : start + 32768]

        found = vector_candidates(chunks, n, self.threshold)
        have = [r for r, f in enumerate(self.facts) if f is not None and len(f.hashes) == 64]
        if len(have) >= 2:
            codes = np.stack([np.frombuffer(self.facts[r].hashes, np.uint8) for r in have])
            for a, b in hash_candidates(codes.reshape(-1, 8, 8)):
                found.add((min(have[a], have[b]), max(have[a], have[b])))
        by_hash: dict[str, list[int]] = {}
        for row, digest in enumerate(self.hashes):
            by_hash.setdefault(digest, []).append(row)
        for rows in by_hash.values():
            found.update((rows[0], other) for other in rows[1:])
        taken = [f.taken if f is not None else None for f in self.facts]
        self.bursts = burst_candidates(taken, self.burst_seconds)
        found.update(self.bursts)
        return [Pair(a, b) for a, b in sorted(found)]

    def _feature(self, row: int) -> copies.Features | None:
        """A photo's features, from the cache (bounded: ``FEATURE_CACHE`` photos) or read."""
        with self._lock:
            if row in self._features:
                self._features.move_to_end(row)
                return self._features[row]
        try:
            found = copies.features(self.root / self.paths[row], self.limits)
        except BadImage:
            found = None
        with self._lock:
            self._features[row] = found
            while len(self._features) > FEATURE_CACHE:
                self._features.popitem(last=False)
        return found

    def _verify(self, pairs: list[Pair]) -> None:
        """Judge every pair in parallel, in an order that keeps each photo's pairs close
        together, so that a bounded cache of features serves them (a photo's features are
        read again only when its pairs lie far apart)."""
        ordered = _local_order(pairs)
        done = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="verify") as pool:
            for start in range(0, len(ordered), VERIFY_CHUNK):
                chunk = ordered[start : start + VERIFY_CHUNK]
                rows = {
                    r for p in chunk if self.hashes[p.a] != self.hashes[p.b] for r in (p.a, p.b)
                }
                rows = sorted(rows - self._features.keys())
                list(pool.map(self._feature, rows))
                list(pool.map(self._judge, chunk))
                done += len(chunk)
                if self.progress is not None:
                    self.progress(done, len(pairs))

    def _judge(self, pair: Pair) -> Pair:
        a, b = pair.a, pair.b
        cosine = float(self.vectors[a] @ self.vectors[b])
        if self.hashes[a] == self.hashes[b]:
            pair.tier, pair.score, pair.evidence = "exact", 1.0, {"same": "bytes"}
            return pair
        first, second = self._feature(a), self._feature(b)
        match = copies.verify(first, second) if first and second else copies.Match(None)
        pair.match = match
        if match.kind == "copy":
            if self._same_pixels(a, b, match):
                pair.tier, pair.score, pair.evidence = "exact", 1.0, {"same": "pixels"}
            else:
                pair.tier, pair.score = "copy", match.score
                pair.evidence = {**match.evidence(), "hash_distance": self._hash_distance(a, b)}
            return pair
        gap = self.bursts.get((a, b))
        if cosine >= self.similar and (gap is not None or match.kind == "overlap"):
            pair.tier, pair.score = "similar", cosine
            pair.evidence = {"cosine": round(cosine, 4)}
            if gap is not None:
                pair.evidence["seconds_apart"] = round(gap, 3)
            if match.kind == "overlap":
                pair.evidence["overlap"] = round(min(match.cover_a, match.cover_b), 4)
        return pair

    def _same_pixels(self, a: int, b: int, match: copies.Match) -> bool:
        if self.sizes[a] != self.sizes[b] or match.turn or match.mirrored:
            return False
        if self._hash_distance(a, b) != 0:
            return False
        return copies.same_pixels(self.root / self.paths[a], self.root / self.paths[b], self.limits)

    def _hash_distance(self, a: int, b: int) -> int | None:
        fa, fb = self.facts[a], self.facts[b]
        if fa is None or fb is None or len(fa.hashes) != 64 or len(fb.hashes) != 64:
            return None
        first = np.frombuffer(fa.hashes[:8], np.uint8)
        turns = np.frombuffer(fb.hashes, np.uint8).reshape(8, 8)
        return int(np.unpackbits(first ^ turns, axis=1).sum(axis=1).min())

    def _pair(self, known: dict[tuple[int, int], Pair], a: int, b: int) -> Pair:
        key = (min(a, b), max(a, b))
        if key not in known:
            known[key] = self._judge(Pair(*key))
        return known[key]

    def _split(
        self,
        n: int,
        edges: list[tuple[int, int]],
        known: dict[tuple[int, int], Pair],
        copy_tier: bool,
    ) -> Iterator[tuple[Duplicates, list[int]]]:
        """Groups from the edges' components: the one to keep, then only the members that
        are themselves in the tier with it (a chain a-b-c is not c a copy of a); those left
        out form groups of their own."""
        source = np.array([a for a, _ in edges], np.int64)
        target = np.array([b for _, b in edges], np.int64)
        todo = [g for g in relations.linked_groups(n, source, target) if len(g) > 1]
        wanted = ("exact", "copy") if copy_tier else ("similar",)
        while todo:
            rows = todo.pop()
            keep, reason = self._keep(rows, known, copy_tier)
            linked = [r for r in rows if r != keep and self._pair(known, keep, r).tier in wanted]
            rest = [r for r in rows if r != keep and r not in linked]
            if len(rest) > 1:
                sub = [(a, b) for a, b in edges if a in rest and b in rest]
                s = np.array([rest.index(a) for a, _ in sub], np.int64)
                t = np.array([rest.index(b) for _, b in sub], np.int64)
                todo.extend(
                    [rest[i] for i in g]
                    for g in relations.linked_groups(len(rest), s, t)
                    if len(g) > 1
                )
            if not linked:
                continue
            others = []
            for row in linked:
                pair = self._pair(known, keep, row)
                others.append(
                    Copy(str(self.root / self.paths[row]), pair.tier, pair.score, pair.evidence)
                )
            others.sort(key=lambda c: (-c.score, c.path))
            if copy_tier:
                tier = "exact" if all(o.tier == "exact" for o in others) else "copy"
                threshold = 1.0 if tier == "exact" else copies.COPY_SCORE
            else:
                tier, threshold = "similar", self.similar
            lowest = min(o.score for o in others)
            yield (
                Duplicates(
                    tier, str(self.root / self.paths[keep]), reason, others, lowest, threshold
                ),
                [keep, *linked],
            )

    def _keep(
        self, rows: list[int], known: dict[tuple[int, int], Pair], copy_tier: bool
    ) -> tuple[int, str]:
        members = [copies.Member(self.paths[r], *self.sizes[r], self.facts[r]) for r in rows]
        if copy_tier and len(rows) <= ALL_PAIRS:
            for i, j in itertools.combinations(range(len(rows)), 2):
                big, small = (i, j) if members[i].pixels >= members[j].pixels else (j, i)
                pair = self._pair(known, rows[big], rows[small])
                if pair.tier not in ("copy", "exact") or pair.match is None:
                    continue
                match = pair.match if rows[big] == pair.a else _flipped(pair.match)
                size = self.sizes[rows[small]]
                size = size[::-1] if match.turn in (90, 270) else size
                upscale = match.scale > 1.15 and copies.is_upscale(
                    self.root / self.paths[rows[big]], match.scale, self.limits, size
                )
                of_big, of_small = copies.derivation(members[big], members[small], match, upscale)
                if of_big:
                    members[big].derived.append(of_big)
                if of_small:
                    members[small].derived.append(of_small)
        position, reason = copies.choose_keep(members)
        return rows[position], reason


def _local_order(pairs: list[Pair]) -> list[Pair]:
    """Pairs in breadth-first order of the candidate graph: each pair comes when its later
    photo is reached, so pairs sharing a photo sit close together."""
    neighbours: dict[int, list[int]] = {}
    for p in pairs:
        neighbours.setdefault(p.a, []).append(p.b)
        neighbours.setdefault(p.b, []).append(p.a)
    order: dict[int, int] = {}
    for start in sorted(neighbours):
        if start in order:
            continue
        order[start] = len(order)
        queue = deque([start])
        while queue:
            row = queue.popleft()
            for other in neighbours[row]:
                if other not in order:
                    order[other] = len(order)
                    queue.append(other)
    return sorted(pairs, key=lambda p: (max(order[p.a], order[p.b]), min(order[p.a], order[p.b])))


def _flipped(match: copies.Match) -> copies.Match:
    """The same relation seen from the other photo."""
    return copies.Match(
        match.kind,
        match.inliers,
        match.matches,
        1.0 / match.scale if match.scale else 0.0,
        (360 - match.turn) % 360,
        match.mirrored,
        match.cover_b,
        match.cover_a,
        match.score,
        match.colour,
    )


def rows_of(groups: Iterable[Duplicates]) -> int:
    return sum(1 + len(g.others) for g in groups)
