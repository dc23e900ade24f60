"""CLIP through transformers: a checkpoint id from the Hugging Face cache, or a local folder.

The backend that takes every model name no other backend claims: CLIP checkpoints, and any
other whose model has image and text features in one space (``checkpoint.FeaturesModel``
runs them all). torch and transformers are imported where a model is made, not when the
backend's facts are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.models.base import TRANSFORMERS_IMPORT, Backend, Model
from imgsearch.models.checkpoint import (
    CLIP_MEAN,
    CLIP_STD,
    FeaturesModel,
    checkpoint_files,
    config_preprocess,
    identify,
    load_checkpoint,
)

if TYPE_CHECKING:
    import torch

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def load(name: str, device: torch.device) -> Model:
    """A folder, or a hub id from the local cache, else from the hub if it can be reached."""
    return load_checkpoint(name, device, FeaturesModel, "CLIP")


BACKEND = Backend(
    name="clip",
    family="clip",
    matches=lambda name: True,
    identify=identify,
    load=load,
    preprocess=config_preprocess,
    files=checkpoint_files,
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

    with TRANSFORMERS_IMPORT:
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
                "image_mean": list(CLIP_MEAN),
                "image_std": list(CLIP_STD),
            }
        )
    )
    return folder
