"""Reduced precision against float32 on the development sets (issue 17): the offline
model's real weights indexed at each precision, then ``imgsearch evaluate``'s mAP per
method and the overlap of every image's top-10 neighbours with float32's.

    python benchmarks/precision_quality.py                   # clothing-small, dtd10 if there
    python benchmarks/precision_quality.py DIR [DIR ...] --precisions int8,bfloat16
    python benchmarks/precision_quality.py --clip-photos bench-out/photos-64-640x480/photos

Targets: top-10 overlap at least 0.95 and mAP within 0.005 of float32. ``--clip-photos``
also embeds those photos with the benchmark's random ViT-B/32 at each precision and prints
the cosine to float32 (target at least 0.995). Each folder's indexes are kept in bench-out/.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = [ROOT.parent / "shared" / "data" / "clothing-small", Path("/work/devsets/dtd10")]
METHODS = ["concepts", "caption", "image", "hybrid"]


def database(folder: Path, precision: str) -> Path:
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return ROOT / "bench-out" / f"precision-{folder.name}-{key}-{precision}.db"


def neighbours(db: Path, method: str, k: int = 10) -> dict[str, set[str]]:
    """Every image's k nearest others under ``method`` (its vectors' inner products)."""
    from imgsearch.api import Index

    with Index.open(db) as index:
        _, paths, vectors = index.method_vectors(method)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return {paths[i]: {paths[j] for j in row} for i, row in enumerate(top)}


def overlap(a: dict[str, set[str]], b: dict[str, set[str]]) -> float:
    shared = a.keys() & b.keys()
    return float(np.mean([len(a[p] & b[p]) / len(a[p]) for p in shared]))


def folder_report(folder: Path, precisions: list[str]) -> None:
    from imgsearch.evaluate import evaluate_folder

    maps: dict[str, dict[str, float]] = {}
    for precision in ["float32", *precisions]:
        os.environ["IMGSEARCH_PRECISION"] = precision
        db = database(folder, precision)
        db.parent.mkdir(parents=True, exist_ok=True)
        report = evaluate_folder(folder, db=db, model="offline", methods=METHODS)
        maps[precision] = {m: report.methods[m]["map"] for m in METHODS}
    print(f"== {folder} (offline model, real weights)")
    print(f"{'precision':<10}{'method':<10}{'mAP':>8}{'vs f32':>9}{'top-10 overlap':>16}")
    base = {m: neighbours(database(folder, "float32"), m) for m in METHODS}
    for precision in precisions:
        for m in METHODS:
            near = neighbours(database(folder, precision), m)
            gap = maps[precision][m] - maps["float32"][m]
            shared = overlap(base[m], near)
            print(f"{precision:<10}{m:<10}{maps[precision][m]:>8.4f}{gap:>+9.4f}{shared:>16.3f}")
    print()


def clip_report(photos: Path, precisions: list[str]) -> None:
    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from index_speed import save_random_clip

    from imgsearch.models import load_model

    model_dir = save_random_clip(ROOT / "bench-out" / "clip-vit-b32-random")
    paths = sorted(photos.glob("*.jpg"))[:64]
    vectors = {}
    for precision in ["float32", *precisions]:
        os.environ["IMGSEARCH_PRECISION"] = precision
        model = load_model(str(model_dir), torch.device("cpu"))
        pixels = np.stack([model.preprocess(Image.open(p).convert("RGB")) for p in paths])
        vectors[precision] = np.concatenate(
            [model.encode_images(pixels[i : i + 16]).image for i in range(0, len(paths), 16)]
        )
    print(f"== random CLIP ViT-B/32 on {len(paths)} photos of {photos}")
    for precision in precisions:
        cos = (vectors[precision] * vectors["float32"]).sum(axis=1)
        print(f"{precision:<10} cosine to float32: min {cos.min():.5f}  mean {cos.mean():.5f}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--precisions", default="int8,bfloat16")
    parser.add_argument("--clip-photos", type=Path, help="also the random CLIP on these photos")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("IMGSEARCH_CACHE_DIR", str(ROOT / "bench-out" / "cache"))
    precisions = [p for p in args.precisions.split(",") if p]
    for folder in args.folders or [d for d in DATA if d.is_dir()]:
        folder_report(folder, precisions)
    if args.clip_photos:
        clip_report(args.clip_photos, precisions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
