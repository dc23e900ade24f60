"""Time from starting `imgsearch query` to its printed result, on a large index.

Builds (once, cached in bench-out/) an offline-model index of N images whose vectors are
synthetic (unit vectors around a few thousand centres, the model's real dimensions) plus one
real photo, then runs `imgsearch query PHOTO` as a user would, in a fresh process each time:
the first run builds and saves the search index, the later ones load it. The query photo is
in the index, so no model is loaded (a photo from outside adds the model's load time).

    python benchmarks/query_cli_speed.py --images 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgsearch import Index
from imgsearch.storage import ImageRecord

ROOT = Path(__file__).resolve().parents[1]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(folder: Path, images: int, seed: int = 0) -> Path:
    db = folder / "index.db"
    if db.exists():
        with Index.open(db) as index:
            if index.store.count() == images:
                return db
        for stale in folder.glob("index.db*"):
            stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / "photo.jpg"
    array = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(array).save(photo)
    rng = np.random.default_rng(seed)
    with Index.create(folder, db=db, model="offline") as index:
        bank = index.bank
        centres = rng.choice(len(bank.texts), 3000, replace=False)
        image_centres = unit(rng.normal(size=(3000, 1280)))
        for start in range(0, images, 5000):
            count = min(5000, images - start)
            topic = rng.integers(0, 3000, count)
            noise = rng.normal(scale=0.05, size=(count, bank.vectors.shape[1]))
            text_space = unit(bank.vectors[centres[topic]] + noise)
            found = bank.describe(text_space, index.settings)
            image = unit(image_centres[topic] + rng.normal(scale=0.03, size=(count, 1280)))
            records = []
            for i in range(count):
                number = start + i
                path, size, mtime, digest = f"fake/{number:07d}.jpg", 1000, 0, f"h{number}"
                if number == 0:
                    stat = photo.stat()
                    path, size, mtime, digest = "photo.jpg", stat.st_size, stat.st_mtime_ns, "p"
                records.append(
                    ImageRecord(
                        path,
                        size,
                        mtime,
                        digest,
                        64,
                        64,
                        image[i],
                        found.vectors[i],
                        found.ids[i].tolist(),
                        found.scores[i].tolist(),
                    )
                )
            index.store.put_images(records)
    return db


def run_query(db: Path, photo: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "imgsearch.cli", "query", str(photo), "--db", str(db), "-k", "10"],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    assert len(done.stdout.strip().splitlines()) == 10, done.stdout + done.stderr
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = ROOT / "bench-out" / f"query-cli-{args.images}"
    start = time.perf_counter()
    db = build(folder, args.images)
    build_s = time.perf_counter() - start
    for saved in folder.glob("index.db.*.vix"):
        saved.unlink()  # the first run below builds the search index, as after indexing
    first = run_query(db, folder / "photo.jpg")
    later = sorted(run_query(db, folder / "photo.jpg") for _ in range(args.runs))
    report = {
        "images": args.images,
        "first_s": round(first, 3),
        "later_s": {"min": round(later[0], 3), "median": round(later[len(later) // 2], 3)},
        "setup_s": round(build_s, 1),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"imgsearch query on {args.images} images (this machine; process start to printed result)"
    )
    print(f"first run (builds and saves the search index): {report['first_s']:.3f} s")
    print(
        f"later runs (load it), {args.runs} runs: min {later[0]:.3f} s, median "
        f"{report['later_s']['median']:.3f} s"
    )


if __name__ == "__main__":
    main()
