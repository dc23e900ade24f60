"""Single queries without torch: a model's towers exported once to ONNX, run by ONNX Runtime.

A text query, or a query photo from outside the index, needs the model; importing torch and
transformers alone took 4-6 s on a busy 2-core machine, before any weights were read, while
onnxruntime and tokenizers import in about 0.1 s and a session loads in 0.05-0.3 s. So the
first time a model is needed for a query (or at the end of an indexing run that loaded it),
its text and image towers are exported with ``torch.onnx`` into the user cache, in a folder
keyed by the model's name and its files' sizes and times (``Backend.files``), together with
its tokenizer (a ``tokenizers`` JSON file) and what runs around the towers (preprocessing,
the offline model's class vectors). Every later query loads that folder: no torch, no
transformers.

An export is kept only after it gives the torch model's vectors to 1e-4 on probe texts and
images. Where onnxruntime is missing, a model cannot be exported (a NaFlex SigLIP 2, a
tokenizer with no ``tokenizers`` form) or the check fails, queries use the torch model, and
the reason is said once (the failure is remembered beside the export's folder).

Sessions run on one thread: one query's work is too small to share, and threads spinning
against each other on a busy machine cost more than they give (597 ms against 20 ms for one
text with torch's two threads and one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.config import cache_dir
from imgsearch.errors import ImgsearchError
from imgsearch.models.base import ImageEmbeddings, Model, Preprocess, normalize

if TYPE_CHECKING:
    import onnxruntime

    from imgsearch.models.checkpoint import FeaturesModel
    from imgsearch.models.offline import OfflineModel

# Bump when what an export folder holds changes: older folders are then made again.
EXPORT_VERSION = 2
TOLERANCE = 1e-4
OPSET = 17
PROBE_TEXTS = [
    "a photo of a cat",
    "A red car parked by the sea at night, seen from a bridge.",
    "x",
]
MANIFEST = "model.json"

_said: set[str] = set()


class NotExportable(Exception):
    """The model cannot be run from ONNX here; the message says why."""


def note(message: str) -> None:
    """Say ``message`` once per process on stderr, where the CLI's notes go."""
    if message not in _said:
        _said.add(message)
        print(f"imgsearch: {message}", file=sys.stderr)


def runtime_missing() -> str | None:
    """Why ONNX Runtime cannot be used here, or None."""
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or exc} is not installed"
    return None


# --- where exports live ----------------------------------------------------------------


def export_folder(name: str, files: list[Path] | None) -> Path | None:
    """The cache folder of ``name``'s export: keyed by the model's name and the size and time
    of each of its ``files`` (``Backend.files``), so new weights make a new export. None
    when the model's files are not on this machine."""
    if not files:
        return None
    try:
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    except OSError:
        return None
    key = hashlib.sha256(json.dumps([EXPORT_VERSION, name, stats]).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name or name).strip("-")[-48:]
    return cache_dir() / "onnx" / f"{slug or 'model'}-{key}"


def failure_file(folder: Path) -> Path:
    return folder.with_name(folder.name + ".failed")


# --- running ---------------------------------------------------------------------------


