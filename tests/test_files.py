"""Walking folders and decoding images: which files count, and how bad ones fail."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch.files import BadImage, decode, walk
from tests.conftest import sample


def test_walk_finds_images_by_suffix_in_any_case_and_skips_the_rest(tmp_path: Path) -> None:
    img = sample("coffee").resize((40, 30))
    for name in ["a.jpg", "b.JPEG", "c.png", "d.WebP", "e.bmp", "f.gif", "g.TIF", "h.tiff"]:
        img.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.jpg").write_bytes((tmp_path / "a.jpg").read_bytes())
    (tmp_path / ".cache").mkdir()
    img.save(tmp_path / ".cache" / "x.jpg")
    (tmp_path / "album.jpg").mkdir()  # a folder named like an image is a folder
    img.save(tmp_path / "album.jpg" / "inside.png")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    img.save(tmp_path / "deep" / "er" / "z.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    os.symlink(tmp_path, tmp_path / "deep" / "loop")  # a loop, if links were followed

    found = sorted(f.path for f in walk(tmp_path))
    assert found == sorted(
        [
            "a.jpg",
            "b.JPEG",
            "c.png",
            "d.WebP",
            "e.bmp",
            "f.gif",
            "g.TIF",
            "h.tiff",
            "album.jpg/inside.png",
            "deep/er/z.jpg",
        ]
    )


def test_decode_applies_exif_orientation(tmp_path: Path) -> None:
    image = sample("rocket").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    decoded = decode(path)
    assert decoded.image.size == (200, 300)
    assert (decoded.width, decoded.height) == (200, 300)


def test_draft_decode_keeps_the_short_side_at_least_the_model_input(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    sample("astronaut").resize((4000, 3000)).save(path, quality=90)
    decoded = decode(path, min_side=224)
    assert (decoded.width, decoded.height) == (4000, 3000)  # the file's real size is recorded
    assert 224 <= min(decoded.image.size) < 3000 / 4  # decoded at 1/8 scale
    assert decode(path).image.size == (4000, 3000)


def test_transparent_png_is_flattened_on_white(tmp_path: Path) -> None:
    path = tmp_path / "logo.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(path)
    assert decode(path).image.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is text, not pixels", "not an image"),
    ],
)
def test_bad_files_raise_a_one_line_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        decode(path)


def test_truncated_jpeg_is_rejected(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    sample("chelsea").save(buffer, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImage, match="corrupt"):
        decode(path)


def test_decompression_bomb_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 MP in a few kilobytes
    assert path.stat().st_size < 1_000_000
    with pytest.raises(BadImage, match="decompression bomb"):
        decode(path)


def _jpeg(image: Image.Image, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("min_side", [0, 224, 100])
def test_opencvs_reduced_decode_gives_pillows_draft_pixels_upright(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orientation: int, grey: bool, min_side: int
) -> None:
    import imgsearch.files as files

    photo = sample("astronaut").resize((900, 700))
    path = tmp_path / "photo.jpg"
    path.write_bytes(_jpeg(photo.convert("L") if grey else photo, orientation))
    fast = decode(path, min_side, with_facts=True)
    monkeypatch.setattr(files, "_opencv_jpeg", lambda *args: None)  # Pillow alone
    slow = decode(path, min_side, with_facts=True)
    assert fast.image.mode == slow.image.mode == "RGB"
    assert (fast.width, fast.height) == (slow.width, slow.height)
    np.testing.assert_array_equal(np.asarray(fast.image), np.asarray(slow.image))
    assert fast.facts == slow.facts


def test_a_truncated_or_cmyk_jpeg_is_left_to_pillow(tmp_path: Path) -> None:
    photo = sample("coffee")
    data = _jpeg(photo)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="truncated"):
        decode(tmp_path / "cut.jpg", 224)
    cmyk = tmp_path / "cmyk.jpg"
    photo.convert("CMYK").save(cmyk, "JPEG")
    assert decode(cmyk, 224).image.mode == "RGB"
