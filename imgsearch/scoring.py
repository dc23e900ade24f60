"""Scoring methods: each one class that says what it reads, how it makes vectors, its tau.

A method turns stored rows (a page of images from the database) and described query images
into vectors whose inner products are its scores, so that one FAISS search ranks a whole
collection by it; or, for the pixel baselines, scores a pair of decoded images directly.
Each declares its default decision threshold per model family (``imgsearch.models.family``):
the one place a tau default lives. A new method is one subclass passed to ``register``;
the API, ``evaluate`` and the command line offer whatever is registered when they run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from imgsearch import config
from imgsearch.captions import PAPER, CaptionBank, CaptionSettings, centered
from imgsearch.errors import ImgsearchError
from imgsearch.results import Comparison

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.results import Description
    from imgsearch.storage import Store

CAPTION = "caption_vector"
IMAGE = "image_vector"
CONCEPT = "concept_vector"
CONFIDENCE = "class_confidence"


class Context:
    """What a method needs of its index besides the rows: the caption bank, the settings
    the index was made with, the hybrid's weight, the collection's mean vectors, and
    whether the index keeps concept bags (its settings ask for them and its model has class
    probabilities). The bank and the means are read only when a method needs them."""

    def __init__(
        self,
        bank: Callable[[], CaptionBank],
        settings: CaptionSettings,
        alpha: float,
        means: Callable[[], dict[str, np.ndarray]],
        concepts: bool = False,
    ):
        self._bank = bank
        self.settings = settings
        self.alpha = alpha
        self.means = means
        self.concepts = concepts

    @property
    def bank(self) -> CaptionBank:
        return self._bank()

    def caption_mean(self) -> np.ndarray | None:
        """None when the index's settings don't centre caption scores."""
        return self.means()["caption"] if self.settings.center_collection else None

    def image_mean(self) -> np.ndarray:
        return self.means()["image"]

    def concept_mean(self) -> np.ndarray:
        return self.means()["concept"]


class Rows:
    """A page of stored images (ids in id order) and, read on first use, their vector
    columns and caption lists: a method reads only what it needs."""

    def __init__(self, store: Store, ids: np.ndarray, columns: dict[str, np.ndarray]):
        self.store = store
        self.ids = ids
        self._columns = dict(columns)
        self._lists: tuple[np.ndarray, np.ndarray] | None = None

    def column(self, name: str) -> np.ndarray:
        if name not in self._columns:
            self._columns[name] = self.store.vectors(name)[2]  # the whole collection
        return self._columns[name]

    def caption_lists(self) -> tuple[np.ndarray, np.ndarray]:
        if self._lists is None:  # read once: several methods may ask for them
            self._lists = self.store.caption_lists(self.ids)
        return self._lists


class Method:
    """One way of scoring a pair of images. Subclasses set the class attributes and
    override ``vectors`` and ``vector`` (vector methods) or ``measure`` (pixel methods)."""

    name: ClassVar[str]
    # Stored vector columns it starts from (the first is read with the paths); none: pixels.
    columns: ClassVar[tuple[str, ...]] = (CAPTION,)
    # Default decision threshold per model family; an index records the ones in force.
    # clip and siglip: documented defaults, not measured here (no trained weights offline);
    # an index of CALIBRATE_MIN photos or more calibrates its own on its collection.
    tau: ClassVar[dict[str, float]]
    description: ClassVar[str] = ""

    @property
    def ranks(self) -> bool:
        """Whether it has vectors, so a collection can be ranked and related by it."""
        return bool(self.columns)

    def vectors(self, ctx: Context, rows: Rows) -> np.ndarray:
        """One vector per stored row; inner products are the method's scores."""
        raise NotImplementedError

    def vector(self, ctx: Context, image: Description) -> np.ndarray:
        """The vector of one described image (indexed or not)."""
        raise NotImplementedError

    def text(self, ctx: Context, text_vector: np.ndarray) -> np.ndarray | None:
        """The vector a text query ranks by, or None when the method cannot rank by text."""
        return None

    def dim(self, ctx: Context, image_dim: Callable[[], int]) -> int:
        """How many dimensions its vectors have (``image_dim()`` reads the image vectors')."""
        return int(ctx.bank.vectors.shape[1])

    def score(self, ctx: Context, a: Description, b: Description) -> float:
        return float(self.vector(ctx, a) @ self.vector(ctx, b))

    def available(self, ctx: Context) -> bool:
        """Whether this index can score by it: what lists of every method (status, compare,
        evaluate) offer. Asked for by name where it is not, it says why in one line."""
        return True

    def threshold(self, ctx: Context, meta: dict[str, str], family: str, empty: bool) -> float:
        """The tau an index records for it (calibrated on the collection by ``index``, or
        the default in force when it was made), else its default for the model's family."""
        return float(meta.get(f"tau.{self.name}", self.tau[family]))

    def calibrate(self, scores: np.ndarray) -> float:
        """A label-free tau from the scores of random pairs of one collection, most of them
        unrelated: their median plus one robust standard deviation (1.4826 x the median
        absolute deviation). On both development sets this fell within 0.006 of the
        threshold that labels would choose, for the caption and hybrid scores alike."""
        median = float(np.median(scores))
        return median + 1.4826 * float(np.median(np.abs(scores - median)))