def session(
    path: Path, threads: int = 1, optimized: bool = True, save_to: Path | None = None
) -> onnxruntime.InferenceSession:
    """A CPU session on ``threads`` threads. An ``optimized`` file (saved so by the export,
    ``save_to``) is read without optimizing it again: that took about a third of the text
    tower's 0.3-0.5 s to load."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    level = onnxruntime.GraphOptimizationLevel
    # Extended (node fusions), never "all": its layouts are this CPU's own.
    options.graph_optimization_level = (
        level.ORT_DISABLE_ALL if optimized else level.ORT_ENABLE_EXTENDED
    )
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimize(path: Path) -> None:
    """Replace an exported tower by its graph optimized once (node fusions), as queries read it."""
    out = path.with_name(f"{path.stem}.optimized.onnx")
    session(path, optimized=False, save_to=out)
    os.replace(out, path)


class OnnxModel(Model):
    """A model read back from its export folder: the same interface and vectors as the torch
    model that made it, with sessions made on first use (a text query never loads the image
    tower) on one thread."""

    device = "cpu"

    def __init__(self, folder: Path, threads: int = 1):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.threads = threads
        self.manifest = json.loads((self.folder / MANIFEST).read_text("utf-8"))
        if self.manifest.get("version") != EXPORT_VERSION:
            raise ValueError(f"{self.folder}: an export of another version")
        import onnxruntime

        if self.manifest.get("onnxruntime") != onnxruntime.__version__:
            # Its optimized graph may use fused operators of that release only.
            raise ValueError(f"{self.folder}: optimized by another onnxruntime release")
        for file, size in self.manifest.get("sizes", {}).items():
            if (self.folder / file).stat().st_size != size:  # cut short, say
                raise ValueError(f"{self.folder / file} is not the size it was written at")
        m = self.manifest
        self.name = m["name"]
        self.kind = m["kind"]
        self.image_dim = int(m["image_dim"])
        self.text_dim = int(m["text_dim"])
        p = m["preprocess"]
        self.preprocess = Preprocess(
            int(p["resize"]),
            int(p["crop"]),
            tuple(p["mean"]),
            tuple(p["std"]),
            int(p["resample"]),
            bool(p["stretch"]),
        )
        self._mean = np.asarray(p["mean"], np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(p["std"], np.float32).reshape(1, 3, 1, 1)
        t = m["tokenizer"]
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(
            int(t["max_length"]), direction=t.get("truncation_side", "right")
        )
        self.tokenizer.enable_padding(
            direction=t.get("padding_side", "right"),
            pad_id=int(t["pad_id"]),
            pad_token=t["pad_token"],
            length=t.get("pad_to"),
        )
        self.lowercase = bool(t.get("lowercase"))
        self.text_inputs = list(m["text_inputs"])
        self._sessions: dict[str, onnxruntime.InferenceSession] = {}
        if self.kind == "classifier":
            self.top_classes = int(m["top_classes"])
            self.temperature = float(m["temperature"])
            self.class_text_vectors = np.load(self.folder / "class_vectors.npy")

    def _session(self, tower: str) -> onnxruntime.InferenceSession:
        if tower not in self._sessions:
            try:
                self._sessions[tower] = session(self.folder / f"{tower}.onnx", self.threads)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds
                shutil.rmtree(self.folder, ignore_errors=True)
                raise ImgsearchError(
                    f"the query model in {self.folder} could not be read ({exc}) and is "
                    "removed: run the query again to make it anew"
                ) from None
        return self._sessions[tower]

    def tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self.lowercase:
            texts = [text.lower() for text in texts]
        encoded = self.tokenizer.encode_batch(texts)
        columns = {
            "input_ids": [e.ids for e in encoded],
            "attention_mask": [e.attention_mask for e in encoded],
            "token_type_ids": [e.type_ids for e in encoded],
        }
        return {name: np.asarray(columns[name], dtype=np.int64) for name in self.text_inputs}

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.text_dim), np.float32)
        (vectors,) = self._session("text").run(None, self.tokens(texts))
        return normalize(vectors)

    def normalized(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) or (H, W, 3) -> float32 (B, 3, H, W), as ``Preprocess.normalize``."""
        batch = np.asarray(pixels)
        if np.issubdtype(batch.dtype, np.floating) and batch.ndim == 4:
            return np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        batch = batch.transpose(0, 3, 1, 2).astype(np.float32)
        return np.ascontiguousarray((batch / np.float32(255.0) - self._mean) / self._std)

    def encode_images(self, pixels: np.ndarray) -> ImageEmbeddings:
        outputs = self._session("image").run(None, {"pixels": self.normalized(pixels)})
        if self.kind != "classifier":
            vectors = normalize(outputs[0])
            return ImageEmbeddings(image=vectors, text_space=vectors)
        features, logits = outputs
        # As OfflineModel.encode_images: softened probabilities of the top classes weight
        # their text vectors.
        probs = softmax(logits / np.float32(self.temperature))
        top = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_classes]
        top_p = np.take_along_axis(probs, top, axis=1)
        text_space = np.einsum("bk,bkd->bd", top_p, self.class_text_vectors[top])
        return ImageEmbeddings(
            image=normalize(features),
            text_space=normalize(text_space),
            class_probs=softmax(logits),
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


# --- choosing the model a query runs --------------------------------------------------


def query_model(name: str, files: list[Path] | None, load_torch) -> Model:  # noqa: ANN001
    """The model one query of ``name`` (read from ``files``) runs: its export (made now if
    there is none yet, from the float32 CPU model ``load_torch()`` gives), else that model."""
    missing = runtime_missing()
    if missing is not None:
        note(f"{missing}: queries load the model with torch, which takes seconds")
        return load_torch()
    loaded: list[Model] = []

    def reference() -> Model:
        loaded.append(load_torch())
        return loaded[-1]

    exported = prepare(name, files, reference)
    if exported is not None:
        return exported
    return loaded[-1] if loaded else load_torch()


def saved(name: str, files: list[Path] | None, threads: int = 1) -> OnnxModel | None:
    """The export of ``name`` (read from ``files``) on ``threads`` threads if one is saved and
    reads back, else None; nothing is made or removed."""
    if runtime_missing() is not None:
        return None
    folder = export_folder(name, files)
    if folder is None or not (folder / MANIFEST).is_file():
        return None
    try:
        return OnnxModel(folder, threads)
    except Exception:  # noqa: BLE001 - a damaged export: the torch model runs instead
        return None


def prepare(name: str, files: list[Path] | None, reference) -> OnnxModel | None:  # noqa: ANN001
    """The export of ``name`` (read from ``files``): read back, or made now from the float32
    CPU model ``reference()`` gives (loaded only then) unless an earlier try failed. None
    where the model cannot be exported here (said once, and remembered beside the export's
    folder), or where onnxruntime is missing."""
    if runtime_missing() is not None:
        return None
    folder = export_folder(name, files)
    if folder is None:
        return None  # not on this machine: the torch path says what is wrong
    if (folder / MANIFEST).is_file():
        try:
            return OnnxModel(folder)
        except Exception as exc:  # noqa: BLE001 - a damaged export is made again
            shutil.rmtree(folder, ignore_errors=True)
            note(f"the ONNX export in {folder} cannot be read ({exc}); making it again")
    if failure_file(folder).exists():
        return None  # said when the export failed
    model = reference()
    if str(getattr(model, "device", "cpu")) != "cpu" or model.precision != "float32":
        return None  # made from, and checked against, a float32 model on the CPU only
    start = time.perf_counter()
    try:
        export(model, folder)
        exported = OnnxModel(folder)
    except Exception as exc:  # noqa: BLE001 - any failure means: keep using torch
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        with contextlib.suppress(OSError):
            failure_file(folder).parent.mkdir(parents=True, exist_ok=True)
            failure_file(folder).write_text(reason + "\n", "utf-8")
        note(f"queries of {name} load torch, which takes seconds: it has no ONNX export ({reason})")
        return None
    note(f"made {name}'s query model (ONNX, once per model) in {time.perf_counter() - start:.1f} s")
    return exported


# --- exporting (torch) -------------------------------------------------------------------


def export(model: Model, folder: Path) -> None:
    """Write ``model``'s towers, tokenizer and manifest to ``folder``, checked against the
    model itself; written to a temporary folder and renamed, so a reader never sees half an
    export and two processes exporting at once both end with a whole one."""
    from imgsearch.models.checkpoint import FeaturesModel
    from imgsearch.models.offline import OfflineModel

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if isinstance(model, OfflineModel):
            manifest = _export_offline(model, tmp)
        elif isinstance(model, FeaturesModel):
            manifest = _export_features(model, tmp)
        else:
            raise NotExportable(f"no ONNX export for a {type(model).__name__}")
        p = model.preprocess
        manifest.update(
            version=EXPORT_VERSION,
            name=model.name,
            image_dim=model.image_dim,
            text_dim=model.text_dim,
            preprocess={
                "resize": p.resize,
                "crop": p.crop,
                "mean": list(p.mean),
                "std": list(p.std),
                "resample": int(p.resample),
                "stretch": p.stretch,
            },
        )
        import onnxruntime

        for tower in ("image.onnx", "text.onnx"):
            optimize(tmp / tower)
        manifest["onnxruntime"] = onnxruntime.__version__
        manifest["sizes"] = {
            p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.name != MANIFEST
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), "utf-8")
        check(model, OnnxModel(tmp))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / MANIFEST).is_file():  # not another process's whole export
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(model: Model, exported: OnnxModel, tolerance: float = TOLERANCE) -> None:
    """Raise unless ``exported`` gives ``model``'s text and image vectors to ``tolerance``
    on probe texts and seeded random images."""
    texts = np.abs(exported.encode_texts(PROBE_TEXTS) - model.encode_texts(PROBE_TEXTS)).max()
    crop = model.preprocess.crop
    pixels = np.random.default_rng(0).integers(0, 256, (2, crop, crop, 3), dtype=np.uint8)
    a, b = exported.encode_images(pixels), model.encode_images(pixels)
    images = max(
        np.abs(a.image - b.image).max(),
        np.abs(a.text_space - b.text_space).max(),
        0.0 if b.class_probs is None else np.abs(a.class_probs - b.class_probs).max(),
    )
    if not (texts <= tolerance and images <= tolerance):
        raise NotExportable(
            f"the export's vectors differ from the model's by {max(texts, images):.2g} "
            f"(texts {texts:.2g}, images {images:.2g}), more than {tolerance:g}"
        )


