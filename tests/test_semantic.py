"""The real offline model with the packaged caption bank: does it see what is in a photo?"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imgsearch import Index
from imgsearch.colours import COLOUR_CAPTIONS
from tests.conftest import sample, write_photos


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Index:
    root = tmp_path_factory.mktemp("library")
    write_photos(root)
    index = Index.create(root, model="offline")  # the default, packaged caption bank
    assert index.add().added == 8
    return index


def test_the_cat_photo_gets_cat_captions(library: Index) -> None:
    captions = library.captions(library.root / "chelsea.jpg")
    assert len(captions) == 20
    # The model's own captions name the cat; the colours its pixels prove come in among them
    # (imgsearch.colours): the tabby is a brown object, and nothing else is claimed for it.
    seen = [c.text for c in captions if c.text not in COLOUR_CAPTIONS]
    assert all("cat" in text for text in seen[:5])
    assert "a brown object" in [c.text for c in captions[:5]]
    assert {c.text for c in captions} & set(COLOUR_CAPTIONS) <= {"a brown object", "a brown photo"}
    assert captions == sorted(captions, key=lambda c: -c.score)


def test_a_crop_of_the_cat_finds_the_cat_first(library: Index, tmp_path: Path) -> None:
    crop = tmp_path / "crop.jpg"
    sample("chelsea").crop((50, 20, 350, 280)).save(crop)
    hits = library.query(crop, k=8, explain=True)
    names = [Path(h.path).name for h in hits]
    assert names[0] == "chelsea.jpg"
    assert names.index("chelsea.jpg") < names.index("coffee.jpg")
    assert names.index("chelsea.jpg") < names.index("rocket.jpg")
    assert any("cat" in caption for caption in hits[0].shared)


def test_a_pil_image_queries_like_a_file(library: Index) -> None:
    image = sample("coffee").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    hits = library.query(image, k=1)
    assert Path(hits[0].path).name == "coffee.jpg"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a photo of a cat", "chelsea.jpg"),
        ("a cup of coffee", "coffee.jpg"),
        ("a rocket", "rocket.jpg"),
    ],
)
def test_text_queries(library: Index, text: str, expected: str) -> None:
    assert Path(library.query_text(text, k=1)[0].path).name == expected
