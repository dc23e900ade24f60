"""HTML reports (--html) and the map, through the real command line on real photos."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch import Index, report
from imgsearch.projections import project
from imgsearch.report import PALETTE, REPORT_THUMBNAIL
from tests.conftest import sample, write_photos
from tests.test_cli import run


def make_library(root: Path, bank: Path) -> Path:
    """The sample photos plus a half-size copy of the cat, indexed with the offline model."""
    write_photos(root)
    cat = sample("chelsea")
    cat.resize((cat.width // 2, cat.height // 2)).save(root / "chelsea-small.jpg", quality=70)
    done = run("index", str(root), "--model", "offline", "--captions", str(bank), "-q")
    assert done.exit_code == 0, done.output
    return root


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, small_bank: Path) -> Path:
    return make_library(tmp_path_factory.mktemp("report") / "library", small_bank)


def photo_names(root: Path) -> set[str]:
    return {p.name for p in root.glob("*.jpg")}


class Page(HTMLParser):
    """What a report shows: each card (figure.hit) with its image and text, sections, points."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self.sections: list[str] = []
        self.circles: list[dict[str, str]] = []
        self.legend = 0
        self.scripts: dict[str, str] = {}
        self._text: list[str] | None = None
        self._script: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "figure" and "hit" in classes:
            self.cards.append({"path": a["data-path"], "img": None, "text": ""})
            self._text = []
        elif tag == "img" and self.cards and self._text is not None:
            self.cards[-1]["img"] = a["src"]
        elif tag == "section":
            self.sections.append(a.get("class", ""))
        elif tag == "circle":
            self.circles.append(a)
        elif tag == "li":
            self.legend += 1
        elif tag == "script" and a.get("id"):
            self._script = a["id"]
            self.scripts[self._script] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self._text is not None:
            self.cards[-1]["text"] = " ".join(self._text)
            self._text = None
        elif tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data.strip())
        if self._script is not None:
            self.scripts[self._script] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def embedded(uri: str) -> Image.Image:
    """The picture inside a data URI: it must be a real JPEG."""
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))
    assert image.format == "JPEG"
    image.load()
    return image