def _tokenizer(tokenizer, folder: Path, max_length: int, pad_to: int | None) -> dict:  # noqa: ANN001
    """Save a transformers tokenizer's ``tokenizers`` form; how it is padded and truncated
    goes to the manifest (set on the tokenizer when it is read back)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise NotExportable(f"its tokenizer ({type(tokenizer).__name__}) has no tokenizers form")
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    copy.save(str(folder / "tokenizer.json"))
    if tokenizer.pad_token_id is None:
        raise NotExportable("its tokenizer has no padding token")
    return {
        "max_length": int(max_length),
        "pad_to": pad_to,
        "pad_id": int(tokenizer.pad_token_id),
        "pad_token": str(tokenizer.pad_token),
        "padding_side": getattr(tokenizer, "padding_side", "right"),
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
    }


def _onnx_export(
    module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict
) -> None:  # noqa: ANN001
    import inspect

    import torch

    module = module.eval()  # export restores the mode it finds: eval, so no dropout after it
    # The TorchScript exporter (torch 2.9 made the dynamo one, which needs onnxscript, the
    # default): it traces these towers as they run.
    legacy = "dynamo" in inspect.signature(torch.onnx.export).parameters
    options = {"dynamo": False} if legacy else {}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            **options,
        )


def _export_offline(model: OfflineModel, folder: Path) -> dict:
    """EfficientNet-Lite0 (normalised batch -> pooled features, logits) and the sentence
    encoder (tokens -> mean of the token vectors under the attention mask)."""
    import torch

    class Image(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.net.forward_features(pixels)
            return features, self.net.classify(features).float()

    class Text(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN201
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    crop = model.preprocess.crop
    pixels = torch.zeros(2, 3, crop, crop)
    _onnx_export(
        Image(model.net),
        (pixels,),
        folder / "image.onnx",
        ["pixels"],
        ["features", "logits"],
        {"pixels": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    tokenizer, text_model = model.text_side()  # loaded only now: indexing needs no text side
    tokens = tokenizer(PROBE_TEXTS, padding=True, return_tensors="pt")
    _onnx_export(
        Text(text_model),
        tuple(tokens[n] for n in names),
        folder / "text.onnx",
        names,
        ["vectors"],
        {**{n: {0: "batch", 1: "tokens"} for n in names}, "vectors": {0: "batch"}},
    )
    np.save(folder / "class_vectors.npy", np.asarray(model.class_text_vectors, np.float32))
    return {
        "kind": "classifier",
        "top_classes": model.top_classes,
        "temperature": model.temperature,
        "text_inputs": names,
        "tokenizer": _tokenizer(tokenizer, folder, 128, None),
    }


def _export_features(model: FeaturesModel, folder: Path) -> dict:
    """A CLIP or SigLIP checkpoint's ``get_image_features`` and ``get_text_features``."""
    import torch

    if model.grid is not None:
        raise NotExportable("a NaFlex checkpoint's patches are not exported")

    class Image(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            out = self.inner.get_image_features(pixel_values=pixels)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    names = [n for n in ("input_ids", "attention_mask") if n in model.accepts]

    class Text(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
            out = self.inner.get_text_features(**dict(zip(names, tokens)))
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    if model.dtype != torch.float32:
        raise NotExportable("exported from a float32 model only")
    crop = model.preprocess.crop
    _onnx_export(
        Image(model.model),
        (torch.zeros(2, 3, crop, crop),),
        folder / "image.onnx",
        ["pixels"],
        ["vectors"],
        {"pixels": {0: "batch"}, "vectors": {0: "batch"}},
    )
    pad_to = model.max_tokens if model.pad_to_max else None
    tokens = model.tokens(PROBE_TEXTS)
    _onnx_export(
        Text(model.model),
        tuple(tokens[n] for n in names),
        folder / "text.onnx",
        names,
        ["vectors"],
        {**{n: {0: "batch", 1: "tokens"} for n in names}, "vectors": {0: "batch"}},
    )
    tokenizer = _tokenizer(model.tokenizer, folder, model.max_tokens, pad_to)
    tokenizer["lowercase"] = model.pad_to_max
    return {"kind": "features", "text_inputs": names, "tokenizer": tokenizer}
