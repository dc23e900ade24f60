"""Any transformers checkpoint whose model has image and text features in one space.

CLIP, SigLIP, SigLIP 2 and their kin all answer ``get_image_features`` and
``get_text_features``; what differs is read from the checkpoint itself: its processor's
resize, crop and normalisation, its tokenizer, and how its texts are padded. This module
loads such a checkpoint from a folder, the Hugging Face cache or the hub, and runs it;
the backends (``clip``, ``siglip``) declare which names are theirs. torch and transformers
are imported where a model is made.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.errors import ImgsearchError
from imgsearch.models.base import (
    TRANSFORMERS_IMPORT,
    ImageEmbeddings,
    Model,
    Preprocess,
    normalize,
)
from imgsearch.models.precision import cpu_precision, quantize_linear

if TYPE_CHECKING:
    import torch

# OpenAI CLIP's preprocessing, used when a checkpoint carries no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# SigLIP's: every channel scaled to -1..1, the whole image resized to a square.
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
SIGLIP_TYPES = ("siglip", "siglip2")


def identify(name: str) -> str:
    """A local folder by its absolute path, a hub id as it is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def checkpoint_files(name: str) -> list[Path] | None:
    """The files of a checkpoint folder, or of a hub id's snapshot in the local cache; None
    when it is not on this machine."""
    from imgsearch.models.hub import config_file

    config = config_file(name)
    if config is None or not config.is_file():
        return None
    return sorted(p for p in config.parent.iterdir() if p.is_file())


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def load_checkpoint(
    name: str, device: torch.device, make: Callable[[str, torch.device, bool], Model], what: str
) -> Model:
    """A folder, or a hub id from the local cache, else from the hub if it can be reached.
    ``what`` names the kind of model in messages ("CLIP", "SigLIP")."""
    if Path(name).is_dir():
        try:
            return make(name, device, True)
        except (OSError, ValueError, KeyError) as exc:
            raise ImgsearchError(f"cannot load a {what} model from {name}: {exc}") from None
    try:
        return make(name, device, True)
    except (OSError, ValueError):
        pass
    if hub_offline():
        raise ImgsearchError(f"{what} {name!r} is not in the local cache and HF_HUB_OFFLINE is set")
    from imgsearch.models.hub import hub_reachable

    if not hub_reachable():
        raise ImgsearchError(
            f"{what} {name!r} is not in the local cache and the Hugging Face hub cannot be reached"
        )
    try:
        return make(name, device, False)
    except (OSError, ValueError) as exc:
        raise ImgsearchError(f"cannot load {what} {name!r}: {exc}") from None


def processor_settings(source: str, local_files_only: bool = True) -> dict:
    """The checkpoint's image processor settings: its preprocessor_config.json, or the
    "image_processor" of the processor_config.json that transformers 5 writes; {} if none."""

    with TRANSFORMERS_IMPORT:
        from transformers.utils import cached_file

    for name, key in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        try:
            path = cached_file(
                source,
                name,
                local_files_only=local_files_only,
                _raise_exceptions_for_missing_entries=False,
            )
            if not path:
                continue
            with open(path, encoding="utf-8") as f:
                settings = json.load(f)
        except (OSError, ValueError):
            continue
        if key is not None and isinstance(settings, dict):
            settings = settings.get(key)
        if isinstance(settings, dict) and settings:
            return settings
    return {}


def _side(value: object, default: int, *keys: str) -> int:
    """A size as processor configs write it: a number, or a dict under one of ``keys``."""
    if isinstance(value, dict):
        for key in keys:
            if key in value:
                return int(value[key])
        return default
    return int(value) if isinstance(value, (int, float)) else default


