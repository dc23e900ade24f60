"""A new scoring method is one class: registered in-process, every command offers it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgsearch import ImgsearchError, Index, scoring
from imgsearch.results import Description
from tests.conftest import sample, write_photos
from tests.test_cli import run


class TopCaption(scoring.Method):
    """Two images are as alike as their single best captions."""

    name = "top_caption"
    tau = {"offline": 0.9, "clip": 0.9}

    def vectors(self, ctx: scoring.Context, rows: scoring.Rows) -> np.ndarray:
        caption_ids, _ = rows.caption_lists()
        return ctx.bank.vectors[caption_ids[:, 0]]

    def vector(self, ctx: scoring.Context, image: Description) -> np.ndarray:
        return ctx.bank.vectors[image.caption_ids[0]]


@pytest.fixture
def registered() -> Iterator[None]:
    scoring.register(TopCaption)
    yield
    scoring.unregister(TopCaption.name)


@pytest.fixture
def library(tmp_path: Path, small_bank: Path) -> Path:
    root = tmp_path / "library"
    write_photos(root, ["chelsea", "coffee", "rocket", "astronaut"])
    cat = sample("chelsea")
    cat.resize((cat.width // 2, cat.height // 2)).save(root / "chelsea-small.jpg", quality=80)
    done = run("index", str(root), "--model", "offline", "--captions", str(small_bank), "-q")
    assert done.exit_code == 0, done.output
    return root


def test_a_registered_method_is_evaluated_and_queried(registered: None, library: Path) -> None:
    labels = {"chelsea.jpg": "cat", "chelsea-small.jpg": "cat", "coffee.jpg": "cup"}
    labels |= {"rocket.jpg": "space", "astronaut.jpg": "space"}
    with Index.open(library / ".imgsearch" / "index.db") as index:
        report = index.evaluate(labels, methods=["top_caption", "caption"])
        assert index.tau("top_caption") == 0.9  # its own default: the index predates it
    assert set(report.methods) == {"top_caption", "caption"}
    assert 0 < report.methods["top_caption"]["map"] <= 1
    assert report.methods["top_caption"]["threshold"] == 0.9

    args = ["query", str(library / "chelsea.jpg"), "--method", "top_caption", "--json"]
    done = run(*args, cwd=library)
    assert done.exit_code == 0, done.output
    hits = json.loads(done.stdout)
    assert Path(hits[0]["path"]).name == "chelsea-small.jpg"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)  # the same best caption

    pair = [str(library / "chelsea.jpg"), str(library / "coffee.jpg")]
    compared = run("compare", *pair, "--json", cwd=library)
    assert "top_caption" in json.loads(compared.stdout)["methods"]


def test_an_unregistered_method_is_refused(library: Path) -> None:
    done = run("query", str(library / "chelsea.jpg"), "--method", "top_caption", cwd=library)
    assert done.exit_code == 2 and "top_caption" in done.output
    with (
        Index.open(library / ".imgsearch" / "index.db") as index,
        pytest.raises(ImgsearchError, match="unknown method 'top_caption'"),
    ):
        index.evaluate({"chelsea.jpg": "cat", "coffee.jpg": "cup"}, methods=["top_caption"])


def test_caption_lists_come_back_in_the_order_asked_for_pages_and_samples(tmp_path: Path) -> None:
    """A page (a dense id range, one query) and a sample spread over the collection (only
    its rows) give each image its own stored list, best first, in the order of the ids."""
    from imgsearch.storage import ImageRecord, Store

    rng = np.random.default_rng(3)
    store = Store.open(tmp_path / "index.db", create=True)
    stored = {}
    records = []
    for i in range(40):
        ids = rng.choice(500, size=5, replace=False).tolist()
        scores = sorted(rng.random(5).round(4).tolist(), reverse=True)
        stored[f"p{i:02d}.jpg"] = (ids, scores)
        vector = rng.standard_normal(8).astype(np.float32)
        records.append(ImageRecord(f"p{i:02d}.jpg", 1, 1, "h", 4, 4, vector, vector, ids, scores))
    store.put_images(records)
    by_path = {r.path: r.id for r in records}
    for wanted in (
        [by_path["p05.jpg"], by_path["p03.jpg"], by_path["p04.jpg"]],  # a page, out of order
        [by_path["p39.jpg"], by_path["p00.jpg"], by_path["p20.jpg"]],  # sparse: a sample
    ):
        caption_ids, scores = store.caption_lists(np.array(wanted))
        paths = {v: k for k, v in by_path.items()}
        assert caption_ids.tolist() == [stored[paths[i]][0] for i in wanted]
        assert np.array_equal(scores, np.float32([stored[paths[i]][1] for i in wanted]))
    with pytest.raises(ImgsearchError, match="keeps no captions of image 999"):
        store.caption_lists(np.array([by_path["p01.jpg"], 999]))
    store.close()
