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
