"""A first index starts on its photos at once: the offline model's vectors of the default
caption bank (and of its class prompts) ship with the package, checked by sha256; any other
bank is embedded with a progress bar; the summary's time is the whole run."""

from __future__ import annotations

import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from imgsearch.captions import read_bank
from imgsearch.cli import main
from imgsearch.indexer import new_bank
from imgsearch.models import load_model, packaged
from imgsearch.models.base import cached_text_vectors
from imgsearch.models.offline import class_prompts


@pytest.fixture(scope="module")
def offline_torch():
    return load_model("offline", torch.device("cpu"))


def test_packaged_vectors_match_a_fresh_embedding(offline_torch) -> None:
    for texts in (read_bank(None)[1], class_prompts()):
        vectors = packaged.packaged_text_vectors("offline", texts)
        assert vectors is not None and vectors.shape == (len(texts), 384)
        picked = list(range(0, len(texts), 20))  # a sample: all 7,197 take minutes here
        fresh = offline_torch.encode_texts([texts[i] for i in picked])
        assert np.sum(fresh * vectors[picked], axis=1).min() > 0.999
    files = packaged.read_manifest()["files"]
    sizes = [(packaged.data_folder() / f["file"]).stat().st_size for f in files]
    assert sum(sizes) < 6e6


def test_a_new_default_bank_is_read_not_embedded(offline_torch, monkeypatch) -> None:
    def refuse(texts: list[str]) -> np.ndarray:
        raise AssertionError(f"embedded {len(texts)} texts")

    monkeypatch.setattr(offline_torch, "encode_texts", refuse)
    name, bank = new_bank(offline_torch, None, progress=True)
    assert name == "default" and bank.vectors.shape == (len(read_bank(None)[1]), 384)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeOffline:
    """Texts to seeded unit vectors, counted: a bank embedded without the model's minutes."""

    name, text_dim = "offline", 384

    def __init__(self) -> None:
        self.embedded = 0

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.embedded += len(texts)
        vectors = np.random.default_rng(len(texts)).normal(size=(len(texts), 384))
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_a_tampered_file_is_refused_and_the_bank_embedded(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for path in packaged.data_folder().glob("offline-*"):
        shutil.copy(path, data)
    texts = read_bank(None)[1]
    assert packaged.packaged_text_vectors("offline", texts, data) is not None
    assert packaged.packaged_text_vectors("clip", texts, data) is None  # another model's
    target = data / "offline-captions.f16.npy"
    changed = bytearray(target.read_bytes())
    changed[-1] ^= 1
    target.write_bytes(bytes(changed))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert packaged.packaged_text_vectors("offline", texts, data) is None
    assert "does not match its recorded sha256" in terminal.getvalue()
    monkeypatch.setenv("IMGSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(packaged, "data_folder", lambda: data)
    model = FakeOffline()
    vectors = cached_text_vectors(model, texts, progress=True)
    assert model.embedded == len(texts) and vectors.shape == (len(texts), 384)
    assert "embedding captions" in terminal.getvalue()  # the bar, on a terminal


def test_vectors_of_other_weights_are_not_used(tmp_path: Path) -> None:
    for path in packaged.data_folder().glob("offline-*"):
        shutil.copy(path, tmp_path)
    manifest = json.loads((tmp_path / packaged.MANIFEST).read_text())
    manifest["weights_version"] = "0.0.0-other"
    (tmp_path / packaged.MANIFEST).write_text(json.dumps(manifest))
    assert packaged.packaged_text_vectors("offline", class_prompts(), tmp_path) is None


def test_the_index_summary_times_the_whole_run(photos: Path, small_bank: Path, monkeypatch):
    import imgsearch.api as api

    real = api._new_index

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003
        time.sleep(1.0)  # as a model load and a bank embedding take
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "_new_index", slow)
    args = ["index", str(photos), "--model", "offline", "--captions", str(small_bank), "--json"]
    result = CliRunner().invoke(main, [*args, "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["seconds"] >= 1.0
