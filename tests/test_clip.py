"""The CLIP path with a tiny random CLIP: transformers' own vectors, the offline pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from transformers import CLIPModel, CLIPTokenizer

from imgsearch import Index
from imgsearch.cli import main
from imgsearch.models import load_model
from tests.conftest import sample


def test_vectors_match_transformers_own_features(tiny_clip: Path) -> None:
    model = load_model(str(tiny_clip), torch.device("cpu"))
    reference = CLIPModel.from_pretrained(tiny_clip).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip)
    images = [sample("chelsea"), sample("coffee")]
    crops = np.stack([model.preprocess(image) for image in images])
    ours = model.encode_images(crops)
    pixels = model.preprocess.normalize(crops)
    with torch.no_grad():
        out = reference.get_image_features(pixel_values=pixels)
        theirs = out if isinstance(out, torch.Tensor) else out.pooler_output
        theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy()
    np.testing.assert_allclose(ours.image, theirs, atol=1e-5)
    np.testing.assert_allclose(ours.text_space, theirs, atol=1e-5)
    texts = ["a photo of a cat", "a cup of coffee on a table"]
    with torch.no_grad():
        out = reference.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
        theirs = out if isinstance(out, torch.Tensor) else out.pooler_output
        theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy()
    np.testing.assert_allclose(model.encode_texts(texts), theirs, atol=1e-5)
    assert model.image_dim == model.text_dim == 16


def test_preprocessing_matches_the_checkpoint_image_processor(tiny_clip: Path) -> None:
    from transformers import AutoImageProcessor

    model = load_model(str(tiny_clip), torch.device("cpu"))
    processor = AutoImageProcessor.from_pretrained(tiny_clip)
    image = sample("astronaut")
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = model.preprocess.normalize(model.preprocess(image))[0]
    assert torch.allclose(ours, expected, atol=1e-4)


def test_index_and_query_with_a_clip_folder(photos: Path, small_bank: Path, tiny_clip: Path):
    runner = CliRunner()
    done = runner.invoke(
        main,
        [
            "index",
            str(photos),
            "--model",
            str(tiny_clip),
            "--captions",
            str(small_bank),
            "--top-n",
            "5",
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["added"] == 8
    index = Index.open(photos / ".imgsearch" / "index.db")
    assert index.model_name == str(tiny_clip.resolve())
    record = index.store.get(path="coffee.jpg")
    assert record.image_vector.shape == (16,) and len(record.caption_ids) == 5
    hits = index.query(photos / "coffee.jpg", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[-1].score
    assert index.query_text("a cup of coffee", k=2)
