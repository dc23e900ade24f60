"""The caption bank: descriptions an image is explained by, and the FAISS index to find them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from imgsearch.errors import ImgsearchError

if TYPE_CHECKING:
    from imgsearch.models import Model

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


@dataclass
class CaptionBank:
    """Caption texts with their unit vectors, searchable by inner product."""

    texts: list[str]
    vectors: np.ndarray

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)

    @classmethod
    def embed(cls, model: Model, texts: list[str]) -> CaptionBank:
        from imgsearch.models.base import cached_text_vectors

        return cls(texts, cached_text_vectors(model, texts))

    def top(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's n best captions: (scores, ids), both (len(queries), n), best first."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self.index.search(queries, min(n, len(self.texts)))

    def mean_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Mean caption vector per row of ids: its dot products are the paper's N x N averages."""
        return self.vectors[np.atleast_2d(ids)].mean(axis=1)
