"""Queries that start at once: ONNX exports of the models, and the packaged caption vectors.

Each model's export gives the torch model's vectors to 1e-4 (the offline model with its real
weights, a tiny random CLIP and SigLIP); a text query and a query photo from outside the
index, in a fresh process, import neither torch nor transformers and rank as the torch path
does; without onnxruntime, or where a model cannot be exported, queries use torch, saying so
once. The offline model's packaged vectors of the default bank equal a fresh embedding, and
a file that fails its sha256 is refused and the texts embedded (with a progress bar).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from imgsearch.api import Index
from imgsearch.captions import DEFAULT_SETTINGS
from imgsearch.cli import main
from imgsearch.indexer import Embedding
from imgsearch.models import (
    load_model,
    load_query_model,
    one_thread,
    onnx_runtime,
    prepare_queries,
)
from imgsearch.models.clip import byte_level_vocab
from imgsearch.storage import Store
from tests.conftest import sample

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a photo of a cat", "A Tabby CAT, asleep on a red sofa!", "x", "word " * 300]
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
SMALL["num_hidden_layers"] = 2


@pytest.fixture(scope="module")
def offline_torch():
    return load_model("offline", torch.device("cpu"))


@pytest.fixture(scope="module")
def offline_onnx(offline_torch):
    """Exported into the session's cache, where the CLI tests below find it."""
    exported = prepare_queries(offline_torch)
    assert exported is not None
    return exported


def photo_pixels(model, names=("chelsea", "coffee", "rocket", "astronaut")) -> np.ndarray:
    return np.stack([model.preprocess(sample(name)) for name in names])


def assert_same_vectors(exported, model) -> None:
    np.testing.assert_allclose(exported.encode_texts(TEXTS), model.encode_texts(TEXTS), atol=1e-4)
    pixels = photo_pixels(model)
    a, b = exported.encode_images(pixels), model.encode_images(pixels)
    np.testing.assert_allclose(a.image, b.image, atol=1e-4)
    np.testing.assert_allclose(a.text_space, b.text_space, atol=1e-4)
    if b.class_probs is not None:
        np.testing.assert_allclose(a.class_probs, b.class_probs, atol=1e-4)
    assert exported.preprocess == model.preprocess
    assert (exported.image_dim, exported.text_dim) == (model.image_dim, model.text_dim)


def test_the_offline_export_gives_the_torch_vectors(offline_torch, offline_onnx) -> None:
    assert isinstance(offline_onnx, onnx_runtime.OnnxModel)
    assert_same_vectors(offline_onnx, offline_torch)
    np.testing.assert_array_equal(offline_onnx.class_text_vectors, offline_torch.class_text_vectors)


def test_a_clip_export_gives_the_torch_vectors(tiny_clip: Path) -> None:
    model = load_model(str(tiny_clip), torch.device("cpu"))
    exported = prepare_queries(model)
    assert isinstance(exported, onnx_runtime.OnnxModel)
    assert_same_vectors(exported, model)
    assert load_query_model(str(tiny_clip)).folder == exported.folder  # read back, not made


