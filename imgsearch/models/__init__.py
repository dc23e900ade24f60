"""Which model to use, and on which device: the one place that decides."""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from imgsearch.errors import ImgsearchError
from imgsearch.models.base import ImageEmbeddings, Model, Preprocess, normalize
from imgsearch.models.clip import DEFAULT_CLIP
from imgsearch.models.offline import OFFLINE

__all__ = [
    "DEFAULT_CLIP",
    "OFFLINE",
    "ImageEmbeddings",
    "Model",
    "Preprocess",
    "load_model",
    "model_id",
    "normalize",
    "pick_device",
]


def pick_device(name: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless ``name`` forces one."""
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
    if name == OFFLINE:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name


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
            say(f"using the offline model ({exc})")
        return _load(OFFLINE, device)


_loaded: dict[tuple[str, str], Model] = {}


def _load(name: str, device: torch.device) -> Model:
    """Load once per process: models are only read, and loading takes seconds."""
    key = (name, str(device))
    if key not in _loaded:
        _loaded[key] = _load_new(name, device)
    return _loaded[key]


def _load_new(name: str, device: torch.device) -> Model:
    if name == OFFLINE:
        from imgsearch.models.offline import OfflineModel

        return OfflineModel(device)
    from imgsearch.models.clip import ClipModel

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
    if not _hub_reachable():
        raise ImgsearchError(
            f"CLIP {name!r} is not in the local cache and the Hugging Face hub cannot be reached"
        )
    try:
        return ClipModel(name, device, local_files_only=False)
    except (OSError, ValueError) as exc:
        raise ImgsearchError(f"cannot load CLIP {name!r}: {exc}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection test, so an offline machine gives up in seconds, not minutes."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # DNS has no timeout of its own
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _quiet_transformers() -> None:
    """Library chatter would drown the one line of stderr the user needs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        print("imgsearch: transformers is not installed", file=sys.stderr)
