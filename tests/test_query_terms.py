"""Combined and negative queries, and the date, camera and folder filters, through the
command line and the API on real photos with EXIF written into them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from imgsearch import ImgsearchError, Index, Text
from tests.conftest import sample
from tests.test_cli import run


def _exif(taken: str, make: str, model: str) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    exif.get_ifd(0x8769)[0x9003] = taken
    return exif


@pytest.fixture(scope="module")
def dated(tmp_path_factory: pytest.TempPathFactory, small_bank: Path) -> Path:
    """Photos taken on known days with known cameras, one without EXIF (its file time,
    set to 2021-03-04 12:00 local, stands in), and a subfolder."""
    root = tmp_path_factory.mktemp("dated") / "photos"
    (root / "trip").mkdir(parents=True)
    plan = {
        "chelsea.jpg": ("2023:12:31 23:59:59", "Canon", "EOS R5"),
        "coffee.jpg": ("2024:01:01 00:00:00", "NIKON CORPORATION", "Z 6"),
        "trip/rocket.jpg": ("2024:05:20 09:30:00", "Canon", "PowerShot G7"),
        "trip/astronaut.jpg": ("2024:06:01 10:00:00", "Apple", "iPhone 15"),
    }
    for name, (taken, make, model) in plan.items():
        sample(Path(name).stem).save(root / name, quality=90, exif=_exif(taken, make, model))
    plain = root / "horse.jpg"
    sample("horse").save(plain, quality=90)
    stamp = __import__("time").mktime((2021, 3, 4, 12, 0, 0, 0, 0, -1))
    os.utime(plain, (stamp, stamp))
    done = run("index", str(root), "--model", "offline", "--captions", str(small_bank), "-q")
    assert done.exit_code == 0, done.output
    return root


def _query(root: Path, *args: str) -> list[dict]:
    done = run("query", *args, "--json", "-k", "10", cwd=root)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def _names(hits: list[dict]) -> list[str]:
    return [Path(h["path"]).name for h in hits]


def test_results_carry_the_date_camera_and_where_the_date_came_from(dated: Path) -> None:
    hits = {Path(h["path"]).name: h for h in _query(dated, "--text", "a cat")}
    assert hits["chelsea.jpg"]["taken"] == "2023-12-31T23:59:59"
    assert hits["chelsea.jpg"]["taken_from"] == "exif"
    assert hits["chelsea.jpg"]["camera"] == "Canon EOS R5"
    assert hits["horse.jpg"]["taken"] == "2021-03-04T12:00:00"
    assert hits["horse.jpg"]["taken_from"] == "mtime" and hits["horse.jpg"]["camera"] is None


def test_date_filters_are_inclusive_after_and_exclusive_before(dated: Path) -> None:
    assert sorted(_names(_query(dated, "--text", "a photo", "--after", "2024"))) == [
        "astronaut.jpg",
        "coffee.jpg",
        "rocket.jpg",
    ]
    assert _names(_query(dated, "--text", "a photo", "--before", "2024-01-01")) in (
        ["chelsea.jpg", "horse.jpg"],
        ["horse.jpg", "chelsea.jpg"],
    )
    got = _query(dated, "--text", "a photo", "--after", "2024-05", "--before", "2024-06")
    assert _names(got) == ["rocket.jpg"]
    assert _names(_query(dated, "--text", "a photo", "--camera", "canon")) in (
        ["chelsea.jpg", "rocket.jpg"],
        ["rocket.jpg", "chelsea.jpg"],
    )
    both = _query(dated, "--text", "a photo", "--camera", "Canon", "--under", "trip")
    assert _names(both) == ["rocket.jpg"]


def test_sort_by_date_orders_the_best_above_the_cutoff_newest_first(dated: Path) -> None:
    hits = _query(dated, "--text", "a photo", "--sort", "date", "--min-score", "-1")
    assert [h["taken"] for h in hits] == sorted((h["taken"] for h in hits), reverse=True)
    assert len(hits) == 5
    best = _query(dated, "--text", "a photo", "-k", "10")
    cutoff = sorted(h["score"] for h in best)[2] - 1e-5  # JSON scores are rounded
    some = _query(dated, "--text", "a photo", "--sort", "date", "--min-score", str(cutoff))
    assert {h["path"] for h in some} == {h["path"] for h in best if h["score"] >= cutoff}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--after", "2024-13"], "bad date for --after"),
        (["--before", "yesterday"], "bad date for --before"),
        (["--after", "2024", "--before", "2023"], "is not before"),
        (["--camera", "Leica"], "no indexed photo fits"),
        (["--camera", " "], "--camera is empty"),
        (["--not", ""], "--not is empty"),
    ],
)
def test_each_filter_mistake_is_one_line(dated: Path, args: list[str], message: str) -> None:
    done = run("query", "--text", "a photo", *args, cwd=dated)
    assert done.exit_code == 1 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_combined_and_negative_terms(dated: Path) -> None:
    cat = str(dated / "chelsea.jpg")
    plain = _names(_query(dated, cat))
    assert plain[0] != "chelsea.jpg"  # the query photo itself is left out
    with_text = _query(dated, cat, "--text", "3:a cup of coffee", "--explain")
    assert _names(with_text)[0] == "coffee.jpg"
    assert with_text[0]["shared"]  # explained by the captions of the positive side
    weighted = _query(dated, cat, "--text", "3:a rocket")
    assert _names(weighted)[0] == "rocket.jpg"
    down = _query(dated, "--text", "a photo", "--not", str(dated / "coffee.jpg"))
    assert "coffee.jpg" not in _names(down)  # an image term is left out of the results
    before = _names(_query(dated, "--text", "a cat"))
    after = _names(_query(dated, "--text", "a cat", "--not", "2:a cat"))
    assert before.index("chelsea.jpg") < after.index("chelsea.jpg")
    refused = run("query", cat, "--text", "snow", "--method", "image", cwd=dated)
    assert refused.exit_code == 1 and "do not share a space with texts" in refused.stderr


def test_the_api_takes_terms_with_weights(dated: Path) -> None:
    with Index.open(dated / ".imgsearch" / "index.db") as ix:
        one = ix.query(positive=[Text("a cup of coffee")], k=5)
        assert [h.path for h in one] == [h.path for h in ix.query_text("a cup of coffee", k=5)]
        mixed = ix.query(
            positive=[dated / "chelsea.jpg", (2.0, Text("a rocket"))],
            negative=[Text("a cat")],
            k=5,
        )
        assert Path(mixed[0].path).name == "rocket.jpg"
        assert all(Path(h.path).name != "chelsea.jpg" for h in mixed)
        with pytest.raises(ImgsearchError, match="weight must be a positive number"):
            ix.query(positive=[(-1.0, Text("a rocket"))])
        with pytest.raises(ImgsearchError, match="no query given"):
            ix.query(negative=[Text("a cat")])


def test_clusters_duplicates_and_map_take_the_filters(dated: Path, tmp_path: Path) -> None:
    done = run("clusters", "--k", "2", "--json", "--after", "2024", cwd=dated)
    assert done.exit_code == 0, done.output
    members = sorted(Path(m).name for c in json.loads(done.stdout) for m in c["members"])
    assert members == ["astronaut.jpg", "coffee.jpg", "rocket.jpg"]
    trip = run("duplicates", "--json", "--under", "trip", cwd=dated)
    assert trip.exit_code == 0 and json.loads(trip.stdout) == []
    out = tmp_path / "map.html"
    drawn = run("map", "-o", str(out), "--camera", "canon", cwd=dated)
    assert drawn.exit_code == 0, drawn.output
    text = out.read_text()
    assert "chelsea.jpg" in text and "rocket.jpg" in text and "coffee.jpg" not in text