def test_query_report_shows_every_hit_with_its_thumbnail(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "query.html"
    done = run("query", str(library / "chelsea.jpg"), "-k", "5", "--html", str(out), cwd=library)
    assert done.exit_code == 0, done.output
    printed = [line.split(maxsplit=1)[1] for line in done.stdout.splitlines()]
    assert len(printed) == 5  # the text output is unchanged
    page = parse(out)
    query, hits = page.cards[0], page.cards[1:]
    assert Path(query["path"]).name == "chelsea.jpg"
    assert [h["path"] for h in hits] == printed  # same hits, same order
    assert Path(hits[0]["path"]).name == "chelsea-small.jpg"  # its copy comes first
    for card in page.cards:
        assert max(embedded(card["img"]).size) <= REPORT_THUMBNAIL
    assert all("shares:" in h["text"] for h in hits)
    assert "a photo of a cat" in hits[0]["text"]
    assert f"wrote {out}" in done.stderr


def test_text_query_report(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "text.html"
    done = run("query", "--text", "a cup of coffee", "-k", "3", "--html", str(out), cwd=library)
    assert done.exit_code == 0, done.output
    page = parse(out)
    assert len(page.cards) == 3
    assert Path(page.cards[0]["path"]).name == "coffee.jpg"
    assert all(embedded(c["img"]) for c in page.cards)
    assert "a cup of coffee" in out.read_text()


def test_clusters_report_shows_every_image_once(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "clusters.html"
    done = run("clusters", "--k", "3", "--json", "--html", str(out), cwd=library)
    assert done.exit_code == 0, done.output
    found = json.loads(done.stdout)
    page = parse(out)
    assert page.sections.count("cluster") == len(found) == 3
    assert [c["path"] for c in page.cards] == [m for c in found for m in c["members"]]
    assert sorted(Path(c["path"]).name for c in page.cards) == sorted(photo_names(library))
    assert all(embedded(c["img"]) for c in page.cards)
    text = out.read_text()
    assert all(c["name"] in text for c in found)


def test_duplicates_report_puts_the_one_to_keep_first(
    library: Path, tmp_path: Path, small_bank: Path
) -> None:
    out = tmp_path / "dupes.html"
    done = run("duplicates", "--html", str(out), cwd=library)
    assert done.exit_code == 0, done.output
    page = parse(out)
    assert page.sections.count("dupes") == 1
    assert [Path(c["path"]).name for c in page.cards] == ["chelsea.jpg", "chelsea-small.jpg"]
    assert "keep" in page.cards[0]["text"] and "copy" in page.cards[1]["text"]
    text = out.read_text()
    assert "Edited copies" in text and "Similar shots" in text  # the tiers side by side
    assert "keep: most pixels (451x300)" in text
    big, small = (embedded(c["img"]) for c in page.cards)
    assert big.size == small.size  # both scaled to the same thumbnail box
    alone = tmp_path / "alone"
    write_photos(alone, ["rocket", "coins"])
    done = run("index", str(alone), "--model", "offline", "--captions", str(small_bank), "-q")
    assert done.exit_code == 0, done.output
    none = tmp_path / "none.html"
    assert run("duplicates", "--html", str(none), cwd=alone).exit_code == 0
    assert not parse(none).cards and "No duplicates found." in none.read_text()


def test_map_png_has_the_size_asked_and_every_cluster_colour(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.png"
    done = run("map", "-o", str(out), "--k", "3", "--size", "640x480", cwd=library)
    assert done.exit_code == 0, done.output
    assert "9 images, tsne, 3 clusters" in done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (640, 480)
        colours = {c for _, c in image.convert("RGB").getcolors(640 * 480)}
    for number in range(3):
        hex_colour = PALETTE[number].lstrip("#")
        assert tuple(int(hex_colour[i : i + 2], 16) for i in (0, 2, 4)) in colours


def test_map_html_has_one_point_per_image_with_its_thumbnail(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.html"
    done = run("map", "-o", str(out), "--method", "pca", "--k", "3", cwd=library)
    assert done.exit_code == 0, done.output
    page = parse(out)
    with Index.open(library / ".imgsearch" / "index.db") as index:
        ids = {index.image_file(library / name).id for name in photo_names(library)}
    assert len(page.circles) == 9
    assert {int(c["data-id"]) for c in page.circles} == ids
    assert len({c["fill"] for c in page.circles}) == 3 and page.legend == 3
    points = json.loads(page.scripts["points"])
    assert sorted(p["name"] for p in points) == sorted(photo_names(library))
    assert all(embedded(p["thumb"]) for p in points)
    for circle in page.circles:
        assert 0 <= float(circle["cx"]) <= 1000 and 0 <= float(circle["cy"]) <= 750


def test_map_and_report_errors_are_one_line(library: Path, tmp_path: Path) -> None:
    for args in (
        ["map", "-o", str(tmp_path / "map.pdf")],
        ["map", "-o", str(tmp_path / "map.png"), "--size", "big"],
        ["map", "-o", str(tmp_path / "map.png"), "--size", "20x20"],
        ["query", str(library / "coffee.jpg"), "--html", str(tmp_path / "no" / "such" / "x.html")],
    ):
        done = run(*args, cwd=library)
        assert done.exit_code == 1, args
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("imgsearch: error: ")
    assert not (tmp_path / "map.pdf").exists()


def test_thumbnails_are_cached_by_content_and_only_for_indexed_files(
    library: Path, tmp_path: Path, cache_dir: Path
) -> None:
    with Index.open(library / ".imgsearch" / "index.db") as index:
        found = index.image_file(library / "coffee.jpg")
        first = index.thumbnail(found.id, 64)
        cached = cache_dir / "thumbnails" / found.hash[:2] / f"{found.hash}-64.jpg"
        assert cached.read_bytes() == first
        assert index.thumbnail(library / "coffee.jpg", 64) == first  # by path, from the cache
        with Image.open(io.BytesIO(first)) as image:
            assert max(image.size) == 64
        sample("coffee").save(tmp_path / "outside.jpg")
        assert index.thumbnail(tmp_path / "outside.jpg") is None
        assert index.thumbnail(10**9) is None
        assert index.image_file(str(library / "photos" / ".." / "coffee.jpg")).id == found.id


def test_projection_keeps_groups_apart() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 32))
    vectors = np.concatenate([c + 0.05 * rng.normal(size=(20, 32)) for c in centres])
    for projection in ("pca", "tsne"):
        xy, used = project(vectors, projection)
        assert used == projection and xy.shape == (40, 2)
        assert xy.min() >= 0 and xy.max() <= 1 + 1e-9
        a, b = xy[:20], xy[20:]
        within = max(np.ptp(a, axis=0).max(), np.ptp(b, axis=0).max())
        between = np.linalg.norm(a.mean(axis=0) - b.mean(axis=0))
        assert between > 2 * within, projection
    assert project(vectors[:1])[0].tolist() == [[0.5, 0.5]]
    assert project(vectors[:2], "tsne")[0].shape == (2, 2)


def test_a_large_map_leaves_the_previews_out(
    library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "MAP_THUMBNAILS_MAX", 8)  # the library has 9 photos
    with Index.open(library / ".imgsearch" / "index.db") as index:
        text = report.map_page(index, index.layout("pca", k=2))
    page = Page()
    page.feed(text)
    assert len(page.circles) == 9
    assert [p["thumb"] for p in json.loads(page.scripts["points"])] == [None] * 9
    assert "no previews above 8 images" in text and "data:image/jpeg" not in text
