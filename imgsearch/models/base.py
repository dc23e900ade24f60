"""The one interface every model backend implements, and the facts each one declares.

A backend turns decoded images into two vectors each and texts into one:

* ``image``: the image's own embedding (CLIP's image embedding; the offline
  model's pooled CNN features). Used for direct image similarity and
  near-duplicate finding.
* ``text_space``: the image placed in the space of the text encoder, where the
  caption bank lives. For CLIP this is the same vector as ``image``; for the
  offline model it is built from the classifier's predictions.

Preprocessing (``preprocess``, an ``imgsearch.files.Preprocess``) runs in decode
workers, away from the model: resize and crop to uint8 there, then ``encode_images``
normalises the batch on the model's device.

Nothing here imports torch: finding a backend's facts (its family, say, which a query of
an indexed photo needs) must not cost the seconds torch takes to load.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.config import cache_dir
from imgsearch.files import Preprocess

if TYPE_CHECKING:
    import torch

# transformers imports its submodules lazily, on first use; two threads doing that at once
# (the model loading on its thread while the decoders read the checkpoint's preprocessing)
# can see a half-made module: "cannot import name 'AutoConfig'". Every import of it in
# imgsearch holds this lock.
TRANSFORMERS_IMPORT = threading.RLock()


# EfficientNet-Lite0's (the offline model's): Inception-style normalisation to [-1, 1], as
# the TF Lite models were trained. Here rather than in ``efficientnet``, which imports torch:
# the decoders can start on it while torch loads.
EFFICIENTNET_LITE0_PREPROCESS = Preprocess(resize=256, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)


@dataclass
class ImageEmbeddings:
    """Unit vectors for a batch of images, as float32 numpy arrays."""

    image: np.ndarray  # (B, image_dim)
    text_space: np.ndarray  # (B, text_dim)
    # A classifier backend's class probabilities (softmax of its logits, T=1), over the
    # classes whose text vectors are ``Model.class_vectors``; None for CLIP.
    class_probs: np.ndarray | None = None  # (B, classes)


class Model(ABC):
    """A loaded model. ``name`` is what an index records to refuse a mismatch."""

    name: str
    image_dim: int
    text_dim: int
    preprocess: Preprocess
    device: torch.device
    # A classifier backend: the text vectors of its classes ("a photo of a {class}"), numpy
    # (classes, text_dim), which ``ImageEmbeddings.class_probs`` weight. None: no classes.
    class_text_vectors: np.ndarray | None = None
    # The number format its images run in: float32, or on a CPU that is faster with it
    # bfloat16 or int8 (``precision.cpu_precision``), float16 on CUDA. Recorded in the index.
    precision: str = "float32"

    @property
    def input_size(self) -> int:
        """Smallest short side worth decoding: lets JPEG draft mode skip pixels."""
        return self.preprocess.resize

    @abstractmethod
    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> ImageEmbeddings:
        """Embed a uint8 (B, H, W, 3) batch made by ``preprocess`` (array or tensor)."""

    def encode_images_later(
        self, pixels: np.ndarray | torch.Tensor
    ) -> Callable[[], ImageEmbeddings]:
        """Start embedding a batch; the call returned gives its embeddings. A model on a
        device that runs by itself (CUDA) queues the work there and the call waits for it,
        so that the next batch is stacked, copied and queued meanwhile. Here: at once."""
        done = self.encode_images(pixels)
        return lambda: done

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (len(texts), text_dim) in the caption space."""


@dataclass(frozen=True)
class Backend:
    """What one kind of model is, declared by its own module (see ``imgsearch.models``).

    ``family`` names the column of defaults (thresholds) its scores are judged by;
    ``matches`` says whether a model name is this backend's; ``identify`` turns a name as
    given into the one an index records; ``load`` makes the model; ``preprocess`` gives the
    decode side of its preprocessing from its configuration alone, without the weights
    (None when that is not on this machine). ``pixel_colours``: the model cannot see colour,
    so an image's colour captions are read from its pixels (``imgsearch.colours``) instead.
    (None when that is not on this machine); ``class_probs``: its images come with class
    probabilities (``ImageEmbeddings.class_probs``), which concept bags are made from.
    ``files``: the files its weights, configuration and tokenizer are read from (None when
    they are not on this machine): what its ONNX export for queries is keyed by
    (``imgsearch.models.onnx_runtime``).
    """

    name: str
    family: str
    matches: Callable[[str], bool]
    identify: Callable[[str], str]
    load: Callable[[str, torch.device], Model]
    preprocess: Callable[[str], Preprocess | None]
    pixel_colours: bool = False
    class_probs: bool = False
    files: Callable[[str], list[Path] | None] = lambda _name: None


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _text_cache(name: str, texts: list[str]) -> Path:
    digest = hashlib.sha256("\n".join([name, *texts]).encode()).hexdigest()[:32]
    return cache_dir() / f"text-{digest}.npy"


def cached_vectors_of(name: str, texts: list[str], dim: int | None = None) -> np.ndarray | None:
    """The vectors ``cached_text_vectors`` keeps for the model called ``name`` (shipped in
    the package, else in the user cache), without the model: a new index with a known bank
    records it and loads the model only when it embeds a photo. None where there are none."""
    from imgsearch.models.packaged import packaged_text_vectors

    packaged = packaged_text_vectors(name, texts)
    if packaged is not None and dim in (None, packaged.shape[1]):
        return packaged
    path = _text_cache(name, texts)
    if not path.exists():
        return None
    try:
        vectors = np.load(path)
    except (OSError, ValueError):
        return None
    good = vectors.ndim == 2 and len(vectors) == len(texts) and dim in (None, vectors.shape[1])
    return vectors if good else None


def cached_text_vectors(
    model: Model, texts: list[str], batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """Embed texts once per (model, texts) and keep the vectors on disk, keyed by a hash.

    Embedding a bank of thousands of captions takes many seconds on a CPU; the vectors
    the package ships (``packaged``: the offline model's default bank and class prompts)
    are read instead, and every later run with the same model and bank reads them back
    from the cache. ``progress``: a progress bar on a terminal while texts are embedded.
    """
    path = _text_cache(model.name, texts)
    cached = cached_vectors_of(model.name, texts, model.text_dim)
    if cached is not None:
        return cached
    bar = _text_bar(len(texts)) if progress and len(texts) > batch_size else None
    parts = []
    for i in range(0, len(texts), batch_size):
        parts.append(model.encode_texts(texts[i : i + batch_size]))
        if bar is not None:
            bar.update(len(parts[-1]))
    if bar is not None:
        bar.close()
    vectors = np.concatenate(parts) if texts else np.zeros((0, model.text_dim), np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vectors)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs time
    return vectors


def _text_bar(total: int):  # noqa: ANN202 - tqdm or None
    """A bar on stderr while a caption bank is embedded (the first run of a model with a
    bank the package has no vectors for), so that a long wait does not look like a hang."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="caption", desc="embedding captions", file=sys.stderr)
