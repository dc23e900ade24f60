"""Colours read from pixels: generated photos of known colour, the offline model's captions
and the command line on a folder of coloured photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgsearch.captions import CaptionBank
from imgsearch.colours import (
    BLACK_AND_WHITE,
    COLOUR_CAPTIONS,
    object_caption,
    photo_caption,
    read_colours,
)
from imgsearch.indexer import COLOUR_GAIN, pixel_colour_ids, with_colours
from tests.test_cli import run

SOLID = {
    "red": (200, 30, 35),
    "orange": (245, 140, 20),
    "yellow": (250, 220, 30),
    "green": (40, 150, 50),
    "blue": (30, 60, 200),
    "purple": (120, 40, 140),
    "pink": (250, 170, 200),
    "brown": (110, 65, 30),
    "beige": (220, 200, 160),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "black": (15, 15, 15),
}


def solid(rgb: tuple[int, int, int], size: int = 224) -> np.ndarray:
    return np.full((size, size, 3), rgb, np.uint8)


def subject_on(
    colour: tuple[int, int, int], background: tuple[int, int, int], size: int = 224
) -> Image.Image:
    """A filled ellipse (the subject) in the middle of a plain, contrasting background."""
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).ellipse((size * 0.25, size * 0.2, size * 0.75, size * 0.8), colour)
    return image


@pytest.mark.parametrize("name", list(SOLID))
def test_a_solid_photo_has_its_colour(name: str) -> None:
    reading = read_colours(solid(SOLID[name]))
    assert (reading.subject, reading.photo) == (name, name)
    assert reading.subject_share == pytest.approx(1.0)
    captions = dict(reading.captions())
    if name in ("white", "grey", "black"):
        assert BLACK_AND_WHITE in captions and object_caption(name) not in captions
    else:
        assert captions[object_caption(name)] == pytest.approx(1.0)
        assert captions[photo_caption(name)] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("subject", "background"),
    [("yellow", "blue"), ("red", "white"), ("blue", "beige"), ("green", "black")],
)
def test_a_coloured_subject_on_a_contrasting_background(subject: str, background: str) -> None:
    image = subject_on(SOLID[subject], SOLID[background])
    reading = read_colours(np.asarray(image))
    assert reading.subject == subject and reading.subject_share > 0.9
    # The ellipse is under half the photo: the photo's own colour is the background's.
    assert reading.photo == background
    captions = dict(reading.captions())
    assert object_caption(subject) in captions and photo_caption(background) in captions


def test_a_grey_photo_is_black_and_white_and_a_faint_tint_is_not() -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (224, 224, 1), dtype=np.uint8), 3, axis=2)
    reading = read_colours(grey)
    assert reading.black_and_white == pytest.approx(1.0)
    assert reading.captions()[0][0] == BLACK_AND_WHITE
    assert not any(text.endswith("object") for text, _ in reading.captions())
    tinted = np.asarray(subject_on(SOLID["red"], (128, 128, 128)))
    assert BLACK_AND_WHITE not in dict(read_colours(tinted).captions())


def test_bright_and_dark_photos() -> None:
    assert dict(read_colours(solid((250, 250, 240))).captions())["a bright photo"] > 0.9
    assert dict(read_colours(solid((20, 25, 60))).captions())["a dark photo"] > 0.9


def test_a_weak_colour_is_not_claimed() -> None:
    """Four colours in equal quarters: no colour covers enough to be proven."""
    image = np.zeros((224, 224, 3), np.uint8)
    image[:112, :112], image[:112, 112:] = SOLID["red"], SOLID["green"]
    image[112:, :112], image[112:, 112:] = SOLID["blue"], SOLID["yellow"]
    captions = dict(read_colours(image).captions())
    assert not any(text.endswith(("object", "photo")) and "bright" not in text for text in captions)


def test_proven_colours_replace_the_weakest_captions_on_the_image_scale() -> None:
    texts = [f"caption {i}" for i in range(30)] + list(COLOUR_CAPTIONS)
    colour_ids = {t: texts.index(t) for t in COLOUR_CAPTIONS}
    yellow = colour_ids["a yellow object"]
    # The model's own matches: 30 plain captions and one colour caption it "saw" by itself.
    ids = np.array([colour_ids["a red object"], *range(30)])
    scores = np.array([0.9, *np.linspace(0.8, 0.5, 30)], np.float32)
    reading = read_colours(solid(SOLID["yellow"]))
    kept, kept_scores = with_colours(reading, scores, ids, colour_ids, n=10)
    assert len(kept) == 10 and kept_scores == sorted(kept_scores, reverse=True)
    assert colour_ids["a red object"] not in kept  # the model cannot see colour
    best, worst = 0.8, float(scores[10])  # the own top 10 once the colour caption is out
    expected = worst + COLOUR_GAIN * (best - worst)  # full strength
    assert yellow in kept and kept_scores[kept.index(yellow)] == pytest.approx(expected)
    assert kept[0] == yellow  # a clear colour leads the image's captions
    own = [i for i in kept if i < 30]
    assert own == list(range(len(own))) and len(own) == 10 - len(reading.captions())


def test_only_a_bank_with_the_colour_captions_gets_them() -> None:
    class Offline:
        name = "offline"

    def bank(texts: list[str]) -> CaptionBank:
        return CaptionBank(texts, np.eye(len(texts), 8, dtype=np.float32))

    old = ["a photo of a cat", "a dark photo", "a black and white photo"]  # the old bank's
    assert pixel_colour_ids(Offline(), bank(old)) == {}
    new = bank([*old[:1], *COLOUR_CAPTIONS])
    assert len(pixel_colour_ids(Offline(), new)) == len(COLOUR_CAPTIONS)

    class Clip:
        name = "openai/clip-vit-base-patch32"

    assert pixel_colour_ids(Clip(), new) == {}


@pytest.fixture
def colour_bank(tmp_path: Path) -> Path:
    path = tmp_path / "colour-captions.txt"
    plain = ["a photo of a ball", "a photo of a plate", "a photo of a shirt", "a photo of a cup"]
    path.write_text("\n".join([*plain, *COLOUR_CAPTIONS]) + "\n")
    return path


def test_cli_text_query_finds_the_yellow_photos_and_explains_why(
    tmp_path: Path, colour_bank: Path
) -> None:
    folder = tmp_path / "coloured"
    folder.mkdir()
    photos = {
        "yellow-on-blue": ("yellow", "blue"),
        "yellow-on-white": ("yellow", "white"),
        "red-on-white": ("red", "white"),
        "blue-on-beige": ("blue", "beige"),
        "green-on-black": ("green", "black"),
        "pink-on-grey": ("pink", "grey"),
    }
    for name, (subject, background) in photos.items():
        subject_on(SOLID[subject], SOLID[background], 300).save(folder / f"{name}.png")
    done = run("index", str(folder), "--model", "offline", "--captions", str(colour_bank), "-q")
    assert done.exit_code == 0, done.output
    found = run("query", "--text", "a yellow object", "-k", "6", "--json", cwd=folder)
    assert found.exit_code == 0, found.output
    ranked = [Path(h["path"]).stem for h in json.loads(found.stdout)]
    assert set(ranked[:2]) == {"yellow-on-blue", "yellow-on-white"}, ranked
    explained = run("query", "--text", "a yellow object", "-k", "2", "--explain", cwd=folder)
    assert explained.exit_code == 0, explained.output
    assert explained.stdout.count("shares:") == 2
    assert all("a yellow object" in line for line in explained.stdout.splitlines()[1::2])
