"""Time from starting `imgsearch query` to its printed result, on an index of 10^4 photos.

Makes (once, cached in bench-out/query-cli-N/) N small JPEGs, each a different crop, turn,
flip and tint of one of scikit-image's sample photos, and indexes them with the offline
model as a user would (`imgsearch index FOLDER --model offline`, timed: its summary's time
is the whole run). Then runs, each in a fresh process as a user would, several times:

* `query --text TEXT`: the model's text tower (its ONNX export, no torch);
* `query PHOTO` with a photo in the index: read from the index, no model;
* `query PHOTO` with a photo from outside the index: the image tower (ONNX, no torch).

The first run of each is reported apart (it may build a search index or an export); the
figure is the median of the later runs, with the median CPU seconds each used (about the
time on idle cores, where other work shares them). ``--torch`` adds the same queries with
onnxruntime hidden, so that they load torch and transformers as every such query did before.

    python benchmarks/query_cli_speed.py                  # 10^4 photos, 5 runs each
    python benchmarks/query_cli_speed.py --torch --runs 7  # and the torch path, 7 runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from index_speed import cpu_busy, wait_until_quiet
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse", "brick"]
OUTSIDE = "hubble_deep_field"  # never among the indexed photos
TEXT = "a photo of a cat"
# Runs the CLI; with "torch" first, as if onnxruntime were not installed.
CHILD = (
    "import sys\n"
    "if sys.argv[1] == 'torch':\n"
    "    sys.modules['onnxruntime'] = None\n"
    "from imgsearch.cli import main\n"
    "main(sys.argv[2:])\n"
)


def source(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    if array.dtype != np.uint8:
        array = (array * 255).astype(np.uint8) if array.max() <= 1 else array.astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def make_photos(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` different JPEGs (about 320 px on the short side) under ``folder``, 1,000
    a sub-folder, made once."""
    rng = np.random.default_rng(seed)
    images = [source(name) for name in SOURCES]
    for number in range(count):
        path = folder / f"{number // 1000:03d}" / f"{number:06d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        image = images[number % len(images)]
        w, h = image.size
        share = rng.uniform(0.45, 1.0)
        cw, ch = int(w * share), int(h * share)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        photo = image.crop((left, top, left + cw, top + ch))
        photo = photo.rotate(90 * int(rng.integers(0, 4)), expand=True)
        if rng.random() < 0.5:
            photo = ImageOps.mirror(photo)
        tint = rng.uniform(0.8, 1.2, 3)
        pixels = np.asarray(photo, np.float32) * tint
        photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        scale = 320 / min(photo.size)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)))
        photo.save(path, quality=85)


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def cli(*args: str, mode: str = "onnx") -> tuple[float, float, subprocess.CompletedProcess]:
    """Seconds from starting a fresh process to its exit (the result printed), and the CPU
    seconds it used: about what it takes on idle cores, where others' work shares them."""
    cpu, start = cpu_seconds(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"imgsearch {' '.join(args)} failed:\n{done.stderr}")
    return seconds, cpu_seconds() - cpu, done


def build(folder: Path, images: int) -> tuple[Path, float | None]:
    """The index of the photos, made by `imgsearch index` unless it is there already; the
    time its summary printed (None when it was there)."""
    photos = folder / "photos"
    db = photos / ".imgsearch" / "index.db"
    if db.exists():
        done = cli("status", "--db", str(db), "--json")[2]
        if json.loads(done.stdout)["images"] == images:
            return db, None
        for stale in db.parent.glob("index.db*"):
            stale.unlink()
    make_photos(photos, images)
    done = cli("index", str(photos), "--model", "offline", "-q", "--json")[2]
    return db, json.loads(done.stdout)["seconds"]


def timed(args: list[str], runs: int, mode: str, quiet: float) -> dict:
    def once() -> tuple[float, float]:
        if quiet:
            wait_until_quiet(quiet)
        seconds, cpu, done = cli(*args, mode=mode)
        assert len(done.stdout.strip().splitlines()) == 10, done.stdout + done.stderr
        return seconds, cpu

    first = once()[0]
    timings = [once() for _ in range(runs)]
    later = sorted(t for t, _ in timings)
    cpu = sorted(c for _, c in timings)
    return {
        "first_s": round(first, 3),
        "median_s": round(later[len(later) // 2], 3),
        "min_s": round(later[0], 3),
        "max_s": round(later[-1], 3),
        "cpu_s": round(cpu[len(cpu) // 2], 3),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time the torch path")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before each run, wait up to S seconds for the cores to be idle",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = ROOT / "bench-out" / f"query-cli-{args.images}"
    start = time.perf_counter()
    db, index_s = build(folder, args.images)
    setup_s = time.perf_counter() - start
    outside = folder / "outside.jpg"
    if not outside.exists():
        source(OUTSIDE).save(outside, quality=90)
    indexed = next((folder / "photos").rglob("*.jpg"))
    queries = {
        "text": ["query", "--text", TEXT, "--db", str(db), "-k", "10"],
        "indexed photo": ["query", str(indexed), "--db", str(db), "-k", "10"],
        "outside photo": ["query", str(outside), "--db", str(db), "-k", "10"],
    }
    busy = cpu_busy()
    results = {name: timed(q, args.runs, "onnx", args.wait_quiet) for name, q in queries.items()}
    if args.torch:
        for name in ("text", "outside photo"):
            results[f"{name} (torch)"] = timed(
                queries[name], max(1, args.runs // 2 + 1), "torch", args.wait_quiet
            )
    report = {
        "images": args.images,
        "machine": f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}, "
        f"{busy:.0%} busy before the runs",
        "index_s": index_s,
        "setup_s": round(setup_s, 1),
        "queries": results,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"imgsearch query on {args.images} photos, process start to printed result")
    print(f"machine: {report['machine']}")
    if index_s is not None:
        print(f"index (offline model, first run, summary time): {index_s:.1f} s")
    print(
        f"{'query':<22} {'first_s':>8} {'median_s':>9} {'min_s':>7} {'max_s':>7} {'cpu_s':>6}  runs"
    )
    for name, r in results.items():
        print(
            f"{name:<22} {r['first_s']:>8.3f} {r['median_s']:>9.3f} {r['min_s']:>7.3f} "
            f"{r['max_s']:>7.3f} {r['cpu_s']:>6.3f}  {r['runs']}"
        )


if __name__ == "__main__":
    main()
