"""Thresholds that calibrate themselves, the no-good-match line, text-query recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch import Index, scoring
from imgsearch.storage import Store
from tests.conftest import sample, write_photos
from tests.test_cli import run


def balanced_accuracy(tau: float, related: np.ndarray, unrelated: np.ndarray) -> float:
    return ((related >= tau).mean() + (unrelated < tau).mean()) / 2


@pytest.mark.parametrize("shift", [0.0, 0.45])
@pytest.mark.parametrize("share", [0.01, 0.1, 0.2])
def test_tau_from_a_collections_own_scores(shift: float, share: float) -> None:
    """Most random pairs are unrelated: tau sits just above their bulk, wherever a model
    puts its scores, whatever the share of related pairs."""
    rng = np.random.default_rng(1)
    unrelated = rng.normal(0.0, 0.06, 200_000) + shift
    related = rng.normal(0.3, 0.1, 200_000) + shift
    mixed = np.concatenate([unrelated[: int(1e5 * (1 - share))], related[: int(1e5 * share)]])
    tau = scoring.get("caption").calibrate(mixed)
    assert shift + 0.03 < tau < shift + 0.12
    assert balanced_accuracy(tau, related, unrelated) > 0.85


def many_photos(folder: Path, count: int) -> None:
    """Distinct real photos: crops of the sample photos at several places and sizes."""
    folder.mkdir(parents=True)
    names = ["chelsea", "coffee", "rocket", "astronaut", "horse", "coins"]
    for n in range(count):
        picture = sample(names[n % len(names)])
        w, h = picture.size
        left, top = (n * 37) % (w // 3), (n * 23) % (h // 3)
        picture.crop((left, top, left + w // 2, top + h // 2)).save(folder / f"{n:03}.jpg")


def test_index_records_calibrated_taus(tmp_path: Path, small_bank: Path) -> None:
    folder = tmp_path / "many"
    many_photos(folder, 60)
    done = run("index", str(folder), "--model", "offline", "--captions", str(small_bank), "-q")
    assert done.exit_code == 0, done.output
    status = json.loads(run("status", "--json", cwd=folder).stdout)
    with Index.open(folder / ".imgsearch" / "index.db") as index:
        for method in ("caption", "image", "hybrid"):
            expected = index.vectors.calibrated_tau(method)
            assert expected is not None and status["tau"][method] == expected
            assert expected != scoring.get(method).tau["offline"]  # not the default
    graph = json.loads(run("graph", "--method", "caption", "--json", cwd=folder).stdout)
    assert graph["tau"] == status["tau"]["caption"]
    compared = run(
        "compare", str(folder / "000.jpg"), str(folder / "001.jpg"), "--json", cwd=folder
    )
    assert json.loads(compared.stdout)["methods"]["caption"]["tau"] == status["tau"]["caption"]


def test_taus_are_computed_again_once_a_twentieth_of_the_images_changed(
    tmp_path: Path, small_bank: Path, tiny_clip: Path
) -> None:
    """A photo more barely moves a statistic of random pairs; computing it costs seconds
    in a large collection, which a watcher would pay at every batch."""
    folder = tmp_path / "many"
    many_photos(folder, 60)
    with Index.create(folder, model=str(tiny_clip), captions=small_bank) as index:
        index.add()
        first = {k: v for k, v in index.store.meta().items() if k.startswith("tau.")}
        assert index.meta["calibration.images"] == "60"
        for n in range(2):  # two changes: under 5% of 60
            sample("coins").rotate(90 * n + 90).save(folder / f"new{n}.jpg")
            index.add()
        meta = index.store.meta()
        assert meta["calibration.changes"] == "2"
        assert {k: v for k, v in meta.items() if k.startswith("tau.")} == first
        (folder / "000.jpg").unlink()  # the third: 5% of 60, so computed again
        index.add()
        meta = index.store.meta()
        assert (meta["calibration.images"], meta["calibration.changes"]) == ("61", "0")
        assert meta["tau.image"] == str(index.vectors.calibrated_tau("image"))


def test_a_query_with_no_good_match_says_so(tmp_path: Path, small_bank: Path) -> None:
    folder = tmp_path / "photos"
    write_photos(folder)
    assert run("index", str(folder), "--model", "offline", "--captions", str(small_bank), "-q")
    store = Store.open(folder / ".imgsearch" / "index.db")
    store.set_meta({"tau.caption": "0.99"})  # nothing but a copy relates at 0.99
    store.close()
    done = run("query", str(folder / "coffee.jpg"), "--method", "caption", "--json", cwd=folder)
    hits = json.loads(done.stdout)
    assert not any(h["related"] for h in hits)
    line = f"no photo matches well: best {hits[0]['score']:.2f}, related above 0.99"
    assert line in done.stderr
    store = Store.open(folder / ".imgsearch" / "index.db")
    store.set_meta({"tau.caption": "-1"})
    store.close()
    again = run("query", str(folder / "coffee.jpg"), "--method", "caption", "--json", cwd=folder)
    assert "no photo matches well" not in again.stderr
    assert all(h["related"] for h in json.loads(again.stdout))


def test_evaluate_reports_text_query_recall(tmp_path: Path) -> None:
    folder = tmp_path / "labeled"
    write_photos(folder)
    kinds = {"chelsea": "animal", "horse": "animal", "rocket": "space", "astronaut": "space"}
    kinds |= {"hubble_deep_field": "space", "coffee": "thing", "camera": "thing", "coins": "thing"}
    rows = ["path,label"] + [f"{name}.jpg,{kind}" for name, kind in kinds.items()]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    queries = tmp_path / "queries.csv"
    queries.write_text(
        "path,caption\nchelsea.jpg,a photo of a cat\ncoffee.jpg,a cup of coffee\n"
        'rocket.jpg,"a rocket, standing on its launch pad"\n'
    )
    args = ["evaluate", str(folder), "--model", "offline", "--methods", "caption", "-q"]
    done = run(*args, "--json", "--text-queries", str(queries))
    assert done.exit_code == 0, done.output
    found = json.loads(done.stdout)["text_queries"]
    assert found == {"queries": 3, "r@1": 1.0, "r@10": 1.0}
    Image.new("RGB", (64, 64), "white").save(tmp_path / "outside.jpg")
    queries.write_text("path,caption\nmissing.jpg,a photo of a cat\n")
    wrong = run(*args, "--text-queries", str(queries))
    assert wrong.exit_code == 1 and "missing.jpg: that photo is not indexed" in wrong.stderr


def test_coverage_is_shown_and_a_loose_fit_is_said(
    tmp_path: Path, small_bank: Path, monkeypatch
) -> None:
    folder = tmp_path / "photos"
    write_photos(folder)
    assert run("index", str(folder), "--model", "offline", "--captions", str(small_bank), "-q")
    status = json.loads(run("status", "--json", cwd=folder).stdout)
    store = Store.open(folder / ".imgsearch" / "index.db")
    try:
        _, _, confidence = store.vectors("class_confidence")
    finally:
        store.close()
    assert status["coverage"] == pytest.approx(float(confidence.mean()), abs=1e-4)
    assert 0 < status["coverage"] < 1
    assert "coverage:" in run("status", cwd=folder).stdout
    monkeypatch.setattr("imgsearch.config.COVERAGE_LOW", 1.01)  # every collection fits loosely
    loose = run("query", str(folder / "coffee.jpg"), cwd=folder)
    assert "captions describe this collection loosely" in loose.stderr
    by_image = run("query", str(folder / "coffee.jpg"), "--method", "image", cwd=folder)
    assert "loosely" not in by_image.stderr  # the advice is for caption-space rankings
    monkeypatch.setattr("imgsearch.config.COVERAGE_LOW", 0.0)
    assert "loosely" not in run("query", str(folder / "coffee.jpg"), cwd=folder).stderr
