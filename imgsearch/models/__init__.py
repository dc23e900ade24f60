"""Which model to use, and on which device: one dispatch over the backends' own facts.

Each backend module declares a ``BACKEND`` (``base.Backend``): its family, which names are
its, how it loads and how it preprocesses. Nothing else tests model names. Importing this
package loads no torch; making a model or choosing a device does.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
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
    "load_query_model",
    "model_id",
    "normalize",
    "one_thread",
    "torch_threads",
    "pick_device",
    "prepare_queries",
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


def load_query_model(name: str, device: str | None = None) -> Model:
    """The model one query of an index made with ``name`` runs: on the CPU (``device``
    auto or cpu), its ONNX export run by ONNX Runtime on one thread, which starts without
    importing torch or transformers (``onnx_runtime``); on a device asked for, or where the
    model cannot be exported, the torch model (float32 on the CPU, as the export is)."""
    if device not in (None, "auto", "cpu"):
        return load_model(name, pick_device(device))
    from imgsearch.models import onnx_runtime

    name = model_id(name)
    return onnx_runtime.query_model(name, _files(name), lambda: reference_model(name))


def saved_export(name: str, threads: int = 1) -> Model | None:
    """``name``'s ONNX export on ``threads`` threads where one is saved and reads back; None
    otherwise (never made here: making one needs the torch model, which is what a caller of
    this would rather not load)."""
    from imgsearch.models import onnx_runtime

    return onnx_runtime.saved(model_id(name), _files(name), threads)


def prepare_queries(model: Model) -> Model | None:
    """Export an indexing run's model for queries (once per model and weights), so that the
    first query after the run starts at once too; a no-op when that is done already.
    Exported from the model itself where it runs float32 on the CPU, else from a float32
    CPU copy. Returns the export, or None where the model has none."""
    from imgsearch.models import onnx_runtime

    def reference() -> Model:
        cpu = str(getattr(model, "device", "cpu")) == "cpu"
        if cpu and getattr(model, "precision", "float32") == "float32":
            return model
        return reference_model(model.name)

    return onnx_runtime.prepare(model.name, _files(model.name), reference)


def reference_model(name: str) -> Model:
    """``name`` in float32 on the CPU, whatever this CPU could run faster (int8, bfloat16):
    what an ONNX export is made from and checked against, and what a query without one
    runs, so that a query's vectors are the same on both paths."""
    import torch

    from imgsearch.models.precision import ENV

    before = os.environ.get(ENV)
    os.environ[ENV] = "float32"
    try:
        return load_model(name, torch.device("cpu"))
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def _files(name: str) -> list[Path] | None:
    try:
        return backend(name).files(name)
    except (OSError, ImportError):
        return None


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch on ``count`` threads for the duration, where torch is loaded (else nothing)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread() -> contextlib.AbstractContextManager[None]:
    """Torch on one thread for the duration (a single query): one text took 597 ms on two
    threads fighting a busy machine, 20 ms on one."""
    return torch_threads(1)


def fallback_note(reason: str) -> str:
    """The one line that says the offline model is used, why, what it cannot see, and how
    to have CLIP with no network."""
    return (
        f"using the offline model, which recognises only the 1000 ImageNet classes ({reason}); "
        "for CLIP with no network, pass a local checkpoint folder with --model FOLDER, or "
        f"point HF_HOME at a Hugging Face cache that holds {DEFAULT_CLIP}"
    )


_loaded: dict[tuple[str, str], Model] = {}


def loaded_here(name: str) -> bool:
    """Whether this process holds ``name`` loaded on its CPU already (``_load``'s cache),
    found without importing torch: a short run then has nothing to save by embedding with
    the model's export instead (a server's, a benchmark's or a notebook's later runs)."""
    name = model_id(name)
    return any(key[0] == name and key[1] == "cpu" for key in _loaded)


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
        from imgsearch.models.base import TRANSFORMERS_IMPORT

        with TRANSFORMERS_IMPORT:
            from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        print("imgsearch: transformers is not installed", file=sys.stderr)
