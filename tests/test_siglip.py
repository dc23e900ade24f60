"""SigLIP and SigLIP 2 through the model registry, with tiny random models built offline.

No SigLIP weights can be had without the hub: each test model is a SiglipModel or a
Siglip2Model (NaFlex) made from a small config with seeded random weights, with a real
SentencePiece tokenizer trained here on a few lines of text and saved with the model's
own processor, so the folder is what ``save_pretrained`` of a real checkpoint gives.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imgsearch import ImgsearchError, config, scoring
from imgsearch.cli import main
from imgsearch.models import BACKENDS, backend, family, load_model, model_id, preprocess_for
from tests.conftest import sample

LINES = [
    "a photo of a cat",
    "a cup of coffee on a table",
    "a rocket on a launch pad",
    "an astronaut in a space suit",
    "a man with a camera",
    "a pile of coins",
    "a horse in a field",
    "stars in the night sky",
]
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
SMALL["num_hidden_layers"] = 2


def sentencepiece_model(folder: Path) -> Path:
    """A unigram SentencePiece model trained on LINES: SigLIP's kind of tokenizer."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(LINES * 4),
        model_writer=out,
        vocab_size=64,
        hard_vocab_limit=False,  # as many pieces as the few lines give
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    path = folder / "spiece.model"
    path.write_bytes(out.getvalue())
    return path


def save_random_siglip(folder: Path, kind: str, seed: int = 0) -> Path:
    """A seeded random SiglipModel ("siglip": 32 px images, 8 px patches) or Siglip2Model
    ("siglip2": NaFlex, at most 16 patches of 8 px), with its tokenizer and processor."""
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessorPil,
        Siglip2Model,
        Siglip2Processor,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
        SiglipProcessor,
        SiglipTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = SiglipTokenizer(vocab_file=str(sentencepiece_model(folder)))
    text = {**SMALL, "vocab_size": len(tokenizer), "max_position_embeddings": 64}
    text.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if kind == "siglip":
        model = SiglipModel(
            SiglipConfig(
                text_config=text, vision_config={**SMALL, "image_size": 32, "patch_size": 8}
            )
        )
        images = SiglipImageProcessorPil(size={"height": 32, "width": 32})
        processor = SiglipProcessor(image_processor=images, tokenizer=tokenizer)
    else:
        vision = {**SMALL, "num_patches": 16, "patch_size": 8}
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
        images = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)
        processor = Siglip2Processor(image_processor=images, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def tiny_siglip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_siglip(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


def reference_features(folder: Path, images: list[Image.Image], texts: list[str]):
    """transformers' own unit vectors: the checkpoint's processor, then its model."""
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    pixels = processor.image_processor(images=images, return_tensors="pt")
    tokens = processor(text=texts, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(**pixels).pooler_output
        text = model.get_text_features(**tokens).pooler_output
    unit = torch.nn.functional.normalize
    return unit(image, dim=-1).numpy(), unit(text, dim=-1).numpy()


def test_vectors_match_transformers_own_features(tiny_siglip: Path) -> None:
    model = load_model(str(tiny_siglip), torch.device("cpu"))
    # Square photos: a NaFlex model sees exactly its processor's patches then (a photo of
    # another shape is stretched to the square here, where its processor keeps the shape).
    images = [sample(name).resize((120, 120)) for name in ("chelsea", "coffee")]
    if model.grid is None:  # SigLIP resizes any photo to its square, as here
        images.append(sample("rocket"))
    texts = ["a photo of a cat", "A cup of coffee", "something it never saw"]
    image, text = reference_features(tiny_siglip, images, texts)
    ours = model.encode_images(np.stack([model.preprocess(i) for i in images]))
    np.testing.assert_allclose(ours.image, image, atol=1e-5)
    np.testing.assert_allclose(ours.text_space, image, atol=1e-5)
    np.testing.assert_allclose(model.encode_texts(texts), text, atol=1e-5)
    assert model.image_dim == model.text_dim == 32


def test_preprocessing_is_the_checkpoints_own(tiny_siglip: Path) -> None:
    model = load_model(str(tiny_siglip), torch.device("cpu"))
    expected = (0.5, 0.5, 0.5)
    assert model.preprocess.stretch and model.preprocess.crop == 32  # the whole photo, no crop
    assert model.preprocess.mean == model.preprocess.std == expected
    assert preprocess_for(str(tiny_siglip)) == model.preprocess  # from the config alone
    crop = model.preprocess(sample("rocket"))  # 512 x 427: squeezed, nothing cut off
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8


def test_siglip_is_its_own_family(tiny_siglip: Path) -> None:
    assert backend(str(tiny_siglip)).name == "siglip" and family(str(tiny_siglip)) == "siglip"
    assert model_id(str(tiny_siglip)) == str(tiny_siglip.resolve())
    hub_id = "google/siglip2-base-patch16-224"  # not downloaded: known by its name
    assert family(hub_id) == "siglip" and model_id(hub_id) == hub_id
    assert family("openai/clip-vit-base-patch32") == "clip" and family("offline") == "offline"


def test_every_family_has_its_thresholds() -> None:
    for found in BACKENDS:
        assert found.family in config.GRAPH_TAU and found.family in config.DUPLICATE_THRESHOLD
        for name in scoring.names(ranking=False):
            assert found.family in scoring.get(name).tau, (name, found.family)


def test_a_siglip_that_cannot_be_had_is_a_clear_error() -> None:
    with pytest.raises(ImgsearchError, match="^SigLIP 'google/siglip2-base-patch16-224' is not "):
        load_model("google/siglip2-base-patch16-224", torch.device("cpu"))


def test_a_checkpoint_without_image_features_is_a_clear_error(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**SMALL, vocab_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ImgsearchError, match="holds a BertModel, which has no image and text"):
        load_model(str(tmp_path / "bert"), torch.device("cpu"))


def run(*args: str):
    done = CliRunner().invoke(main, list(args))
    assert done.exit_code == 0, done.output
    return done


def test_index_and_query_with_a_siglip_folder(
    photos: Path, small_bank: Path, tiny_siglip: Path
) -> None:
    args = ["index", str(photos), "--model", str(tiny_siglip), "--captions", str(small_bank)]
    done = run(*args, "--top-n", "5", "--json", "-q")
    assert json.loads(done.stdout)["added"] == 8
    db = str(photos / ".imgsearch" / "index.db")
    status = json.loads(run("status", "--db", db, "--json").stdout)
    assert status["model"] == str(tiny_siglip.resolve()) and status["images"] == 8
    assert status["tau"]["image"] == scoring.get("image").tau["siglip"]  # SigLIP's defaults
    names = {p.name for p in photos.glob("*.jpg")}
    for query in (["--text", "a cup of coffee"], [str(photos / "coffee.jpg")]):
        hits = json.loads(run("query", *query, "-k", "8", "--db", db, "--json").stdout)
        assert {Path(h["path"]).name for h in hits} <= names and len(hits) >= 7
        scores = [h["score"] for h in hits]
        assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True)
    text = run("query", "--text", "a photo of a cat", "-k", "3", "--db", db).stdout.splitlines()
    assert len(text) == 3 and all(Path(line.split("  ", 1)[1]).exists() for line in text)
    captions = json.loads(run("captions", str(photos / "coffee.jpg"), "--db", db, "--json").stdout)
    assert len(captions) == 5 and {c["caption"] for c in captions} <= set(
        small_bank.read_text().splitlines()
    )