def patch_grid(settings: dict, config) -> tuple[int, int] | None:  # noqa: ANN001
    """A NaFlex checkpoint (SigLIP 2's Siglip2Model, images as a sequence of patches): its
    (patch size, patches a side); None for a fixed-resolution one."""
    if getattr(config, "model_type", None) != "siglip2":
        return None
    vision = config.vision_config
    patch = int(settings.get("patch_size", vision.patch_size))
    patches = int(settings.get("max_num_patches", getattr(vision, "num_patches", 256)))
    return patch, max(1, math.isqrt(patches))


def preprocess_from(settings: dict, config) -> Preprocess:  # noqa: ANN001
    """The decode side of the checkpoint's own image processor, from its settings.

    A processor that crops (CLIP's) resizes the short side and centre-crops; one that does
    not (SigLIP's) resizes the whole image to its square size. A NaFlex SigLIP 2 processor
    keeps each photo's aspect ratio in a variable number of patches; here the photo is
    stretched to the square of its most patches, as a fixed-resolution SigLIP sees it, so
    that every image of a batch has the same shape (a square photo gets exactly the
    processor's pixels)."""
    kind = getattr(config, "model_type", None)
    siglip = kind in SIGLIP_TYPES
    mean = tuple(settings.get("image_mean", SIGLIP_MEAN if siglip else CLIP_MEAN))
    std = tuple(settings.get("image_std", SIGLIP_STD if siglip else CLIP_STD))
    # SigLIP 2's NaFlex processor resizes bilinearly, SigLIP's and CLIP's bicubically.
    resample = int(settings.get("resample", 2 if kind == "siglip2" else 3))
    grid = patch_grid(settings, config)
    if grid is not None:
        side = grid[0] * grid[1]
        return Preprocess(side, side, mean, std, resample, stretch=True)
    image_size = int(getattr(config.vision_config, "image_size", 224))
    size = settings.get("size", image_size)
    crops = (
        bool(settings.get("do_center_crop", "crop_size" in settings)) if settings else not siglip
    )
    if not crops:
        side = _side(size, image_size, "height", "shortest_edge", "width")
        return Preprocess(side, side, mean, std, resample, stretch=True)
    resize = _side(size, image_size, "shortest_edge", "height")
    crop = _side(settings.get("crop_size", image_size), image_size, "height")
    return Preprocess(resize, crop, mean, std, resample)


def output_tensor(out) -> torch.Tensor:  # noqa: ANN001 - a tensor or a transformers output
    """transformers 5 returns an output object, 4.x a tensor."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def features(out) -> np.ndarray:  # noqa: ANN001
    return output_tensor(out).float().cpu().numpy()


def _embeddings(image_features: np.ndarray) -> ImageEmbeddings:
    """A checkpoint's image features already lie in the text space."""
    vectors = normalize(image_features)
    return ImageEmbeddings(image=vectors, text_space=vectors)


