"""SigLIP and SigLIP 2 through transformers: a checkpoint id or a local folder.

SigLIP (SiglipModel; SigLIP 2's fixed-resolution checkpoints such as
google/siglip2-base-patch16-224 are SiglipModels too) and SigLIP 2's NaFlex checkpoints
(Siglip2Model) run as any checkpoint with image and text features does
(``checkpoint.FeaturesModel``): the whole photo resized to a square without a crop, scaled
to -1..1 (mean and std 0.5), texts padded to the full 64 tokens, all as their processors
do. What is SigLIP's own is its family, whose defaults its scores are judged by until an
index calibrates its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.models.base import Backend, Model
from imgsearch.models.checkpoint import (
    SIGLIP_TYPES,
    FeaturesModel,
    checkpoint_files,
    config_preprocess,
    identify,
    load_checkpoint,
)
from imgsearch.models.hub import model_type

if TYPE_CHECKING:
    import torch

DEFAULT_SIGLIP = "google/siglip2-base-patch16-224"


def matches(name: str) -> bool:
    """A checkpoint on this machine whose config says SigLIP; one not here (a hub id not yet
    downloaded) by its name."""
    kind = model_type(name)
    if kind is not None:
        return kind in SIGLIP_TYPES
    return not Path(name).expanduser().is_dir() and "siglip" in name.lower()


def load(name: str, device: torch.device) -> Model:
    return load_checkpoint(name, device, FeaturesModel, "SigLIP")


BACKEND = Backend(
    name="siglip",
    family="siglip",
    matches=matches,
    identify=identify,
    load=load,
    preprocess=config_preprocess,
    files=checkpoint_files,
)
