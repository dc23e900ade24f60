"""The caption bank: descriptions an image is explained by, and the FAISS index to find them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from imgsearch.errors import ImgsearchError

if TYPE_CHECKING:
    import torch

DEFAULT_BANK = "default"


def read_bank(source: str | Path | None) -> tuple[str, list[str]]:
    """(name, captions) of the packaged bank or of a user's text file, one caption a line."""
    if source is None or str(source) == DEFAULT_BANK:
        text = resources.files("imgsearch").joinpath("data/captions.txt").read_text("utf-8")
        name = DEFAULT_BANK
    else:
        path = Path(source).expanduser()
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ImgsearchError(f"cannot read the caption bank {path}: {exc}") from None
        name = str(path.resolve())
    seen: set[str] = set()
    captions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in seen:
            seen.add(line)
            captions.append(line)
    if not captions:
        raise ImgsearchError(f"the caption bank {name} has no captions")
    return name, captions


def bank_digest(captions: list[str]) -> str:
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CaptionSettings:
    """How an image's top-N captions become the vector it is compared by.

    The defaults of the fields are the paper's method: the plain mean of the N caption
    vectors, whose inner products are the N x N average cosine. The package's defaults
    (DEFAULT_SETTINGS) are the measured best (benchmarks/tune_caption.py): more
    captions weighted by a softmax of their match scores, and the collection's mean
    caption vector taken out before the cosine, so that what every photo shares ("a
    photo of ...", the collection's common subject) stops counting as similarity.
    Every index records the settings it was made with.
    """

    top_n: int = 10
    weighting: str = "none"  # "none" (the paper), "score", or "softmax" (of score / temperature)
    temperature: float = 0.1
    center_collection: bool = False  # score by cos(m_a - mean, m_b - mean)
    # Concepts kept in each image's concept bag (``indexer.ConceptBridge``; 0: no bags). Only
    # a model with class probabilities (the offline one) makes bags.
    concepts: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CaptionSettings:
        return cls(**json.loads(text))


PAPER = CaptionSettings()
# What a new index records unless told otherwise: measured best on the development set by
# benchmarks/tune_caption.py.
DEFAULT_SETTINGS = CaptionSettings(
    top_n=20, weighting="softmax", temperature=0.1, center_collection=True, concepts=500
)


@dataclass
class Captioned:
    """Images' top-N captions (ids, match scores, best first) and their caption vectors;
    ``concepts``: their concept bags and ``confidence`` their classifier's top class
    probability (T=1), when the model and the settings make bags."""

    ids: np.ndarray
    scores: np.ndarray
    vectors: np.ndarray
    concepts: np.ndarray | None = None
    confidence: np.ndarray | None = None


@dataclass
class CaptionBank:
    """Caption texts with their unit vectors, searchable by inner product: FAISS on a CPU,
    one matrix product and ``topk`` on a GPU (the bank's vectors kept there)."""

    texts: list[str]
    vectors: np.ndarray

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)
        self._ids = {text: i for i, text in enumerate(self.texts)}
        self._on_device: dict[str, torch.Tensor] = {}

    def ids_of(self, texts: Iterable[str]) -> dict[str, int]:
        """The ids of those of ``texts`` this bank has (an older bank may lack some)."""
        return {t: self._ids[t] for t in texts if t in self._ids}

    def top(
        self,
        queries: np.ndarray,
        n: int,
        device: torch.device | str | None = None,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's n best captions: (scores, ids), both (len(queries), n), best first.

        On a CUDA ``device`` the search is ``top_matmul`` there; elsewhere FAISS, with at
        most ``threads`` OpenMP threads where given: beside busy decode workers FAISS's
        threads only fight them for the cores (issue 17: 2.05 s with 16 workers running,
        0.14 s without).
        """
        if device is not None and str(device).startswith("cuda"):
            return self.top_matmul(queries, n, device)
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if threads is None:
            return self.index.search(queries, min(n, len(self.texts)))
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        try:
            return self.index.search(queries, min(n, len(self.texts)))
        finally:
            faiss.omp_set_num_threads(before)

    def top_matmul(
        self, queries: np.ndarray | torch.Tensor, n: int, device: torch.device | str = "cpu"
    ) -> tuple[np.ndarray, np.ndarray]:
        """``top`` as one float32 matrix product and ``topk`` on ``device``, the bank's
        vectors copied there once: the same ids as FAISS (but where two captions score
        within float32 rounding of each other) and the same scores to 1e-5."""
        import torch

        bank = self.on_device(device)
        if isinstance(queries, np.ndarray):
            queries = np.atleast_2d(queries)
        batch = torch.as_tensor(queries)
        batch = batch.to(bank.device, torch.float32, non_blocking=True)
        if batch.dim() == 1:
            batch = batch[None]
        scores, ids = (batch @ bank.T).topk(min(n, len(self.texts)), dim=1)
        return scores.cpu().numpy(), ids.cpu().numpy().astype(np.int64)

    def on_device(self, device: torch.device | str) -> torch.Tensor:
        """The bank's vectors as a float32 tensor on ``device``, copied there once."""
        import torch

        key = str(torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = torch.from_numpy(self.vectors).to(key)
        return self._on_device[key]

    def describe(
        self,
        text_space: np.ndarray,
        settings: CaptionSettings,
        device: torch.device | str | None = None,
        threads: int | None = None,
    ) -> Captioned:
        """Find each image's top-N captions and combine them into its caption vector."""
        scores, ids = self.top(text_space, settings.top_n, device, threads)
        return Captioned(ids, scores, self.combine(ids, scores, settings))

    def combine(self, ids: np.ndarray, scores: np.ndarray, settings: CaptionSettings) -> np.ndarray:
        """One vector per row of (ids, scores), as ``settings`` say; (B, N) in, (B, dim) out."""
        ids = np.atleast_2d(ids)[:, : settings.top_n]  # stored lists may be longer
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float32))[:, : ids.shape[1]]
        vectors = self.vectors[ids]
        if settings.weighting == "none":
            weights = np.full(ids.shape, 1.0 / ids.shape[1], dtype=np.float32)
        elif settings.weighting == "score":
            weights = np.maximum(scores, 1e-6)
            weights = weights / weights.sum(axis=1, keepdims=True)
        elif settings.weighting == "softmax":
            logits = (scores - scores.max(axis=1, keepdims=True)) / settings.temperature
            weights = np.exp(logits)
            weights = weights / weights.sum(axis=1, keepdims=True)
        else:
            raise ValueError(f"unknown caption weighting {settings.weighting!r}")
        return np.einsum("bn,bnd->bd", weights.astype(np.float32), vectors).astype(np.float32)


def centered(vectors: np.ndarray, mean: np.ndarray | float | None) -> np.ndarray:
    """Rows minus a collection's mean vector, scaled to unit length (None: left as they are)."""
    if mean is None:
        return vectors
    shifted = np.asarray(vectors, dtype=np.float32) - mean
    norms = np.linalg.norm(shifted, axis=-1, keepdims=True)
    return (shifted / np.maximum(norms, 1e-12)).astype(np.float32)


def caption_avg(a: np.ndarray, b: np.ndarray) -> float:
    """The paper's score, literally: the mean cosine over all pairs of the two caption sets."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a @ b.T).mean())
