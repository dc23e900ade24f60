"""What the API hands back: plain dataclasses, every one a program or the CLI can print.

They sit below every other part (they import only the standard library, numpy and
``files``) so that indexing, scoring, relations and the viewers all speak the same types.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.errors import ImgsearchError
from imgsearch.files import BadImage, decode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL import Image

    from imgsearch.relations import Edge


@dataclass
class Caption:
    """A caption from the bank and how well it matches an image."""

    text: str
    score: float


@dataclass
class Hit:
    """A ranked result. ``path`` is absolute; ``shared`` explains the match when asked for;
    ``id`` is the image's id in the index (how the web UI addresses its thumbnail);
    ``taken`` its date (EXIF capture time, else the file's mtime: ``taken_from`` says
    which), ``camera`` and ``gps`` from its EXIF data."""

    path: str
    score: float
    shared: list[str] = field(default_factory=list)
    id: int | None = None
    taken: str | None = None
    taken_from: str | None = None
    camera: str | None = None
    gps: tuple[float, float] | None = None


@dataclass(frozen=True)
class Text:
    """A text term of a combined query (``Index.query(positive=[Text("snow"), ...])``):
    a plain string there is a path."""

    text: str


# Why a listed path (``Index.add(files=...)``) is skipped when no image file is there and
# none was indexed there: for a watcher, a file that came and went between two batches.
LISTED_MISSING = "listed, but no image file is there"


@dataclass
class Skipped:
    path: str
    reason: str

    @property
    def listed_missing(self) -> bool:
        return self.reason == LISTED_MISSING


@dataclass
class IndexSummary:
    """What one indexing run did. Paths are relative to the indexed root."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    # Seconds each stage of the embedding spent (read, decode, model, captions, write,
    # waiting: the model waiting for decoded photos or for the caption search), summed
    # over its threads or processes, and the run's phases one after another: plan, start
    # (until the first batch reaches the model), drain (after the last), finish,
    # calibrate, search_index, query_model. Not in ``to_dict``.
    stages: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Status:
    """What ``imgsearch status`` shows."""

    root: str
    db: str
    model: str
    captions: str
    caption_count: int
    top_n: int
    images: int
    size_bytes: int
    tau: dict[str, float]
    # The mean of each image's top class probability (None for a model without classes, or
    # an index made before they were kept): how well captions can describe the collection.
    coverage: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def graph_dict(
    nodes: list[str], edges: Sequence[Edge], groups: list[list[int]] | None = None
) -> dict[str, Any]:
    """A graph for JSON, by path: nodes, edges {source, target, score} and, when given,
    groups. Scores are rounded to 6 decimals, beyond which float32 carries nothing."""
    out: dict[str, Any] = {
        "nodes": list(nodes),
        "edges": [
            {"source": nodes[e.source], "target": nodes[e.target], "score": round(e.score, 6)}
            for e in edges
        ],
    }
    if groups is not None:
        out["groups"] = [[nodes[row] for row in members] for members in groups]
    return out


@dataclass
class Graph:
    """The relationship graph: nodes (absolute paths), edges (rows into ``nodes``, source
    < target), and connected components as groups, largest first."""

    nodes: list[str]
    edges: list[Edge]
    groups: list[list[int]]
    method: str
    tau: float
    k: int | None
    mutual: bool
    ids: np.ndarray  # database ids, row for row with ``nodes``

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "tau": self.tau,
            "k": self.k,
            "mutual": self.mutual,
            **graph_dict(self.nodes, self.edges, self.groups),
        }


@dataclass
class Cluster:
    """A named group of images: ``name`` from its most shared ``captions``."""

    name: str
    captions: list[str]
    members: list[str]


@dataclass
class Copy:
    """A member of a duplicate group other than the one kept: its tier, its score against
    the kept photo in that tier's measure (1 for exact; the pixel agreement for a copy; the
    image cosine for a similar shot) and the evidence (matched features, hash distance,
    seconds apart...)."""

    path: str
    tier: str
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Duplicates:
    """One group: ``tier`` (exact, copy or similar), the photo to ``keep`` and why, the
    ``others``, and ``score``: the lowest score between ``keep`` and an other, never below
    the tier's ``threshold``."""

    tier: str
    keep: str
    keep_reason: str
    others: list[Copy]
    score: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "keep": self.keep,
            "keep_reason": self.keep_reason,
            "score": round(self.score, 6),
            "threshold": round(self.threshold, 6),
            "others": [
                {"path": o.path, "tier": o.tier, "score": round(o.score, 6), "evidence": o.evidence}
                for o in self.others
            ],
        }


@dataclass
class Moved:
    source: str
    destination: str


