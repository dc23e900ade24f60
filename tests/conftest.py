"""Shared fixtures: real photos (scikit-image's samples), a tiny random CLIP, a test cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

# No test may reach the network: the hub is off, and every model is local.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SAMPLES = [
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "camera",
    "coins",
    "horse",
    "hubble_deep_field",
]


def sample(name: str) -> Image.Image:
    array = getattr(data, name)()
    if array.dtype != np.uint8:
        array = (array * 255).astype(np.uint8) if array.max() <= 1 else array.astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def write_photos(folder: Path, names: list[str] = SAMPLES) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        path = folder / f"{name}.jpg"
        sample(name).save(path, quality=90)
        out[name] = path
    return out


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the whole run, never the user's own."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["IMGSEARCH_CACHE_DIR"] = str(path)
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))  # an empty model cache
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder)
    return folder


@pytest.fixture(scope="session")
def small_bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short caption bank: enough to tell the sample photos apart, quick to embed."""
    path = tmp_path_factory.mktemp("bank") / "captions.txt"
    path.write_text(
        "\n".join(
            [
                "a photo of a cat",
                "a photo of a tabby cat",
                "a photo of a kitten",
                "a photo of a dog",
                "a cup of coffee",
                "a photo of espresso",
                "a coffee mug",
                "a rocket on a launch pad",
                "a space shuttle",
                "a missile",
                "an astronaut",
                "a woman in a space suit",
                "a man with a camera",
                "a photographer",
                "a pile of coins",
                "a horse",
                "a silhouette of a horse",
                "stars in the night sky",
                "a galaxy",
                "a photo of a car",
                "a bowl of fruit",
                "a beach",
            ]
        )
    )
    return path


def byte_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary with no merges: every byte a token, as GPT-2/CLIP encode them."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return vocab


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, seeded CLIP that runs in milliseconds, saved as a folder."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    vocab = byte_vocab()
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": 512,
            "eos_token_id": 513,
            "pad_token_id": 513,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    try:
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[])  # transformers 5
    except TypeError:  # transformers 4 takes files
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": 32},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": 32, "width": 32},
                "do_normalize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    return folder
