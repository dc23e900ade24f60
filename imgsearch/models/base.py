"""The one interface every model backend implements.

A backend turns decoded images into two vectors each and texts into one:

* ``image``: the image's own embedding (CLIP's image embedding; the offline
  model's pooled CNN features). Used for direct image similarity and
  near-duplicate finding.
* ``text_space``: the image placed in the space of the text encoder, where the
  caption bank lives. For CLIP this is the same vector as ``image``; for the
  offline model it is built from the classifier's predictions.

Preprocessing (``preprocess``) runs in decode workers, away from the model, so
it must be a plain function of a PIL image that returns a CHW float tensor.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side, centre-crop, normalise: what every backend here needs."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        if size != (w, h):
            image = image.resize(size, self.resample, reducing_gap=None)
        w, h = image.size
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())


@dataclass
class ImageEmbeddings:
    """Unit vectors for a batch of images, as float32 numpy arrays."""

    image: np.ndarray  # (B, image_dim)
    text_space: np.ndarray  # (B, text_dim)


class Model(ABC):
    """A loaded model. ``name`` is what an index records to refuse a mismatch."""

    name: str
    image_dim: int
    text_dim: int
    preprocess: Preprocess
    device: torch.device

    @property
    def input_size(self) -> int:
        """Smallest short side worth decoding: lets JPEG draft mode skip pixels."""
        return self.preprocess.resize

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> ImageEmbeddings:
        """Embed a (B, 3, H, W) batch made by ``preprocess``."""

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (len(texts), text_dim) in the caption space."""


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def cache_dir() -> Path:
    """Where embedded caption banks are kept between runs ($IMGSEARCH_CACHE_DIR overrides)."""
    override = os.environ.get("IMGSEARCH_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("imgsearch"))


def cached_text_vectors(model: Model, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Embed texts once per (model, texts) and keep the vectors on disk, keyed by a hash.

    Embedding a bank of thousands of captions takes many seconds on a CPU;
    every later run with the same model and bank reads them back instead.
    """
    digest = hashlib.sha256("\n".join([model.name, *texts]).encode()).hexdigest()[:32]
    path = cache_dir() / f"text-{digest}.npy"
    if path.exists():
        try:
            vectors = np.load(path)
            if vectors.shape == (len(texts), model.text_dim):
                return vectors
        except (OSError, ValueError):
            pass
    vectors = (
        np.concatenate(
            [
                model.encode_texts(texts[i : i + batch_size])
                for i in range(0, len(texts), batch_size)
            ]
        )
        if texts
        else np.zeros((0, model.text_dim), np.float32)
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vectors)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs time
    return vectors