@dataclass
class SetHit:
    """An item (a folder of images) and its set similarity to the query item."""

    item: str
    score: float


@dataclass
class Comparison:
    """``imgsearch compare``: one pair under every method."""

    a: str
    b: str
    scores: dict[str, float]
    tau: dict[str, float]
    similar: dict[str, bool]
    shared: list[str]
    captions_a: list[Caption]
    captions_b: list[Caption]

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "methods": {
                m: {"score": round(s, 6), "tau": self.tau[m], "similar": self.similar[m]}
                for m, s in self.scores.items()
            },
            "shared": self.shared,
            "captions_a": [asdict(c) for c in self.captions_a],
            "captions_b": [asdict(c) for c in self.captions_b],
        }


@dataclass
class IndexedFile:
    """An indexed image file: its id in the index, where it is, and its content hash."""

    id: int
    path: Path
    hash: str
    size: int
    mtime_ns: int


@dataclass
class Layout:
    """The collection in two dimensions: ``xy`` (n, 2) in [0, 1], row for row with ``paths``
    and ``ids``; ``cluster`` indexes ``clusters``; ``projection`` is 'tsne' or 'pca'."""

    paths: list[str]
    ids: np.ndarray
    xy: np.ndarray
    cluster: np.ndarray
    clusters: list[Cluster]
    projection: str


@dataclass
class Description:
    """One image as the scoring methods see it: its captions (bank ids and match scores,
    best first), its caption and image vectors, and where it came from."""

    caption_ids: list[int]
    caption_scores: list[float]
    caption_vector: np.ndarray
    image_vector: np.ndarray
    label: str  # its absolute path, or "<image>"
    path: Path | None = None
    indexed_id: int | None = None
    pixels: Image.Image | None = None
    concept_vector: np.ndarray | None = None  # its concept bag, where the index keeps them
    class_confidence: float | None = None  # its classifier's top class probability, with it

    def captions(self, texts: list[str]) -> list[Caption]:
        return [Caption(texts[i], float(s)) for i, s in zip(self.caption_ids, self.caption_scores)]

    def image(self) -> Image.Image:
        """The decoded image, for the pixel-based baselines."""
        if self.pixels is None:
            assert self.path is not None
            try:
                self.pixels = decode(self.path).image
            except BadImage as exc:
                raise ImgsearchError(f"{self.path}: {exc}") from None
        return self.pixels


RETRIEVAL = ("map", "p@1", "p@5", "p@10")


@dataclass
class Evaluation:
    """``imgsearch evaluate``: retrieval and pair-decision figures per scoring method."""

    images: int
    labels: int
    pairs: int = 0
    default: str = "caption"
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # labeled files not in the index
    # With text queries (``evaluate --text-queries``): how many, and R@1 / R@10, the share
    # whose photo is ranked first / in the first ten.
    text_queries: dict[str, float] | None = None

    def to_dict(self) -> dict:
        out = {
            "images": self.images,
            "labels": self.labels,
            "pairs": self.pairs,
            "missing": len(self.missing),
            "default": self.default,
            "methods": self.methods,
        }
        if self.text_queries is not None:
            out["text_queries"] = self.text_queries
        return out

    def table(self) -> str:
        """A readable report, laid out like the paper's table (metric, threshold, accuracy)."""
        width = max([12, *(len(m) + 2 for m in self.methods)])
        head = f"{'method':<{width}}" + "".join(f"{k:>8}" for k in RETRIEVAL)
        head += f"{'tau':>8}{'acc@tau':>9}{'best tau':>9}{'acc@best':>9}{'auc':>8}"
        lines = [
            f"{self.images} images, {self.labels} labels, {self.pairs} pairs "
            f"(default method: {self.default})",
            head,
        ]
        if self.missing:
            lines.insert(
                1,
                f"{len(self.missing)} labeled files are not in the index (missing, outside the "
                f"folder or skipped), e.g. {self.missing[0]}",
            )
        for method, values in self.methods.items():
            row = f"{method:<{width}}"
            row += "".join(f"{values[k]:>8.4f}" if k in values else f"{'-':>8}" for k in RETRIEVAL)
            row += f"{values['threshold']:>8.3f}{values['pair_accuracy']:>9.4f}"
            row += f"{values['best_threshold']:>9.3f}{values['pair_accuracy_best']:>9.4f}"
            row += f"{values['auc']:>8.4f}"
            lines.append(row)
        if self.text_queries is not None:
            t = self.text_queries
            lines.append(
                f"text queries: {t['queries']:.0f}, R@1 {t['r@1']:.4f}, R@10 {t['r@10']:.4f}"
            )
        return "\n".join(lines)