class FeaturesModel(Model):
    """One checkpoint for both sides: its image features already lie in the text space.

    Texts are tokenized as its processor does: SigLIP's lowercased and padded to its full
    length (64 tokens; SigLIP and SigLIP 2 were trained so, and read the last position),
    others padded to the longest text.
    """

    def __init__(self, source: str, device: torch.device, local_files_only: bool = True):
        import torch

        with TRANSFORMERS_IMPORT:
            from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_files_only)
        if not all(hasattr(model, f) for f in ("get_image_features", "get_text_features")):
            raise ImgsearchError(
                f"{source} holds a {type(model).__name__}, which has no image and text "
                "features: give a CLIP or SigLIP checkpoint"
            )
        self.name = source
        self.device = device
        self.kind = config.model_type
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.image_dtype = self.dtype  # what the image side takes its pixels in
        self.precision = "float16" if device.type == "cuda" else "float32"
        if device.type == "cpu":
            self._reduce_precision(cpu_precision())
        settings = processor_settings(source, local_files_only)
        self.grid = patch_grid(settings, config)
        self.channels_last = device.type == "cuda" and self.grid is None
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        text = getattr(config, "text_config", None)
        self.max_tokens = int(getattr(text, "max_position_embeddings", 0) or 64)
        self.pad_to_max = self.kind in SIGLIP_TYPES
        self.accepts = set(inspect.signature(self.model.get_text_features).parameters)
        self.preprocess = preprocess_from(settings, config)
        # Image and text vectors share one space, so one probe gives both sizes.
        self.image_dim = self.text_dim = int(self.encode_texts(["a photo"]).shape[1])

    def _reduce_precision(self, precision: str) -> None:
        """The image tower (the children named vision*/visual*) in bfloat16 or int8 on a
        CPU that runs it faster so (``precision.cpu_precision``); the text tower stays
        float32, so the caption bank's cached vectors stay valid."""
        import torch

        vision = [n for n, _ in self.model.named_children() if n.startswith(("vision", "visual"))]
        if precision == "int8" and quantize_linear(self.model, vision):
            self.precision = "int8"
        elif precision == "bfloat16" and vision:
            for name in vision:
                getattr(self.model, name).to(torch.bfloat16)
            self.image_dtype = torch.bfloat16
            self.precision = "bfloat16"

    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> ImageEmbeddings:
        return self.encode_images_later(pixels)()

    def encode_images_later(
        self, pixels: np.ndarray | torch.Tensor
    ) -> Callable[[], ImageEmbeddings]:
        """On CUDA the vectors come back through a copy queued after the model's kernels;
        the call waits for that copy alone. Waiting for each batch before preparing the
        next kept ViT-L/14 at 0.54 of its speed alone on the H200."""
        import torch

        with torch.inference_mode():
            batch = self.preprocess.normalize(
                pixels, self.device, self.image_dtype, self.channels_last
            )
            if self.grid is None:
                out = self.model.get_image_features(pixel_values=batch)
            else:
                out = self.model.get_image_features(**self._patches(batch))
            result = output_tensor(out)
            if self.device.type != "cuda":
                done = _embeddings(result.float().numpy())
                return lambda: done
            host = result.float().to("cpu", non_blocking=True)  # into pinned memory
            copied = torch.cuda.Event()
            copied.record()

        def finish() -> ImageEmbeddings:
            copied.synchronize()
            return _embeddings(host.numpy())

        return finish

    def _patches(self, batch: torch.Tensor) -> dict:
        """A (B, 3, S, S) batch as NaFlex input: (B, patches, patch * patch * 3), each patch
        row by row with its channels last, as Siglip2's image processor lays it out."""
        import torch

        patch, side = self.grid
        b, c = batch.shape[:2]
        rows = batch.reshape(b, c, side, patch, side, patch).permute(0, 2, 4, 3, 5, 1)
        values = rows.reshape(b, side * side, patch * patch * c)
        return {
            "pixel_values": values,
            "pixel_attention_mask": torch.ones(b, side * side, dtype=torch.int32).to(self.device),
            "spatial_shapes": torch.tensor([[side, side]] * b, dtype=torch.long).to(self.device),
        }

    def tokens(self, texts: list[str]):  # noqa: ANN201 - a transformers BatchEncoding
        """``texts`` tokenized as the checkpoint's text tower takes them, on the CPU (what
        ``encode_texts`` runs and the ONNX export is traced with)."""
        if self.pad_to_max:  # a SigLIP 2 checkpoint's Gemma tokenizer keeps the case
            texts = [text.lower() for text in texts]
        return self.tokenizer(
            texts,
            padding="max_length" if self.pad_to_max else True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self.tokens(texts).to(self.device)
        given = {k: v for k, v in tokens.items() if k in self.accepts}
        with torch.inference_mode():
            return normalize(features(self.model.get_text_features(**given)))


def config_preprocess(name: str) -> Preprocess | None:
    """The checkpoint's preprocessing from its config alone, if it is on this machine."""

    with TRANSFORMERS_IMPORT:
        from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
        return preprocess_from(processor_settings(name, True), config)
    except (OSError, ValueError, KeyError, AttributeError):
        return None
