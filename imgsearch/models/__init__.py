"""Which model to use, and on which device: one dispatch over the backends' own facts.

Each backend module declares a ``BACKEND`` (``base.Backend``): its family, which names are
its, how it loads and how it preprocesses. Nothing else tests model names. Importing this
package loads no torch; making a model or choosing a device does.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from imgsearch.errors import ImgsearchError
from imgsearch.files import Preprocess
from imgsearch.models import clip, offline, siglip
from imgsearch.models.base import Backend, ImageEmbeddings, Model, normalize
from imgsearch.models.clip import DEFAULT_CLIP
from imgsearch.models.offline import OFFLINE
from imgsearch.models.precision import cpu_precision, forced_precision

if TYPE_CHECKING:
    import torch

__all__ = [
    "BACKENDS",
    "DEFAULT_CLIP",
    "OFFLINE",
    "Backend",
    "ImageEmbeddings",
    "Model",
    "Preprocess",
    "backend",
    "fallback_note",
    "family",
    "load_model",
    "model_id",
    "normalize",
    "pick_device",
    "preprocess_for",
]

# Asked in order; the first whose ``matches`` takes the name wins (CLIP takes any name).
BACKENDS: list[Backend] = [offline.BACKEND, siglip.BACKEND, clip.BACKEND]


def backend(name: str) -> Backend:
    """The backend a model name belongs to."""
    return next(b for b in BACKENDS if b.matches(name))


def family(name: str) -> str:
    """Which column of defaults (thresholds) a model's scores are judged by."""
    return backend(name).family


def preprocess_for(name: str) -> Preprocess | None:
    """The decode side of a model's preprocessing without its weights: for decoders on a
    machine (a Ray driver, say) that never loads the model. None if it cannot be read here."""
    return backend(name).preprocess(name)


def pick_device(name: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless ``name`` forces one."""
    import torch

    if name and name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ImgsearchError(f"unknown device {name!r}: use cpu, cuda or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ImgsearchError("--device cuda was asked for, but no CUDA GPU is available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ImgsearchError("--device mps was asked for, but Apple MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_id(name: str) -> str:
    """What an index records: 'offline', a hub id, or a local folder's absolute path."""
    return backend(name).identify(name)


def load_model(name: str | None, device: torch.device, say=None) -> Model:  # noqa: ANN001
    """Load ``name``; with no name, CLIP when it can be had, else the offline model.

    ``say`` receives the one line that tells the user which model was chosen and why.
    """
    _quiet_transformers()
    if name is not None:
        return _load(model_id(name), device)
    try:
        return _load(DEFAULT_CLIP, device)
    except ImgsearchError as exc:
        if say is not None:
            say(fallback_note(str(exc)))
        return _load(OFFLINE, device)


def fallback_note(reason: str) -> str:
    """The one line that says the offline model is used, why, what it cannot see, and how
    to have CLIP with no network."""
    return (
        f"using the offline model, which recognises only the 1000 ImageNet classes ({reason}); "
        "for CLIP with no network, pass a local checkpoint folder with --model FOLDER, or "
        f"point HF_HOME at a Hugging Face cache that holds {DEFAULT_CLIP}"
    )


_loaded: dict[tuple[str, str], Model] = {}


def _load(name: str, device: torch.device) -> Model:
    """Load once per process: models are only read, and loading takes seconds."""
    # The precision asked for is part of the key: a test or benchmark forcing one gets it.
    asked = (cpu_precision(), forced_precision()) if device.type == "cpu" else ()
    key = (name, str(device), *asked)
    if key not in _loaded:
        _loaded[key] = backend(name).load(name, device)
    return _loaded[key]


def _quiet_transformers() -> None:
    """Library chatter would drown the one line of stderr the user needs. Told through its
    environment where transformers is not loaded yet: a model that never needs it (the
    offline one with its bank cached) then never pays the second it takes to import."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    try:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        print("imgsearch: transformers is not installed", file=sys.stderr)
