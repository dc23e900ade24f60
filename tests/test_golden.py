"""Behaviour pinned: every command's output on the test photos equals the recorded one.

tests/golden/photos.json was recorded with ``python scripts/golden.py --photos --update``;
a change that alters any command's output on purpose re-records it in the same commit.
"""

from __future__ import annotations

from pathlib import Path

from tests import golden
from tests.conftest import sample, write_photos

GOLDEN = Path(__file__).parent / "golden" / "photos.json"
ITEMS = {
    "animals": ["chelsea", "horse"],
    "space": ["rocket", "astronaut", "hubble_deep_field"],
    "things": ["coffee", "camera", "coins"],
}


def make_library(root: Path) -> tuple[Path, list[Path], tuple[Path, Path]]:
    """The sample photos in three item folders, a half-size copy of the cat, labels.csv;
    and the queries (one indexed photo, one from outside) and the pair to compare."""
    rows = ["path,label"]
    for item, names in ITEMS.items():
        write_photos(root / item, names)
        rows += [f"{item}/{name}.jpg,{item}" for name in names]
    cat = sample("chelsea")
    cat.resize((cat.width // 2, cat.height // 2)).save(
        root / "animals/chelsea-small.jpg", quality=70
    )
    rows.append("animals/chelsea-small.jpg,animals")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    outside = root.parent / "query-crop.jpg"
    sample("coffee").crop((100, 50, 500, 350)).save(outside, quality=90)
    queries = [root / "animals/chelsea.jpg", outside]
    return root, queries, (root / "animals/chelsea.jpg", root / "animals/chelsea-small.jpg")


def record_library(root: Path) -> dict:
    root, queries, pair = make_library(root)
    return golden.record(root, queries, pair, ["a photo of a cat", "a rocket"], item="animals")


def test_every_output_matches_the_recorded_one(tmp_path: Path) -> None:
    actual = record_library(tmp_path / "library")
    found = golden.differences(golden.load(GOLDEN), actual)
    assert not found, "\n".join(found[:20])
