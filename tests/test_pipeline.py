"""The overlapping indexing pipeline: stages behind bounded queues, one writer thread whose
errors reach the caller, and batches written with executemany in one transaction each.
(Consistency under SIGINT and SIGKILL: tests/test_index.py; a full disk:
tests/test_reliability.py.)"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imgsearch import ImgsearchError, Index, indexer
from imgsearch.models.checkpoint import FeaturesModel
from imgsearch.pipeline import Stage
from imgsearch.storage import ImageRecord, Store
from tests.conftest import sample


def photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    base = [sample(n).resize((96, 72)) for n in ("chelsea", "coffee", "rocket", "astronaut")]
    for i in range(count):
        base[i % 4].rotate(i * 11 % 360).save(folder / f"p{i:03d}.jpg", quality=85)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def test_a_stage_error_reaches_the_next_put_and_close_as_the_same_exception() -> None:
    failure = ImgsearchError("writing to the index failed: the disk is full")
    done = []

    def work(item: int) -> None:
        if item == 2:
            raise failure
        done.append(item)

    stage = Stage("write", work, depth=1)
    with pytest.raises(ImgsearchError) as raised:
        for item in range(100):  # never blocks on a dead stage: the error comes instead
            stage.put(item)
    assert raised.value is failure and done == [0, 1]
    with pytest.raises(ImgsearchError) as again:
        stage.close()
    assert again.value is failure


def test_cancel_finishes_the_item_in_hand_and_drops_the_rest() -> None:
    started, release, done = threading.Event(), threading.Event(), []

    def work(item: int) -> None:
        started.set()
        release.wait(5)
        done.append(item)

    stage = Stage("write", work, depth=3)
    for item in range(4):
        stage.put(item)
    started.wait(5)
    threading.Timer(0.2, release.set).start()
    stage.cancel()
    assert done == [0]


def test_put_images_inserts_a_batch_at_once_with_the_right_ids(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "index.db", create=True)
    rng = np.random.default_rng(0)

    def record(path: str, n: int = 3) -> ImageRecord:
        vectors = rng.random(8, np.float32), rng.random(4, np.float32)
        scores = [0.9, 0.5, 0.1][:n]
        return ImageRecord(path, 10, 20, f"h-{path}", 4, 3, *vectors, list(range(n)), scores)

    store.put_images([record("a.jpg"), record("b.jpg")], [("bad.jpg", 1, 2, "not an image")])
    store.put_images([record("b.jpg", 2), record("c.jpg")], [("worse.jpg", 3, 4, "empty file")])
    with sqlite3.connect(tmp_path / "index.db") as conn:
        rows = dict(conn.execute("select path, id from images").fetchall())
        ranks = conn.execute(
            "select i.path, count(*) from image_captions c join images i on i.id = c.image_id "
            "group by i.path order by i.path"
        ).fetchall()
        skipped = conn.execute("select path, reason from skipped order by path").fetchall()
    assert sorted(rows) == ["a.jpg", "b.jpg", "c.jpg"]
    assert ranks == [("a.jpg", 3), ("b.jpg", 2), ("c.jpg", 3)]
    assert skipped == [("bad.jpg", "not an image"), ("worse.jpg", "empty file")]
    got = store.get("b.jpg")
    assert got is not None and got.id == rows["b.jpg"] and got.caption_ids == [0, 1]
    store.close()


def test_the_writer_runs_while_the_model_embeds_the_next_batch(
    tmp_path: Path, tiny_clip: Path, small_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch's write waits until the model has taken the second batch: with the
    stages one after another on one thread, that would never happen."""
    folder = photos(tmp_path / "photos", 12)
    second_batch = threading.Event()
    calls = []
    encode, put = FeaturesModel.encode_images_later, Store.put_images

    def encode_images_later(self, pixels):  # noqa: ANN001, ANN202
        calls.append(len(pixels))
        if len(calls) == 2:
            second_batch.set()
        return encode(self, pixels)

    def put_images(self, records, skipped=()):  # noqa: ANN001, ANN202
        if records and not second_batch.is_set():
            assert second_batch.wait(30), "the writer and the model took turns"
        return put(self, records, skipped)

    index = Index.create(folder, tmp_path / "index.db", str(tiny_clip), small_bank)
    monkeypatch.setattr(indexer, "QUICK_RUN_FILES", 0)  # the torch model, not its export
    monkeypatch.setattr(FeaturesModel, "encode_images_later", encode_images_later)
    monkeypatch.setattr(Store, "put_images", put_images)
    summary = index.add(batch_size=4, workers=2)
    assert (summary.added, len(summary.skipped)) == (12, 1)
    assert summary.skipped[0].path == "bad.jpg"
    assert calls[:3] == [4, 4, 4]
    stages = summary.stages
    assert set(stages) >= {"read", "decode", "model", "captions", "write", "waiting"}
    assert all(v >= 0 for v in stages.values()) and stages["model"] > 0
    index.close()


def test_a_writer_error_stops_the_run_with_that_error_and_keeps_what_was_written(
    tmp_path: Path, tiny_clip: Path, small_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = photos(tmp_path / "photos", 20)
    db = tmp_path / "index.db"
    index = Index.create(folder, db, str(tiny_clip), small_bank)
    put, writes = Store.put_images, []
    failure = ImgsearchError("writing to the index failed: the disk is full; the index is intact")

    def put_images(self, records, skipped=()):  # noqa: ANN001, ANN202
        if records:
            writes.append(len(records))
            if len(writes) == 3:
                time.sleep(0.2)  # the model and the decoders have gone on meanwhile
                raise failure
        return put(self, records, skipped)

    monkeypatch.setattr(Store, "put_images", put_images)
    with pytest.raises(ImgsearchError) as raised:
        index.add(batch_size=4, workers=2)
    assert raised.value is failure
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert conn.execute("select count(*) from images").fetchone()[0] == 8
    monkeypatch.setattr(Store, "put_images", put)
    summary = index.add(batch_size=4, workers=2)
    assert (summary.unchanged, summary.added) == (8, 12)
    index.close()