class CaptionScore(Method):
    """The tuned caption-space score: softmax-weighted captions, centred on the collection."""

    name = "caption"
    tau = {"offline": 0.09, "clip": 0.1, "siglip": 0.1}
    description = "caption space (tuned)"
    # With no collection to centre on (two images compared without an index), the score is
    # the plain cosine of the two caption vectors, on its own scale.
    uncentred_tau: ClassVar[dict[str, float]] = {"offline": 0.8, "clip": 0.8, "siglip": 0.8}

    def vectors(self, ctx: Context, rows: Rows) -> np.ndarray:
        return centered(rows.column(CAPTION), ctx.caption_mean())

    def vector(self, ctx: Context, image: Description) -> np.ndarray:
        return centered(image.caption_vector, ctx.caption_mean())

    def text(self, ctx: Context, text_vector: np.ndarray) -> np.ndarray:
        return centered(text_vector, ctx.caption_mean())

    def threshold(self, ctx: Context, meta: dict[str, str], family: str, empty: bool) -> float:
        if empty and ctx.settings.center_collection:
            return self.uncentred_tau[family]
        return super().threshold(ctx, meta, family, empty)


class CaptionAverage(Method):
    """The paper's score: the plain mean of the top-N caption vectors (N x N average cosine)."""

    name = "caption_avg"
    tau = {"offline": 0.53, "clip": 0.5, "siglip": 0.5}
    description = "the paper's caption average"

    def vectors(self, ctx: Context, rows: Rows) -> np.ndarray:
        caption_ids, caption_scores = rows.caption_lists()
        return ctx.bank.combine(caption_ids, caption_scores, PAPER)

    def vector(self, ctx: Context, image: Description) -> np.ndarray:
        ids, scores = np.array(image.caption_ids), np.array(image.caption_scores)
        return ctx.bank.combine(ids, scores, PAPER)[0]


class ImageScore(Method):
    """The cosine of the model's own image vectors."""

    name = "image"
    columns = (IMAGE,)
    # CLIP image embeddings of related photos are mostly above 0.7 (a documented default).
    tau = {"offline": 0.37, "clip": 0.7, "siglip": 0.7}
    description = "image vectors"

    def vectors(self, ctx: Context, rows: Rows) -> np.ndarray:
        return rows.column(IMAGE)

    def vector(self, ctx: Context, image: Description) -> np.ndarray:
        return image.image_vector

    def text(self, ctx: Context, text_vector: np.ndarray) -> np.ndarray:
        """A text's own vector: CLIP and SigLIP put images and texts in one space (the
        API refuses a text here for a model whose image vectors do not, the offline one)."""
        return text_vector

    def dim(self, ctx: Context, image_dim: Callable[[], int]) -> int:
        return image_dim()


class HybridScore(Method):
    """alpha x the caption score + (1 - alpha) x the centred image score, as one vector."""

    name = "hybrid"
    columns = (CAPTION, IMAGE)
    tau = {"offline": 0.05, "clip": 0.1, "siglip": 0.1}
    description = "a mix of caption and image scores"

    def vectors(self, ctx: Context, rows: Rows) -> np.ndarray:
        captions = centered(rows.column(CAPTION), ctx.caption_mean())
        images = centered(rows.column(IMAGE), ctx.image_mean())
        return hybrid_vectors(captions, images, ctx.alpha)

    def vector(self, ctx: Context, image: Description) -> np.ndarray:
        caption = centered(image.caption_vector, ctx.caption_mean())
        return hybrid_vectors(caption, centered(image.image_vector, ctx.image_mean()), ctx.alpha)

    def dim(self, ctx: Context, image_dim: Callable[[], int]) -> int:
        return int(ctx.bank.vectors.shape[1]) + image_dim()