def save_siglip_with_fast_tokenizer(folder: Path) -> Path:
    """A tiny random SiglipModel whose tokenizer has a tokenizers form (as SigLIP 2's Gemma
    tokenizer has): texts lowercased and padded to the full length, as SigLIP's are."""
    from transformers import CLIPTokenizer, SiglipConfig, SiglipModel

    vocab = byte_level_vocab()
    text = {**SMALL, "vocab_size": len(vocab), "max_position_embeddings": 24}
    text.update(pad_token_id=513, eos_token_id=513, bos_token_id=512)
    vision = {**SMALL, "image_size": 32, "patch_size": 8}
    config = SiglipConfig(text_config=text, vision_config=vision)
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(folder)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    settings = {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    return folder


def test_a_siglip_export_pads_and_lowercases_as_siglip_does(tmp_path: Path) -> None:
    folder = save_siglip_with_fast_tokenizer(tmp_path / "siglip")
    model = load_model(str(folder), torch.device("cpu"))
    assert model.pad_to_max and model.preprocess.stretch
    exported = prepare_queries(model)
    assert isinstance(exported, onnx_runtime.OnnxModel)
    assert exported.tokens(["A CAT"])["input_ids"].shape == (1, 24)
    assert_same_vectors(exported, model)


# --- queries in a fresh process -------------------------------------------------------

CHILD = """
import json, sys
if sys.argv[1] == "no-onnxruntime":
    sys.modules["onnxruntime"] = None  # import onnxruntime now raises ImportError
from imgsearch.cli import main
try:
    main(sys.argv[2:], standalone_mode=False)
finally:
    loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    print("loaded:", json.dumps(loaded), file=sys.stderr)
"""


def child_query(*args: str, mode: str = "plain") -> tuple[list[dict], str, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, "query", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    return json.loads(done.stdout), done.stderr, json.loads(last.removeprefix("loaded: "))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, offline_onnx) -> tuple[Path, Path]:
    """An offline index of the sample photos (default bank), and a photo from outside it."""
    from tests.conftest import write_photos

    root = tmp_path_factory.mktemp("library")
    write_photos(root / "photos")
    result = CliRunner().invoke(main, ["index", str(root / "photos"), "--model", "offline", "-q"])
    assert result.exit_code == 0, result.output
    outside = root / "outside.jpg"
    sample("coffee").crop((100, 50, 500, 350)).save(outside, quality=90)
    return root / "photos" / ".imgsearch" / "index.db", outside


def torch_hits(db: Path, model, text: str | None = None, image: Path | None = None) -> list:
    with Index(Store.open(db), model=model) as index:
        return index.query_text(text, k=8) if text else index.query(image, k=8)


def assert_same_ranking(hits: list[dict], expected: list) -> None:
    assert [h["path"] for h in hits] == [h.path for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-4)


def test_text_and_outside_photo_queries_load_no_torch(library, offline_torch) -> None:
    db, outside = library
    hits, _, loaded = child_query("--text", "a cat", "--db", str(db), "-k", "8")
    assert loaded == []
    assert_same_ranking(hits, torch_hits(db, offline_torch, text="a cat"))
    hits, _, loaded = child_query(str(outside), "--db", str(db), "-k", "8")
    assert loaded == []
    assert_same_ranking(hits, torch_hits(db, offline_torch, image=outside))


def test_without_onnxruntime_queries_use_torch_and_say_so(library, offline_torch) -> None:
    db, _ = library
    hits, stderr, loaded = child_query(
        "--text", "a cat", "--db", str(db), "-k", "8", mode="no-onnxruntime"
    )
    assert "onnxruntime is not installed: queries load the model with torch" in stderr
    assert "torch" in loaded
    assert_same_ranking(hits, torch_hits(db, offline_torch, text="a cat"))


def test_a_failed_export_is_said_once_and_remembered(
    tiny_clip: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("IMGSEARCH_CACHE_DIR", str(tmp_path))  # no export made yet
    tries = []

    def failing(model, folder):  # noqa: ANN001
        tries.append(folder)
        raise onnx_runtime.NotExportable("no such operator")

    monkeypatch.setattr(onnx_runtime, "export", failing)
    model = load_query_model(str(tiny_clip))
    assert not isinstance(model, onnx_runtime.OnnxModel)
    assert "has no ONNX export (NotExportable: no such operator)" in capsys.readouterr().err
    assert onnx_runtime.failure_file(tries[0]).is_file()
    assert not isinstance(load_query_model(str(tiny_clip)), onnx_runtime.OnnxModel)
    assert len(tries) == 1  # not tried again
    assert load_query_model(str(tiny_clip), device="cpu") is model  # torch, loaded once


def test_a_single_query_runs_torch_on_one_thread(tmp_path: Path) -> None:
    seen = []

    class Counting:
        name, text_dim = "counting", 4

        def encode_texts(self, texts: list[str]) -> np.ndarray:
            seen.append(torch.get_num_threads())
            return np.ones((len(texts), 4), np.float32) / 2

    torch.set_num_threads(2)
    embedding = Embedding("counting", DEFAULT_SETTINGS, None, model=Counting())
    embedding.encode_text("a cat")
    assert seen == [1] and torch.get_num_threads() == 2  # and back for batch work
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_a_damaged_export_is_made_again(tiny_clip: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("IMGSEARCH_CACHE_DIR", str(tmp_path))
    first = load_query_model(str(tiny_clip))
    assert isinstance(first, onnx_runtime.OnnxModel)
    text = first.folder / "text.onnx"
    text.write_bytes(text.read_bytes()[:100])  # a copy cut short
    again = load_query_model(str(tiny_clip))
    assert isinstance(again, onnx_runtime.OnnxModel) and again.folder == first.folder
    assert "cannot be read" in capsys.readouterr().err
    np.testing.assert_allclose(again.encode_texts(TEXTS), first.encode_texts(TEXTS), atol=1e-6)


def test_an_int8_indexing_model_is_exported_from_a_float32_copy(
    tiny_clip: Path, tmp_path: Path, monkeypatch
) -> None:
    """Where the CPU runs images faster in int8, the indexing run's model is int8; queries
    run float32 (the export, or torch without one), made from and checked against float32."""
    monkeypatch.setenv("IMGSEARCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("IMGSEARCH_PRECISION", "int8")
    indexing = load_model(str(tiny_clip), torch.device("cpu"))
    assert indexing.precision == "int8"
    exported = prepare_queries(indexing)
    assert isinstance(exported, onnx_runtime.OnnxModel)
    assert os.environ["IMGSEARCH_PRECISION"] == "int8"  # left as it was
    monkeypatch.setenv("IMGSEARCH_PRECISION", "float32")
    assert_same_vectors(exported, load_model(str(tiny_clip), torch.device("cpu")))


def test_a_short_run_embeds_with_the_saved_export_and_never_imports_torch(
    tmp_path: Path, tiny_clip: Path, small_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few new photos indexed by the CLI on a CPU: the model's export, saved by an earlier
    run or query, embeds them; torch and transformers are never imported (seconds saved).
    The vectors are the torch model's to float32 rounding, and the index records float32."""
    from imgsearch import indexer, models

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        sample(name).save(folder / f"{name}.jpg")
    load_query_model(str(tiny_clip))  # the export is saved (made now, where no test made it)
    with Index.create(folder, tmp_path / "torch.db", str(tiny_clip), small_bank) as index:
        index.embedding.model  # noqa: B018 - loaded: this run is the torch model's
        index.add()
        _, paths, want = index.store.vectors("image_vector")
    quick = tmp_path / "quick.db"
    Index.create(folder, quick, str(tiny_clip), small_bank).close()
    script = (
        "import sys\nfrom imgsearch.cli import main\n"
        f"sys.argv = ['imgsearch', 'index', {str(folder)!r}, '--db', {str(quick)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stdout + out.stderr
    with Index.open(quick) as index:
        _, quick_paths, got = index.store.vectors("image_vector")
        assert index.store.meta().get("precision", "float32") == "float32"
        assert index.store.count() == 3
    assert quick_paths == paths
    assert (np.sum(want * got, axis=1) > 0.9999).all()

    # Where this process has the torch model loaded already (here, by the first index),
    # a short run is the model's too: the export would only be slower.
    with Index.create(folder, tmp_path / "again.db", str(tiny_clip), small_bank) as index:
        index.add()
        assert index.embedding.ran_with is index.embedding.model
        _, _, again = index.store.vectors("image_vector")
    assert np.array_equal(again, want)

    # A run of QUICK_RUN_FILES files or more is the torch model's.
    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    monkeypatch.setattr(indexer, "QUICK_RUN_FILES", 3)
    with Index.create(folder, tmp_path / "long.db", str(tiny_clip), small_bank) as index:
        index.add()
    assert loads
