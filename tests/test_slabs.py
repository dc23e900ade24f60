"""Decoded photos back from worker processes through shared memory (``imgsearch.slabs``),
and through the result pipe wherever shared memory cannot be had: the same pixels either
way, on real photos in a real spawned pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch import slabs
from imgsearch.files import DEFAULT_LIMITS, load_chunk
from imgsearch.indexer import _process_pool
from imgsearch.models.efficientnet import EFFICIENTNET_LITE0_PREPROCESS as PREPROCESS
from imgsearch.slabs import Slabs, SlotRef, load_chunk_into

SIDE = PREPROCESS.crop


@pytest.fixture
def chunk(photos: Path) -> list[Path]:
    """Five JPEGs, a PNG with an alpha channel, a file that is not an image."""
    with Image.open(photos / "astronaut.jpg") as image:
        image.convert("RGBA").resize((300, 200)).save(photos / "see-through.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return sorted(photos.iterdir())


def assert_same(got, expected) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert (a.width, a.height, a.hash, a.error, a.facts) == (
            b.width,
            b.height,
            b.hash,
            b.error,
            b.facts,
        )
        if b.array is None:
            assert a.array is None and a.error
        else:
            assert a.array.dtype == np.uint8 and a.array.shape == (SIDE, SIDE, 3)
            np.testing.assert_array_equal(a.array, b.array)


def segments(shared: Slabs) -> list[Path]:
    return [Path(slot.ref.path) for slot in shared._made]


def test_photos_come_back_through_shared_memory_as_load_chunk_makes_them(chunk):
    expected = load_chunk(chunk, PREPROCESS)
    pool = _process_pool(2)
    with Slabs(2, len(chunk), SIDE) as shared:
        assert segments(shared) == []  # made as they are needed
        jobs = [shared.submit(pool, chunk, PREPROCESS) for _ in range(2)]
        made = segments(shared)
        assert len(made) == 2 and all(path.is_file() for path in made)
        for job in jobs:
            assert_same(job.result(), expected)
        assert shared.shared == 2 * (len(chunk) - 1)  # every photo but the broken file
        assert_same(shared.submit(pool, chunk, PREPROCESS).result(), expected)  # a slot reused
        assert segments(shared) == made
    assert not any(path.exists() for path in made)  # removed at the end of the run


def test_without_a_free_slot_a_chunk_comes_back_through_the_pipe(chunk):
    expected = load_chunk(chunk, PREPROCESS)
    pool = _process_pool(2)
    with Slabs(1, len(chunk), SIDE) as shared:
        first, second = (shared.submit(pool, chunk, PREPROCESS) for _ in range(2))
        assert_same(second.result(), expected)
        assert_same(first.result(), expected)
        assert shared.shared == len(chunk) - 1


def test_a_slot_gone_before_the_worker_opens_it_leaves_the_pixels_in_the_result(chunk):
    expected = load_chunk(chunk, PREPROCESS)
    pixels, written = load_chunk_into(
        chunk, PREPROCESS, DEFAULT_LIMITS, SlotRef("/dev/shm/imgsearch-no-such-slot", 8, SIDE)
    )
    assert written == []
    assert_same(pixels, expected)

    pool = _process_pool(2)
    with Slabs(1, len(chunk), SIDE) as shared:
        assert shared.submit(pool, chunk[:1], PREPROCESS).result()[0].array is not None
        (slot,) = shared._made
        slot.memory.unlink()  # as at the end of a run, with a task still queued
        assert_same(shared.submit(pool, chunk, PREPROCESS).result(), expected)
        assert shared.shared == 1


def test_photos_of_another_size_or_a_chunk_longer_than_a_slot_use_the_pipe(chunk):
    """A slot holds ``rows`` photos of one size: the rest of a chunk travels as before."""
    expected = load_chunk(chunk, PREPROCESS)
    pool = _process_pool(2)
    with Slabs(2, 3, SIDE) as shared:
        assert_same(shared.submit(pool, chunk, PREPROCESS).result(), expected)
        assert shared.shared == sum(p.array is not None for p in expected[:3])
    with Slabs(2, len(chunk), SIDE + 32) as other:
        assert_same(other.submit(pool, chunk, PREPROCESS).result(), expected)
        assert other.shared == 0 and other._made == []


def test_no_slots_where_shared_memory_cannot_be_had(chunk, monkeypatch, tmp_path):
    """No /dev/shm, one too small for a slot, or turned off: every photo through the pipe."""
    expected = load_chunk(chunk, PREPROCESS)
    pool = _process_pool(2)
    monkeypatch.setattr(slabs, "SHM_DIR", tmp_path / "no-shm")
    with Slabs(4, len(chunk), SIDE) as shared:
        assert shared.most == 0
        assert_same(shared.submit(pool, chunk, PREPROCESS).result(), expected)
    monkeypatch.undo()

    monkeypatch.setattr(slabs, "MOST_BYTES", len(chunk) * SIDE * SIDE * 3 - 1)
    with Slabs(4, len(chunk), SIDE) as shared:
        assert shared.most == 0
    monkeypatch.undo()

    # A slot /dev/shm refuses (here: the segment is not where the slot looks for it).
    monkeypatch.setattr(slabs, "SHM_DIR", tmp_path)
    monkeypatch.setattr(slabs, "_affordable", lambda slots, size: slots)
    before = sorted(Path("/dev/shm").iterdir())
    with Slabs(4, len(chunk), SIDE) as shared:
        assert_same(shared.submit(pool, chunk, PREPROCESS).result(), expected)
        assert shared.most == 0 and shared.shared == 0
    monkeypatch.undo()
    assert sorted(Path("/dev/shm").iterdir()) == before  # the refused segment was removed

    monkeypatch.setattr(slabs, "ENABLED", False)
    with Slabs(4, len(chunk), SIDE) as shared:
        assert_same(shared.submit(pool, chunk, PREPROCESS).result(), expected)
        assert shared.shared == 0