class ConceptScore(Method):
    """The bag-of-concepts caption score: each image's best concepts of the bank, matched
    straight from the classifier's class probabilities (``indexer.ConceptBridge``), centred
    on the collection's mean bag. Scores are sums over the concepts two images share."""

    name = "concepts"
    columns = (CONCEPT,)
    # The best pair threshold on both development sets (0.070 clothing, 0.072 textures;
    # benchmarks/caption_quality.py). CLIP keeps no bags (no class probabilities): its value
    # is never used.
    tau = {"offline": 0.07, "clip": 0.07, "siglip": 0.07}
    description = "shared concepts (from class probabilities)"
    # Uncentred (two images, no collection): best thresholds 0.54 and 0.47 on the same sets.
    uncentred_tau: ClassVar[dict[str, float]] = {"offline": 0.5, "clip": 0.5, "siglip": 0.5}

    def available(self, ctx: Context) -> bool:
        return ctx.concepts

    def vectors(self, ctx: Context, rows: Rows) -> np.ndarray:
        return centered(rows.column(CONCEPT), ctx.concept_mean())

    def vector(self, ctx: Context, image: Description) -> np.ndarray:
        if image.concept_vector is None:
            raise ImgsearchError(
                f"{image.label} has no concept bag: this index keeps none (made before "
                "imgsearch kept them, or with a model without class probabilities); make a "
                "new one with 'imgsearch index FOLDER --db NEW' to score by concepts"
            )
        return centered(image.concept_vector, ctx.concept_mean())

    def dim(self, ctx: Context, image_dim: Callable[[], int]) -> int:
        return int(np.size(ctx.concept_mean()))

    def threshold(self, ctx: Context, meta: dict[str, str], family: str, empty: bool) -> float:
        if empty:
            return self.uncentred_tau[family]
        return super().threshold(ctx, meta, family, empty)


class ConceptHybrid(ConceptScore):
    """The concepts score mixed with the centred image score, per image: each image's rows
    are [sqrt(a) u, sqrt(1 - a) x] with a = ``weight`` x its classifier's top class
    probability, so that images the classifier is sure of lean on their concepts and the
    others on their pixels' features."""

    name = "concept_hybrid"
    columns = (CONCEPT, IMAGE, CONFIDENCE)
    # Pair accuracy 0.78 and 0.79 at 0.05 on the development sets (best thresholds 0.077 and
    # 0.047; benchmarks/caption_quality.py). CLIP keeps no bags: its value is never used.
    tau = {"offline": 0.05, "clip": 0.05, "siglip": 0.05}
    description = "shared concepts and image vectors, weighted by the classifier's confidence"
    # Uncentred: between the best thresholds on the same sets (0.40 and 0.29).
    uncentred_tau: ClassVar[dict[str, float]] = {"offline": 0.35, "clip": 0.35, "siglip": 0.35}
    weight: ClassVar[float] = 0.8

    def vectors(self, ctx: Context, rows: Rows) -> np.ndarray:
        concepts = super().vectors(ctx, rows)
        images = centered(rows.column(IMAGE), ctx.image_mean())
        return hybrid_vectors(concepts, images, self.weight * rows.column(CONFIDENCE))

    def vector(self, ctx: Context, image: Description) -> np.ndarray:
        concepts = super().vector(ctx, image)
        alpha = self.weight * float(image.class_confidence or 0.0)
        return hybrid_vectors(concepts, centered(image.image_vector, ctx.image_mean()), alpha)

    def dim(self, ctx: Context, image_dim: Callable[[], int]) -> int:
        return super().dim(ctx, image_dim) + image_dim()


