"""Reduced precision on a CPU: chosen from the CPU's flags (float32 where it has no support),
forced either way by IMGSEARCH_PRECISION, recorded in the index, and close to float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imgsearch import ImgsearchError, Index, indexer
from imgsearch.models import load_model, precision
from imgsearch.models.precision import ENV, cpu_flags, cpu_precision
from tests.conftest import SAMPLES, sample

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_flags_are_read_from_cpuinfo() -> None:
    assert {"avx512_bf16", "avx512_vnni", "avx2"} <= cpu_flags(CPUINFO)
    assert cpu_flags("processor: 0\n") == frozenset()


@pytest.mark.parametrize(
    ("flags", "chosen"),
    [
        ({"sse2", "avx2"}, "float32"),  # no support: float32, as before
        ({"avx2", "avx512f", "avx512_bf16"}, "float32"),  # bf16 without AMX: slower, measured
        ({"avx2", "avx_vnni"}, "int8"),
        ({"avx512f", "avx512_vnni", "avx512_bf16"}, "int8"),  # this project's machine
        ({"avx512_vnni", "amx_bf16", "amx_tile"}, "bfloat16"),
    ],
)
def test_the_automatic_choice_follows_the_flags(flags: set[str], chosen: str) -> None:
    assert cpu_precision(frozenset(flags), env={}) == chosen
    assert cpu_precision(frozenset(flags), env={ENV: "auto"}) == chosen


def test_the_variable_overrides_it_and_a_wrong_value_is_one_line() -> None:
    vnni = frozenset({"avx512_vnni"})
    assert cpu_precision(vnni, env={ENV: "float32"}) == "float32"
    assert cpu_precision(frozenset(), env={ENV: "BFloat16"}) == "bfloat16"
    with pytest.raises(ImgsearchError, match="IMGSEARCH_PRECISION='fp8'"):
        cpu_precision(vnni, env={ENV: "fp8"})


def photos() -> np.ndarray:
    return np.stack([np.asarray(sample(n).resize((32, 32))) for n in SAMPLES])


@pytest.mark.parametrize("reduced", ["int8", "bfloat16"])
def test_reduced_precision_embeddings_are_within_cosine_0995_of_float32(
    reduced: str, tiny_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "float32")
    full = load_model(str(tiny_clip), torch.device("cpu"))
    monkeypatch.setenv(ENV, reduced)
    small = load_model(str(tiny_clip), torch.device("cpu"))
    assert (full.precision, small.precision) == ("float32", reduced)
    a, b = full.encode_images(photos()), small.encode_images(photos())
    assert (a.image * b.image).sum(axis=1).min() >= 0.995
    # The texts stay float32: the caption bank's cached vectors are the same.
    np.testing.assert_array_equal(full.encode_texts(["a cat"]), small.encode_texts(["a cat"]))


def test_a_cpu_without_support_keeps_float32_and_the_index_records_it(
    tmp_path: Path, tiny_clip: Path, small_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    sample("chelsea").save(folder / "cat.jpg")
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(indexer, "QUICK_RUN_FILES", 0)  # the torch model, not its export
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse2", "avx2"}))
    with Index.create(folder, tmp_path / "plain.db", str(tiny_clip), small_bank) as index:
        assert index.model.precision == "float32"
        index.add()
        assert "precision" not in index.store.meta()  # none recorded: float32, as before
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    with Index.create(folder, tmp_path / "fast.db", str(tiny_clip), small_bank) as index:
        index.add()  # the bank was cached: the model loads in the run, not in create
        assert index.model.precision == "int8"
        assert index.store.meta()["precision"] == "int8"
    with Index.open(tmp_path / "plain.db") as index:  # a later run records its own
        (folder / "dog.jpg").write_bytes((folder / "cat.jpg").read_bytes()[:-10] + b"0" * 10)
        index.add()
        assert index.store.meta()["precision"] == "int8"


def test_the_offline_model_keeps_float32_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its convolutions gain nothing, and bfloat16 missed the agreement on the dev sets."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_vnni", "amx_bf16"}))
    assert load_model("offline", torch.device("cpu")).precision == "float32"
    monkeypatch.setenv(ENV, "int8")
    assert load_model("offline", torch.device("cpu")).precision == "int8"
    assert precision.forced_precision({ENV: "auto"}) is None
    assert precision.forced_precision({ENV: "bfloat16"}) == "bfloat16"
