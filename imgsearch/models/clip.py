"""CLIP through transformers: a checkpoint id from the Hugging Face cache, or a local folder."""

from __future__ import annotations

import json

import numpy as np
import torch

from imgsearch.models.base import ImageEmbeddings, Model, Preprocess, normalize

DEFAULT_CLIP = "openai/clip-vit-base-patch32"

# OpenAI CLIP's preprocessing, used when a checkpoint carries no preprocessor_config.json.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipModel(Model):
    """One CLIP for both sides: its image embedding already lies in the caption space."""

    def __init__(self, source: str, device: torch.device, local_files_only: bool = True):
        from transformers import AutoTokenizer, CLIPModel

        self.name = source
        self.device = device
        self.model = CLIPModel.from_pretrained(source, local_files_only=local_files_only)
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.model = self.model.to(device=device, dtype=self.dtype).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.image_dim = self.text_dim = int(self.model.config.projection_dim)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.preprocess = _preprocess_for(source, local_files_only, self.model.config)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> ImageEmbeddings:
        pixels = pixels.to(self.device, self.dtype, non_blocking=True)
        out = self.model.get_image_features(pixel_values=pixels)
        # transformers 5 returns an output object, 4.x a tensor.
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        vectors = normalize(features.float().cpu().numpy())
        return ImageEmbeddings(image=vectors, text_space=vectors)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        out = self.model.get_text_features(**tokens)
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return normalize(features.float().cpu().numpy())


def _preprocess_for(source: str, local_files_only: bool, config) -> Preprocess:  # noqa: ANN001
    """The checkpoint's own resize/crop/normalisation, read from its preprocessor config."""
    from transformers.utils import cached_file

    settings: dict = {}
    try:
        path = cached_file(
            source,
            "preprocessor_config.json",
            local_files_only=local_files_only,
            _raise_exceptions_for_missing_entries=False,
        )
        if path:
            with open(path, encoding="utf-8") as f:
                settings = json.load(f)
    except (OSError, ValueError):
        settings = {}
    image_size = int(config.vision_config.image_size)
    size = settings.get("size", image_size)
    resize = int(size.get("shortest_edge", image_size)) if isinstance(size, dict) else int(size)
    crop = settings.get("crop_size", image_size)
    crop = int(crop.get("height", image_size)) if isinstance(crop, dict) else int(crop)
    return Preprocess(
        resize=resize,
        crop=crop,
        mean=tuple(settings.get("image_mean", _CLIP_MEAN)),
        std=tuple(settings.get("image_std", _CLIP_STD)),
    )
