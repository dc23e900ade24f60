"""Choosing a model and device, and embedding a caption bank only once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from imgsearch import ImgsearchError, Index
from imgsearch.models import load_model, pick_device
from imgsearch.models.offline import OfflineModel


def test_unreachable_hub_falls_back_to_offline_within_seconds(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    said: list[str] = []
    start = time.perf_counter()
    model = load_model(None, torch.device("cpu"), said.append)
    assert time.perf_counter() - start < 30
    assert model.name == "offline"
    assert len(said) == 1 and "\n" not in said[0]
    line = said[0]
    assert line.startswith("using the offline model, which recognises only the 1000 ImageNet")
    assert "the Hugging Face hub cannot be reached" in line  # why
    assert "a local checkpoint folder with --model FOLDER" in line  # CLIP with no network
    assert "Hugging Face cache" in line and "HF_HOME" in line


def test_a_named_clip_that_cannot_be_had_is_a_clear_error() -> None:
    with pytest.raises(ImgsearchError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        load_model("someone/no-such-clip", torch.device("cpu"))


def test_device_choice() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ImgsearchError, match="no CUDA GPU"):
            pick_device("cuda")


def test_the_caption_bank_is_embedded_once_per_model_and_bank(
    tmp_path: Path, small_bank: Path, monkeypatch, cache_dir: Path
) -> None:
    monkeypatch.setenv("IMGSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[int] = []
    real = OfflineModel.encode_texts

    def counting(self, texts):
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(OfflineModel, "encode_texts", counting)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Index.create(tmp_path / "a", model="offline", captions=small_bank).close()
    assert sum(calls) == len(small_bank.read_text().splitlines())
    assert len(list((tmp_path / "cache").glob("text-*.npy"))) == 1
    Index.create(tmp_path / "b", model="offline", captions=small_bank).close()
    assert sum(calls) == len(small_bank.read_text().splitlines())  # read back, not embedded
