"""Duplicates in tiers, on real photos with planted edits: what is a copy, what is only
alike, which one is kept, and moving that never takes what should stay."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from skimage import data

from imgsearch import Index, cli
from imgsearch.copies import Member, choose_keep, features, is_upscale, verify
from imgsearch.files import PhotoFacts, jpeg_quality
from imgsearch.storage import SCHEMA_VERSION, Store
from tests.conftest import sample, write_photos
from tests.test_cli import run


def _exif(taken: str | None = None, make: str | None = None, model: str | None = None):
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    return exif


@pytest.fixture
def library(tmp_path: Path, small_bank: Path) -> Path:
    """Real photos, copies of the astronaut edited six ways, and things that only look alike:
    the two views of a stereo pair (two shots of one scene, taken two seconds apart), a shot
    where the subject moved, and two crops of the coffee cup that overlap by less than half."""
    root = tmp_path / "library"
    write_photos(root, ["chelsea", "rocket", "camera", "coins", "horse", "hubble_deep_field"])
    astronaut = sample("astronaut")
    astronaut.save(root / "astronaut.jpg", quality=95, exif=_exif(make="Canon", model="EOS"))
    backup = root / "backup"
    backup.mkdir()
    ImageOps.mirror(astronaut).save(backup / "astronaut-mirrored.jpg", quality=60)
    astronaut.crop((60, 40, 460, 440)).save(backup / "astronaut-crop.jpg", quality=90)
    astronaut.transpose(Image.Transpose.ROTATE_90).save(backup / "astronaut-turned.jpg")
    ImageEnhance.Brightness(astronaut).enhance(1.1).save(backup / "astronaut-bright.jpg")
    astronaut.resize((256, 256), Image.Resampling.LANCZOS).save(backup / "a-small.jpg")
    (backup / "astronaut-same.jpg").write_bytes((root / "astronaut.jpg").read_bytes())
    moved = np.asarray(astronaut).copy()
    moved[150:350, 180:330] = np.roll(moved[150:350, 180:330], 60, axis=1)
    Image.fromarray(moved).save(root / "astronaut-moved.jpg", quality=92)
    left, right, _ = data.stereo_motorcycle()
    first, second = _exif("2024:05:01 10:00:01"), _exif("2024:05:01 10:00:03")
    Image.fromarray(left).save(root / "motorcycle-left.jpg", quality=92, exif=first)
    Image.fromarray(right).save(root / "motorcycle-right.jpg", quality=92, exif=second)
    coffee = sample("coffee")
    coffee.crop((0, 0, 370, 400)).save(root / "coffee-left.jpg", quality=92)
    coffee.crop((230, 0, 600, 400)).save(root / "coffee-right.jpg", quality=92)
    done = run("index", str(root), "--model", "offline", "--captions", str(small_bank), "-q")
    assert done.exit_code == 0, done.output
    return root


def _groups(root: Path, *args: str) -> list[dict]:
    done = run("duplicates", "--json", *args, cwd=root)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def _members(group: dict) -> set[str]:
    return {Path(group["keep"]).name, *(Path(o["path"]).name for o in group["others"])}


def test_tiers_tell_copies_from_look_alikes(library: Path) -> None:
    groups = _groups(library)
    copies = [g for g in groups if g["tier"] in ("exact", "copy")]
    assert len(copies) == 1, [_members(g) for g in copies]
    group = copies[0]
    assert group["tier"] == "copy"
    assert _members(group) == {
        "astronaut.jpg",
        "astronaut-same.jpg",
        "astronaut-mirrored.jpg",
        "astronaut-crop.jpg",
        "astronaut-turned.jpg",
        "astronaut-bright.jpg",
        "a-small.jpg",
    }
    # The original is kept over its same-bytes copy: it has the shorter path.
    assert group["keep"] == str(library / "astronaut.jpg")
    others = {Path(o["path"]).name: o for o in group["others"]}
    assert others["astronaut-same.jpg"]["tier"] == "exact"
    assert others["astronaut-same.jpg"]["evidence"] == {"same": "bytes"}
    mirrored = others["astronaut-mirrored.jpg"]
    assert mirrored["tier"] == "copy" and mirrored["evidence"]["mirrored"] is True
    assert mirrored["evidence"]["matched_features"] >= 50
    assert mirrored["evidence"]["hash_distance"] <= 8  # seen through the mirrored hash
    assert others["astronaut-turned.jpg"]["evidence"]["turn"] in (90, 270)
    assert others["astronaut-crop.jpg"]["evidence"]["covers"] < 0.7
    # The group's score is its lowest, never below the threshold it is shown with.
    assert group["score"] == min(o["score"] for o in group["others"])
    assert group["score"] >= group["threshold"]
    # Two shots of one scene, a moved subject: never copies of anything.
    in_copies = _members(group)
    for name in ["motorcycle-left.jpg", "motorcycle-right.jpg", "astronaut-moved.jpg"]:
        assert name not in in_copies
    similar = [_members(g) for g in groups if g["tier"] == "similar"]
    assert {"coffee-left.jpg", "coffee-right.jpg"} in similar
    burst = {"motorcycle-left.jpg", "motorcycle-right.jpg"}
    assert burst in similar
    burst = next(g for g in groups if _members(g) == burst)
    assert burst["others"][0]["evidence"]["seconds_apart"] == 2.0


def test_human_output_names_tiers_and_the_keep_reason(library: Path) -> None:
    done = run("duplicates", cwd=library)
    assert done.exit_code == 0
    text = done.stdout
    assert "edited copies" in text and "similar shots" in text
    assert f"keep    {library / 'astronaut.jpg'}" in text
    assert "because:" in text and "mirrored" in text


def _group_of(root: Path, names: set[str]) -> dict:
    for group in _groups(root):
        if names <= _members(group):
            return group
    raise AssertionError(f"no group holds {names}")


def test_keep_rule_never_keeps_a_derivative(tmp_path: Path, small_bank: Path) -> None:
    root = tmp_path / "keep"
    root.mkdir()
    photo = sample("astronaut").resize((300, 300), Image.Resampling.LANCZOS)
    photo.save(root / "z-original.jpg", quality=95)
    photo.resize((600, 600), Image.Resampling.BICUBIC).save(root / "a-upscaled.jpg", quality=95)
    ImageOps.mirror(photo).save(root / "a-mirrored-q60.jpg", quality=60)
    big = sample("chelsea")
    big.save(root / "z-cat.jpg", quality=92)
    # A crop blown up past the original's size: more pixels, no more detail.
    big.crop((40, 20, 420, 280)).resize((600, 410)).save(root / "a-cat-crop.jpg", quality=95)
    write_photos(root, ["rocket", "coins"])
    done = run("index", str(root), "--model", "offline", "--captions", str(small_bank), "-q")
    assert done.exit_code == 0, done.output
    group = _group_of(root, {"z-original.jpg", "a-upscaled.jpg", "a-mirrored-q60.jpg"})
    assert group["keep"] == str(root / "z-original.jpg"), group["keep_reason"]
    assert "an upscale of" in group["keep_reason"]
    cat = _group_of(root, {"z-cat.jpg", "a-cat-crop.jpg"})
    assert cat["keep"] == str(root / "z-cat.jpg"), cat["keep_reason"]
    assert "a-cat-crop.jpg is an upscale of z-cat.jpg" in cat["keep_reason"]


def test_keep_rule_order() -> None:
    def member(path: str, w: int, h: int, **facts) -> Member:
        return Member(path, w, h, PhotoFacts(format=facts.pop("format", "JPEG"), **facts))

    png = member("b/photo.png", 800, 600, format="PNG")
    q95 = member("photo.jpg", 800, 600, quality=95)
    assert choose_keep([q95, png]) == (1, "lossless (PNG)")
    dated = member("long/path/photo.jpg", 800, 600, quality=95, taken="2020-01-01T10:00:00")
    assert choose_keep([q95, dated])[0] == 1  # the one with EXIF data
    bigger = member("zz.jpg", 1600, 1200, quality=70)
    assert choose_keep([q95, bigger]) == (1, "most pixels (1600x1200)")
    bigger.derived.append("an upscale of photo.jpg")
    keep, reason = choose_keep([q95, bigger])
    assert keep == 0 and "zz.jpg is an upscale of photo.jpg" in reason


def test_upscale_and_jpeg_quality_read_from_the_pixels_and_tables(tmp_path: Path) -> None:
    photo = sample("astronaut")
    small = photo.resize((256, 256), Image.Resampling.LANCZOS)
    small.resize((512, 512), Image.Resampling.BICUBIC).save(tmp_path / "up.png")
    photo.save(tmp_path / "real.png")
    assert is_upscale(tmp_path / "up.png", 2.0, smaller=(256, 256))
    assert not is_upscale(tmp_path / "real.png", 2.0, smaller=(256, 256))
    for quality in (40, 60, 75, 95):
        photo.save(tmp_path / f"q{quality}.jpg", quality=quality)
        assert jpeg_quality(Image.open(tmp_path / f"q{quality}.jpg").quantization) == quality


def test_verify_rejects_a_stereo_pair_and_accepts_a_turned_copy(tmp_path: Path) -> None:
    left, right, _ = data.stereo_motorcycle()
    Image.fromarray(left).save(tmp_path / "l.jpg", quality=92)
    Image.fromarray(right).save(tmp_path / "r.jpg", quality=92)
    assert verify(features(tmp_path / "l.jpg"), features(tmp_path / "r.jpg")).kind is None
    Image.fromarray(left).transpose(Image.Transpose.ROTATE_270).save(tmp_path / "t.jpg")
    turned = verify(features(tmp_path / "l.jpg"), features(tmp_path / "t.jpg"))
    assert turned.kind == "copy" and turned.turn in (90, 270) and not turned.mirrored


def test_move_needs_a_yes_and_takes_only_copies(library: Path, tmp_path: Path) -> None:
    db = library / ".imgsearch" / "index.db"
    before = Index.open(db).store.count()
    trash = tmp_path / "trash"
    refused = run("duplicates", "--move-to", str(trash), cwd=library)
    assert refused.exit_code == 1
    assert "without a yes" in refused.stderr and "--yes" in refused.stderr
    assert "would move 6 files" in refused.stderr
    assert not trash.exists() and Index.open(db).store.count() == before
    group = next(g for g in _groups(library) if g["tier"] == "copy")
    moved = run("duplicates", "--move-to", str(trash), "--yes", cwd=library)
    assert moved.exit_code == 0, moved.output
    assert "moved 6 files" in moved.stderr
    assert Path(group["keep"]).exists()
    for other in group["others"]:
        assert not Path(other["path"]).exists()
        assert (trash / Path(other["path"]).relative_to(library)).exists()  # paths kept
    for name in ["coffee-left.jpg", "coffee-right.jpg", "motorcycle-left.jpg"]:
        assert (library / name).exists()  # similar shots stay unless asked
    assert Index.open(db).store.count() == before - 6
    assert not [g for g in _groups(library) if g["tier"] != "similar"]
    again = run("duplicates", "--move-to", str(trash), "--yes", "--include-similar", cwd=library)
    assert again.exit_code == 0 and "moved 2 files" in again.stderr
    assert (library / "motorcycle-left.jpg").exists() != (library / "motorcycle-right.jpg").exists()


def test_move_asks_on_a_terminal(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "interactive", lambda: True)
    trash = tmp_path / "trash"
    declined = run_input("n\n", "duplicates", "--move-to", str(trash), cwd=library)
    assert declined.exit_code == 0 and "nothing moved" in declined.stderr
    assert not trash.exists()
    accepted = run_input("y\n", "duplicates", "--move-to", str(trash), cwd=library)
    assert accepted.exit_code == 0 and "moved 6 files" in accepted.stderr


def run_input(text: str, *args: str, cwd: Path):
    import os

    from click.testing import CliRunner

    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli.main, list(args), input=text)
    finally:
        os.chdir(old)


def test_exif_facts_are_stored_and_an_old_index_fills_them_in(
    tmp_path: Path, small_bank: Path
) -> None:
    root = tmp_path / "facts"
    root.mkdir()
    exif = _exif("2023:07:14 18:30:05", "Nikon", "Z6")
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "S", (33.0, 51.0, 36.0), "E", (151.0, 12.0, 0.0)
    exif[0x0112] = 6  # turned: stored upright
    sample("rocket").save(root / "rocket.jpg", quality=80, exif=exif)
    sample("coins").save(root / "coins.png")
    done = run("index", str(root), "--model", "offline", "--captions", str(small_bank), "-q")
    assert done.exit_code == 0, done.output
    db = root / ".imgsearch" / "index.db"
    with Index.open(db) as ix:
        facts = {ix.store.paths([i])[i]: f for i, f in ix.store.facts().items()}
        vectors = ix.store.vectors("image_vector")[2].copy()
    rocket = facts["rocket.jpg"]
    assert rocket.taken == "2023-07-14T18:30:05" and rocket.camera == "Nikon Z6"
    assert rocket.gps == pytest.approx((-33.86, 151.2), abs=1e-4)
    assert rocket.orientation == 6 and rocket.quality == 80 and len(rocket.hashes) == 64
    assert facts["coins.png"].lossless and facts["coins.png"].taken is None
    # An index made before the facts existed: no table, schema 2.
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE photo_facts")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    again = run("index", str(root), "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["added"] == 0 and summary["unchanged"] == 2  # nothing embedded again
    store = Store.open(db)
    try:
        assert {f.taken for f in store.facts().values()} == {"2023-07-14T18:30:05", None}
        assert np.array_equal(store.vectors("image_vector")[2], vectors)
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION)
    finally:
        store.close()


def test_the_reduced_candidate_search_finds_what_the_exact_one_finds(monkeypatch) -> None:
    """Above EXACT_CANDIDATES photos the vectors go through a PCA-64 IVF index rescored
    from 8-bit codes, chunk by chunk: on clustered 512-d vectors with planted near-copies
    (cosine 0.93-0.999) it finds nearly every pair the exact search finds, and no pair
    below the threshold."""
    from imgsearch import duplicates

    rng = np.random.default_rng(0)
    n, dim = 6000, 512
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, n)] + 0.9 * rng.standard_normal((n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    copies = rng.choice(n, 300, replace=False)
    for row in copies:
        other = (row + 1) % n
        noise = rng.uniform(0.03, 0.3) * rng.standard_normal(dim) / np.sqrt(dim)
        vectors[other] = vectors[row] + noise.astype(np.float32)
        vectors[other] /= np.linalg.norm(vectors[other])

    def chunks():
        for start in range(0, n, 1000):
            yield np.arange(start, min(n, start + 1000)), vectors[start : start + 1000]

    exact = duplicates.vector_candidates(chunks, n, threshold=0.9, k=5)
    monkeypatch.setattr(duplicates, "EXACT_CANDIDATES", 1000)
    reduced = duplicates.vector_candidates(chunks, n, threshold=0.9, k=5)
    assert len(exact) >= 250
    assert len(reduced & exact) >= 0.95 * len(exact)
    cosines = [float(vectors[a] @ vectors[b]) for a, b in reduced]
    assert min(cosines) >= 0.9 - 0.01
