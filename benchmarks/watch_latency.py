"""Time from a photo being written into a watched folder to a query finding it.

Builds (once, cached in bench-out/) a folder with a few real photos, indexed with the real
model, and N small filler files whose index rows carry vectors mixed from the real ones
(embedding thousands of photos would take an hour on a small machine; the rows have the
real dimensions and facts, and their files are on disk, so the watcher's catch-up finds
them unchanged). Then it starts `imgsearch watch` on the folder as a user would, and for
each round writes a new photo (a re-encoded crop of one of the real ones) into a folder of
its own and asks `Index.open(db).query(...)`, limited to that folder, until it finds it.
The first round also waits for the watcher to load its model and is not counted.

    python benchmarks/watch_latency.py --filler 10000 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from imgsearch import ImgsearchError, Index
from imgsearch.storage import ImageRecord

ROOT = Path(__file__).resolve().parents[1]
NAMES = [
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "camera",
    "coins",
    "horse",
    "hubble_deep_field",
]


def sample(name: str) -> Image.Image:
    array = getattr(data, name)()
    if array.dtype != np.uint8:
        array = (array * 255).astype(np.uint8) if array.max() <= 1 else array.astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def mixer(rng: np.random.Generator, weight: float):  # noqa: ANN201
    """Vectors of a filler row: two real photos' mixed, with a little noise."""

    def mix(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
        if x is None or y is None:
            return None
        mixed = weight * x + (1 - weight) * y
        return (mixed + rng.normal(scale=0.01, size=mixed.shape)).astype(np.float32)

    return mix


def build(folder: Path, filler: int, model: str, seed: int = 0) -> Path:
    """The folder and its index (reused when it has the right number of images)."""
    photos = folder / "photos"
    db = photos / ".imgsearch" / "index.db"
    if db.exists():
        with Index.open(db) as index:
            if index.store.count() == filler + len(NAMES) and not (photos / "new").exists():
                return db
        raise SystemExit(f"{folder} is left from another run: delete it and start again")
    (photos / "real").mkdir(parents=True)
    for name in NAMES:
        sample(name).save(photos / "real" / f"{name}.jpg", quality=90)
    rng = np.random.default_rng(seed)
    with Index.create(photos, model=model) as index:
        index.add()
        real = [index.store.get(path=f"real/{name}.jpg") for name in NAMES]
        facts = index.store.facts([r.id for r in real])
        records = []
        for number in range(filler):
            path = photos / "filler" / f"{number // 100:03d}" / f"{number:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            Image.new("RGB", (16, 12), colour).save(path, quality=80)
            a, b = rng.choice(len(real), 2, replace=False)
            first, second = real[a], real[b]
            mix = mixer(rng, float(rng.uniform(0.2, 0.8)))
            stat = path.stat()
            records.append(
                ImageRecord(
                    path.relative_to(photos).as_posix(),
                    stat.st_size,
                    stat.st_mtime_ns,
                    f"filler-{number}",
                    16,
                    12,
                    mix(first.image_vector, second.image_vector),
                    mix(first.caption_vector, second.caption_vector),
                    first.caption_ids,
                    first.caption_scores,
                    concept_vector=mix(first.concept_vector, second.concept_vector),
                    class_confidence=first.class_confidence,
                    facts=facts.get(first.id),
                )
            )
            if len(records) == 5000:
                index.store.put_images(records)
                records = []
        index.store.put_images(records)
        assert index.add().unchanged == filler + len(NAMES)  # as the watcher will find it
    return db


class Lines:
    """A process's output, line by line, read by a thread."""

    def __init__(self, stream: object):
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(x) for x in stream], daemon=True).start()

    def next(self, seconds: float) -> str:
        return self.queue.get(timeout=seconds)

    def rest(self) -> list[str]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get())
        return out


def found(db: Path, anchor: Path, folder: str) -> bool:
    """Whether a query (by the photo the new one was made from, limited to the new one's
    folder) finds the new photo: it is in the index and in the search index."""
    try:
        with Index.open(db) as index:
            return bool(index.query(anchor, k=1, under=folder))
    except ImgsearchError:  # 'nothing is indexed under ...': not yet
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filler", type=int, default=10_000, help="Images beside the real ones.")
    parser.add_argument("--rounds", type=int, default=7, help="Timed rounds (plus one untimed).")
    parser.add_argument("--model", default="offline")
    parser.add_argument("--polling", action="store_true", help="Watch with --polling.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = ROOT / "bench-out" / f"watch-latency-{args.model.replace('/', '_')}-{args.filler}"
    start = time.perf_counter()
    db = build(folder, args.filler, args.model)
    setup_s = time.perf_counter() - start
    photos = db.parent.parent
    command = [sys.executable, "-m", "imgsearch.cli", "watch", str(photos), "--json"]
    watcher = subprocess.Popen(
        command + (["--polling"] if args.polling else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out, err = Lines(watcher.stdout), Lines(watcher.stderr)
    latencies: list[float] = []
    polls: list[float] = []
    try:
        json.loads(out.next(300))  # the catch-up
        for number in range(args.rounds + 1):
            name = NAMES[number % len(NAMES)]
            anchor = photos / "real" / f"{name}.jpg"
            image = sample(name)
            w, h = image.size
            new = photos / "new" / f"round{number:02d}" / f"{name}.jpg"
            new.parent.mkdir(parents=True)
            image.crop((w // 50, h // 50, w, h)).save(new, quality=75)
            written = time.perf_counter()
            while True:
                asked = time.perf_counter()
                if found(db, anchor, str(new.parent)):
                    break
                polls.append(time.perf_counter() - asked)
                if asked - written > 120:
                    raise SystemExit(f"round {number}: not found in 120 s; {err.rest()}")
                time.sleep(0.05)
            if number:  # the first round may wait for the model to load
                latencies.append(time.perf_counter() - written)
            time.sleep(0.5)
    finally:
        watcher.send_signal(signal.SIGINT)
        code = watcher.wait(timeout=120)
        for stale in sorted((photos / "new").glob("*/*.jpg")):  # the next run starts clean
            stale.unlink()
            stale.parent.rmdir()
        if (photos / "new").exists():
            (photos / "new").rmdir()
        with Index.open(db) as index:
            index.add()
    batches = [json.loads(x) for x in out.rest() if x.startswith("{")]
    report = {
        "images": args.filler + len(NAMES),
        "observer": "polling" if args.polling else "native",
        "rounds": len(latencies),
        "median_s": round(statistics.median(latencies), 3),
        "max_s": round(max(latencies), 3),
        "all_s": [round(x, 3) for x in latencies],
        "batch_median_s": round(statistics.median(b["seconds"] for b in batches), 3),
        "poll_s": round(statistics.mean(polls), 3) if polls else None,
        "watcher_exit": code,
        "setup_s": round(setup_s, 1),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"imgsearch watch ({report['observer']} events) on {report['images']} images, "
        f"model {args.model}: from a photo written to a query finding it"
    )
    median, most = report["median_s"], report["max_s"]
    print(f"{len(latencies)} rounds: median {median:.2f} s, max {most:.2f} s")
    print(f"each round: {', '.join(f'{x:.2f}' for x in latencies)} s")
    print(
        f"of which the watcher's indexing run (median): {report['batch_median_s']:.2f} s; "
        f"one query while waiting: {report['poll_s']} s"
    )


if __name__ == "__main__":
    main()
