"""How fast ``Store.caption_lists`` reads stored caption lists: the calibration after each
``add()`` reads those of a spread-out sample of 2,000 images, a cluster naming or a query
page those of an id range. Against the same rows read through SQLAlchemy's own rows (the
way before), in the same run, on a SQLite file of ``--images`` images with 20 captions each
(random ids and scores; nothing but the rows matters here).

    python benchmarks/caption_lists_speed.py --images 4096 --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgsearch.storage import ImageRecord, Store, image_captions_table  # noqa: E402


def make_store(path: Path, images: int, top_n: int) -> Store:
    store = Store.open(path, create=True)
    rng = np.random.default_rng(0)
    for start in range(0, images, 512):
        records = [
            ImageRecord(
                f"p{i}.jpg", 1, 1, f"h{i}", 640, 480,
                rng.random(8, dtype=np.float32), rng.random(8, dtype=np.float32),
                [int(c) for c in rng.integers(0, 20_000, top_n)],
                [float(s) for s in rng.random(top_n, dtype=np.float32)],
            )
            for i in range(start, min(images, start + 512))
        ]  # fmt: skip
        store.put_images(records)
    return store


def through_rows(store: Store, ids: np.ndarray) -> np.ndarray:
    """The rows as SQLAlchemy gives them, turned into tuples for numpy (the way before)."""
    t = image_captions_table
    query = sa.select(t.c.image_id, t.c.caption_id, t.c.score)
    rows: list = []
    with store.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            part = query.where(t.c.image_id.in_([int(i) for i in ids[start : start + 500]]))
            rows += conn.execute(part.order_by(t.c.image_id, t.c.rank)).all()
    return np.array([tuple(r) for r in rows], dtype=np.float64)


def best(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--sample", type=int, default=2000, help="the calibration's sample")
    parser.add_argument("--top-n", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = make_store(Path(folder) / "index.db", args.images, args.top_n)
        ids = np.array(sorted(store.ids_under("")), dtype=np.int64)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(ids, min(args.sample, len(ids)), replace=False))
        page = ids[: len(sample)]
        caption_ids, _ = store.caption_lists(sample)
        old = through_rows(store, sample)
        assert np.array_equal(caption_ids.ravel(), old[:, 1].astype(np.int64))
        figures = {
            "sample, caption_lists": best(args.repeat, lambda: store.caption_lists(sample)),
            "sample, SQLAlchemy rows": best(args.repeat, lambda: through_rows(store, sample)),
            "page, caption_lists": best(args.repeat, lambda: store.caption_lists(page)),
        }
        store.close()
    rows = len(sample) * args.top_n
    print(f"{args.images} images, {args.top_n} captions each; {len(sample)} read ({rows} rows)")
    for name, seconds in figures.items():
        print(f"{name:28s} {seconds:7.3f} s  {rows / seconds:12,.0f} rows/s")
    ratio = figures["sample, SQLAlchemy rows"] / figures["sample, caption_lists"]
    print(f"caption_lists / SQLAlchemy rows: {ratio:.2f}x faster (best of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
