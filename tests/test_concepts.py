"""Concept bags: the bridge from class probabilities, their column, and the concepts method."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from imgsearch.indexer import ConceptBridge, concept_name
from imgsearch.storage import SCHEMA_VERSION, Store
from tests.conftest import sample
from tests.test_cli import run


def test_concept_names_strip_the_bank_templates() -> None:
    names = [
        "a photo of a hat",
        "a close-up photo of a hat",
        "a photo of a person wearing a hat",
        "a photo with a hat in it",
        "a photo of pasta on a table",
        "a view of the ocean",
    ]
    assert [concept_name(n) for n in names] == ["hat"] * 4 + ["pasta", "ocean"]


def test_a_bag_holds_each_concepts_best_caption_score() -> None:
    # Two classes (cat, dog) and a bank of three concepts: cat (two templates), dog, car.
    # Orthogonal vectors make the kernel 1 on a class's own caption, exp(-20) off it.
    e = np.eye(3, dtype=np.float32)
    close_cat = (e[0] + e[2]) / np.sqrt(2)
    texts = ["a photo of a cat", "a close-up photo of a cat", "a photo of a dog", "a car"]
    bridge = ConceptBridge(e[:2], texts, np.stack([e[0], close_cat, e[1], e[2]]))
    assert bridge.names == ["cat", "dog", "car"] and bridge.size == 3

    probs = np.array([[0.8, 0.2]])
    tempered = np.array([0.8, 0.2]) ** (1 / 3)  # softmax(logits / 3), from p at T=1
    tempered /= tempered.sum()
    scores = bridge.caption_scores(probs)[0]
    assert scores[0] == pytest.approx(tempered[0], rel=1e-5)  # its own class prompt
    assert scores[1] == pytest.approx(tempered[0] * np.exp((1 / np.sqrt(2) - 1) / 0.05), rel=1e-4)

    bag = bridge.bags(probs, top=2)[0]
    assert bag[2] == 0.0  # car: outside the top 2
    assert bag[:2] == pytest.approx(tempered / np.linalg.norm(tempered), rel=1e-5)
    assert bridge.bags(probs, top=1)[0].tolist() == [1.0, 0.0, 0.0]
    # The best caption of a concept counts, not the sum of its captions.
    assert bridge.bags(probs, top=3)[0][0] == pytest.approx(
        tempered[0] / np.linalg.norm(scores[[0, 2, 3]]), rel=1e-4
    )


@pytest.fixture
def indexed(photos: Path, small_bank: Path) -> Path:
    result = run("index", str(photos), "--model", "offline", "--captions", str(small_bank), "-q")
    assert result.exit_code == 0, result.output
    return photos


def test_query_by_concepts_ranks_a_smaller_copy_first(indexed: Path, tmp_path: Path) -> None:
    image = sample("astronaut")
    copy = tmp_path / "small.png"
    image.resize((image.width // 2, image.height // 2)).save(copy)
    for method in ("concepts", "concept_hybrid"):
        result = run("query", str(copy), "--method", method, "--json", "--explain", cwd=indexed)
        assert result.exit_code == 0, result.output
        hits = json.loads(result.stdout)
        assert Path(hits[0]["path"]).name == "astronaut.jpg"
        assert hits[0]["score"] > 0.8 > hits[1]["score"]
        assert hits[0]["shared"]  # explained by the stored captions the two share
    # The default ranking of a new offline index is the concepts score.
    default = run("query", str(copy), "--json", cwd=indexed)
    assert [h["score"] for h in json.loads(default.stdout)] == [
        h["score"]
        for h in json.loads(
            run("query", str(copy), "--method", "concepts", "--json", cwd=indexed).stdout
        )
    ]


def _make_schema_1(db: Path) -> None:
    """Turn a new index into what imgsearch made before schema 2: no concept columns, and
    caption settings without the concepts field."""
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE images DROP COLUMN concept_vector")
        conn.execute("ALTER TABLE images DROP COLUMN class_confidence")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        (text,) = conn.execute("SELECT value FROM meta WHERE key = 'caption_settings'").fetchone()
        settings = json.loads(text)
        del settings["concepts"]
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'caption_settings'", (json.dumps(settings),)
        )
        conn.execute("DELETE FROM meta WHERE key IN ('tau.concepts', 'default_method')")


def test_an_index_made_before_concepts_opens_and_queries_as_before(indexed: Path) -> None:
    db = indexed / ".imgsearch" / "index.db"
    assert db.exists()
    query = ("query", str(indexed / "chelsea.jpg"), "--json", "--explain")
    before = {m: run(*query, "--method", m, cwd=indexed).stdout for m in ("caption", "hybrid")}
    _make_schema_1(db)
    for derived in db.parent.glob("index.db.*"):  # the old release's derived files are redone
        if derived.suffix != ".lock":
            derived.unlink()

    after = {m: run(*query, "--method", m, cwd=indexed).stdout for m in ("caption", "hybrid")}
    assert after == before and json.loads(after["caption"])
    store = Store.open(db)
    try:
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION)
        assert store.missing("concept_vector") == store.missing("class_confidence") == 8
    finally:
        store.close()

    assert run(*query, cwd=indexed).stdout == before["caption"]  # its default stays caption
    for method in ("concepts", "concept_hybrid"):
        refused = run(*query, "--method", method, cwd=indexed)
        assert refused.exit_code == 1
        assert "imgsearch index FOLDER --db NEW" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    status = run("status", "--json", cwd=indexed)
    assert status.exit_code == 0 and "concepts" not in json.loads(status.stdout)["tau"]
    chelsea, coffee = str(indexed / "chelsea.jpg"), str(indexed / "coffee.jpg")
    compared = run("compare", chelsea, coffee, "--json", cwd=indexed)
    assert compared.exit_code == 0, compared.output
    assert set(json.loads(compared.stdout)["methods"]) == {
        "caption",
        "caption_avg",
        "image",
        "hybrid",
        "ssim",
        "fsim",
    }
    # A new file indexed into the old index gets no bag either: the index stays as it was.
    sample("chelsea").save(indexed / "chelsea-2.jpg")
    assert run("index", str(indexed), "-q").exit_code == 0
    assert run(*query, "--method", "caption", cwd=indexed).exit_code == 0
    store = Store.open(db)
    try:
        assert store.count() == store.missing("concept_vector") == 9
    finally:
        store.close()


def test_vector_sums_add_each_column_over_the_images_that_have_it(indexed: Path) -> None:
    """The collection means' one pass: each column summed in id order over the rows that
    have it, the same float32 whatever the page size, as numpy sums the stacked rows."""
    db = indexed / ".imgsearch" / "index.db"
    with sqlite3.connect(db) as conn:  # three images without a concept bag, as old rows are
        conn.execute(
            "UPDATE images SET concept_vector = NULL WHERE id IN "
            "(SELECT id FROM images ORDER BY id LIMIT 3 OFFSET 2)"
        )
    store = Store.open(db)
    try:
        columns = ["caption_vector", "image_vector", "concept_vector"]
        ids, _, captions = store.vectors("caption_vector")
        images = store.vectors("image_vector")[2]
        with sqlite3.connect(db) as conn:  # the bags as stored, of the images that have one
            bags = conn.execute(
                "SELECT concept_vector FROM images WHERE concept_vector IS NOT NULL ORDER BY id"
            ).fetchall()
        concepts = np.stack([np.frombuffer(blob, dtype=np.float32) for (blob,) in bags])
        assert len(ids) == 8 and len(concepts) == 5
        for size in (1, 3, 32768):
            sums = store.vector_sums(columns, size=size)
            assert sums["caption_vector"][1] == sums["image_vector"][1] == 8
            assert sums["concept_vector"][1] == 5
            assert np.array_equal(sums["caption_vector"][0], np.add.reduce(captions, axis=0))
            assert np.array_equal(sums["image_vector"][0], np.add.reduce(images, axis=0))
            assert np.array_equal(sums["concept_vector"][0], np.add.reduce(concepts, axis=0))
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE images SET concept_vector = NULL")
        assert store.vector_sums(["concept_vector"])["concept_vector"] == (None, 0)
    finally:
        store.close()