class PixelScore(Method):
    """A classic full-reference image-quality measure on decoded pixels (no vectors):
    the baselines the paper compares with. Scores pairs only."""

    columns = ()
    tau: ClassVar[dict[str, float]]

    def measure(self, a: Image.Image, b: Image.Image) -> float:
        from imgsearch import baselines

        return float(getattr(baselines, self.name)(a, b))

    def score(self, ctx: Context, a: Description, b: Description) -> float:
        return self.measure(a.image(), b.image())

    def pair_scores(self, pairs: list[tuple[Path, Path]]) -> np.ndarray:
        """Every pair's score, spread over the cores (plain CPU work)."""
        workers = max(1, min(len(pairs) // 50, os.cpu_count() or 1))
        chunks = [pairs[i::workers] for i in range(workers)]
        if workers == 1:
            parts = [_pixel_chunk(self.name, chunks[0])]
        else:
            with ProcessPoolExecutor(workers) as pool:
                parts = list(pool.map(_pixel_chunk, [self.name] * workers, chunks))
        scores = np.empty(len(pairs))
        for i, part in enumerate(parts):
            scores[i::workers] = part
        return scores


class Ssim(PixelScore):
    name = "ssim"
    tau = {"offline": 0.35, "clip": 0.35, "siglip": 0.35}  # pixels: the same for every model
    description = "structural similarity of the pixels"


class Fsim(PixelScore):
    name = "fsim"
    tau = {"offline": 0.65, "clip": 0.65, "siglip": 0.65}
    description = "feature similarity of the pixels"


def _pixel_chunk(name: str, pairs: list[tuple[Path, Path]]) -> list[float]:
    method = get(name)
    assert isinstance(method, PixelScore)
    return [method.measure(_small(a), _small(b)) for a, b in pairs]


@lru_cache(maxsize=4096)
def _small(path: Path) -> Image.Image:
    """Decoded near the baselines' working size (256 px): a fraction of a full decode."""
    from imgsearch.files import decode

    return decode(path, min_side=256).image


def compare(
    ctx: Context, first: Description, second: Description, taus: dict[str, float]
) -> Comparison:
    """One pair under every method of ``taus``, each verdict at its tau, and the captions
    the two images share."""
    scores = {m: get(m).score(ctx, first, second) for m in taus}
    texts = ctx.bank.texts
    theirs = set(second.caption_ids)
    return Comparison(
        a=first.label,
        b=second.label,
        scores=scores,
        tau=dict(taus),
        similar={m: scores[m] >= taus[m] for m in taus},
        shared=[texts[c] for c in first.caption_ids if c in theirs],
        captions_a=first.captions(texts),
        captions_b=second.captions(texts),
    )


def hybrid_vectors(
    captions: np.ndarray, images: np.ndarray, alpha: float | np.ndarray
) -> np.ndarray:
    """Rows whose inner products are alpha * caption score + (1 - alpha) * image score
    (``alpha`` one weight, or one per row as a (rows, 1) column)."""
    parts = [np.sqrt(alpha) * captions, np.sqrt(1 - alpha) * images]
    return np.concatenate(parts, axis=-1).astype(np.float32)


def check_score(
    value: float | None,
    name: str = "tau",
    low: float = -1.0,
    high: float = 1.0,
    low_open: bool = False,
) -> float | None:
    """A score threshold (tau, min-pair, the duplicates threshold) as a float, or one clear
    ImgsearchError: a finite number from ``low`` to ``high`` (above ``low`` with
    ``low_open``). Scores are cosines, and centred ones are negative for unrelated photos;
    NaN would compare false with everything, inf link nothing. None passes as None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    above = number > low if low_open else number >= low
    if not (math.isfinite(number) and above and number <= high):
        span = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise ImgsearchError(f"{name} must be a finite number {span}, not {value}".lstrip())
    return number


# --- the registry -------------------------------------------------------------------------

_METHODS: dict[str, Method] = {}


def register(method: type[Method] | Method) -> type[Method] | Method:
    """Offer a method everywhere (also usable as a class decorator); replaces one of the
    same name."""
    _METHODS[method.name] = method() if isinstance(method, type) else method
    return method


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def names(ranking: bool = False) -> list[str]:
    """Registered methods, in the order they were registered; ``ranking``: those with
    vectors only (what ``query``, ``graph`` and ``clusters`` can use)."""
    return [n for n, m in _METHODS.items() if m.ranks or not ranking]


def get(name: str, ranking: bool = False) -> Method:
    """The method called ``name``; one clear error for any other name."""
    allowed = names(ranking)
    if name not in allowed:
        raise ImgsearchError(f"unknown method {name!r}: use one of {', '.join(allowed)}")
    return _METHODS[name]


def parse(text: str | Iterable[str]) -> list[str]:
    """Method names from "a,b" text (or a list), each checked."""
    chosen = [m.strip() for m in text.split(",")] if isinstance(text, str) else list(text)
    chosen = [m for m in chosen if m]
    unknown = [m for m in chosen if m not in _METHODS]
    if unknown or not chosen:
        raise ImgsearchError(
            f"unknown method {', '.join(unknown) or '(none)'}: use {', '.join(names())}"
        )
    return chosen


for _method in (
    CaptionScore,
    CaptionAverage,
    ImageScore,
    HybridScore,
    ConceptScore,
    ConceptHybrid,
    Ssim,
    Fsim,
):
    register(_method)
assert config.DEFAULT_METHOD in _METHODS
