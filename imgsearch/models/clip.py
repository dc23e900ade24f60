"""CLIP through transformers: a checkpoint id from the Hugging Face cache, or a local folder.

The backend that takes every model name no other backend claims. torch and transformers
are imported where a model is made, not when the backend's facts are read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.errors import ImgsearchError
from imgsearch.models.base import Backend, ImageEmbeddings, Model, Preprocess, normalize

if TYPE_CHECKING:
    import torch

DEFAULT_CLIP = "openai/clip-vit-base-patch32"

# OpenAI CLIP's preprocessing, used when a checkpoint carries no preprocessor_config.json.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipModel(Model):
    """One CLIP for both sides: its image embedding already lies in the caption space."""

    def __init__(self, source: str, device: torch.device, local_files_only: bool = True):
        import torch
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

    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> ImageEmbeddings:
        import torch

        channels_last = self.device.type == "cuda"
        with torch.inference_mode():
            pixels = self.preprocess.normalize(pixels, self.device, self.dtype, channels_last)
            vectors = normalize(_features(self.model.get_image_features(pixel_values=pixels)))
        return ImageEmbeddings(image=vectors, text_space=vectors)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            return normalize(_features(self.model.get_text_features(**tokens)))


def _features(out) -> np.ndarray:  # noqa: ANN001 - a tensor or a transformers output
    """transformers 5 returns an output object, 4.x a tensor."""
    import torch

    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return features.float().cpu().numpy()


def load(name: str, device: torch.device) -> ClipModel:
    """A folder, or a hub id from the local cache, else from the hub if it can be reached."""
    if Path(name).is_dir():
        try:
            return ClipModel(name, device)
        except (OSError, ValueError, KeyError) as exc:
            raise ImgsearchError(f"cannot load a CLIP model from {name}: {exc}") from None
    try:
        return ClipModel(name, device, local_files_only=True)
    except (OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ImgsearchError(f"CLIP {name!r} is not in the local cache and HF_HUB_OFFLINE is set")
    from imgsearch.models.hub import hub_reachable

    if not hub_reachable():
        raise ImgsearchError(
            f"CLIP {name!r} is not in the local cache and the Hugging Face hub cannot be reached"
        )
    try:
        return ClipModel(name, device, local_files_only=False)
    except (OSError, ValueError) as exc:
        raise ImgsearchError(f"cannot load CLIP {name!r}: {exc}") from None


def preprocess(name: str) -> Preprocess | None:
    """The checkpoint's preprocessing from its config alone, if it is on this machine."""
    from transformers import CLIPConfig

    try:
        config = CLIPConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None
    return _preprocess_for(name, True, config)


def identify(name: str) -> str:
    """A local folder by its absolute path, a hub id as it is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


BACKEND = Backend(
    name="clip",
    family="clip",
    matches=lambda name: True,
    identify=identify,
    load=load,
    preprocess=preprocess,
)


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


def byte_level_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary with no merges: every byte is a token, as GPT-2/CLIP map
    them, plus CLIP's two special tokens (512, 513). Valid for any text."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    codes = printable[:]
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + len(codes) - 188)
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return vocab


def save_random_clip(
    folder: Path,
    text_config: dict | None = None,
    vision_config: dict | None = None,
    projection_dim: int = 512,
    seed: int = 0,
) -> Path:
    """Save a CLIP with seeded random weights, a byte-level tokenizer and a preprocessor
    config as a model folder that ``--model FOLDER`` loads.

    No CLIP weights can be had without the hub: tests use a tiny one, and speed benchmarks a
    full-size ViT-B/32 (``CLIPConfig()`` sizes), which times the same as trained weights.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = byte_level_vocab()
    specials = {"bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513}
    text = {**(text_config or {}), **specials}
    if text_config is not None:
        text["vocab_size"] = len(vocab)
    config = CLIPConfig(
        text_config=text, vision_config=vision_config or {}, projection_dim=projection_dim
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    try:
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[])  # transformers 5
    except TypeError:  # transformers 4 reads files
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    size = config.vision_config.image_size
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": size},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": size, "width": size},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "do_convert_rgb": True,
                "image_mean": list(_CLIP_MEAN),
                "image_std": list(_CLIP_STD),
            }
        )
    )
    return folder
